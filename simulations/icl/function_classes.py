"""icl-function-classes: GPT-2 learns sparse linear functions and a 2-layer ReLU teacher in context (Garg et al. 2022, §5).

One `GPT2ICL` per function class is trained under Garg et al.'s dimension-and-points curriculum (`_common`), on
noiseless prompts x ~ N(0, I_d):
- **sparse linear**: w ~ N(0, I) on `sparsity` random coordinates (the rest 0), y = wᵀx. Baselines: Lasso
  (`models.icl.baselines.lasso`, α tuned per context length on its own prompts over `lasso_alphas`, as
  dtsip/in-context-learning does), least squares, 3-NN and averaging. Error / E y² = error / sparsity.
- **ReLU teacher**: y = √(2/h) Σ_j v_j relu(u_jᵀx), u_j ~ N(0, I_d), v_j ~ N(0, 1), h = `hidden`, so E y² = d.
  Baselines: 3-NN, averaging, least squares. Error / E y² = error / d.

Every per-position error carries a 95% bootstrap interval over the held-out prompts (`*_ci`, bands in the plot)
and both trained models are saved as `weights.pt`.

Claims, strict from `_MIN_STEPS` training steps of each model: both models learned (error at the last k ≤ 0.9
× E y², the zero predictor's; 0.73 for sparse at k = 9 and 0.64 for ReLU at k = 30 in a 3k-step pilot); on the
ReLU teacher the model beats averaging at the last k (model / averaging ≤ 0.9; 0.75 in the pilot). Sanity (no
trained model): Lasso exploits sparsity, ≤ 0.5 × least squares' error at k = (s + d)/2 + 1 (measured on 512
prompts: 0.21 at d = 10, s = 2, k = 7 for the best α; 0.21 at the smoke's d = 6, s = 1, k = 4).

Observations, with why our scale cannot make them claims: the model beats least squares below k = d on sparse
prompts, and approaches Lasso — the paper's headline, but in the 3k-step pilot the model had not yet learned
dense regression (0.84 vs least squares' 0.51 at k = 5), and Garg et al. train 500k steps; on the ReLU teacher
the model beats least squares (0.83 × in the pilot, no second run to set a margin from) and 3-NN (1.50 × in the
pilot: about a third of E y² is a per-task offset, d/π, that 3-NN captures from its neighbours and a small model
learns late). The pilot (3 × 64 × 2 heads, lr 1e-3, batch 64, d = 10, 3k steps per class) set these figures
before the full run; the full run's figures are in the record and docs/results-icl.md.

Sizes: full = d 10 for both; sparse: sparsity 2, 21 points, 8000 steps; ReLU: hidden 100, 31 points, 3500 steps;
3 layers × 64 × 2 heads (760 s on one CPU core in the full run). Smoke = d 6 (sparsity 1), 2 × 32, 300 steps each. `--set
scale=paper` = Garg et al.'s: d 20, sparsity 3 with 41 points, ReLU hidden 100 with 101 points, 12 × 256 × 8,
500k steps each, batch 64, lr 1e-4, on CUDA with CUDA graphs: estimated ~50 min (sparse, at the 165 steps/s of
the 12-layer model at 41 points, `icl-gpt2`'s paper preset) + ~2.5 h (ReLU: 2.5 × the tokens); not run here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from models.icl import GPT2ICL, TaskConfig, TaskSampler
from models.icl import baselines as bl
from simulations.icl._bootstrap import bootstrap_ci
from simulations.icl._common import Curriculum, check_device, check_gpt2_config, curve_png, seed_all, train
from simulations.icl.weights import save_models
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "icl-function-classes"
CLASSES = ("sparse", "relu2nn")
_MIN_STEPS = 3000


@dataclass(frozen=True)
class Config:
    """Per class: dimension, points (context + query rows), steps; shared model size and training."""

    d: int = 10
    sparsity: int = 2
    sparse_points: int = 21
    sparse_steps: int = 8000
    hidden: int = 100
    relu_points: int = 31
    relu_steps: int = 3500
    n_layer: int = 3
    n_embd: int = 64
    n_head: int = 2
    batch_size: int = 64
    lr: float = 1e-3
    curriculum_frac: float = 0.25
    lasso_alphas: tuple[float, ...] = (1.0, 0.1, 0.01, 0.001)
    tune_prompts: int = 256
    eval_prompts: int = 2048
    resamples: int = 1000
    compile_mode: str | None = None
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.d < 2 or not 1 <= self.sparsity <= self.d:
            raise ValueError(f"d must be >= 2 and sparsity in [1, d], got d={self.d}, sparsity={self.sparsity}")
        if self.sparse_points < self.d + 1 or self.relu_points < 4:
            raise ValueError(f"sparse_points must be >= d + 1 and relu_points >= 4, got {self.sparse_points}, "
                             f"{self.relu_points}")
        if min(self.sparse_steps, self.relu_steps, self.hidden, self.batch_size, self.tune_prompts,
               self.eval_prompts) < 1:
            raise ValueError("sparse_steps, relu_steps, hidden, batch_size, tune_prompts, eval_prompts must be >= 1")
        check_gpt2_config(self.n_layer, self.n_embd, self.n_head, self.compile_mode)
        if not self.lr > 0 or not 0 <= self.curriculum_frac <= 1:
            raise ValueError(f"lr must be > 0 and curriculum_frac in [0, 1], got {self.lr}, {self.curriculum_frac}")
        if not self.lasso_alphas or min(self.lasso_alphas) <= 0:
            raise ValueError(f"lasso_alphas must be positive, got {self.lasso_alphas}")
        if self.resamples < 2:
            raise ValueError(f"resamples must be >= 2, got {self.resamples}")
        check_device(self.device)

    def task(self, kind: str) -> TaskConfig:
        """The prompts of one function class (noiseless)."""
        if kind == "sparse":
            return TaskConfig(d=self.d, n=self.sparse_points - 1, kind="sparse", sparsity=self.sparsity)
        return TaskConfig(d=self.d, n=self.relu_points - 1, kind="relu2nn", hidden=self.hidden)

    def steps(self, kind: str) -> int:
        return self.sparse_steps if kind == "sparse" else self.relu_steps

    def points(self, kind: str) -> int:
        return self.sparse_points if kind == "sparse" else self.relu_points

    def norm(self, kind: str) -> float:
        """E y² of the class (the zero predictor's error)."""
        return float(self.sparsity if kind == "sparse" else self.d)

    @classmethod
    def presets(cls) -> dict:
        """full (the defaults), smoke, and paper (Garg et al.'s sizes, for a GPU)."""
        return {"full": cls, "smoke": cls.smoke, "paper": cls.paper}

    @classmethod
    def smoke(cls) -> Config:
        return cls(d=6, sparsity=1, sparse_points=13, sparse_steps=300, hidden=16, relu_points=9, relu_steps=300,
                   n_layer=2, n_embd=32, n_head=2, batch_size=32, lr=2e-3, lasso_alphas=(0.1, 0.01),
                   tune_prompts=64, eval_prompts=256, resamples=200)

    @classmethod
    def paper(cls) -> Config:
        """Garg et al.'s runs (see the module docstring for the estimated GPU time)."""
        return cls(d=20, sparsity=3, sparse_points=41, sparse_steps=500_000, hidden=100, relu_points=101,
                   relu_steps=500_000, n_layer=12, n_embd=256, n_head=8, lr=1e-4, curriculum_frac=0.06,
                   lasso_alphas=(1.0, 0.1, 0.01, 0.001, 0.0001), eval_prompts=6400,
                   compile_mode="reduce-overhead", device="cuda")


def _baselines(kind: str, c: Config, alphas: list[float] | None = None) -> dict:
    base = {"least squares": lambda x, y: bl.per_position(bl.least_squares, x, y),
            "3-NN": lambda x, y: bl.per_position(bl.nearest_neighbors, x, y, k=3),
            "averaging": lambda x, y: bl.per_position(bl.averaging, x, y)}
    if kind == "sparse" and alphas is not None:
        def lasso(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            per = {a: bl.per_position(bl.lasso, x, y, alpha=a, tol=1e-6) for a in set(alphas)}
            return torch.stack([per[a][:, k] for k, a in enumerate(alphas)], 1)
        base["Lasso"] = lasso
    return base


def _tune_lasso(c: Config) -> list[float]:
    """Per context length, the α of `lasso_alphas` with the least error on `tune_prompts` separate prompts."""
    gen = torch.Generator(device=c.device).manual_seed(c.seed + 500)
    p = TaskSampler(c.task("sparse"), device=c.device).sample(c.tune_prompts, generator=gen)
    errs = torch.stack([(bl.per_position(bl.lasso, p.x, p.y, alpha=a, tol=1e-6) - p.y).pow(2).mean(0)
                        for a in c.lasso_alphas])
    return [c.lasso_alphas[i] for i in errs.argmin(0).tolist()]


@torch.no_grad()
def _errors(model: torch.nn.Module, kind: str, c: Config, alphas: list[float] | None) -> dict[str, torch.Tensor]:
    """Squared errors [positions, prompts] of the model and the class's baselines on fixed held-out prompts."""
    model.eval()
    sampler = TaskSampler(c.task(kind), device=c.device)
    gen = torch.Generator(device=c.device).manual_seed(c.seed + 1000)
    fns = {"model": lambda x, y: model(x, y).float()} | _baselines(kind, c, alphas)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in fns}
    done = 0
    while done < c.eval_prompts:
        b = min(512, c.eval_prompts - done)
        p = sampler.sample(b, generator=gen)
        for k, fn in fns.items():
            parts[k].append((fn(p.x, p.y) - p.y).pow(2).double().cpu())
        done += b
    return {k: torch.cat(v).T for k, v in parts.items()}


def run(config: Config, out_dir: Path) -> dict:
    seed_all(config.seed)
    c = config
    metrics: dict = {"error": {}, "error_ci": {}, "curve": {}, "params": {}}
    saved = {}
    alphas = _tune_lasso(c)
    metrics["lasso_alpha"] = alphas
    for kind in CLASSES:
        pts = c.points(kind)
        kwargs = {"d": c.d, "n_points": pts, "n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head,
                  "seed": c.seed}
        model = GPT2ICL(**kwargs)
        steps = c.steps(kind)
        cur = Curriculum.within(int(c.curriculum_frac * steps), min(5, c.d), c.d, min(11, pts), pts)
        metrics["curve"][kind] = train(model, c.task(kind), steps=steps, batch_size=c.batch_size, lr=c.lr,
                                       device=c.device, seed=c.seed, curriculum=cur, amp=True,
                                       compile_mode=c.compile_mode, warmup_frac=0.02)
        saved[kind] = (model, kwargs)
        err = _errors(model, kind, c, alphas if kind == "sparse" else None)
        norm = c.norm(kind)
        metrics["error"][kind] = {k: (v.mean(-1) / norm).tolist() for k, v in err.items()}
        metrics["error_ci"][kind] = {k: bootstrap_ci(v / norm, resamples=c.resamples, seed=c.seed + 3000)
                                     for k, v in err.items()}
        metrics["params"][kind] = sum(p.numel() for p in model.parameters())
    save_models(out_dir, saved)
    _plot(c, metrics, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=c.seed, device=c.device)


def _plot(c: Config, m: dict, out_dir: Path) -> None:
    fig, axes = new_figure(1, 3, size=(15.0, 3.8))
    styles = {"model": "o-", "Lasso": "m-", "least squares": "k--", "3-NN": "c-.", "averaging": "y:"}
    titles = {"sparse": f"sparse linear (d={c.d}, {c.sparsity} nonzero)",
              "relu2nn": f"2-layer ReLU teacher (d={c.d}, {c.hidden} hidden)"}
    for ax, kind in zip(axes[0, :2], CLASSES):
        ks = list(range(c.points(kind)))
        for name, mean in m["error"][kind].items():
            line, = ax.plot(ks, mean, styles.get(name, "-"), ms=3, label=name)
            ci = m["error_ci"][kind][name]
            ax.fill_between(ks, [a for a, _ in ci], [b for _, b in ci], color=line.get_color(), alpha=0.2, lw=0)
        ax.axvline(c.d, color="gray", lw=0.8)
        ax.set_ylim(0, 1.5)
        ax.set_xlabel("in-context examples k")
        ax.set_ylabel("squared error / E y² (95% CI band)")
        ax.set_title(titles[kind])
        ax.legend(fontsize=7)
    curve_png(axes[0, 2], m["curve"], f"training ({c.n_layer}x{c.n_embd})", ylabel="train error / active dims")
    save_figure(fig, out_dir, "function_classes.png")


def claims(result: dict) -> list[Claim]:
    """Strict from `_MIN_STEPS` steps of the class's model (see the module docstring for the observations)."""
    m, cfg = result["metrics"]["error"], result["config"]
    d = cfg["d"]
    sp, relu = m["sparse"], m["relu2nn"]
    sp_ok, relu_ok = cfg["sparse_steps"] >= _MIN_STEPS, cfg["relu_steps"] >= _MIN_STEPS
    kd = (cfg["sparsity"] + d) // 2 + 1
    below = range(cfg["sparsity"] + 1, d)
    sp_vs_ls = sum(sp["model"][k] for k in below) / sum(sp["least squares"][k] for k in below)
    sp_vs_lasso = sum(sp["model"][k] for k in below) / sum(sp["Lasso"][k] for k in below)
    lasso_vs_ls = sp["Lasso"][kd] / sp["least squares"][kd]
    last = -1
    r = {k: relu["model"][last] / relu[k][last] for k in ("averaging", "least squares", "3-NN")}
    return [
        Claim("sparse: model error / E y² at the last k (learned)", sp["model"][last], 0.9,
              sp["model"][last] <= 0.9, strict=sp_ok),
        Claim("relu2nn: model error / E y² at the last k (learned)", relu["model"][last], 0.9,
              relu["model"][last] <= 0.9, strict=relu_ok),
        Claim("relu2nn: model / averaging at the last k", r["averaging"], 0.9, r["averaging"] <= 0.9,
              strict=relu_ok),
        Claim(f"sparse: Lasso / least squares at k = {kd} (Lasso exploits sparsity)", lasso_vs_ls, 0.5,
              lasso_vs_ls <= 0.5, sanity=True),
        Claim(f"sparse: model / least squares summed over k = {below.start}..{d - 1}", sp_vs_ls, 0.9,
              sp_vs_ls <= 0.9, strict=False),
        Claim(f"sparse: model / Lasso summed over k = {below.start}..{d - 1}", sp_vs_lasso, 1.5, sp_vs_lasso <= 1.5, strict=False),
        Claim("relu2nn: model / least squares at the last k", r["least squares"], 1.0, r["least squares"] <= 1.0,
              strict=False),
        Claim("relu2nn: model / 3-NN at the last k", r["3-NN"], 1.0, r["3-NN"] <= 1.0, strict=False),
    ]


register(NAME, Config, run, claims, __doc__, paper="Garg, Tsipras, Liang, Valiant, NeurIPS 2022")
