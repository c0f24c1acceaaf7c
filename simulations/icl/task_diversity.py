"""icl-task-diversity: layers needed vs condition number κ for linear transformers; looping for robustness.

Gatmiry, Saunshi, Reddi, Jegelka & Kumar 2024.

Setting: d=8, n=64, noiseless, w ~ N(0, I), and every prompt its own covariance Σ = U diag(λ) Uᵀ (Haar U,
log-uniform eigenvalues in [1/κ, 1] with both ends pinned), κ ∈ {1, 10, 100}. Each class is trained at every
depth L ∈ {1, 2, 4, 8}: "restricted" (one preconditioner A per layer: L steps of preconditioned GD — a
polynomial in Σ̂ of degree L, which needs ~√κ layers) and "unrestricted" (full P, Q: it can also transform the
x's, e.g. Newton-like iterations, which need ~log κ layers). Errors are relative, MSE / E y_q².

Claims:
- error at fixed L rises with κ (every class, every L);
- the restricted class needs more layers than the unrestricted one to reach a fixed relative error ε, and the
  extra layers grow with κ (layers-to-ε by log-log interpolation over the L grid);
- a looped model (one restricted layer looped L_shift times) and the restricted L_shift-layer model, both trained
  at κ_shift, tested at κ = 2κ_shift (small eigenvalues below the training range): the looped model's error grows
  by a smaller factor.
Smoke size (d=4, n=32, κ ∈ {1, 100}, L ∈ {1, 2, 4}, a few hundred CPU steps) leaves deep models under-trained,
so the layers-to-ε and shift comparisons are observations there (strict from `_MIN_STEPS` steps). Deeper stacks
of linear layers are stiffer: AdamW's peak step is lr/L (looped: lr/√L); at lr/1 an unrestricted 4-layer model
diverged at κ = 100.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from models.icl import LinearAttention, LoopedTransformer, TaskConfig
from simulations.icl._common import check_device, evaluate, model_predictor, seed_all, train
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "icl-task-diversity"
CLASSES = {"restricted": "restricted", "unrestricted": "full"}
_MIN_STEPS = 1000


@dataclass(frozen=True)
class Config:
    """kappas and depths are grids; eps is the relative error for layers-to-ε; kappa_shift/depth_shift set the
    robustness test (train at kappa_shift, test at 2·kappa_shift)."""

    d: int = 8
    n: int = 64
    kappas: tuple[float, ...] = (1.0, 10.0, 100.0)
    depths: tuple[int, ...] = (1, 2, 4, 8)
    eps: float = 0.05
    kappa_shift: float = 10.0
    depth_shift: int = 4
    steps: int = 1500
    batch_size: int = 2048
    lr: float = 2e-2
    eval_prompts: int = 50_000
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
        if self.steps < 1 or self.batch_size < 1 or self.eval_prompts < 1:
            raise ValueError(f"steps, batch_size, eval_prompts must be >= 1, got {self.steps}, "
                             f"{self.batch_size}, {self.eval_prompts}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        check_device(self.device)

    @classmethod
    def smoke(cls) -> Config:
        return cls(d=4, n=32, kappas=(1.0, 100.0), depths=(1, 2, 4), eps=0.05, kappa_shift=100.0, depth_shift=2,
                   steps=250, batch_size=512, eval_prompts=10_000)


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


def run(config: Config, out_dir: Path) -> dict:
    seed_all(config.seed)
    c = config
    kw = dict(steps=c.steps, batch_size=c.batch_size, device=c.device, seed=c.seed)
    rel: dict[str, dict[str, list[float]]] = {cls: {} for cls in CLASSES}
    shift_models = {}
    for kappa in c.kappas:
        task = TaskConfig(d=c.d, n=c.n, cov="random", kappa=kappa)
        preds = {}
        for cls, param in CLASSES.items():
            for depth in c.depths:
                model = LinearAttention(c.d, depth, param=param, seed=c.seed)
                train(model, task, lr=c.lr / depth, **kw)
                preds[f"{cls}|{depth}"] = model_predictor(model)
                if cls == "restricted" and kappa == c.kappa_shift and depth == c.depth_shift:
                    shift_models["multilayer"] = preds[f"{cls}|{depth}"]
        if kappa == c.kappa_shift:
            looped = LoopedTransformer(c.d, c.depth_shift, kind="linear", param="restricted", seed=c.seed)
            train(looped, task, lr=c.lr / c.depth_shift**0.5, **kw)
            shift_models["looped"] = model_predictor(looped)
        mse = evaluate(preds, task, prompts=c.eval_prompts, device=c.device, seed=c.seed + 1000)
        for cls in CLASSES:
            rel[cls][str(kappa)] = [mse[f"{cls}|{t}"] / mse["zero"] for t in c.depths]
    shift = {}
    for name, kappa in (("train", c.kappa_shift), ("shifted", 2 * c.kappa_shift)):
        task = TaskConfig(d=c.d, n=c.n, cov="random", kappa=kappa)
        mse = evaluate(shift_models, task, prompts=c.eval_prompts, device=c.device, seed=c.seed + 2000)
        shift[name] = {k: v / mse["zero"] for k, v in mse.items() if k != "zero"}
    to_eps = {cls: {k: layers_to(v, list(c.depths), c.eps) for k, v in rel[cls].items()} for cls in CLASSES}
    metrics = {"relative_error": rel, "layers_to_eps": to_eps, "shift": shift}

    fig, axes = new_figure(1, 2)
    for j, kappa in enumerate(c.kappas):
        for cls, style in (("restricted", "o--"), ("unrestricted", "s-")):
            axes[0, 0].plot(c.depths, rel[cls][str(kappa)], style, color=f"C{j}", label=f"{cls}, κ={kappa:g}")
    axes[0, 0].axhline(c.eps, color="gray", lw=0.8)
    axes[0, 0].set_xscale("log", base=2)
    axes[0, 0].set_yscale("log")
    axes[0, 0].set_xlabel("layers L")
    axes[0, 0].set_ylabel("MSE / E y²")
    axes[0, 0].set_title(f"d={c.d}, n={c.n}, per-prompt Σ")
    axes[0, 0].legend(fontsize=6)
    names = list(shift["train"])
    xs = range(len(names))
    axes[0, 1].bar([x - 0.2 for x in xs], [shift["train"][k] for k in names], 0.4, label=f"κ={c.kappa_shift:g} (train)")
    axes[0, 1].bar([x + 0.2 for x in xs], [shift["shifted"][k] for k in names], 0.4,
                   label=f"κ={2 * c.kappa_shift:g} (shifted)")
    axes[0, 1].set_xticks(list(xs), [f"{k}, L={c.depth_shift}" for k in names])
    axes[0, 1].set_ylabel("MSE / E y²")
    axes[0, 1].legend(fontsize=7)
    save_figure(fig, out_dir, "task_diversity.png")
    return finalize(out_dir, NAME, config, metrics, claims, seed=c.seed, device=c.device)


def claims(result: dict) -> list[Claim]:
    """See the module docstring; layers-to-ε and the shift test are strict from `_MIN_STEPS` steps."""
    m, cfg = result["metrics"], result["config"]
    trained = cfg["steps"] >= _MIN_STEPS
    ks = [str(float(k)) for k in cfg["kappas"]]
    out = []
    for cls, by_k in m["relative_error"].items():
        rise = min(b / a for lo, hi in zip(ks, ks[1:]) for a, b in zip(by_k[lo], by_k[hi]))
        out.append(Claim(f"{cls}: min over L of error(next κ) / error(κ) (rises with κ)", rise, 1.0, rise > 1.0))
    r, u = m["layers_to_eps"]["restricted"], m["layers_to_eps"]["unrestricted"]
    extra = (r[ks[-1]] - r[ks[0]]) - (u[ks[-1]] - u[ks[0]])
    out.append(Claim(f"extra layers to eps={cfg['eps']:g} from κ={ks[0]} to {ks[-1]}: restricted minus unrestricted",
                     extra, 0.0, extra > 0.0, strict=trained))
    gap = r[ks[-1]] / u[ks[-1]]
    out.append(Claim(f"κ={ks[-1]}: layers to eps, restricted / unrestricted", gap, 1.0, gap > 1.0, strict=trained))
    s = m["shift"]
    grow = {k: s["shifted"][k] / s["train"][k] for k in s["train"]}
    out.append(Claim("error growth under κ -> 2κ: looped / multilayer", grow["looped"] / grow["multilayer"], 1.0,
                     grow["looped"] < grow["multilayer"], strict=trained))
    return out


register(NAME, Config, run, claims, __doc__)
