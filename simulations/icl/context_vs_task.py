"""icl-context-vs-task: prompt MLP vs KQV-free feature map vs both, over context length n and task count K.

Abedsoltan, Radhakrishnan, Wu & Belkin 2024: which predictors improve with n, which with K.

Setting: linear regression, d=8, x ~ N(0, I), w ~ N(0, I), σ² = 0; each model is pretrained on a finite pool of K
tasks (K = ∞: a fresh task per prompt) at context length n, and tested on *new* tasks at the same n. Models:

- "MLP": `MLPICL`, an MLP on the flattened prompt vec(x₁, y₁, …, x_q, 0) — no notion of context;
- "feature map": `KQVFreeTransformer(inputs="features")`, one block of key/query/value-free attention (the kernel
  feature map, linear kernel: for the query, (1/n) Σ x_qᵀx_j (x_j, y_j), the one-step-GD statistic) + MLP, the
  head reading only the query token;
- "both": `KQVFreeTransformer(inputs="both")`, the head reading [feature, vec(prompt)].

Claims (normalized error = MSE/d on new tasks): the MLP improves with K (K=∞ vs the smallest pool, ≥ 10% lower,
averaged over n) but not with n (at K=∞, the longest context is not ≥ 10% better than the shortest); the feature
map improves with n (≥ 30% lower) but not with K; the concatenation improves with both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.icl import MLPICL, KQVFreeTransformer, TaskConfig
from simulations.icl._common import check_device, evaluate, model_predictor, seed_all, train
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "icl-context-vs-task"
MODELS = ("MLP", "feature map", "both")
_K_GAIN, _N_GAIN, _FLAT = 0.9, 0.7, 0.9
_TASK_SCALING_STEPS = 2000


@dataclass(frozen=True)
class Config:
    """contexts: n values; task_counts: pool sizes K (0 = ∞, must be last); hidden: MLP width everywhere."""

    d: int = 8
    contexts: tuple[int, ...] = (8, 32, 64)
    task_counts: tuple[int, ...] = (16, 1024, 0)
    kernel: str = "linear"
    hidden: int = 512
    steps: int = 2000
    batch_size: int = 1024
    lr: float = 1e-3
    eval_prompts: int = 20_000
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.d < 1 or self.hidden < 1:
            raise ValueError(f"d and hidden must be >= 1, got {self.d}, {self.hidden}")
        if len(self.contexts) < 2 or min(self.contexts) < 1 or list(self.contexts) != sorted(self.contexts):
            raise ValueError(f"contexts must be >= 2 increasing context lengths >= 1, got {self.contexts}")
        if len(self.task_counts) < 2 or self.task_counts[-1] != 0 or min(self.task_counts[:-1]) < 1:
            raise ValueError(f"task_counts must be >= 2 pool sizes >= 1 ending with 0 (infinite), got {self.task_counts}")
        if self.kernel not in ("linear", "softmax", "gaussian", "laplace", "hilbert"):
            raise ValueError(f"kernel must be linear/softmax/gaussian/laplace/hilbert, got {self.kernel!r}")
        if self.steps < 1 or self.batch_size < 1 or self.eval_prompts < 1:
            raise ValueError(f"steps, batch_size, eval_prompts must be >= 1, got {self.steps}, "
                             f"{self.batch_size}, {self.eval_prompts}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        check_device(self.device)

    @classmethod
    def smoke(cls) -> Config:
        return cls(contexts=(8, 32), task_counts=(16, 0), hidden=64, steps=300, batch_size=256,
                   eval_prompts=5_000)


def _model(name: str, c: Config, n: int):
    if name == "MLP":
        return MLPICL(c.d, n + 1, hidden=c.hidden, depth=2)
    inputs = "features" if name == "feature map" else "both"
    return KQVFreeTransformer(c.d, n + 1, kernel=c.kernel, normalize=c.kernel != "linear", n_blocks=1,
                              hidden=c.hidden, inputs=inputs)


def run(config: Config, out_dir: Path) -> dict:
    seed_all(config.seed)
    c = config
    err: dict[str, dict[str, dict[str, float]]] = {m: {} for m in MODELS}  # model -> K -> n -> error/d
    for n in c.contexts:
        preds = {}
        for k in c.task_counts:
            task = TaskConfig(d=c.d, n=n, num_tasks=k or None, pool_seed=c.seed + 7)
            for name in MODELS:
                model = _model(name, c, n)
                train(model, task, steps=c.steps, batch_size=c.batch_size, lr=c.lr, device=c.device, seed=c.seed)
                preds[f"{name}|{k}"] = model_predictor(model)
        mse = evaluate(preds, TaskConfig(d=c.d, n=n), prompts=c.eval_prompts, device=c.device, seed=c.seed + 1000)
        for key, v in mse.items():
            if key != "zero":
                name, k = key.split("|")
                err[name].setdefault(k, {})[str(n)] = v / c.d

    fig, axes = new_figure(1, 2)
    for j, name in enumerate(MODELS):
        kmax = str(c.task_counts[-1])
        axes[0, 0].plot(c.contexts, [err[name][kmax][str(n)] for n in c.contexts], "o-", color=f"C{j}",
                        label=f"{name}, K=inf")
        kmin = str(c.task_counts[0])
        axes[0, 0].plot(c.contexts, [err[name][kmin][str(n)] for n in c.contexts], "o--", color=f"C{j}",
                        label=f"{name}, K={kmin}")
        ks = [k or 10 * max(c.task_counts) for k in c.task_counts]
        axes[0, 1].plot(ks, [sum(err[name][str(k)].values()) / len(c.contexts) for k in c.task_counts], "o-",
                        color=f"C{j}", label=name)
    axes[0, 0].set_xscale("log", base=2)
    axes[0, 0].set_xlabel("context length n")
    axes[0, 0].set_ylabel("error / d on new tasks")
    axes[0, 0].set_title("context scaling")
    axes[0, 0].legend(fontsize=6)
    axes[0, 1].set_xscale("log")
    axes[0, 1].set_xlabel("pretraining tasks K (rightmost: infinite)")
    axes[0, 1].set_ylabel("error / d, mean over n")
    axes[0, 1].set_title("task scaling")
    axes[0, 1].legend(fontsize=7)
    save_figure(fig, out_dir, "context_vs_task.png")
    return finalize(out_dir, NAME, config, {"error": err}, claims, seed=c.seed, device=c.device)


def _k_ratio(e: dict, cfg: dict) -> float:
    """Mean over n of error(K=∞) / error(smallest K)."""
    kmin, kinf = str(cfg["task_counts"][0]), "0"
    return sum(e[kinf][str(n)] / e[kmin][str(n)] for n in cfg["contexts"]) / len(cfg["contexts"])


def _n_ratio(e: dict, cfg: dict) -> float:
    """At K=∞: error at the longest context / error at the shortest."""
    return e["0"][str(cfg["contexts"][-1])] / e["0"][str(cfg["contexts"][0])]


def claims(result: dict) -> list[Claim]:
    """Ratios < 0.9 (K) / < 0.7 (n) mean "improves"; ≥ 0.9 means "does not improve".

    Task scaling needs the MLPs to learn the pool (memorize K=16 tasks, or generalize from K=∞): a few hundred
    CPU steps at the smoke size do not get there (the MLP's error stays ≈ 1 for every K), so the two "improves
    with K" claims are observations below `_TASK_SCALING_STEPS` training steps and strict above.
    """
    e, cfg = result["metrics"]["error"], result["config"]
    strict_k = cfg["steps"] >= _TASK_SCALING_STEPS
    mk, mn = _k_ratio(e["MLP"], cfg), _n_ratio(e["MLP"], cfg)
    fk, fn = _k_ratio(e["feature map"], cfg), _n_ratio(e["feature map"], cfg)
    bk, bn = _k_ratio(e["both"], cfg), _n_ratio(e["both"], cfg)
    return [
        Claim("MLP: error K=inf / smallest K (improves with K)", mk, _K_GAIN, mk < _K_GAIN, strict=strict_k),
        Claim("MLP: error longest / shortest n at K=inf (no context scaling)", mn, _FLAT, mn >= _FLAT),
        Claim("feature map: error longest / shortest n at K=inf (improves with n)", fn, _N_GAIN, fn < _N_GAIN),
        Claim("feature map: error K=inf / smallest K (no task scaling)", fk, _FLAT, fk >= _FLAT),
        Claim("both: error K=inf / smallest K (improves with K)", bk, _K_GAIN, bk < _K_GAIN, strict=strict_k),
        Claim("both: error longest / shortest n at K=inf (improves with n)", bn, _N_GAIN, bn < _N_GAIN),
    ]


register(NAME, Config, run, claims, __doc__)
