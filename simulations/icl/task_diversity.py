"""icl-task-diversity: layers needed vs condition number κ for linear transformers; looping for robustness.

Gatmiry, Saunshi, Reddi, Jegelka & Kumar 2024.

Setting: d=6, n=48 (n/d = 8), noiseless, w ~ N(0, I), and every prompt its own covariance Σ = U diag(λ) Uᵀ (Haar
U, log-uniform eigenvalues in [1/κ, 1] with both ends pinned), κ ∈ {1, 100}. Each class is trained at every
depth L ∈ {1, 2, 3, 4}: "restricted" (one preconditioner A per layer: L steps of preconditioned GD — a
polynomial in Σ̂ of degree L, which needs ~√κ layers) and "unrestricted" (full P, Q: it can also transform the
x's, e.g. Newton-like iterations, which need ~log κ layers). Errors are relative, MSE / E y_q², on held-out
prompts, with percentile-bootstrap 95% intervals (numerator and denominator resampled together) in
`relative_error_ci` / `shift_ci` and as error bars in the plot.

The full default fits 20 minutes on 2 CPU cores (the earlier d=8, n=64, κ ∈ {1, 10, 100}, L ≤ 8 grid needed
~0.04 s per layer-step at batch 2048: over an hour). L = 8 is left out: on the CPU at d=6, n=48, κ=100 (1000
steps, batch 1024) the unrestricted 8-layer model diverged to NaN at lr/8 and the restricted one at lr/8 barely
improved on 4 layers (0.075 vs 0.078), which is what put both layers-to-ε values at the 10⁴ cap before.
Peak AdamW steps: restricted lr/√L (multilayer and looped: a product of GD steps, as in icl-pgd), unrestricted
lr/L (stiffer: its x-update is cubic per layer; at lr/1 a 4-layer one diverged at κ = 100).

Claims (cuts with a margin from the "no effect" value):
- error at fixed L rises with κ: min over L of error(κ=100) / error(κ=1) ≥ 1.1 (at L = 1 it is only ~1.5:
  one GD step is poor at every κ);
- the restricted class needs more layers than the unrestricted one to reach the relative error ε = 0.1, more so
  at large κ (layers-to-ε by log-log interpolation on the L grid; ε is above the deepest errors measured at
  κ = 100 on the CPU, 0.078 restricted and 0.044 unrestricted at L = 4, and below the one-layer error at κ = 1,
  ~0.13, so it is interpolated, not extrapolated or capped): extra layers from κ=1 to κ=100, restricted minus
  unrestricted, ≥ 0.5; at κ = 100, layers to ε restricted / unrestricted ≥ 1.2.
- robustness (the paper: multilayer models are not robust to Wasserstein shifts of size O(e^{-L}), looped ones
  are): models trained at κ_shift = 100 with L_shift = 4, tested on prompts whose top eigenvalue is moved from
  1 to `shift_scale` = 1.5 (outside the training range; every other eigenvalue, the rotation and w kept, labels
  recomputed). The shift's size is reported between the covariance laws: spectral W1 (between the laws of a
  uniformly chosen eigenvalue: (s − 1)/d) and a Frobenius W2 upper bound (the coupling that keeps everything
  else: s − 1). Growth = shifted / unshifted error. Claims: the unrestricted multilayer model's error grows
  ≥ 2× more than that of the unrestricted looped model (same class: one full layer looped L_shift times), and
  ≥ 2× more than the restricted looped model's. Full default (W2 ≤ 0.5, spectral W1 0.083): unrestricted
  multilayer 0.045 → 6.6·10⁷, unrestricted looped 0.035 → 0.040 (×1.12), restricted looped 0.058 → 1.11.
  Observation, restricted class: the restricted multilayer model's growth ≥ 2× the restricted looped one's. It
  does NOT hold (full default: multilayer 0.060 → 0.22, ×3.7; looped ×19): one shared GD step fitted for 4
  loops sits near 2/λ_max(Σ̂) and stops contracting once λ_max grows 1.5×, while the unshared model's per-layer
  steps include small ones that damp the top of the spectrum; Gatmiry et al.'s robustness is for looped
  models run with many loops (where the step must be a contraction), not 4, and the unrestricted looped
  model, which can precondition the x's, stays robust here.
Full default: 410–722 s on one CPU core (three runs; the slower ones shared the core with other jobs).
Measured there: error rise with κ ≥ 1.53 at every L; layers to ε = 0.1: restricted 1.09 (κ=1) and 2.09
(κ=100), unrestricted 1.04 and 1.39.
Smoke size (d=4, n=32, L ∈ {1, 2, 4}, a few hundred CPU steps) leaves deep models under-trained, so the
layers-to-ε and shift comparisons are observations there (strict from `_MIN_STEPS` steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from models.icl import LinearAttention, LoopedTransformer, TaskConfig
from models.icl.tasks import Prompts
from simulations.icl._bootstrap import per_prompt_errors, ratio_ci
from simulations.icl._common import check_device, model_predictor, seed_all, train
from simulations.icl.weights import save_models
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "icl-task-diversity"
CLASSES = {"restricted": "restricted", "unrestricted": "full"}
_MIN_STEPS = 1000
_RISE = 1.1  # error(next κ) / error(κ)
_EXTRA = 0.5  # extra layers, restricted minus unrestricted
_GAP = 1.2  # layers to ε at the largest κ, restricted / unrestricted
_ROBUST = 2.0  # multilayer error growth / looped error growth under the shift


@dataclass(frozen=True)
class Config:
    """kappas and depths are grids; eps is the relative error for layers-to-ε; kappa_shift/depth_shift set the
    robustness test (train at kappa_shift, test with the top eigenvalue moved from 1 to shift_scale)."""

    d: int = 6
    n: int = 48
    kappas: tuple[float, ...] = (1.0, 100.0)
    depths: tuple[int, ...] = (1, 2, 3, 4)
    eps: float = 0.1
    kappa_shift: float = 100.0
    depth_shift: int = 4
    shift_scale: float = 1.5
    steps: int = 1000
    batch_size: int = 1024
    lr: float = 2e-2
    eval_prompts: int = 20_000
    resamples: int = 1000
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.d < 1 or self.n < 1:
            raise ValueError(f"d and n must be >= 1, got {self.d}, {self.n}")
        if len(self.kappas) < 2 or min(self.kappas) < 1 or list(self.kappas) != sorted(self.kappas):
            raise ValueError(f"kappas must be >= 2 increasing values >= 1, got {self.kappas}")
        if len(self.depths) < 2 or min(self.depths) < 1 or list(self.depths) != sorted(self.depths):
            raise ValueError(f"depths must be >= 2 increasing depths >= 1, got {self.depths}")
        if not 0 < self.eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")
        if self.kappa_shift not in self.kappas or self.depth_shift not in self.depths:
            raise ValueError(f"kappa_shift must be in kappas and depth_shift in depths, got "
                             f"{self.kappa_shift}, {self.depth_shift}")
        if not self.shift_scale > 1:
            raise ValueError(f"shift_scale must be > 1 (outside the training range), got {self.shift_scale}")
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
        """The paper's setting at full width: d=8, n=64 (n = 8d), κ ∈ {1, 10, 100}, depths 1, 2, 4, 8,
        10k steps at batch 4096, on CUDA. Estimated ~15 min on one H100 (24 multilayer + 2 looped models,
        ~3 ms per step); ~15 h of one CPU core. Not run here."""
        return cls(d=8, n=64, kappas=(1.0, 10.0, 100.0), depths=(1, 2, 4, 8), depth_shift=8, steps=10_000, batch_size=4096,
                   eval_prompts=100_000, device="cuda")

    @classmethod
    def smoke(cls) -> Config:
        return cls(d=4, n=32, kappas=(1.0, 100.0), depths=(1, 2, 4), kappa_shift=100.0, depth_shift=2,
                   steps=250, batch_size=512, eval_prompts=10_000, resamples=200)


def layers_to(errors: list[float], depths: list[int], eps: float, cap: float = 1e4) -> float:
    """Depth at which the error first reaches eps, interpolating log(error) linearly in log(depth) between grid
    points and extrapolating the last segment beyond the grid (capped)."""
    if errors[0] <= eps:
        return float(depths[0])
    pts = [(math.log(t), math.log(max(e, 1e-30))) for t, e in zip(depths, errors)]
    le = math.log(eps)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if y1 <= le:
            return math.exp(x0 + (le - y0) * (x1 - x0) / (y1 - y0))
    (x0, y0), (x1, y1) = pts[-2], pts[-1]
    if y1 >= y0:
        return cap
    return min(math.exp(x1 + (le - y1) * (x1 - x0) / (y1 - y0)), cap)


def shift_top_eigenvalue(batch: Prompts, scale: float) -> Prompts:
    """The same prompts with each Σ's largest eigenvalue multiplied by `scale` (eigenvectors and the other
    eigenvalues kept): x' = U diag(√(λ'/λ)) Uᵀ x maps N(0, Σ) onto N(0, Σ'), and y' = x'w (noise-free tasks)."""
    if batch.cov is None or batch.w is None:
        raise ValueError("batch must carry per-prompt covariances and tasks (cov='random', a linear kind)")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    ev, u = torch.linalg.eigh(batch.cov)
    factor = torch.ones_like(ev)
    factor[:, -1] = math.sqrt(scale)  # eigh sorts ascending: the last is the largest
    m = (u * factor.unsqueeze(-2)) @ u.transpose(-1, -2)
    x = batch.x @ m.transpose(-1, -2)
    y = (x @ batch.w.unsqueeze(-1)).squeeze(-1)
    return Prompts(x, y, batch.w, (u * (ev * factor.pow(2)).unsqueeze(-2)) @ u.transpose(-1, -2))


def shift_distances(d: int, scale: float) -> dict[str, float]:
    """Size of the top-eigenvalue shift between the covariance laws: spectral W1 (between the laws of a uniformly
    chosen eigenvalue, one of d moved by scale − 1) and the Frobenius W2 of the coupling that keeps everything
    else (an upper bound on W2 between the two laws of Σ)."""
    return {"spectral_W1": (scale - 1) / d, "frobenius_W2_upper": scale - 1}


def run(config: Config, out_dir: Path) -> dict:
    seed_all(config.seed)
    c = config
    kw = dict(steps=c.steps, batch_size=c.batch_size, device=c.device, seed=c.seed)
    ev = dict(prompts=c.eval_prompts, device=c.device)
    boot = dict(resamples=c.resamples, seed=c.seed + 3000)
    rel: dict[str, dict[str, list[float]]] = {cls: {} for cls in CLASSES}
    rel_ci: dict[str, dict[str, list]] = {cls: {} for cls in CLASSES}
    shift_models, saved = {}, {}
    for kappa in c.kappas:
        task = TaskConfig(d=c.d, n=c.n, cov="random", kappa=kappa)
        preds = {}
        for cls, param in CLASSES.items():
            for depth in c.depths:
                args = dict(d=c.d, n_layers=depth, param=param, seed=c.seed)
                model = LinearAttention(**args)
                saved[f"kappa={kappa:g}, {cls}, L={depth}"] = (model, args)
                train(model, task, lr=c.lr / (depth**0.5 if param == "restricted" else depth), **kw)
                preds[f"{cls}|{depth}"] = model_predictor(model)
                if kappa == c.kappa_shift and depth == c.depth_shift:
                    shift_models["multilayer" if cls == "restricted" else "multilayer, unrestricted"] = \
                        preds[f"{cls}|{depth}"]
        if kappa == c.kappa_shift:
            for name, param, lr in (("looped", "restricted", c.lr / c.depth_shift**0.5),
                                    ("looped, unrestricted", "full", c.lr / c.depth_shift)):
                args = dict(d=c.d, n_loops=c.depth_shift, kind="linear", param=param, seed=c.seed)
                looped = LoopedTransformer(**args)
                saved[f"kappa={c.kappa_shift:g}, {name}, loops={c.depth_shift}"] = (looped, args)
                train(looped, task, lr=lr, **kw)
                shift_models[name] = model_predictor(looped)
        err = per_prompt_errors(preds, task, seed=c.seed + 1000, **ev)
        for cls in CLASSES:
            rows = torch.stack([err[f"{cls}|{t}"] for t in c.depths])
            rel[cls][str(kappa)] = (rows.mean(-1) / err["zero"].mean()).tolist()
            rel_ci[cls][str(kappa)] = ratio_ci(rows, err["zero"], **boot)
    shift: dict[str, dict[str, float]] = {}
    shift_ci: dict[str, dict[str, list[float]]] = {}
    task = TaskConfig(d=c.d, n=c.n, cov="random", kappa=c.kappa_shift)
    for name, transform in (("train", None), ("shifted", lambda b: shift_top_eigenvalue(b, c.shift_scale))):
        err = per_prompt_errors(shift_models, task, seed=c.seed + 2000, transform=transform, **ev)
        shift[name] = {k: float(v.mean() / err["zero"].mean()) for k, v in err.items() if k != "zero"}
        shift_ci[name] = {k: ratio_ci(v, err["zero"], **boot) for k, v in err.items() if k != "zero"}
    save_models(out_dir, saved)
    to_eps = {cls: {k: layers_to(v, list(c.depths), c.eps) for k, v in rel[cls].items()} for cls in CLASSES}
    metrics = {"relative_error": rel, "relative_error_ci": rel_ci, "layers_to_eps": to_eps, "shift": shift,
               "shift_ci": shift_ci, "shift_distance": shift_distances(c.d, c.shift_scale)}
    _plot(c, metrics, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=c.seed, device=c.device)


def _yerr(means: list[float], cis: list[list[float]]) -> list[list[float]]:
    return [[m - ci[0] for m, ci in zip(means, cis)], [ci[1] - m for m, ci in zip(means, cis)]]


def _plot(c: Config, m: dict, out_dir: Path) -> None:
    rel, rel_ci, shift, shift_ci = m["relative_error"], m["relative_error_ci"], m["shift"], m["shift_ci"]
    fig, axes = new_figure(1, 2)
    ax = axes[0, 0]
    for j, kappa in enumerate(c.kappas):
        for cls, style in (("restricted", "o--"), ("unrestricted", "s-")):
            k = str(kappa)
            ax.errorbar(c.depths, rel[cls][k], yerr=_yerr(rel[cls][k], rel_ci[cls][k]), fmt=style, color=f"C{j}",
                        capsize=2, markersize=3, label=f"{cls}, κ={kappa:g}")
    ax.axhline(c.eps, color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("layers L")
    ax.set_ylabel("MSE / E y² (95% bootstrap CI)")
    ax.set_title(f"d={c.d}, n={c.n}, per-prompt Σ")
    ax.legend(fontsize=6)
    ax = axes[0, 1]
    names = list(shift["train"])
    xs = range(len(names))
    for off, key, label in ((-0.2, "train", f"κ={c.kappa_shift:g} (train)"),
                            (0.2, "shifted", f"top eigenvalue 1 → {c.shift_scale:g}")):
        vals = [shift[key][k] for k in names]
        ax.bar([x + off for x in xs], vals, 0.4, yerr=_yerr(vals, [shift_ci[key][k] for k in names]), capsize=3,
               label=label)
    ax.set_xticks(list(xs), ["\n".join([*k.split(", "), f"L={c.depth_shift}"]) for k in names], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("MSE / E y² (95% bootstrap CI)")
    w = m["shift_distance"]
    ax.set_title(f"shift: spectral W1 {w['spectral_W1']:.3g}, W2 ≤ {w['frobenius_W2_upper']:.3g}", fontsize=8)
    ax.legend(fontsize=7)
    save_figure(fig, out_dir, "task_diversity.png")


def claims(result: dict) -> list[Claim]:
    """See the module docstring; layers-to-ε and the shift test are strict from `_MIN_STEPS` steps."""
    m, cfg = result["metrics"], result["config"]
    trained = cfg["steps"] >= _MIN_STEPS
    ks = [str(float(k)) for k in cfg["kappas"]]
    out = []
    for cls, by_k in m["relative_error"].items():
        rise = min(b / a for lo, hi in zip(ks, ks[1:]) for a, b in zip(by_k[lo], by_k[hi]))
        out.append(Claim(f"{cls}: min over L of error(next κ) / error(κ) (rises with κ)", rise, _RISE,
                         rise >= _RISE))
    r, u = m["layers_to_eps"]["restricted"], m["layers_to_eps"]["unrestricted"]
    extra = (r[ks[-1]] - r[ks[0]]) - (u[ks[-1]] - u[ks[0]])
    out.append(Claim(f"extra layers to eps={cfg['eps']:g} from κ={ks[0]} to {ks[-1]}: restricted minus unrestricted",
                     extra, _EXTRA, extra >= _EXTRA, strict=trained))
    gap = r[ks[-1]] / u[ks[-1]]
    out.append(Claim(f"κ={ks[-1]}: layers to eps, restricted / unrestricted", gap, _GAP, gap >= _GAP,
                     strict=trained))
    s = m["shift"]
    grow = {k: s["shifted"][k] / s["train"][k] for k in s["train"]}
    for name, ref, strict in (("multilayer, unrestricted", "looped, unrestricted", trained),
                              ("multilayer, unrestricted", "looped", trained), ("multilayer", "looped", False)):
        r = grow[name] / grow[ref]
        out.append(Claim(f"top eigenvalue 1 -> {cfg['shift_scale']:g}: error growth, {name} / {ref}", r, _ROBUST,
                         r >= _ROBUST, strict=strict))
    return out


register(NAME, Config, run, claims, __doc__)
