"""ffe-two-phase: the width the two-phase sizer picks vs the smallest width that meets the target (oracle search).

`fedsketch.sizing.TwoPhaseSizer` spends the first round on a small hybrid sketch (width W1), estimates the
instance's tail profile from it and picks the phase-2 width for a target l_inf error on the frequency scale; the
remaining rounds run the hybrid sketch at that width and all rounds' estimates are summed. Over instances from
near-sparse to heavy-tailed (near-sparse, Zipf(1.5), Zipf(1.1), Zipf(0.8), uniform) we record, per seed:
the chosen width, the error reached, the **oracle width** (the smallest width on a geometric grid, step 2^(1/4),
at which the same protocol - same phase 1, same hashes, same data - meets the target; binary search, assuming the
error is non-increasing in the width) and the **worst-case width** (the sizer's rule with no knowledge of the
instance: every round at the largest tail norm its item count allows).

Fast path: each round's secure sum is the sketch of all the round's items (linearity), as in `TwoPhaseSizer.run`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fedsketch.instances import synthetic_instance
from fedsketch.metrics import linf_error
from fedsketch.sizing import TwoPhaseSizer
from simulations.config import ExperimentConfig, param
from simulations.ffe._common import summarize
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "ffe-two-phase"
INSTANCES = ("near_sparse", "zipf-1.5", "zipf-1.1", "zipf-0.8", "uniform")


def _law(name: str) -> tuple[str, float]:
    """'zipf-1.5' -> ('zipf', 1.5); 'near_sparse' -> ('near_sparse', 0.0)."""
    if name.startswith("zipf-"):
        return "zipf", float(name[5:])
    return name, 0.0


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: d = 20,000, 8 rounds of 4,000 clients (one item each), target l_inf = 0.0005 (frequency).

    R = 15 rows (about 1.5 ln d): the sizer's rule predicts the error from the tail norm, which is what the
    count-median achieves with R = O(log d) rows (see ffe-single). With R = 5 the l_inf error of near-sparse and
    heavy-tailed instances is set by rare items whose row majority collides with heavy items; the width needed to
    avoid those (W ~ support * (10 d M)^(1/3)) hardly depends on the target, so there is little to adapt to.
    `combine` is the sizer's (default "reencode": every round's clients also send the phase-2 sketch, so phase 1's
    small-width estimates do not enter the final estimate).
    """

    d: int = param(20_000, "domain size", bounds="[16, 1e7]")
    depth: int = param(15, "sketch depth R", bounds="[1, 64]")
    rounds: int = param(8, "rounds M (phase 1 + phase 2)", bounds="[2, 10000]")
    phase1_rounds: int = param(1, "rounds spent on the phase-1 sketch (< rounds)", bounds="[1, 9999]")
    phase1_width: int = param(256, "phase-1 sketch width W1", bounds="[2, 16777216]")
    clients_per_round: int = param(4_000, "clients per round, one item each", bounds="[1, 1e8]")
    target_error: float = param(0.0005, "target l_inf error on the frequency scale", bounds="(0, 1)")
    instances: tuple[str, ...] = param(INSTANCES, "instances: near_sparse, uniform or zipf-<s>", nonempty=True)
    light_tailed: tuple[str, ...] = param(("near_sparse", "zipf-1.5"), "instances held to the light-tail claim")
    max_width: int = param(1 << 16, "largest phase-2 width the sizer may pick", bounds="[16, 16777216]")
    combine: str = param("reencode", "how phase-1 rounds enter the estimate", choices=("reencode", "phase2", "all"))
    predictor: str = param("simulate", "the sizer's error predictor", choices=("simulate", "analytic"))
    seeds: int = param(10, "seeds per instance", bounds="[1, 10000]")
    seed: int = param(0, "master seed", bounds="[0, 4294967295]")

    def check(self) -> None:
        if self.phase1_rounds >= self.rounds:
            raise ValueError(f"phase1_rounds must be in [1, rounds - 1 = {self.rounds - 1}], got {self.phase1_rounds}")
        for field_name, names in (("instances", self.instances), ("light_tailed", self.light_tailed)):
            bad = [n for n in names if n not in ("near_sparse", "uniform") and not _is_zipf(n)]
            if bad:
                raise ValueError(f"{field_name} must name near_sparse, uniform or zipf-<s> (s in [0, 10]), got {bad}")

    @classmethod
    def smoke(cls) -> Config:
        """A few seconds: smaller domain and rounds, three instances, few seeds."""
        return cls(d=5_000, rounds=6, clients_per_round=2_000, target_error=0.0005,
                   instances=("near_sparse", "zipf-1.5", "uniform"), seeds=4)


def _is_zipf(name: str) -> bool:
    try:
        return name.startswith("zipf-") and 0.0 <= float(name[5:]) <= 10.0
    except ValueError:
        return False


def _grid(lo: int, hi: int) -> list[int]:
    """Geometric width grid lo * 2^(k/4) up to hi (distinct integers)."""
    out = sorted({int(round(lo * 2 ** (k / 4))) for k in range(0, 4 * int(np.log2(hi / lo)) + 1)})
    return [w for w in out if w <= hi]


def _oracle(sizer: TwoPhaseSizer, items: list[np.ndarray], truth: np.ndarray, grid: list[int], target: float) -> int:
    """Smallest grid width at which the same protocol (same phase 1, hashes and data) meets the target.

    The run at a forced width is the sizer itself with min_width = max_width = w (so only phase 2's width
    changes); binary search over the grid, assuming the error is non-increasing in the width.
    """

    def meets(w: int) -> bool:
        forced = dataclasses.replace(sizer, min_width=w, max_width=w, predictor="analytic")
        est = forced.run(items).estimate
        return linf_error(est, truth, scale="frequency") <= target

    lo, hi = 0, len(grid) - 1
    if not meets(grid[hi]):
        return grid[hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if meets(grid[mid]):
            hi = mid
        else:
            lo = mid + 1
    return grid[lo]


def run(config: Config, out_dir: Path) -> dict:
    """Per instance and seed: run the two-phase sizer, measure its error, search the oracle width."""
    grid = _grid(16, config.max_width)
    per: dict = {}
    bar = tqdm(total=len(config.instances) * config.seeds, desc=NAME, leave=False)
    for name in config.instances:
        law, s = _law(name)
        rec: dict[str, list] = {k: [] for k in ("chosen", "oracle", "error", "predicted", "met", "total_ints")}
        worst = None
        for k in range(config.seeds):
            data_seed = config.seed * 100_003 + k
            inst = synthetic_instance(law, config.d, config.rounds, config.clients_per_round, 1,
                                      zipf_s=s or 1.1, seed=data_seed)
            items = inst.items
            truth = inst.counts
            sizer = TwoPhaseSizer(config.target_error, config.d, depth=config.depth,
                                  phase1_width=config.phase1_width, phase1_rounds=config.phase1_rounds,
                                  max_width=config.max_width, combine=config.combine,
                                  predictor=config.predictor, seed=data_seed + 17)
            res = sizer.run(items, [x.size for x in items])
            err = linf_error(res.estimate, truth, scale="frequency")
            oracle = _oracle(sizer, items, truth, grid, config.target_error)
            worst = sizer.worst_case_width([x.size for x in items])
            for key, val in (("chosen", res.width), ("oracle", oracle), ("error", err),
                             ("predicted", res.predicted_error), ("met", err <= config.target_error),
                             ("total_ints", res.total_ints)):
                rec[key].append(val)
            bar.update()
        ratio = [c / o for c, o in zip(rec["chosen"], rec["oracle"])]
        per[name] = {
            "chosen_width": summarize(rec["chosen"]),
            "oracle_width": summarize(rec["oracle"]),
            "chosen_over_oracle": summarize(ratio),
            "worst_case_width": worst,
            "chosen_over_worst": float(np.median(rec["chosen"])) / worst,
            "linf_frequency_error": summarize(rec["error"]),
            "predicted_error": summarize(rec["predicted"]),
            "target_met_fraction": float(np.mean(rec["met"])),
            "total_ints": summarize(rec["total_ints"]),
        }
    bar.close()
    met = [m for p in per.values() for m in [p["target_met_fraction"]]]
    metrics = {"instances": per, "target_met_fraction": float(np.mean(met)), "width_grid": grid}
    _plot(config, per, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=config.seed)


def _plot(config: Config, per: dict, out_dir: Path) -> None:
    fig, axes = new_figure(1, 2, size=(11.0, 3.8))
    names = list(per)
    x = np.arange(len(names))
    ax = axes[0][0]
    for off, key, label in ((-0.25, "chosen_width", "two-phase (chosen)"), (0.0, "oracle_width", "oracle (search)")):
        med = [per[n][key]["median"] for n in names]
        err = [[m - per[n][key]["min"] for m, n in zip(med, names)], [per[n][key]["max"] - m for m, n in zip(med, names)]]
        ax.bar(x + off, med, width=0.25, yerr=err, label=label, capsize=2)
    ax.bar(x + 0.25, [per[n]["worst_case_width"] for n in names], width=0.25, label="worst case")
    ax.set_yscale("log", base=2)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("phase-2 width W")
    ax.set_title(f"target l_inf = {config.target_error:g} (frequency)")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    for i, n in enumerate(names):
        vals = per[n]["linf_frequency_error"]["values"]
        ax.scatter(np.full(len(vals), i), vals, s=12)
    ax.axhline(config.target_error, color="k", ls="--", label="target")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("l_inf frequency error (per seed)")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir, "two_phase.png")


def claims(result: dict) -> list[Claim]:
    """Target met in >= 90% of runs; chosen width <= 2x oracle (median over seeds, worst instance); on light-tailed
    instances the chosen width <= 1/4 of the worst-case width.

    All three are strict. The sizer's simulate predictor aims at the 0.95 quantile of 10 simulated runs drawn from
    the phase-1 profile, whose undetected mass follows the power law fitted to the detected items. Full size
    (10 seeds x 5 instances): target met in 0.94 of runs (near-sparse 9/10, Zipf(1.5) 10/10, Zipf(1.1) 9/10,
    Zipf(0.8) 9/10, uniform 10/10); chosen / oracle width 1.76 at worst (Zipf(1.5)); light-tailed 0.19. With the
    undetected mass spread evenly (the earlier profile) the full size measured 0.86: Zipf(0.8) met the target in
    5/10 because an even tail under-predicts a heavy one. The remaining misses are one count or a few above the
    target (16 counts) except one near-sparse seed, where a rare light item has a majority of its rows on heavy
    items. The light-tailed claim depends on the target: a near-sparse instance needs about 8x its support in
    width at any target, while the worst case grows like 1/target. It measured 0.33 at target 0.001 and 0.19 at
    0.0005 (the default).
    """
    met, cfg = result["metrics"], result["config"]
    per = met["instances"]
    frac = met["target_met_fraction"]
    ratio = max(p["chosen_over_oracle"]["median"] for p in per.values())
    out = [
        Claim("target l_inf met in >= 90% of (instance, seed) runs", frac, 0.9, frac >= 0.9),
        Claim("chosen width / oracle width <= 2 (median over seeds, worst instance)", ratio, 2.0, ratio <= 2.0),
    ]
    light = [n for n in cfg["light_tailed"] if n in per]
    if light:
        r = max(per[n]["chosen_over_worst"] for n in light)
        out.append(Claim("light-tailed: chosen width / worst-case width <= 1/4", r, 0.25, r <= 0.25))
    return out


register(NAME, Config, run, claims, __doc__ or "")
