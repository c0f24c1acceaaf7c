"""icl-gpt2: GPT-2 trained in context tracks least squares, and ridge under noise (Garg et al. 2022).

`GPT2ICL` (interleaved x/y tokens, learned positions, linear read-in/out) is trained on prompts with
x ~ N(0, I_d), w ~ N(0, I_d) and label noise σ² = 0.25 (Garg et al.'s noisy linear regression), under their
dimension-and-points curriculum (`_common.Curriculum`: +1 dim and +2 points per stage, the stages spread over
the first `curriculum_frac` of training; inactive coordinates are zero and extra points are masked out of the
loss, so shapes stay static for torch.compile / CUDA graphs). The training loss is the squared error / active
dims (`curriculum_loss`), so 1 is the zero predictor at every stage. One pass predicts every position k from
the k pairs before it, so each test prompt gives the whole error-vs-context curve. It is tested on noiseless
and on noisy prompts (normalized error (ŷ − y)²/d), against min-norm least squares and ridge with λ = σ²
(Bayes-optimal for the noisy prompts).

Two causes made the old smoke run's training loss climb from 5 to 10: the loss was not normalized, so it
followed the curriculum's own E y² = active dims (5 → 10), and the model was not learning at all, because its
read-in/out had GPT-2's N(0, 0.02) init instead of Garg et al.'s PyTorch default (models.icl.gpt2).

Claims: on noiseless prompts the error stays within 0.1 of least squares' 1 − k/d below k = d (claim); on noisy
prompts at k = d, where least squares spikes (its expected error is infinite there), the model stays within
1.5× ridge (claim); the spike itself involves no trained model (sanity). "Error ≤ 0.05 at every k ≥ 2d" is an
observation below `_CONVERGED_STEPS` (strict under the paper preset): our CPU default (153k parameters, 13k
steps) falls short of it just at k = 2d: 0.056 at k = 10, 0.042 at k = 11, 0.019 at k = 17 (ridge: 0.011,
0.006, 0.001) in the first full run with this code. The two claims need a trained model: a smoke run cannot
show them, so they are observations below `_MIN_STEPS` training steps.

Out-of-distribution prompts, at test time only (`simulations.icl.ood`, Garg et al. §4), on the noiseless test
prompts: x scaled by 0.5, 2 and 3; x re-drawn under a skewed covariance (eigenvalues ∝ i⁻², trace d); label
noise σ² = 1, four times the training noise. Each is scored as the mean excess error / E y² over its reference
(least squares; ridge with λ = 1 under label noise) for k ≥ 2d; in distribution that excess is 0.029
(noiseless) and 0.026 (noisy, against ridge). Claims (from `_MIN_STEPS`): under the unseen label noise the model
stays within 0.1 of ridge (0.035 in the first full run: it is robust to it); the model does not extrapolate to
larger inputs, least squares being scale-invariant: its excess at x3 is ≥ 3 × that at x0.5 (0.90 vs 0.058, 15.6 ×;
0.27 at x2). Observations: each shift's excess ≤ 0.1 (x0.5 0.058, skewed covariance 0.097 — no margin at our
scale, so not a claim; x2 and x3 fail it, as the scaling claim says). All per-position errors carry 95% bootstrap
intervals over the test prompts (`*_ci`, bands in the plot); the trained model is saved as `weights.pt`
(`simulations.icl.weights.load_models`).

Sizes: full = d 5, 21 points, 3 layers × 64 × 2 heads, 13k steps (891 s on one CPU core; 774-816 s
with the out-of-distribution evaluation, the other core busy); smoke = d 3, 2 × 32, 600 steps; `--set scale=paper` = Garg et al.'s 12 × 256 at
d = 20 for a GPU (see `Config.paper`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from models.icl import GPT2ICL, TaskConfig, TaskSampler
from models.icl import baselines as bl
from simulations.icl import ood
from simulations.icl._bootstrap import bootstrap_ci
from simulations.icl._common import Curriculum, check_device, check_gpt2_config, curve_png, seed_all, train
from simulations.icl.weights import save_models
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "icl-gpt2"
_MIN_STEPS = 10_000
_CONVERGED_STEPS = 100_000


@dataclass(frozen=True)
class Config:
    """Model size, task (d, n_points = context + query rows, noise_var), training and curriculum."""

    d: int = 5
    n_points: int = 21
    n_layer: int = 3
    n_embd: int = 64
    n_head: int = 2
    noise_var: float = 0.25
    steps: int = 13_000
    batch_size: int = 64
    lr: float = 1e-3
    d_start: int = 2
    points_start: int = 6
    curriculum_frac: float = 0.25
    eval_prompts: int = 4096
    resamples: int = 1000
    ood_scales: tuple[float, ...] = (0.5, 2.0, 3.0)
    ood_skew_power: float = 2.0
    ood_noise_var: float = 1.0
    compile: bool = False
    compile_mode: str | None = None
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.d < 1 or self.n_points < 2:
            raise ValueError(f"d must be >= 1 and n_points >= 2, got {self.d}, {self.n_points}")
        check_gpt2_config(self.n_layer, self.n_embd, self.n_head, self.compile_mode)
        if not self.noise_var > 0:
            raise ValueError(f"noise_var must be > 0 (the ridge-vs-least-squares claim needs noise), got {self.noise_var}")
        if not 1 <= self.d_start <= self.d or not 2 <= self.points_start <= self.n_points:
            raise ValueError(f"d_start must be in [1, d] and points_start in [2, n_points], got "
                             f"{self.d_start}, {self.points_start}")
        if not 0 <= self.curriculum_frac <= 1:
            raise ValueError(f"curriculum_frac must be in [0, 1], got {self.curriculum_frac}")
        if self.steps < 1 or self.batch_size < 1 or self.eval_prompts < 1:
            raise ValueError(f"steps, batch_size, eval_prompts must be >= 1, got {self.steps}, "
                             f"{self.batch_size}, {self.eval_prompts}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.resamples < 2:
            raise ValueError(f"resamples must be >= 2, got {self.resamples}")
        if not all(s > 0 for s in self.ood_scales):
            raise ValueError(f"ood_scales must be > 0, got {self.ood_scales}")
        if not self.ood_skew_power >= 0 or not self.ood_noise_var >= 0:
            raise ValueError(f"ood_skew_power and ood_noise_var must be >= 0, got {self.ood_skew_power}, "
                             f"{self.ood_noise_var}")
        check_device(self.device)

    def curriculum(self) -> Curriculum:
        """Garg et al.'s stages (+1 dim, +2 points each), spread so the last starts by curriculum_frac · steps."""
        return Curriculum.within(int(self.curriculum_frac * self.steps), self.d_start, self.d, self.points_start,
                                 self.n_points)

    @classmethod
    def presets(cls) -> dict:
        """full (the defaults), smoke, and paper (Garg et al.'s sizes, for a GPU)."""
        return {"full": cls, "smoke": cls.smoke, "paper": cls.paper}

    @classmethod
    def paper(cls) -> Config:
        """Garg et al.'s run: d=20, 41 points, 12 layers × 256 × 8 heads (9.5M parameters), batch 64, lr 1e-4,
        500k steps, curriculum dims 5→20 / points 11→41 every 2000 steps (done at step 30k), on CUDA with
        CUDA graphs. Estimated ~50 minutes on one H100 at the 165 steps/s that TrainConfig cites for this
        model under compile_mode="reduce-overhead" (not run here; the eval adds seconds)."""
        return cls(d=20, n_points=41, n_layer=12, n_embd=256, n_head=8, steps=500_000, batch_size=64, lr=1e-4,
                   d_start=5, points_start=11, curriculum_frac=0.06, eval_prompts=6400, compile=True,
                   compile_mode="reduce-overhead", device="cuda")

    @classmethod
    def smoke(cls) -> Config:
        return cls(d=3, n_points=13, n_layer=2, n_embd=32, n_head=2, steps=600, batch_size=32, lr=2e-3,
                   d_start=2, points_start=5, eval_prompts=512)


def _shifts(c: Config) -> dict[str, tuple[ood.Transform | None, float, float]]:
    """Test-time shifts of the noiseless prompts: name -> (transform, ridge λ, normalizer E y_q² w/o noise)."""
    out: dict[str, tuple[ood.Transform | None, float, float]] = {
        f"x scaled x{s:g}": (ood.scale_x(s), c.noise_var, s**2 * c.d) for s in c.ood_scales}
    out[f"skewed covariance (i^-{c.ood_skew_power:g})"] = (ood.skew_cov(c.ood_skew_power, seed=c.seed), c.noise_var,
                                                         float(c.d))
    out[f"label noise σ²={c.ood_noise_var:g}"] = (ood.label_noise(c.ood_noise_var, seed=c.seed), c.ood_noise_var,
                                                  float(c.d))
    return out


@torch.no_grad()
def _errors(model: torch.nn.Module, c: Config, noise_var: float, lam: float,
            transform: ood.Transform | None = None) -> dict[str, torch.Tensor]:
    """Squared errors [positions, prompts] of the model, least squares and ridge(λ) on the fixed test prompts
    (the same x and w for every call: one generator seed)."""
    model.eval()
    task = TaskConfig(d=c.d, n=c.n_points - 1, noise_var=noise_var)
    sampler = TaskSampler(task, device=c.device)
    gen = torch.Generator(device=c.device).manual_seed(c.seed + 1000)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("model", "least squares", "ridge")}
    done = 0
    while done < c.eval_prompts:
        b = min(512, c.eval_prompts - done)
        p = sampler.sample(b, generator=gen)
        if transform is not None:
            p = transform(p)
        preds = {"model": model(p.x, p.y).float(),
                 "least squares": bl.per_position(bl.least_squares, p.x, p.y),
                 "ridge": bl.per_position(bl.ridge, p.x, p.y, lam=lam)}
        for k, v in preds.items():
            parts[k].append((v - p.y).pow(2).double().cpu())
        done += b
    return {k: torch.cat(v).T for k, v in parts.items()}


def _summary(errors: dict[str, torch.Tensor], norm: float, resamples: int) -> tuple[dict, dict]:
    """Per-position mean error / norm and its 95% bootstrap interval over prompts (paired resamples)."""
    means = {k: (v.mean(-1) / norm).tolist() for k, v in errors.items()}
    cis = {k: bootstrap_ci(v / norm, resamples=resamples) for k, v in errors.items()}
    return means, cis


def run(config: Config, out_dir: Path) -> dict:
    seed_all(config.seed)
    c = config
    kwargs = {"d": c.d, "n_points": c.n_points, "n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head,
              "seed": c.seed}
    model = GPT2ICL(**kwargs)

    task = TaskConfig(d=c.d, n=c.n_points - 1, noise_var=c.noise_var)
    curve = train(model, task, steps=c.steps, batch_size=c.batch_size, lr=c.lr, device=c.device, seed=c.seed,
                  curriculum=c.curriculum(), amp=True, compile=c.compile, compile_mode=c.compile_mode,
                  warmup_frac=0.02)
    save_models(out_dir, {"model": (model, kwargs)})
    noiseless, noiseless_ci = _summary(_errors(model, c, 0.0, c.noise_var), c.d, c.resamples)
    noisy, noisy_ci = _summary(_errors(model, c, c.noise_var, c.noise_var), c.d, c.resamples)
    shifted, shifted_ci = {}, {}
    for name, (transform, lam, norm) in _shifts(c).items():
        shifted[name], shifted_ci[name] = _summary(_errors(model, c, 0.0, lam, transform), norm, c.resamples)
    metrics = {"noiseless": noiseless, "noiseless_ci": noiseless_ci, "noisy": noisy, "noisy_ci": noisy_ci,
               "ood": shifted, "ood_ci": shifted_ci, "curve": curve,
               "params": sum(p.numel() for p in model.parameters())}
    _plot(c, metrics, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=c.seed, device=c.device)


def _band(ax, ks: list[int], mean: list[float], ci: list[list[float]], style: str, label: str, **kw) -> None:
    line, = ax.plot(ks, mean, style, ms=3, label=label, **kw)
    ax.fill_between(ks, [a for a, _ in ci], [b for _, b in ci], color=line.get_color(), alpha=0.2, lw=0)


def _plot(c: Config, m: dict, out_dir: Path) -> None:
    fig, axes = new_figure(1, 4, size=(18.0, 3.8))
    ks = list(range(c.n_points))
    for ax, key, title in zip(axes[0, :2], ("noiseless", "noisy"),
                              ("noiseless prompts", f"noisy prompts, σ²={c.noise_var:g} (as trained)")):
        for k, style in (("model", "o-"), ("least squares", "k--"), ("ridge", "g:")):
            _band(ax, ks, m[key][k], m[f"{key}_ci"][k], style, k)
        ax.axvline(c.d, color="gray", lw=0.8)
        ax.set_ylim(0, 1.5)
        ax.set_xlabel("in-context examples k")
        ax.set_ylabel("squared error / d (95% CI band)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    ax = axes[0, 2]
    for i, (name, cur) in enumerate(m["ood"].items()):
        _band(ax, ks, cur["model"], m["ood_ci"][name]["model"], "o-", f"model, {name}", color=f"C{i}")
        ax.plot(ks, cur["least squares" if "noise" not in name else "ridge"], "--", color=f"C{i}", lw=0.8)
    ax.axvline(c.d, color="gray", lw=0.8)
    ax.set_ylim(0, 1.5)
    ax.set_xlabel("in-context examples k")
    ax.set_ylabel("squared error / E y² (dashed: LS, ridge for noise)")
    ax.set_title("out-of-distribution prompts (test time only)")
    ax.legend(fontsize=6)
    curve_png(axes[0, 3], {"GPT2ICL": m["curve"]}, f"training ({c.n_layer}x{c.n_embd}, d={c.d})",
              ylabel="train error / active dims")
    save_figure(fig, out_dir, "gpt2.png")


def claims(result: dict) -> list[Claim]:
    """Model claims are strict from `_MIN_STEPS` training steps on, the k >= 2d one from `_CONVERGED_STEPS`
    (see the module docstring)."""
    m, cfg = result["metrics"], result["config"]
    d, last = cfg["d"], cfg["n_points"] - 1
    trained = cfg["steps"] >= _MIN_STEPS
    clean, noisy = m["noiseless"], m["noisy"]
    k0 = min(2 * d, last)
    worst = max(clean["model"][k0:])
    track = sum(abs(a - b) for a, b in zip(clean["model"][:d], clean["least squares"][:d])) / d
    kd = min(d, last)
    near = noisy["model"][kd] / noisy["ridge"][kd]
    spike = noisy["least squares"][kd] / noisy["ridge"][kd]
    return [
        Claim(f"noiseless: max error/d for k >= {k0}", worst, 0.05, worst <= 0.05,
              strict=cfg["steps"] >= _CONVERGED_STEPS),
        Claim(f"noiseless: mean |model - least squares| for k < {d}", track, 0.1, track <= 0.1, strict=trained),
        Claim(f"noisy: model / ridge at k = {kd}", near, 1.5, near <= 1.5, strict=trained),
        Claim(f"noisy: least squares / ridge at k = {kd} (the spike)", spike, 5.0, spike >= 5.0, sanity=True),
        *_ood_claims(m["ood"], k0, trained),
    ]


def _ood_excess(cur: dict[str, list[float]], ref: str, k0: int) -> float:
    """Mean (model − reference) error over k >= k0 (both already normalized)."""
    return sum(a - b for a, b in zip(cur["model"][k0:], cur[ref][k0:])) / len(cur["model"][k0:])


def _ood_claims(shifted: dict[str, dict[str, list[float]]], k0: int, trained: bool) -> list[Claim]:
    """Out-of-distribution prompts (see the module docstring): the model's excess error over the reference
    (least squares; ridge under label noise) for k >= k0 under each shift, and how it grows with the x scale."""
    out, scaled = [], {}
    for name, cur in shifted.items():
        ref = "ridge" if "noise" in name else "least squares"
        ex = _ood_excess(cur, ref, k0)
        label = f"ood {name}: mean (model - {ref}) error / E y² for k >= {k0}"
        if "noise" in name:
            out.append(Claim(label, ex, 0.1, ex <= 0.1, strict=trained))
        else:
            out.append(Claim(label, ex, 0.1, ex <= 0.1, strict=False))
        if "scaled" in name:
            scaled[float(name.split("x")[-1])] = ex
    if len(scaled) >= 2:
        lo, hi = min(scaled), max(scaled)
        grow = scaled[hi] / max(scaled[lo], 1e-12)
        out.append(Claim(f"ood x scaled: excess at x{hi:g} / excess at x{lo:g} (no extrapolation to larger x)", grow,
                         3.0, grow >= 3.0, strict=trained))
    return out


register(NAME, Config, run, claims, __doc__)
