"""dp2-imdb: DP-SGD vs DP-RMSProp vs DP-Adam vs DP² (both variants) on IMDB logistic regression, ε ∈ {1, 3, 8}.

The DP² paper (Li et al., ICLR 2023) reports, on 25k IMDB reviews with 10k bag-of-words features, test accuracy
at ε≈3 of 0.687 (DP-SGD), 0.713 (DP-RMSProp) and 0.815 (DP²). Our embedded data is the 5,000/1,000-review subset
cut at 500 word ids (497 features, see `simulations/datasets/imdb.py`); each method is tuned on the same number of
grid points (`simulations/dp/_tuning.py`), then re-run on fresh seeds.

Why the paper's gap is an observation here (strict=False), from our measurements (docs/RESULTS.md):
non-private logistic regression on these 497 features reaches only ≈0.833 test accuracy and tuned DP-SGD already
reaches ≈0.80 at ε = 3, so there is ≈0.03 of headroom for any optimizer — the paper's +0.13 cannot appear. With
few, frequent features the coordinate scales that a preconditioner corrects differ little, and DP²'s phase B
(precondition, then clip at C2) clips the per-example preconditioned gradients hard: it did not beat tuned DP-SGD
with binary, tf-idf or unit-normalized features, at s from ½ to 3 epochs, ε_denominator 1e-7 or 1e-3, C2 1–5.
The strict claims are the ones our scale can check: the runs spend exactly the target ε, and tuned DP training
closes most of the gap from chance to the non-private model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from simulations.dp import _dptrain as dt
from simulations.dp._tuning import _BASELINES, _DP2, check_grid, grids, mean_final, tune_and_evaluate
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "dp2-imdb"


@dataclass(frozen=True)
class Config:
    """Full size: 3 ε × 5 methods × 8 grid points on one seed, then 3 fresh seeds (≈ 25 min on one shared core)."""

    epsilons: tuple[float, ...] = (1.0, 3.0, 8.0)
    delta: float = 1e-5
    epochs: int = 30
    batch_size: int = 64
    features: str = "binary"
    normalize: bool = False
    methods: tuple[str, ...] = ("dp-sgd", "dp-rmsprop", "dp-adam", "dp2-rmsprop", "dp2-delayed")
    # the tuning grid: every method gets len(lrs) × len(clips) (baselines) or len(lr2s) × len(clip2s) (DP²) points
    sgd_lrs: tuple[float, ...] = (0.5, 2.0, 8.0, 32.0)
    adaptive_lrs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
    clips: tuple[float, ...] = (0.1, 0.5)
    adaptive_eps: float = 1e-3
    dp2_lr2s: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    dp2_clip2s: tuple[float, ...] = (1.0, 5.0)
    dp2_eps: float = 1e-3
    dp2_delay_epochs: float = 0.5
    tune_seed: int = 0
    seeds: tuple[int, ...] = (1, 2, 3)
    evals: int = 10
    workers: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.epsilons or any(not (0 < e < 100) for e in self.epsilons):
            raise ValueError(f"epsilons must be non-empty, each in (0, 100), got {self.epsilons}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if not 1 <= self.epochs <= 1000:
            raise ValueError(f"epochs must be in [1, 1000], got {self.epochs}")
        if not 1 <= self.batch_size <= 2500:
            raise ValueError(f"batch_size must be in [1, 2500], got {self.batch_size}")
        if self.features not in ("binary", "count", "tfidf"):
            raise ValueError(f"features must be binary, count or tfidf, got {self.features!r}")
        bad = [m for m in self.methods if m not in _BASELINES + _DP2]
        if "dp-sgd" not in self.methods or bad:
            raise ValueError(f"methods must include 'dp-sgd' and come from {_BASELINES + _DP2}, got {self.methods}")
        check_grid(self)
        if not self.seeds:
            raise ValueError("seeds must be non-empty")
        if not 1 <= self.evals <= 1000:
            raise ValueError(f"evals must be in [1, 1000], got {self.evals}")
        if not 1 <= self.workers <= 256:
            raise ValueError(f"workers must be in [1, 256], got {self.workers}")

    @classmethod
    def smoke(cls) -> Config:
        """One ε, 6 epochs, 4-point grids, 2 seeds: ≈ 30 s on one core."""
        return cls(
            epsilons=(3.0,), epochs=6, methods=("dp-sgd", "dp-adam", "dp2-rmsprop"),
            sgd_lrs=(2.0, 8.0), adaptive_lrs=(0.01, 0.03), dp2_lr2s=(0.1, 0.3), seeds=(1, 2), evals=3,
        )


_CTX: dict[str, Any] = {}  # set by run() before the (forked) workers start


def _job(job: tuple[str, dict, int]) -> dict:
    method, hp, seed = job
    torch.set_num_threads(1)
    cfg, data, sigma = _CTX["cfg"], _CTX["data"], _CTX["sigma"]
    n = len(data.y_train)
    q = cfg.batch_size / n
    steps = cfg.epochs * n // cfg.batch_size
    model = dt.LogisticRegression(data.x_train, data.y_train, data.x_test, data.y_test, device=cfg.device)
    gen = torch.Generator(device=cfg.device).manual_seed(seed)
    opt = dt.build_optimizer(method, model.params, hp, sigma=sigma, batch_size=cfg.batch_size, generator=gen)
    curve = dt.train(model, opt, n=n, sample_rate=q, steps=steps, eval_every=max(1, steps // cfg.evals),
                     generator=gen, device=cfg.device)
    return {"final": {k: v[-1] for k, v in curve.metrics.items()}, "curve": {"steps": curve.steps, **curve.metrics},
            "diverged": curve.diverged}


def nonprivate_ceiling(data: Any) -> dict[str, float]:
    """Non-private logistic regression (L-BFGS to convergence): the accuracy no DP optimizer can beat by much."""
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train, dtype=torch.float32)
    xt, yt = torch.as_tensor(data.x_test), torch.as_tensor(data.y_test, dtype=torch.float32)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return {"train_acc": ((x @ w + b > 0).float() == y).float().mean().item(),
                "test_acc": ((xt @ w + b > 0).float() == yt).float().mean().item()}


def run(config: Config, out_dir: Path) -> dict:
    """Calibrate σ per ε, tune every method on the same budget, re-run the best points on fresh seeds."""
    from simulations.datasets import load_imdb

    data = load_imdb(features=config.features, normalize=config.normalize)
    n = len(data.y_train)
    q = config.batch_size / n
    steps = config.epochs * n // config.batch_size
    base, dp2 = grids(config, n // config.batch_size)
    per_eps: dict[str, Any] = {}
    for eps in config.epsilons:
        sigma = dt.calibrate_sigma(eps, config.delta, q, steps)
        _CTX.update(cfg=config, data=data, sigma=sigma)
        res = tune_and_evaluate(_job, base, dp2, tune_seed=config.tune_seed, seeds=config.seeds,
                                select="train_acc", mode="max", workers=config.workers)
        c1 = res["best"]["dp-sgd"]["clip"]
        delay = max(1, round(config.dp2_delay_epochs * n / config.batch_size))
        per_eps[str(eps)] = {
            "sigma": sigma,
            "preconditioner_snr": dt.preconditioner_snr(data.x_train, data.y_train, clip=c1, sigma=sigma,
                                                        batch_size=config.batch_size, delay=delay),
            "epsilon_spent": dt.epsilon_spent(sigma, config.delta, q, steps),
            "best": res["best"],
            "tuning": res["tuning"],
            "test_acc": {m: [r["final"]["test_acc"] for r in rs] for m, rs in res["runs"].items()},
            "mean_test_acc": {m: mean_final(rs, "test_acc") for m, rs in res["runs"].items()},
            "curves": {m: rs[0]["curve"] for m, rs in res["runs"].items()},
        }
    metrics = {
        "n_train": n, "n_test": len(data.y_test), "dim": data.dim, "sample_rate": q, "steps": steps,
        "nonprivate": nonprivate_ceiling(data), "chance_test_acc": max(data.y_test.mean(), 1 - data.y_test.mean()),
        "grid": {"baselines": base, "dp2 (plus α1, C1 from DP-SGD's best)": dp2}, "per_epsilon": per_eps,
    }
    _plot(metrics, config, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=config.tune_seed, device=config.device)


def _plot(metrics: dict, cfg: Config, out_dir: Path) -> None:
    fig, ax = new_figure(1, 2, size=(11, 4))
    eps = [float(e) for e in metrics["per_epsilon"]]
    for m in cfg.methods:
        accs = [metrics["per_epsilon"][str(e)]["test_acc"][m] for e in cfg.epsilons]
        mu = [sum(a) / len(a) for a in accs]
        sd = [math.sqrt(sum((x - u) ** 2 for x in a) / max(1, len(a) - 1)) for a, u in zip(accs, mu)]
        ax[0, 0].errorbar(eps, mu, yerr=sd, marker="o", capsize=3, label=dt.LABELS[m])
    ax[0, 0].axhline(metrics["nonprivate"]["test_acc"], ls="--", c="k", lw=1, label="non-private")
    ax[0, 0].set(xscale="log", xlabel=f"ε (δ = {cfg.delta:g})", ylabel="test accuracy (mean ± sd over seeds)",
                 title="IMDB subset, logistic regression")
    ax[0, 0].legend(fontsize=7)
    mid = str(cfg.epsilons[len(cfg.epsilons) // 2])
    for m, c in metrics["per_epsilon"][mid]["curves"].items():
        ax[0, 1].plot(c["steps"], c["test_acc"], label=dt.LABELS[m])
    ax[0, 1].set(xlabel="step", ylabel="test accuracy", title=f"ε = {mid}, first seed")
    ax[0, 1].legend(fontsize=7)
    save_figure(fig, out_dir, "dp2_imdb.png")


def claims(result: dict) -> list[Claim]:
    """Strict: σ calibration spends ≤ target ε; DP training closes ≥ 70% of the chance→non-private gap at the
    largest ε. Observations: DP²'s gap over DP-SGD and DP-RMSProp (paper: +0.13 and +0.10 at ε≈3)."""
    m = result["metrics"]
    cfg = result["config"]
    out = []
    worst = max(pe["epsilon_spent"]["rdp"] - float(e) for e, pe in m["per_epsilon"].items())
    out.append(Claim("rdp ε spent - target ε (max over ε)", worst, 1e-3, worst <= 1e-3))
    top = m["per_epsilon"][str(max(cfg["epsilons"]))]["mean_test_acc"]
    chance, ceil = m["chance_test_acc"], m["nonprivate"]["test_acc"]
    closed = (max(top.values()) - chance) / max(1e-9, ceil - chance)
    out.append(Claim(f"share of chance→non-private gap closed at ε={max(cfg['epsilons'])}", closed, 0.7,
                     closed >= 0.7))
    for e, pe in m["per_epsilon"].items():
        acc = pe["mean_test_acc"]
        dp2 = max((acc[k] for k in _DP2 if k in acc), default=None)
        if dp2 is None:
            continue
        gap = dp2 - acc["dp-sgd"]
        out.append(Claim(f"ε={e}: DP² − DP-SGD test acc (paper ≈ +0.13 at ε≈3)", gap, 0.05, gap >= 0.05,
                         strict=False))
        if "dp-rmsprop" in acc:
            g2 = dp2 - acc["dp-rmsprop"]
            out.append(Claim(f"ε={e}: DP² − DP-RMSProp test acc (paper ≈ +0.10)", g2, 0.05, g2 >= 0.05,
                             strict=False))
    return out


register(NAME, Config, run, claims, description=__doc__)
__all__ = ["Config", "run", "claims", "nonprivate_ceiling"]
