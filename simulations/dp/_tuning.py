"""Equal-budget tuning for the DP² comparisons: every method gets a grid of the same size, tuned on one seed,
then its best point is re-run on fresh seeds.

Protocol (recorded in result.json):
1. every method's grid (the same number of points each) runs on `tune_seed`;
2. optionally (dp2-sparse, dp2-movielens) DP²'s phase A *is* DP-SGD, so the DP² variants take α1 and C1 from
   DP-SGD's best point and spend their own, equally sized, grid on (α2, C2) — `dp2_grids`;
3. each method's best point (by the experiment's selection metric, on training data — the paper's protocol; the
   test set is never used for selection) is re-run on `seeds`, and those runs are what the claims read.
Tuning is not privacy-accounted (as in the paper); only each training run is.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from typing import Any

_BASELINES = ("dp-sgd", "dp-rmsprop", "dp-adam", "dp-adam-bc", "dp-adagrad")
_DP2 = ("dp2-rmsprop", "dp2-adagrad", "dp2-delayed")

Job = tuple[str, dict[str, float], int]  # (method, hyperparameters, seed)


def run_jobs(fn: Callable[[Job], dict], jobs: Sequence[Job], workers: int) -> list[dict]:
    """`fn` over `jobs`, in order; in `workers` forked processes when workers > 1 (each single-threaded)."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in jobs]
    with mp.get_context("fork").Pool(min(workers, len(jobs))) as pool:
        return pool.map(fn, jobs, chunksize=1)


def _score(res: dict, key: str, mode: str) -> float:
    v = res["final"][key]
    if v is None or v != v:  # diverged or NaN: worst possible
        return float("-inf")
    return v if mode == "max" else -v


def tune_and_evaluate(
    fn: Callable[[Job], dict],
    grids: dict[str, list[dict[str, float]]],
    dp2_grids: dict[str, list[dict[str, float]]] | None = None,
    *,
    tune_seed: int,
    seeds: Sequence[int],
    select: str,
    mode: str,
    workers: int,
) -> dict[str, Any]:
    """Run the protocol above. `fn(job)` returns {"final": {metric: value}, "curve": {...}}.

    Returns {"tuning": {method: [{"hp", "final"}]}, "best": {method: hp}, "runs": {method: [result per seed]}}.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    tuning: dict[str, list[dict]] = {}
    best: dict[str, dict[str, float]] = {}

    def _tune(g: dict[str, list[dict[str, float]]]) -> None:
        jobs = [(m, hp, tune_seed) for m, pts in g.items() for hp in pts]
        for (m, hp, _), res in zip(jobs, run_jobs(fn, jobs, workers)):
            tuning.setdefault(m, []).append({"hp": hp, "final": res["final"]})
        for m in g:
            top = max(tuning[m], key=lambda r: _score(r, select, mode))
            best[m] = top["hp"]

    _tune(grids)
    if dp2_grids:
        if "dp-sgd" not in best:
            raise ValueError("DP² grids take α1/C1 from DP-SGD's best point: include 'dp-sgd' in the baselines")
        a1, c1 = best["dp-sgd"]["lr"], best["dp-sgd"]["clip"]
        _tune({m: [{"lr": a1, "clip": c1, **hp} for hp in pts] for m, pts in dp2_grids.items()})
    jobs = [(m, best[m], s) for m in best for s in seeds]
    runs: dict[str, list[dict]] = {}
    for (m, _, _), res in zip(jobs, run_jobs(fn, jobs, workers)):
        runs.setdefault(m, []).append(res)
    return {"tuning": tuning, "best": best, "runs": runs}


def mean_final(runs: list[dict], key: str) -> float:
    """Mean over seeds of a final metric (a diverged run counts as +inf loss / 0 score)."""
    vals = [r["final"][key] for r in runs]
    vals = [float("inf") if v is None else v for v in vals]
    return sum(vals) / len(vals)


def check_grid(cfg: Any) -> None:
    """The same number of grid points for every method (the equal tuning budget); ranges are the fields' bounds."""
    if len(cfg.sgd_lrs) * len(cfg.clips) != len(cfg.dp2_lr2s) * len(cfg.dp2_clip2s) or len(cfg.sgd_lrs) != len(
        cfg.adaptive_lrs
    ):
        raise ValueError(
            "equal tuning budget: len(sgd_lrs) == len(adaptive_lrs) and len(sgd_lrs)*len(clips) == "
            f"len(dp2_lr2s)*len(dp2_clip2s), got {len(cfg.sgd_lrs)}, {len(cfg.adaptive_lrs)}, "
            f"{len(cfg.clips)}, {len(cfg.dp2_lr2s)}, {len(cfg.dp2_clip2s)}"
        )


def grids(cfg: Any, steps_per_epoch: int) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """The baselines' and DP²'s grids (DP² points get α1/C1 from DP-SGD's best point at tuning time)."""
    base: dict[str, list[dict]] = {}
    for m in cfg.methods:
        if m == "dp-sgd":
            base[m] = [{"lr": lr, "clip": c} for lr in cfg.sgd_lrs for c in cfg.clips]
        elif m in _BASELINES:
            base[m] = [{"lr": lr, "clip": c, "eps": cfg.adaptive_eps} for lr in cfg.adaptive_lrs for c in cfg.clips]
    delay = max(1, round(cfg.dp2_delay_epochs * steps_per_epoch))
    dp2 = {
        m: [{"lr2": a2, "clip2": c2, "eps": cfg.dp2_eps, "delay": delay} for a2 in cfg.dp2_lr2s for c2 in cfg.dp2_clip2s]
        for m in cfg.methods
        if m in _DP2
    }
    return base, dp2
