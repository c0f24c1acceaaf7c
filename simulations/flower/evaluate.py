"""Server-side decoding of the protocol's sums, and the evaluation-only oracle that scores them.

`decode_rounds` is what the server legitimately computes: it only reads the per-round sums and seeds. Everything
else here is the **evaluation oracle**: it re-reads the clients' data outside the protocol (the true counts, the
shared-hash baseline, the in-process re-sum of the same tables) purely to measure errors and check exactness. No
protocol decision depends on it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from simulations.flower.rounds import RoundRecord
from simulations.flower.server_app import ServerSettings
from simulations.flower.task import DataSpec, capped_items, cohort_tables


def decode_rounds(records: list[RoundRecord], settings: ServerSettings, method: str = "hybrid") -> np.ndarray | None:
    """Count estimates for all d items from the completed rounds' sums (`fedsketch.multiround_estimate`).

    Rounds of different widths (two-phase sizing) are decoded as the hybrid sum of the per-round median estimates;
    the other methods need one width and give None then.
    """
    from fedsketch import CountSketch, multiround_estimate

    done = [r for r in records if r.total is not None]
    d = _domain(settings)
    if not done:
        return np.zeros(d)
    widths = {r.width for r in done}
    if len(widths) > 1:
        if method != "hybrid":
            return None
        return sum(CountSketch(settings.depth, r.width, r.seed, domain=d).decode(r.total) for r in done)
    return multiround_estimate(
        [r.total for r in done], [r.seed for r in done], depth=settings.depth, width=widths.pop(),
        method=method, domain=d,
    )


def _domain(settings: ServerSettings) -> int:
    return DataSpec(settings.dataset, settings.zipf_s, settings.zipf_d, settings.zipf_items, settings.seed).domain


def oracle_truth(records: list[RoundRecord], settings: ServerSettings) -> np.ndarray:
    """ORACLE: true counts of the items the surviving clients contributed (after the item cap) in completed rounds."""
    d = _domain(settings)
    counts = np.zeros(d, dtype=np.int64)
    for r in records:
        if r.total is None or not r.survivors:
            continue
        spec = settings.round_spec(r.round)
        counts += np.bincount(np.concatenate([capped_items(spec, p) for p in r.survivors]), minlength=d)
    return counts


def oracle_round_sum(record: RoundRecord, settings: ServerSettings, seed: int | None = None,
                     noise: bool = True, width: int | None = None) -> np.ndarray:
    """ORACLE: the plain numpy sum of the survivors' tables of a round (optionally under another seed or width)."""
    spec = settings.round_spec(record.round)
    if seed is not None:
        spec = replace(spec, seed=seed)
    if width is not None:
        spec = replace(spec, width=width)
    return cohort_tables(spec, np.asarray(record.survivors), noise=noise).sum(axis=0)


def oracle_inprocess_sum(record: RoundRecord, settings: ServerSettings) -> np.ndarray:
    """ORACLE: the same survivors' tables re-summed by `fedsketch.InProcessSecureSum` (masked, modular)."""
    from fedsketch.secure_sum import InProcessSecureSum, required_modulus_bits

    spec = settings.round_spec(record.round)
    tables = cohort_tables(spec, np.asarray(record.survivors)).reshape(len(record.survivors), -1)
    bits = max(32, required_modulus_bits(len(record.survivors), settings.bound))
    res = InProcessSecureSum(modulus_bits=bits, seed=settings.seed + record.round).sum(tables, bound=settings.bound)
    return res.total.reshape(settings.depth, settings.width)


def shared_hash_records(records: list[RoundRecord], settings: ServerSettings, noise: bool = True) -> list[RoundRecord]:
    """ORACLE: the rounds as the shared-hash adaptation would have produced them (every round hashed with the first
    completed round's seed and the last one's width; same survivors, same noise shares, or none with `noise=False`)."""
    done = [r for r in records if r.total is not None]
    if not done:
        return []
    seed0, w = done[0].seed, done[-1].width
    return [replace(r, seed=seed0, width=w, total=oracle_round_sum(r, settings, seed=seed0, noise=noise, width=w))
            for r in done]


def noise_free_records(records: list[RoundRecord], settings: ServerSettings) -> list[RoundRecord]:
    """ORACLE: the completed rounds' sums without the DP noise shares (the sketching error alone)."""
    return [r if r.total is None else replace(r, total=oracle_round_sum(r, settings, noise=False)) for r in records]


def linf(estimate: np.ndarray | None, truth: np.ndarray) -> float | None:
    """l_inf count error (`fedsketch.linf_error`); None for a method that could not decode."""
    from fedsketch import linf_error

    return None if estimate is None else float(linf_error(estimate, truth))


def running_errors(records: list[RoundRecord], shared: list[RoundRecord], settings: ServerSettings) -> list[dict]:
    """l_inf of the running hybrid and shared-hash estimates after each round (against the running truth)."""
    out = []
    shared_by_round = {r.round: r for r in shared}
    truth = np.zeros(_domain(settings), dtype=np.int64)
    for r in records:
        upto = [x for x in records if x.round <= r.round]
        truth = truth + oracle_truth([r], settings)
        if not any(x.total is not None for x in upto):
            out.append({"round": r.round, "hybrid_linf": None, "shared_linf": None})
            continue
        sh = [shared_by_round[x.round] for x in upto if x.round in shared_by_round]
        out.append({
            "round": r.round,
            "hybrid_linf": linf(decode_rounds(upto, settings, "hybrid"), truth),
            "shared_linf": linf(decode_rounds(sh, settings, "shared"), truth),
        })
    return out
