"""ffe-multiround: hybrid sketch vs the simple count-sketch adaptations over M rounds at equal per-round cost.

Every round sends one R x W table through secure summation. Four decoders of the global counts c = sum_t c_t
(`fedsketch.hybrid`): **hybrid** (fresh hashes per round, median within a round, sum over rounds),
**shared** (the same hashes every round, tables summed, one median), **pooled** (fresh hashes, all M*R rows in one
median, times M) and **count_mean** (fresh hashes, mean of all rows, times M). Instances: homogeneous Zipf(s)
(every round i.i.d. from one law), heterogeneous Zipf(s) (each round re-ranks the items, so each round has its own
heavy hitters) and Tiny Shakespeare (speaking roles shuffled into M cohorts; the total is fixed, so per-round
counts shrink as M grows). Error: l_inf (and l2) of the count estimates, summarized over seeds by the **median**:
the l_inf of a 5-row count-median is heavy-tailed over seeds (a rare item whose majority of rows hit heavy items
can add several times the typical error), so the mean of a few seeds is dominated by single draws.

Fast path: a round's secure sum equals the sketch of the round's count vector (linearity), see `_common`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedsketch.metrics import l2_error, linf_error
from simulations.config import ExperimentConfig, param
from simulations.ffe._common import (
    ESTIMATORS,
    INSTANCE_KINDS,
    estimate_all,
    loglog_slope,
    shakespeare_round_counts,
    summarize,
    synthetic_round_counts,
)
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "ffe-multiround"
ADAPTATIONS = ("shared", "pooled", "count_mean")


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: d = 20,000, R = 5, W = 256, 2,000 items per round, and the same
    data at R = 15 (about 1.5 ln d rows, where the claims are strict). 10 seeds per point."""

    d: int = param(20_000, "domain size of the synthetic instances", bounds="[16, 1e7]")
    depths: tuple[int, ...] = param((5, 15), "sketch depths R (claims are strict from 1.5 ln d rows)",
                                    bounds="[1, 64]", nonempty=True)
    width: int = param(256, "sketch width W of the synthetic instances", bounds="[2, 16777216]")
    items_per_round: int = param(2_000, "items (clients) per round of the synthetic instances", bounds="[1, 1e8]")
    rounds: tuple[int, ...] = param((1, 4, 16, 64), "round counts M to sweep (strictly increasing)",
                                    bounds="[1, 299]", nonempty=True)
    zipf_s: float = param(1.1, "Zipf exponent", bounds="[0, 10]")
    instances: tuple[str, ...] = param(INSTANCE_KINDS, "instances to run", choices=INSTANCE_KINDS, nonempty=True)
    shakespeare_width: int = param(1024, "sketch width W on Shakespeare", bounds="[2, 16777216]")
    seeds: int = param(10, "seeds per point", bounds="[1, 10000]")
    seed: int = param(0, "master seed", bounds="[0, 4294967295]")

    def check(self) -> None:
        if list(self.rounds) != sorted(set(self.rounds)):
            raise ValueError(f"rounds must be strictly increasing, got {self.rounds!r}")

    @classmethod
    def smoke(cls) -> Config:
        """A few seconds: smaller domain, fewer seeds, the synthetic instances only."""
        return cls(d=5_000, seeds=5, instances=("homogeneous", "heterogeneous"))


def _round_counts(config: Config, kind: str, m: int, seed: int) -> np.ndarray:
    if kind == "shakespeare":
        return shakespeare_round_counts(m, seed)
    return synthetic_round_counts(kind, m, config.items_per_round, config.d, config.zipf_s, seed)


def _sweep(config: Config, depth: int, bar: tqdm) -> dict:
    """l_inf/l2 of every estimator over instances x rounds x seeds at one depth, and the log-log slopes."""
    linf: dict = {}
    l2: dict = {}
    for kind in config.instances:
        width = config.shakespeare_width if kind == "shakespeare" else config.width
        for m in config.rounds:
            errs_inf: dict[str, list[float]] = {e: [] for e in ESTIMATORS}
            errs_2: dict[str, list[float]] = {e: [] for e in ESTIMATORS}
            for s in range(config.seeds):
                data_seed = config.seed * 100_003 + 1_000 * s + m  # same data at every depth
                counts = _round_counts(config, kind, m, data_seed)
                truth = counts.sum(axis=0)
                est = estimate_all(counts, data_seed + 17, depth, width)
                for e in ESTIMATORS:
                    errs_inf[e].append(linf_error(est[e], truth))
                    errs_2[e].append(l2_error(est[e], truth))
                bar.update()
            linf.setdefault(kind, {})[str(m)] = {e: summarize(v) for e, v in errs_inf.items()}
            l2.setdefault(kind, {})[str(m)] = {e: summarize(v) for e, v in errs_2.items()}
    slopes = {
        kind: {
            metric: {e: loglog_slope(config.rounds, [tab[kind][str(m)][e]["median"] for m in config.rounds])
                     for e in ESTIMATORS}
            for metric, tab in (("linf", linf), ("l2", l2))
        }
        for kind in config.instances
        if len(config.rounds) >= 2
    }
    return {"linf": linf, "l2": l2, "slopes": slopes}


def run(config: Config, out_dir: Path) -> dict:
    """Sweep depths x instances x rounds x seeds; record l_inf/l2 of every estimator and the log-log slopes."""
    bar = tqdm(total=len(config.depths) * len(config.instances) * len(config.rounds) * config.seeds, desc=NAME,
               leave=False)
    by_depth = {str(r): _sweep(config, r, bar) for r in config.depths}
    bar.close()
    metrics = {"depths": by_depth, "statistic": "median over seeds"}
    _plot(config, by_depth, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=config.seed)


def _plot(config: Config, by_depth: dict, out_dir: Path) -> None:
    fig, axes = new_figure(len(config.depths), len(config.instances))
    for row, depth in zip(axes, config.depths):
        linf = by_depth[str(depth)]["linf"]
        for ax, kind in zip(row, config.instances):
            for e in ESTIMATORS:
                med = [linf[kind][str(m)][e]["median"] for m in config.rounds]
                lo = [linf[kind][str(m)][e]["min"] for m in config.rounds]
                hi = [linf[kind][str(m)][e]["max"] for m in config.rounds]
                ax.plot(config.rounds, med, marker="o", label=e)
                ax.fill_between(config.rounds, lo, hi, alpha=0.12)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("rounds M")
            ax.set_ylabel("l_inf count error (median over seeds)")
            w = config.shakespeare_width if kind == "shakespeare" else config.width
            ax.set_title(f"{kind} (R={depth}, W={w})")
            ax.legend(fontsize=8)
    save_figure(fig, out_dir, "multiround.png")


# ---------------------------------------------------------------------------------------------- claims


def _ratio_to_best(table: dict, rounds: list[str], others: tuple[str, ...]) -> float:
    """max over M of hybrid / min(others) (median over seeds)."""
    return max(table[m]["hybrid"]["median"] / min(table[m][o]["median"] for o in others) for m in rounds)


def claims(result: dict) -> list[Claim]:
    """The paper's multi-round claims on l_inf (median over seeds), per depth. All strict at R = 15 (= O(log d)
    rows, the regime of the analysis); at R = 5 two are observations.

    Why two claims are observations at R = 5: with 5 rows a few items in some round have a majority of their rows
    on heavy items, and their round median is then a heavy item's count (ffe-single shows the same: at R = 5 the
    single-round tail bound fails for every C we tried). For homogeneous (i.i.d.) rounds the pooled decoder's
    single median over all M*R rows almost never has such a majority, so pooled beats the hybrid's sum of M
    five-row medians by 1.8-3.3x (a 5-seed mean shows it only at M = 4). Pooled relies on the
    rounds being identically distributed; on heterogeneous rounds it is the worst decoder. The outliers are about
    a heavy count whatever M is, so at R = 5 the hybrid's l_inf slope vs M comes out 0.25-0.5 depending on the
    seeds, while its l2 slope is 0.50. At R = 15 the outliers vanish: the hybrid is the best decoder on every
    instance and its l_inf slope is ~0.41 (20 seeds). The strict companions at R = 5 are the hybrid's l2 slope
    and the ratio to the adaptations that do not assume i.i.d. rounds (shared-hash, count-mean).
    """
    met, cfg = result["metrics"], result["config"]
    out: list[Claim] = []
    many = [str(m) for m in cfg["rounds"] if m >= 4]
    for depth in cfg["depths"]:
        res = met["depths"][str(depth)]
        strict_all = depth >= 1.5 * math.log(cfg["d"])  # R = O(log d): the regime the claims are about
        tag = f"R={depth}, "
        if "heterogeneous" in res["linf"] and many:
            r = _ratio_to_best(res["linf"]["heterogeneous"], many, ADAPTATIONS)
            out.append(Claim(tag + "heterogeneous, M>=4: hybrid l_inf / best adaptation < 0.5", r, 0.5, r < 0.5))
        if "homogeneous" in res["linf"] and many:
            hom = res["linf"]["homogeneous"]
            r = _ratio_to_best(hom, many, ADAPTATIONS)
            out.append(Claim(tag + "homogeneous, M>=4: hybrid l_inf / best adaptation <= 1.15", r, 1.15, r <= 1.15,
                             strict=strict_all))
            if not strict_all:
                r = _ratio_to_best(hom, many, ("shared", "count_mean"))
                out.append(Claim(tag + "homogeneous, M>=4: hybrid l_inf / best of shared-hash, count-mean <= 1.15",
                                 r, 1.15, r <= 1.15))
        if "homogeneous" in res.get("slopes", {}):
            sl = res["slopes"]["homogeneous"]
            h, s = sl["linf"]["hybrid"], sl["linf"]["shared"]
            out.append(Claim(tag + "homogeneous: hybrid l_inf log-log slope vs M in [0.35, 0.65]", h, 0.5,
                             0.35 <= h <= 0.65, strict=strict_all))
            out.append(Claim(tag + "homogeneous: shared-hash l_inf log-log slope vs M in [0.85, 1.15]", s, 1.0,
                             0.85 <= s <= 1.15))
            if not strict_all:
                h2 = sl["l2"]["hybrid"]
                out.append(Claim(tag + "homogeneous: hybrid l2 log-log slope vs M in [0.35, 0.65]", h2, 0.5,
                                 0.35 <= h2 <= 0.65))
    return out


register(NAME, Config, run, claims, __doc__ or "")
