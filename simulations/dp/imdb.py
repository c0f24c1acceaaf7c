"""dp2-imdb: DP-SGD vs DP-RMSProp vs DP² on the full IMDB data at the DP² paper's settings.

The paper (Li et al., ICLR 2023, Fig. 4 / its tradeoffs figure) trains logistic regression (zero init) on 25,000
IMDB reviews with 10,000 bag-of-words features, B = 64, 100 epochs (T = 39,000), Poisson sampling, σ = 1.0
(ε ≈ 3 at δ = 1e-5) and reports test accuracy 0.687 (DP-SGD), 0.713 (DP-RMSProp), 0.815 (DP²); at ε ≈ 0.84,
0.638 / 0.647 / 0.758. We run the same, on the embedded full-IMDB features (L1-normalized word counts over the
10,000 most frequent training words, `simulations/datasets/imdb.py`), two ways, 3 seeds each:

1. **Replication**: the paper's own hyperparameters (its README: DP-SGD lr 5, C 0.5; DP-RMSProp lr 0.3, C 0.1,
   ε 1e-3; DP² α1 0.1, α2 3, C1 0.5, C2 5, ε 1e-7, s = 195 steps).
2. **Equal tuning**: every method gets a grid of the same size over its two main knobs (DP-SGD and DP-RMSProp:
   lr × C; DP²: α2 × C2 with α1, C1, ε, s at the paper's values), selected by final *training* accuracy on a
   tuning seed (the paper's protocol), then re-run on the 3 seeds.

Also recorded: the non-private optimum, ε by RDP / PLD / PRV for each σ, and the steps DP² and DP-RMSProp need to
reach DP-SGD's final test accuracy (the paper's "up to 4× faster"). What the measurements show, and what the
paper's numbers need (the feature normalization), is in docs/results-dpopt.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simulations.config import ExperimentConfig, param
from simulations.dp import _train as dt
from simulations.dp._tuning import run_jobs, tune_and_evaluate
from simulations.registry import Claim, register
from simulations.results import finalize

NAME = "dp2-imdb"
METHODS = ("dp-sgd", "dp-rmsprop", "dp2-rmsprop")
# the paper's IMDB column (read off its tradeoffs figure, ±0.005) at ε ≈ 3 (σ = 1) and ε ≈ 0.84
PAPER = {"3.0": {"dp-sgd": 0.687, "dp-rmsprop": 0.713, "dp2-rmsprop": 0.815},
         "0.84": {"dp-sgd": 0.638, "dp-rmsprop": 0.647, "dp2-rmsprop": 0.758}}
# the paper's hyperparameters (README of kenziyuliu/DP2, "reproducing IMDB results in Fig. 4")
PAPER_HP = {
    "dp-sgd": {"lr": 5.0, "clip": 0.5},
    "dp-rmsprop": {"lr": 0.3, "clip": 0.1, "eps": 1e-3, "beta": 0.9},
    "dp2-rmsprop": {"lr": 0.1, "clip": 0.5, "lr2": 3.0, "clip2": 5.0, "eps": 1e-7, "delay_epochs": 0.5,
                    "beta": 0.9},
}  # s = 195 steps in the paper: half an epoch at B = 64 (delay_epochs is resolved against the run's epoch)


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: the paper's setting, 3 seeds; replication at both σ, equal tuning at σ = 1 (≈ 20 min on 2 cores)."""

    noise_multipliers: tuple[float, ...] = param(
        (1.0, 2.51), "σ values: 1.0 is the paper's ε ≈ 3, 2.51 its ε ≈ 0.84 (RDP, δ = 1e-5, q = 1/390, T = 39,000)",
        bounds="(0, 100]", nonempty=True)
    delta: float = param(1e-5, "δ of the reported ε", bounds="(0, 1)")
    epochs: int = param(100, "epochs (T = epochs · ⌊n/B⌋ Poisson steps)", bounds="[1, 1000]")
    batch_size: int = param(64, "expected batch size B (q = 1/⌊n/B⌋)", bounds="[1, 25000]")
    features: str = param("count", "bag-of-words values", choices=("count", "binary"))
    normalize: str = param("l1", "row normalization (l1: term frequencies)", choices=("l1", "l2", "none"))
    num_words: int = param(10_000, "vocabulary size (most frequent training words)", bounds="[10, 10000]")
    train_subset: int = param(25_000, "training reviews used (the first n after a seeded shuffle)",
                              bounds="[200, 25000]")
    replicate: bool = param(True, "run the paper's own hyperparameters")
    tune_at: tuple[float, ...] = param((1.0,), "σ values (from noise_multipliers) at which every method is tuned",
                                       bounds="(0, 100]")
    sgd_lrs: tuple[float, ...] = param((1.25, 5.0, 20.0, 80.0), "DP-SGD learning rates of the grid",
                                       bounds="(0, 1e5)", nonempty=True)
    sgd_clips: tuple[float, ...] = param((0.1, 0.5), "DP-SGD clip norms of the grid", bounds="(0, 1e3)",
                                         nonempty=True)
    rmsprop_lrs: tuple[float, ...] = param((0.03, 0.1, 0.3, 1.0), "DP-RMSProp learning rates of the grid",
                                           bounds="(0, 1e3)", nonempty=True)
    rmsprop_clips: tuple[float, ...] = param((0.1, 0.5), "DP-RMSProp clip norms of the grid", bounds="(0, 1e3)",
                                             nonempty=True)
    dp2_lr2s: tuple[float, ...] = param((1.0, 3.0, 10.0, 30.0), "DP² phase-B learning rates α2 of the grid",
                                        bounds="(0, 1e4)", nonempty=True)
    dp2_clip2s: tuple[float, ...] = param((2.0, 5.0), "DP² phase-B clip norms C2 of the grid", bounds="(0, 1e4)",
                                          nonempty=True)
    seeds: tuple[int, ...] = param((1, 2, 3), "seeds of the reported runs", bounds="[0, 1e9]", nonempty=True)
    tune_seed: int = param(0, "seed of the tuning runs", bounds="[0, 1e9]")
    evals: int = param(50, "evaluations per run (curves, steps-to-accuracy)", bounds="[2, 1000]")
    workers: int = param(2, "forked worker processes (one thread each)", bounds="[1, 256]")

    def check(self) -> None:
        budgets = {len(self.sgd_lrs) * len(self.sgd_clips), len(self.rmsprop_lrs) * len(self.rmsprop_clips),
                   len(self.dp2_lr2s) * len(self.dp2_clip2s)}
        if len(budgets) != 1:
            raise ValueError(f"equal tuning budget: every method's grid must have the same size, got {budgets}")
        if not set(self.tune_at) <= set(self.noise_multipliers):
            raise ValueError(f"tune_at {self.tune_at} must be values of noise_multipliers {self.noise_multipliers}")
        if not self.replicate and not self.tune_at:
            raise ValueError("nothing to run: replicate=False and tune_at is empty")

    @classmethod
    def smoke(cls) -> Config:
        """5,000 reviews, 2,000 words, 8 epochs, σ = 1, 2-point grids, 2 seeds: ≈ 30 s on 2 cores."""
        return cls(noise_multipliers=(1.0,), epochs=8, num_words=2000, train_subset=5000, sgd_lrs=(10.0, 40.0),
                   sgd_clips=(0.5,), rmsprop_lrs=(0.1, 0.3), rmsprop_clips=(0.1,), dp2_lr2s=(3.0, 10.0),
                   dp2_clip2s=(5.0,), seeds=(1, 2), evals=4)


_CTX: dict[str, Any] = {}  # set by run() before the (forked) workers start


def load_task(features: str = "count", normalize: str = "l1", num_words: int = 10_000,
              train_subset: int = 25_000) -> dict[str, Any]:
    """The IMDB logistic-regression task: sparse rows, labels, and the raw CSR matrices (train, test)."""
    from simulations.datasets import load_imdb

    d = load_imdb(features=features, normalize=normalize, num_words=num_words)
    keep = np.sort(np.random.default_rng(0).permutation(len(d.y_train))[:train_subset])
    xtr, ytr = d.x_train[keep], d.y_train[keep]
    return {"xtr": dt.SparseRows(xtr), "xte": dt.SparseRows(d.x_test), "ytr": ytr, "yte": d.y_test,
            "ytr_t": torch.as_tensor(ytr, dtype=torch.float32), "dim": d.dim, "csr": (xtr, d.x_test)}


def train_task(data: dict[str, Any], method: str, hp: dict[str, float], *, batch_size: int, epochs: int, evals: int,
               sigma: float, seed: int) -> dict[str, Any]:
    """One DP run on the IMDB task (``hp["delay_epochs"]`` is resolved against the epoch); its record."""
    n = len(data["ytr"])
    spe = n // batch_size
    model = dt.SparseLogistic(data["dim"])

    def evaluate() -> dict[str, float]:
        w, b = model.weight.detach().numpy(), float(model.bias.detach())
        return {"train_acc": float(((data["xtr"].matvec(w) + b > 0) == data["ytr"]).mean()),
                "test_acc": float(((data["xte"].matvec(w) + b > 0) == data["yte"]).mean())}

    hp = {k: v for k, v in hp.items() if k != "delay_epochs"} | (
        {"delay": max(1, round(hp["delay_epochs"] * spe))} if "delay_epochs" in hp else {})
    res = dt.train(method, model, hp, loss_fn=dt.logistic_loss,
                   make_batch=lambda idx: (data["xtr"].rows(idx), data["ytr_t"][idx]), evaluate=evaluate, n=n,
                   batch_size=batch_size, steps=epochs * spe, evals=evals, sigma=sigma, seed=seed)
    return res.as_dict()


def _key(job: tuple[str, dict, int], sigma: float) -> str:
    import json

    return json.dumps([job[0], sorted(job[1].items()), job[2], sigma])


def _job(job: tuple[str, dict, int]) -> dict:
    """One run; a (method, hp, seed, σ) already run (e.g. a tuned point equal to the paper's) is not rerun."""
    method, hp, seed = job
    done = _CTX.setdefault("done", {}).get(_key(job, _CTX["sigma"]))
    if done is not None:
        return done
    torch.set_num_threads(1)
    cfg = _CTX["cfg"]
    return train_task(_CTX["data"], method, hp, batch_size=cfg.batch_size, epochs=cfg.epochs, evals=cfg.evals,
                      sigma=_CTX["sigma"], seed=seed)


def nonprivate_optimum(xtr: Any, ytr: np.ndarray, xte: Any, yte: np.ndarray) -> dict[str, float]:
    """Non-private logistic regression to convergence (L-BFGS, no regularization): train and test accuracy."""
    from scipy.optimize import minimize

    def f(wb: np.ndarray) -> tuple[float, np.ndarray]:
        z = xtr @ wb[:-1] + wb[-1]
        r = 0.5 * (1 + np.tanh(0.5 * z)) - ytr
        loss = np.mean(np.logaddexp(0, z) - ytr * z)
        return loss, np.concatenate([xtr.T @ r / len(ytr), [r.mean()]])

    res = minimize(f, np.zeros(xtr.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 1000})
    w, b = res.x[:-1], res.x[-1]
    return {"train_acc": float(((xtr @ w + b > 0) == ytr).mean()), "test_acc": float(((xte @ w + b > 0) == yte).mean()),
            "iterations": int(res.nit)}


def _steps_to(curve: dict, target: float) -> int | None:
    return next((int(t) for t, a in zip(curve["steps"], curve["test_acc"]) if t > 0 and a >= target), None)


def _summary(runs: dict[str, list[dict]], steps: int) -> dict[str, Any]:
    acc = {m: [r["final"]["test_acc"] for r in rs] for m, rs in runs.items()}
    out: dict[str, Any] = {"test_acc": acc, "mean_test_acc": {m: float(np.mean(a)) for m, a in acc.items()},
                           "train_acc": {m: [r["final"]["train_acc"] for r in rs] for m, rs in runs.items()},
                           "curves": {m: rs[0]["curve"] for m, rs in runs.items()}}
    if "dp-sgd" in runs:  # steps to DP-SGD's final test accuracy, per seed (None: never within the run)
        sgd_final = acc["dp-sgd"]
        out["steps_to_dp_sgd_final"] = {
            m: [_steps_to(r["curve"], sgd_final[i]) for i, r in enumerate(rs)] for m, rs in runs.items()}
        out["speedup_over_dp_sgd"] = {
            m: [None if s is None else steps / s for s in ss] for m, ss in out["steps_to_dp_sgd_final"].items()}
    return out


def run(config: Config, out_dir: Path) -> dict:
    """Replication and equal tuning at each σ; ε by three accountants; the non-private optimum."""
    from dpopt import privacy_report

    data = load_task(config.features, config.normalize, config.num_words, config.train_subset)
    n = len(data["ytr"])
    spe = n // config.batch_size
    steps = config.epochs * spe
    per_sigma: dict[str, Any] = {}
    for sigma in config.noise_multipliers:
        _CTX.update(cfg=config, data=data, sigma=sigma)
        rep = privacy_report(sigma, 1 / spe, steps, config.delta)
        entry: dict[str, Any] = {"epsilon": rep.epsilon, "sample_rate": 1 / spe, "steps": steps}
        if config.replicate:
            jobs = [(m, PAPER_HP[m], s) for m in METHODS for s in config.seeds]
            out = run_jobs(_job, jobs, config.workers)
            _CTX.setdefault("done", {}).update({_key(j, sigma): r for j, r in zip(jobs, out)})
            runs = {m: [r for (mm, _, _), r in zip(jobs, out) if mm == m] for m in METHODS}
            entry["replication"] = {"hp": PAPER_HP, **_summary(runs, steps)}
        if sigma in config.tune_at:
            grids = _grids(config)
            res = tune_and_evaluate(_job, grids, tune_seed=config.tune_seed, seeds=config.seeds,
                                    select="train_acc", mode="max", workers=config.workers)
            entry["tuned"] = {"grid": grids, "best": res["best"], "tuning": res["tuning"],
                              **_summary(res["runs"], steps)}
        per_sigma[str(sigma)] = entry
    xtr, xte = data["csr"]
    metrics = {
        "n_train": n, "n_test": len(data["yte"]), "dim": data["dim"], "features": f"{config.features}/{config.normalize}",
        "steps": steps, "steps_per_epoch": spe, "accountant": "prv (engine default); rdp, pld reported beside",
        "nonprivate": nonprivate_optimum(xtr, data["ytr"], xte, data["yte"]), "paper": PAPER,
        "per_sigma": per_sigma,
    }
    from simulations.dp._imdb_plot import plot

    plot(metrics, config, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=config.tune_seed)


def _grids(cfg: Config) -> dict[str, list[dict[str, float]]]:
    fixed = {k: v for k, v in PAPER_HP["dp2-rmsprop"].items() if k not in ("lr2", "clip2")}
    return {
        "dp-sgd": [{"lr": a, "clip": c} for a in cfg.sgd_lrs for c in cfg.sgd_clips],
        "dp-rmsprop": [{"lr": a, "clip": c, "eps": 1e-3, "beta": 0.9} for a in cfg.rmsprop_lrs
                       for c in cfg.rmsprop_clips],
        "dp2-rmsprop": [{**fixed, "lr2": a, "clip2": c} for a in cfg.dp2_lr2s for c in cfg.dp2_clip2s],
    }


def _gap(summary: dict[str, Any]) -> list[float]:
    """Per seed: DP²'s test accuracy minus the better baseline's."""
    acc = summary["test_acc"]
    return [d - max(a, b) for d, a, b in zip(acc["dp2-rmsprop"], acc["dp-sgd"], acc["dp-rmsprop"])]


def claims(result: dict) -> list[Claim]:
    """Sanity: σ = 1 spends ε ≈ 3 (RDP, the paper's accountant). Claim (replication at σ = 1, the paper's
    hyperparameters): DP² beats DP-SGD and DP-RMSProp by ≥ 0.05 test accuracy on every seed. Equal tuning at
    σ = 1: DP² beats both tuned baselines by ≥ 0.02 on every seed. Observations: the
    same gaps at ε ≈ 0.84 and DP²'s speed-up to DP-SGD's final accuracy (paper: "up to 4×"). The equal-tuning
    claim follows the issue's rule: strict when DP² keeps a 0.02 lead on every seed; otherwise it is reported as
    an observation of the gap (what the gap depends on is measured in docs/results-dpopt.md)."""
    m = result["metrics"]
    out = []
    one = m["per_sigma"].get("1.0")
    if one is not None and one["steps"] == 39_000 and one["sample_rate"] == 1 / 390:  # the paper's (q, T)
        eps = one["epsilon"]["rdp"]
        out.append(Claim("σ = 1: RDP ε at δ = 1e-5 (the paper's ε ≈ 3)", eps, 3.0, abs(eps - 3.0) < 0.1, sanity=True))
    for sig, entry in m["per_sigma"].items():
        main = sig == "1.0"
        label = "ε≈3" if main else f"σ={sig}"
        if "replication" in entry:
            gap = min(_gap(entry["replication"]))
            out.append(Claim(f"{label}, paper's hyperparameters: DP² − best baseline test acc (worst seed; paper "
                             f"+0.10)", gap, 0.05, gap >= 0.05, strict=main))
        if "tuned" in entry:
            gap = min(_gap(entry["tuned"]))
            # the rule: strict if DP² still wins by 0.02 on every seed, else an observation of the gap
            out.append(Claim(f"{label}, equal tuning: DP² − best tuned baseline test acc (worst seed)", gap, 0.02,
                             gap >= 0.02, strict=main and gap >= 0.02))
            speed = entry["tuned"].get("speedup_over_dp_sgd", {}).get("dp2-rmsprop")
            if speed:
                worst = min(0.0 if s is None else s for s in speed)
                out.append(Claim(f"{label}, equal tuning: DP² steps-to-DP-SGD's-final-accuracy speed-up (worst "
                                 "seed; paper: up to 4×)", worst, 2.0, worst >= 2.0, strict=False))
    return out

register(NAME, Config, run, claims, __doc__ or "", paper="Li, Zaheer, Liu, Reddi, McMahan, Smith, ICLR 2023")
__all__ = ["Config", "run", "claims", "nonprivate_optimum", "load_task", "train_task", "PAPER", "PAPER_HP"]
