"""Shared pieces of the ffe experiments: per-round count vectors, round sketches, seed summaries, slopes.

Fast path used by every sweep: a round's secure sum is the sum of its clients' count sketches, and the sketch is
linear, so the summed table equals the sketch of the round's whole count vector. We therefore encode each round's
count vector once (`CountSketch.encode(ids, counts)`) instead of encoding every client and summing; the masking
and per-client noise paths are exercised by `fedsketch`'s own tests and the Flower app.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsketch.hybrid import multiround_estimate
from fedsketch.sketch import CountSketch

INSTANCE_KINDS = ("homogeneous", "heterogeneous", "shakespeare")

#: Names of the multi-round estimators compared by the experiments, in plotting order.
ESTIMATORS = ("hybrid", "shared", "pooled", "count_mean")


def hash_seeds(master: int, n: int) -> list[int]:
    """`n` independent 32-bit hash seeds derived from `master` (one per round)."""
    ss = np.random.SeedSequence(master)
    return [int(s.generate_state(1)[0]) for s in ss.spawn(n)]


def shakespeare_round_counts(rounds: int, seed: int) -> np.ndarray:
    """(rounds, d) word counts: Tiny Shakespeare's speaking roles shuffled (seeded) and split into `rounds` cohorts.

    Each role is one client and takes part in exactly one round, as in the multi-round model.
    """
    from simulations.datasets import load_shakespeare

    corpus = load_shakespeare()
    if not 1 <= rounds <= corpus.n_clients:
        raise ValueError(f"rounds must be in [1, {corpus.n_clients}] for Shakespeare, got {rounds}")
    order = np.random.default_rng(seed).permutation(corpus.n_clients)
    out = np.zeros((rounds, corpus.d), dtype=np.int64)
    for t, group in enumerate(np.array_split(order, rounds)):
        items = np.concatenate([corpus.client_items[c] for c in group]) if len(group) else np.zeros(0, np.int64)
        out[t] = np.bincount(items, minlength=corpus.d)
    return out


def encode_rounds(round_counts: np.ndarray, seeds: Sequence[int], depth: int, width: int) -> list[np.ndarray]:
    """Each round's secure-sum table, as the sketch of that round's count vector (by linearity)."""
    d = round_counts.shape[1]
    tables = []
    for t, counts in enumerate(round_counts):
        ids = np.flatnonzero(counts)
        tables.append(CountSketch(depth, width, seeds[t], domain=d).encode(ids, counts[ids]))
    return tables


def estimate_all(
    round_counts: np.ndarray, master_seed: int, depth: int, width: int, estimators: Sequence[str] = ESTIMATORS
) -> dict[str, np.ndarray]:
    """Count estimates of every estimator for the same rounds, at equal per-round communication (R x W each).

    `hybrid`, `pooled` and `count_mean` decode the *same* fresh-hash tables (one protocol, three decoders);
    `shared` re-runs the rounds with every round hashed by the first seed.
    """
    m, d = round_counts.shape
    seeds = hash_seeds(master_seed, m)
    out: dict[str, np.ndarray] = {}
    fresh = encode_rounds(round_counts, seeds, depth, width) if set(estimators) - {"shared"} else []
    kw = {"depth": depth, "width": width, "domain": d}
    for name in estimators:
        if name == "shared":
            shared = encode_rounds(round_counts, [seeds[0]] * m, depth, width)
            out[name] = multiround_estimate(shared, seeds[:1], method="shared", **kw)
        elif name == "count_mean":
            out[name] = multiround_estimate(fresh, seeds, method="pooled", decode="mean", **kw)
        elif name in ("hybrid", "pooled"):
            out[name] = multiround_estimate(fresh, seeds, method=name, **kw)
        else:
            raise ValueError(f"estimators must be drawn from {list(ESTIMATORS)}, got {name!r}")
    return out


def summarize(values: Sequence[float]) -> dict[str, float | list[float]]:
    """Mean, median, min and max over seeds, with the per-seed values kept."""
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "values": [float(x) for x in v],
    }


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    x = np.log(np.asarray(xs, dtype=np.float64))
    y = np.log(np.maximum(np.asarray(ys, dtype=np.float64), 1e-12))
    return float(np.polyfit(x, y, 1)[0])



def synthetic_round_counts(
    kind: str, rounds: int, items_per_round: int, d: int, zipf_s: float, seed: int, *, law: str = "zipf",
    support: int = 64, tail_mass: float = 0.01,
) -> np.ndarray:
    """(rounds, d) per-round counts of a `fedsketch.instances` instance, one item per client.

    `kind="homogeneous"`: every round draws i.i.d. from the same law over [0, d) (`law`: zipf, near_sparse,
    uniform). `"heterogeneous"`: each round permutes the item ranking afresh, so each round has its own heavy hitters.
    """
    from fedsketch.instances import synthetic_instance

    inst = synthetic_instance(
        law, d, rounds, items_per_round, 1, heterogeneous=kind == "heterogeneous", zipf_s=zipf_s,
        support=support, tail_mass=tail_mass, seed=seed,
    )
    return np.stack([inst.round_counts(t) for t in range(rounds)]).astype(np.int64)
