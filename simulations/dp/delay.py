"""dp2-delay: DP²'s accuracy / loss against the delay s, from 1 step to many epochs.

The paper (Fig. "delay", IMDB/StackOverflow/MovieLens) finds an interior optimum: s too small gives a preconditioner
built from one or a few noisy gradients (noise dominates √v); s too large gives a stale preconditioner and, with
the phases s steps long, long stretches of plain DP-SGD. We sweep s on a log grid at fixed hyperparameters and
fixed ε (σ calibrated once: the accounting does not depend on s), several seeds per point.

Task "sparse" (default) is the power-law synthetic task of dp2-sparse (training loss, lower is better); task
"imdb" is the embedded IMDB subset (test accuracy, higher is better). Both DP² variants are swept. Claim, per
variant: the best interior s beats both extremes (s = smallest and s = largest), by the mean over seeds.

What we measured (docs/RESULTS.md): the noise-then-precondition variant (`DelayedPrecondRMSprop`)
shows the paper's interior optimum on the sparse task (s = 1: a noisy preconditioner; s = the whole run: plain
DP-SGD; in between: lower loss than both) — strict. DP² proper (precondition, then clip at C2) trails DP-SGD at
every s on that task, so its curve has no interior optimum at our scale: an observation (strict=False). On the
IMDB subset every s lands within ±0.01 accuracy of DP-SGD (seed noise), so task="imdb" cannot show the effect.
Margins: smoke 0.017 (both seeds); full size 0.002 — there the interior beats the stale end (s = the whole run,
0.558) by 0.02 on every seed but s = 1 by only 0.002 (2 of 3 seeds, within the seed spread): the
noisy-preconditioner side of the trade-off is weak on this task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simulations.dp import _dptrain as dt
from simulations.dp._tuning import run_jobs
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "dp2-delay"


@dataclass(frozen=True)
class Config:
    """Full size: the sparse task (100k × 1,000), 10 epochs = 1,000 steps, s from 1 step to the whole run, 3 seeds.

    `lr2s[i]` is variant i's phase-B learning rate (the variants are tuned separately in dp2-sparse).
    """

    task: str = "sparse"
    variants: tuple[str, ...] = ("dp2-rmsprop", "dp2-delayed")
    delays: tuple[int, ...] = (1, 5, 20, 50, 100, 300, 1000)
    epsilon: float = 3.0
    epochs: int = 10
    batch_size: int = 1000
    lr: float = 4.0
    clip: float = 2.0
    lr2s: tuple[float, ...] = (0.1, 0.03)
    clip2: float = 10.0
    eps: float = 1e-3
    beta: float = 0.9
    seeds: tuple[int, ...] = (1, 2, 3)
    sparse_n: int = 100_000
    sparse_dim: int = 1000
    evals: int = 5
    workers: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.task not in ("imdb", "sparse"):
            raise ValueError(f"task must be 'imdb' or 'sparse', got {self.task!r}")
        ok = ("dp2-rmsprop", "dp2-adagrad", "dp2-delayed")
        if not self.variants or any(v not in ok for v in self.variants) or len(self.lr2s) != len(self.variants):
            raise ValueError(f"variants must be non-empty, from {ok}, with one lr2s entry each; got {self.variants}, "
                             f"{self.lr2s}")
        if len(self.delays) < 3 or any(d < 1 for d in self.delays) or list(self.delays) != sorted(set(self.delays)):
            raise ValueError(f"delays must be >= 3 increasing integers >= 1 (steps), got {self.delays}")
        if not 0 < self.epsilon < 100 or not 1 <= self.epochs <= 1000 or not 1 <= self.batch_size <= 100_000:
            raise ValueError(f"epsilon in (0, 100), epochs in [1, 1000], batch_size in [1, 1e5]; got {self.epsilon}, "
                             f"{self.epochs}, {self.batch_size}")
        for name in ("lr", "clip", "clip2", "eps"):
            if not 0 < getattr(self, name) < 1e4:
                raise ValueError(f"{name} must be in (0, 1e4), got {getattr(self, name)}")
        if any(not 0 < v < 1e4 for v in self.lr2s):
            raise ValueError(f"lr2s must each be in (0, 1e4), got {self.lr2s}")
        if not 0 <= self.beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {self.beta}")
        if not self.seeds or not 1 <= self.evals <= 1000 or not 1 <= self.workers <= 256:
            raise ValueError(f"seeds non-empty, evals in [1, 1000], workers in [1, 256]; got {self.seeds}, "
                             f"{self.evals}, {self.workers}")

    @classmethod
    def smoke(cls) -> Config:
        """Sparse task at 20k × 200, 4 epochs (160 steps), s ∈ {1, 5, 20, 160}, 2 seeds: ≈ 25 s on one core."""
        return cls(delays=(1, 5, 20, 160), epochs=4, batch_size=500, sparse_n=20_000, sparse_dim=200, seeds=(1, 2),
                   evals=2)


_CTX: dict[str, Any] = {}


def _setup(cfg: Config) -> tuple[Any, int]:
    """(a model factory, n)."""
    if cfg.task == "imdb":
        from simulations.datasets import load_imdb

        d = load_imdb()
        return (lambda: dt.LogisticRegression(d.x_train, d.y_train, d.x_test, d.y_test, device=cfg.device)), len(
            d.y_train)
    from simulations.dp.sparse import SparseLogistic, make_data

    x, y, _, _ = make_data(cfg.sparse_n, cfg.sparse_dim, 1.0, 0.5, 2.0, 0)
    return (lambda: SparseLogistic(x, y, device=cfg.device)), cfg.sparse_n


def _job(job: tuple[str, dict, int]) -> dict:
    method, hp, seed = job
    torch.set_num_threads(1)
    cfg, factory, n, sigma = _CTX["cfg"], _CTX["factory"], _CTX["n"], _CTX["sigma"]
    steps = cfg.epochs * n // cfg.batch_size
    model = factory()
    gen = torch.Generator(device=cfg.device).manual_seed(seed)
    opt = dt.build_optimizer(method, model.params, hp, sigma=sigma, batch_size=cfg.batch_size, generator=gen)
    curve = dt.train(model, opt, n=n, sample_rate=cfg.batch_size / n, steps=steps,
                     eval_every=max(1, steps // cfg.evals), generator=gen, device=cfg.device)
    return {"final": {k: v[-1] for k, v in curve.metrics.items()}}


def _num(v: Any) -> float:
    """A final metric as a float (a diverged run's loss is +inf, recorded as "inf" in JSON)."""
    return float("inf") if v is None else float(v)


def run(config: Config, out_dir: Path) -> dict:
    """One DP² run per (s, seed) plus DP-SGD (same α1, C1) per seed as the reference line."""
    factory, n = _setup(config)
    q = config.batch_size / n
    steps = config.epochs * n // config.batch_size
    delta = 1e-5 if config.task == "imdb" else 1.0 / n
    sigma = dt.calibrate_sigma(config.epsilon, delta, q, steps)
    _CTX.update(cfg=config, factory=factory, n=n, sigma=sigma)
    base = {"lr": config.lr, "clip": config.clip}
    jobs = [(v, {**base, "lr2": a2, "clip2": config.clip2, "eps": config.eps, "beta": config.beta, "delay": s}, seed)
            for v, a2 in zip(config.variants, config.lr2s) for s in config.delays for seed in config.seeds]
    jobs += [("dp-sgd", base, seed) for seed in config.seeds]
    out = run_jobs(_job, jobs, config.workers)
    key = "test_acc" if config.task == "imdb" else "train_loss"
    k, nd = len(config.seeds), len(config.delays)
    per_variant = {}
    for j, v in enumerate(config.variants):
        rows = out[j * nd * k:(j + 1) * nd * k]
        per_delay = {str(s): [_num(r["final"][key]) for r in rows[i * k:(i + 1) * k]] for i, s in enumerate(config.delays)}
        per_variant[v] = {"per_delay": per_delay, "mean_per_delay": {s: sum(x) / len(x) for s, x in per_delay.items()}}
    metrics = {
        "metric": key, "higher_is_better": config.task == "imdb", "steps": steps, "steps_per_epoch": n //
        config.batch_size, "sigma": sigma, "delta": delta, "sample_rate": q,
        "per_variant": per_variant,
        "dp_sgd": [r["final"][key] for r in out[-k:]],
    }
    _plot(metrics, config, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=config.seeds[0], device=config.device)


def _plot(metrics: dict, cfg: Config, out_dir: Path) -> None:
    fig, ax = new_figure(1, 1, size=(6, 4))
    a = ax[0, 0]
    spe = metrics["steps_per_epoch"]
    xs = [s / spe for s in cfg.delays]
    for j, (v, pv) in enumerate(metrics["per_variant"].items()):
        for i in range(len(cfg.seeds)):
            a.plot(xs, [pv["per_delay"][str(s)][i] for s in cfg.delays], c=f"C{j}", alpha=0.3, lw=1)
        a.plot(xs, [pv["mean_per_delay"][str(s)] for s in cfg.delays], "o-", c=f"C{j}", label=dt.LABELS[v])
    sgd = sum(metrics["dp_sgd"]) / len(metrics["dp_sgd"])
    a.axhline(sgd, ls="--", c="k", lw=1, label="DP-SGD (same α1, C1)")
    if not metrics["higher_is_better"]:
        lo = min(min(pv["mean_per_delay"].values()) for pv in metrics["per_variant"].values())
        a.set_ylim(lo * 0.98, max(sgd * 1.15, lo * 1.2))
    a.set(xscale="log", xlabel="delay s (epochs)", ylabel=metrics["metric"].replace("_", " "),
          title=f"{cfg.task}, ε = {cfg.epsilon}, mean of {len(cfg.seeds)} seeds")
    a.legend(fontsize=8)
    save_figure(fig, out_dir, "dp2_delay.png")


def claims(result: dict) -> list[Claim]:
    """Per variant, interior optimum: the best interior mean beats both extremes' means (measured: the smaller of
    the two margins, in the metric's units, signed so > 0 means better). Strict for the noise-then-precondition
    variant on the sparse task; an observation for DP² proper and on IMDB (see the module docstring)."""
    m = result["metrics"]
    cfg = result["config"]
    delays = [str(s) for s in cfg["delays"]]
    sign = 1.0 if m["higher_is_better"] else -1.0
    out = []
    for v, pv in m["per_variant"].items():
        mean = {s: sign * _num(pv["mean_per_delay"][s]) for s in delays}
        interior = max(mean[s] for s in delays[1:-1])
        margin = min(interior - mean[delays[0]], interior - mean[delays[-1]])
        strict = v == "dp2-delayed" and cfg["task"] == "sparse"
        out.append(Claim(f"{dt.LABELS[v]}: best interior s − better extreme s", margin, 0.0, margin > 0, strict))
    return out


register(NAME, Config, run, claims, description=__doc__)
__all__ = ["Config", "run", "claims"]
