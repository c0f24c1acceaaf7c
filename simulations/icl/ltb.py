"""icl-ltb: linear attention + linear MLP (LTB) handles a non-zero task mean; attention alone cannot.

Zhang, Wu & Bartlett 2024.

Setting: x ~ N(0, I_d), w ~ N(β*, I_d), y = wᵀx + N(0, σ²), d=5, n=20, σ²=0.1, β* ∈ {0, 3·1}. The paper's
reference class is GD-β, one GD step from a learned start, ŷ = x_qᵀ[β₀ + Γ (1/n) Σ (y_i − x_iᵀβ₀) x_i], whose
optimum is β₀ = β*, Γ = Γ* (the centred task's one-layer optimum); every optimal LTB is a GD-β. We evaluate that
optimum on the same held-out prompts as the trained models and check:

- the trained 1-layer LTB is within 5% of optimal GD-β at both β*;
- 1-layer linear attention (unrestricted P, Q) also is at β* = 0, but stays ≥ 20% above it at β* = 3·1: it cannot
  form the fixed term x_qᵀβ* (the query's label slot is 0, the only constant it can build scales with (1/n)Σy_i²).

The issue phrases the first target as "the posterior-mean risk within 5%". One layer cannot do that here: optimal
GD-β's risk is σ² + d(1+d+σ²)/(n+1+d+σ²) = 1.24 against a Bayes (posterior-mean) risk of 0.13 at d=5, n=20 — a
one-step estimator is near Bayes only when n ≫ d. So LTB-vs-posterior-mean is reported as an observation
(strict=False) with its ratio, and the strict check is against GD-β, the optimum the paper proves the LTB reaches.

Errors are means over the held-out prompts, with percentile-bootstrap 95% intervals (`resamples` paired
resamples of the prompts) as `<predictor>_ci` beside each error of a row and as error bars in the plot; the
trained models are saved in weights.pt ("LSA, beta*=0", "LTB, beta*=3", …). Full default: 144 s on one CPU core
(heavy.sh, one thread; 1000 resamples).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from models.icl import LTB, LinearAttention, TaskConfig
from models.icl import baselines as bl
from simulations.icl._bootstrap import per_prompt_errors, summarize
from simulations.icl._common import check_device, curve_png, model_predictor, seed_all, train
from simulations.icl.weights import save_models
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "icl-ltb"


@dataclass(frozen=True)
class Config:
    """prior_means: the scalars c of β* = c·1; the first must be 0 (the control)."""

    d: int = 5
    n: int = 20
    noise_var: float = 0.1
    prior_means: tuple[float, ...] = (0.0, 3.0)
    steps: int = 2000
    batch_size: int = 4096
    lr: float = 1e-2
    eval_prompts: int = 100_000
    resamples: int = 1000
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.d < 1 or self.n < 1:
            raise ValueError(f"d and n must be >= 1, got {self.d}, {self.n}")
        if not self.noise_var >= 0:
            raise ValueError(f"noise_var must be >= 0, got {self.noise_var}")
        if len(self.prior_means) < 2 or self.prior_means[0] != 0.0:
            raise ValueError(f"prior_means must start with 0.0 and have >= 2 values, got {self.prior_means}")
        if self.steps < 1 or self.batch_size < 1 or self.eval_prompts < 1:
            raise ValueError(f"steps, batch_size, eval_prompts must be >= 1, got {self.steps}, "
                             f"{self.batch_size}, {self.eval_prompts}")
        if self.resamples < 2:
            raise ValueError(f"resamples must be >= 2, got {self.resamples}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        check_device(self.device)

    @classmethod
    def presets(cls) -> dict:
        """full (the defaults), smoke, and paper (the paper's sizes, for a GPU)."""
        return {"full": cls, "smoke": cls.smoke, "paper": cls.paper}

    @classmethod
    def paper(cls) -> Config:
        """Zhang, Wu and Bartlett's sizes: d=5, n=20, σ²=0.1, task means β* ∈ {0, 3·1, 10·1}, 20k steps at
        batch 20000, on CUDA. Estimated ~4 min on one H100 (three β*, each LTB and LSA, ~3 ms per step; the
        same work is ~3.6 h on one CPU core). Not run here."""
        return cls(prior_means=(0.0, 3.0, 10.0), steps=20_000, batch_size=20_000, device="cuda")

    @classmethod
    def smoke(cls) -> Config:
        return cls(steps=600, batch_size=1024, eval_prompts=40_000)


def _gd_beta(beta: torch.Tensor, gamma: torch.Tensor):
    """Optimal GD-β: one step of Γ*-preconditioned GD from β*."""
    return lambda x, y: bl.predict(bl.gd_w(x[:, :-1], y[:, :-1], 1, 1.0, gamma, w0=beta), x[:, -1])


def run(config: Config, out_dir: Path) -> dict:
    seed_all(config.seed)
    c = config
    gamma = bl.lsa_optimal_gamma(torch.eye(c.d, device=c.device), c.n, c.noise_var)
    rows, curves, saved = [], {}, {}
    kwargs = {"LSA": {"d": c.d, "n_layers": 1, "param": "full", "seed": c.seed},
              "LTB": {"d": c.d, "n_layers": 1, "seed": c.seed}}
    for mean in c.prior_means:
        task = TaskConfig(d=c.d, n=c.n, noise_var=c.noise_var, w_mean=mean)
        beta = torch.full((c.d,), mean, device=c.device)
        models = {"LSA": LinearAttention(**kwargs["LSA"]), "LTB": LTB(**kwargs["LTB"])}
        for name, model in models.items():
            curve = train(model, task, steps=c.steps, batch_size=c.batch_size, lr=c.lr, device=c.device,
                          seed=c.seed)
            curves[f"{name}, beta*={mean:g}"] = curve
            saved[f"{name}, beta*={mean:g}"] = (model, kwargs[name])
        preds = {name: model_predictor(m) for name, m in models.items()}
        preds["GD-beta"] = _gd_beta(beta, gamma)
        preds["posterior mean"] = lambda x, y, b=beta: bl.posterior_mean(x[:, :-1], y[:, :-1], x[:, -1],
                                                                         c.noise_var, prior_mean=b)
        err = per_prompt_errors(preds, task, prompts=c.eval_prompts, device=c.device, seed=c.seed + 1000)
        mse, ci = summarize(err, resamples=c.resamples, seed=c.seed + 3000)
        row = {"beta_star": mean}
        for k, v in mse.items():
            row |= {k: v, f"{k}_ci": ci[k]}
        rows.append(row | {"gd_beta_closed_form": bl.lsa_optimal_risk(c.d, c.n, c.noise_var)})
    save_models(out_dir, saved)

    fig, axes = new_figure(1, 2)
    curve_png(axes[0, 0], curves, "training (raw query MSE)")
    for r in rows:
        axes[0, 0].axhline(r["GD-beta"], ls="--", lw=0.8, color="gray")
    names = ["LSA", "LTB", "GD-beta", "posterior mean"]
    width = 0.8 / len(rows)
    for j, r in enumerate(rows):
        yerr = [[r[k] - r[f"{k}_ci"][0] for k in names], [r[f"{k}_ci"][1] - r[k] for k in names]]
        axes[0, 1].bar([i + j * width for i in range(len(names))], [r[k] for k in names], width, yerr=yerr,
                       capsize=3, label=f"beta* = {r['beta_star']:g}·1")
    axes[0, 1].set_xticks([i + width * (len(rows) - 1) / 2 for i in range(len(names))], names, fontsize=8)
    axes[0, 1].set_yscale("log")
    axes[0, 1].set_ylabel("test MSE (incl. noise; 95% bootstrap CI)")
    axes[0, 1].legend(fontsize=7)
    save_figure(fig, out_dir, "ltb.png")
    return finalize(out_dir, NAME, config, {"rows": rows, "curves": curves}, claims, seed=c.seed, device=c.device)


def claims(result: dict) -> list[Claim]:
    """LTB ≈ GD-β everywhere; LSA ≈ GD-β only at β* = 0; LTB vs posterior mean is an observation (see module)."""
    out = []
    for r in result["metrics"]["rows"]:
        b = r["beta_star"]
        ltb = r["LTB"] / r["GD-beta"]
        out.append(Claim(f"beta*={b:g}: LTB / optimal GD-beta", ltb, 1.05, ltb <= 1.05))
        lsa = r["LSA"] / r["GD-beta"]
        if b == 0:
            out.append(Claim("beta*=0: LSA / optimal GD-beta", lsa, 1.05, lsa <= 1.05))
        else:
            out.append(Claim(f"beta*={b:g}: LSA / optimal GD-beta (gap kept)", lsa, 1.2, lsa >= 1.2))
        bayes = r["LTB"] / r["posterior mean"]
        out.append(Claim(f"beta*={b:g}: LTB / posterior-mean risk (1 layer: not reachable at n/d=4)", bayes,
                         1.05, bayes <= 1.05, strict=False))
    return out


register(NAME, Config, run, claims, __doc__)
