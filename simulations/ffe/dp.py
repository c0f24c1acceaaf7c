"""ffe-dp: the hybrid sketch under distributed Skellam noise, l_inf error vs epsilon against the non-private run.

Each round's cohort of `clients_per_round` clients (one item each, item cap 1) adds Skellam noise shares so that the
secure sum carries Skellam noise of variance mu per table entry (Agarwal, Kairouz, Liu 2021; `fedsketch.privacy`).
mu is calibrated for (epsilon, delta)-DP against the server, for adding or removing one client: sensitivity
Delta1 = R, Delta2 = sqrt(R) (one item changes one entry per row by 1). Cohorts are disjoint across rounds, so the
guarantee of the whole M-round run is the per-round guarantee (parallel composition). The server decodes the
noisy tables with the hybrid estimator (median within a round, sum over rounds).

Fast path: a round's secure sum is the sketch of the round's count vector plus the sum of the clients' noise
shares; we draw that sum directly (`SkellamNoise.sum_noise`, which has the same law as the sum of the n shares).
Data, hashes and noise seeds are shared across the epsilon grid (common random numbers), so the curve compares
noise levels, not draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedsketch.hybrid import multiround_estimate
from fedsketch.metrics import linf_error
from fedsketch.privacy import SkellamNoise, sketch_sensitivity
from simulations.config import ExperimentConfig, param
from simulations.ffe._common import (
    encode_rounds,
    hash_seeds,
    summarize,
    synthetic_round_counts,
)
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "ffe-dp"


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: homogeneous Zipf(1.1), d = 20,000, M = 16 rounds of 2,000 clients, R = 5, W = 1024."""

    d: int = param(20_000, "domain size (distinct items)", bounds="[16, 1e7]")
    depth: int = param(5, "sketch depth R", bounds="[1, 64]")
    width: int = param(1024, "sketch width W", bounds="[2, 16777216]")
    rounds: int = param(16, "rounds M (disjoint cohorts)", bounds="[1, 10000]")
    clients_per_round: int = param(2_000, "clients per round, one item each", bounds="[1, 1e8]")
    zipf_s: float = param(1.1, "Zipf exponent", bounds="[0, 10]")
    epsilons: tuple[float, ...] = param((0.5, 1.0, 2.0, 4.0, 8.0), "epsilons to sweep (strictly increasing)",
                                        bounds="(0, 100]", nonempty=True)
    delta: float = param(1e-5, "delta of the (epsilon, delta) guarantee", bounds="(0, 1)")
    seeds: int = param(20, "data/hash/noise seeds per epsilon", bounds="[1, 10000]")
    seed: int = param(0, "master seed", bounds="[0, 4294967295]")

    def check(self) -> None:
        if list(self.epsilons) != sorted(set(self.epsilons)):
            raise ValueError(f"epsilons must be strictly increasing, got {self.epsilons!r}")

    @classmethod
    def smoke(cls) -> Config:
        """A few seconds: smaller domain, fewer rounds and seeds."""
        return cls(d=5_000, rounds=8, seeds=6)


def run(config: Config, out_dir: Path) -> dict:
    """For each seed: one data draw and one set of hashes; decode without noise and with noise for every epsilon."""
    sens = sketch_sensitivity(config.depth, item_cap=1)
    noises = {
        eps: SkellamNoise.calibrate(eps, config.delta, sens, num_clients=config.clients_per_round,
                                    rounds=config.rounds, composition="disjoint", dim=config.depth * config.width)
        for eps in config.epsilons
    }
    shape = (config.depth, config.width)
    errs: dict[str, list[float]] = {"non_private": [], **{str(e): [] for e in config.epsilons}}
    bar = tqdm(total=config.seeds, desc=NAME, leave=False)
    for s in range(config.seeds):
        data_seed = config.seed * 100_003 + s
        counts = synthetic_round_counts("homogeneous", config.rounds, config.clients_per_round, config.d,
                                        config.zipf_s, data_seed)
        truth = counts.sum(axis=0)
        seeds = hash_seeds(data_seed + 17, config.rounds)
        tables = encode_rounds(counts, seeds, config.depth, config.width)
        kw = {"depth": config.depth, "width": config.width, "domain": config.d, "method": "hybrid"}
        errs["non_private"].append(linf_error(multiround_estimate(tables, seeds, **kw), truth))
        for eps, noise in noises.items():
            rng = np.random.default_rng([data_seed, 0xD9])  # same noise stream for every epsilon
            noisy = [t + noise.sum_noise(shape, rng) for t in tables]
            errs[str(eps)].append(linf_error(multiround_estimate(noisy, seeds, **kw), truth))
        bar.update()
    bar.close()
    metrics = {
        "linf": {k: summarize(v) for k, v in errs.items()},
        "noise_variance_per_entry": {str(e): n.variance for e, n in noises.items()},
        "epsilon_achieved": {
            str(e): n.epsilon(config.delta, sens, rounds=config.rounds, composition="disjoint",
                              dim=config.depth * config.width)
            for e, n in noises.items()
        },
        "sensitivity": {"l1": sens.l1, "l2": sens.l2},
        "N": config.rounds * config.clients_per_round,
        "statistic": "median over seeds",
    }
    _plot(config, metrics, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=config.seed)


def _plot(config: Config, metrics: dict, out_dir: Path) -> None:
    fig, axes = new_figure(1, 1)
    ax = axes[0][0]
    eps = list(config.epsilons)
    lin = metrics["linf"]
    ax.plot(eps, [lin[str(e)]["median"] for e in eps], "o-", label="hybrid + distributed Skellam")
    ax.fill_between(eps, [lin[str(e)]["min"] for e in eps], [lin[str(e)]["max"] for e in eps], alpha=0.15)
    ax.axhline(lin["non_private"]["median"], color="k", ls="--", label="hybrid, non-private")
    ax.axhline(1.5 * lin["non_private"]["median"], color="k", ls=":", label="1.5 x non-private")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"epsilon (delta={config.delta:g}, per client, whole run)")
    ax.set_ylabel("l_inf count error (median over seeds)")
    ax.set_title(f"M={config.rounds} x {config.clients_per_round} clients, R={config.depth}, W={config.width}")
    ax.legend(fontsize=8)
    save_figure(fig, out_dir, "dp.png")


def claims(result: dict) -> list[Claim]:
    """Error (median over seeds) decreases with epsilon; at the largest epsilon it is within 1.5x of non-private."""
    met, cfg = result["metrics"], result["config"]
    eps = [str(float(e)) for e in cfg["epsilons"]]
    med = [met["linf"][e]["median"] for e in eps]
    worst_step = max(b / a for a, b in zip(med, med[1:])) if len(med) > 1 else 0.0
    top = med[-1] / met["linf"]["non_private"]["median"]
    return [
        Claim("l_inf error decreases with epsilon: max ratio err(eps_next) / err(eps) < 1", worst_step, 1.0,
              worst_step < 1.0),
        Claim(f"eps={cfg['epsilons'][-1]:g}: l_inf / non-private l_inf <= 1.5", top, 1.5, top <= 1.5),
    ]


register(NAME, Config, run, claims, __doc__ or "")
