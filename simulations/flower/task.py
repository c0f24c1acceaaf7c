"""The shared task: a client's items, the items it may contribute, its bounded table, its noise share, the checks.

Both sides import this module (as in Flower's ``task.py`` examples). The ClientApp calls the per-client functions for
its own partition; the in-process backend and the evaluation oracle call the vectorized cohort functions, which give,
client by client, the same items and tables (tests check it), so the paths cannot drift apart.

Contribution bounding (`fedsketch.contribution`): with ``contribution="distinct"`` a client encodes its m most
frequent distinct items and bounds every cell to [-1, 1], so Delta1 <= m R and Delta2 <= sqrt(m R) for any data;
with ``"occurrences"`` it encodes up to m occurrences (a uniform subsample keyed by the round's hash seed) and the
worst case Delta2 = m sqrt(R) applies.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from simulations.flower.settings import DataSpec, RoundSpec, shakespeare

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on uint64 (wrapping arithmetic): a fast, well-mixed hash of counters."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _uniforms(key: int, pids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) of (key, partition, position), vectorized and identical client by client."""
    with np.errstate(over="ignore"):
        k = _splitmix(np.uint64(key & (2**64 - 1)) ^ _splitmix(pids.astype(np.uint64)))
        u = _splitmix(k ^ positions.astype(np.uint64) * _GOLDEN)
    return (u >> np.uint64(11)).astype(np.float64) * 2.0**-53


@lru_cache(maxsize=8)
def _zipf_cdf(s: float, d: int) -> np.ndarray:
    p = 1.0 / np.arange(1, d + 1, dtype=np.float64) ** s
    c = np.cumsum(p)
    return c / c[-1]


def _check_pids(data: DataSpec, pids: np.ndarray) -> None:
    if pids.size and (int(pids.min()) < 0 or int(pids.max()) >= data.max_clients):
        raise ValueError(f"partition ids must be in [0, {data.max_clients}) for dataset {data.dataset!r}, "
                         f"got [{int(pids.min())}, {int(pids.max())}]")


def cohort_items(data: DataSpec, pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All items of the given partitions: (items, index into `pids`), one vectorized call.

    Shakespeare: each role's words in order. Zipf: `zipf_items` i.i.d. Zipf(s) draws over [0, zipf_d) per client,
    from counter-based uniforms of (data_seed, partition, position), so a client alone draws the same items."""
    pids = np.asarray(pids, dtype=np.int64)
    _check_pids(data, pids)
    if data.dataset == "shakespeare":
        parts = [shakespeare().client_items[p] for p in pids.tolist()]
        items = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        return items.astype(np.int64), np.repeat(np.arange(len(pids)), [len(p) for p in parts])
    index = np.repeat(np.arange(len(pids)), data.zipf_items)
    pos = np.tile(np.arange(data.zipf_items), len(pids))
    u = _uniforms(data.data_seed, pids[index], pos)
    items = np.minimum(np.searchsorted(_zipf_cdf(data.zipf_s, data.zipf_d), u, side="right"), data.zipf_d - 1)
    return items.astype(np.int64), index


def client_items(data: DataSpec, pid: int) -> np.ndarray:
    """All int64 item ids that partition `pid` holds."""
    return cohort_items(data, np.array([pid]))[0]


def cohort_bounded_items(spec: RoundSpec, data: DataSpec, pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The items each client of `pids` contributes this round: (items, index into `pids`)."""
    from fedsketch.contribution import distinct_items
    from fedsketch.privacy import cap_items

    pids = np.asarray(pids, dtype=np.int64)
    items, index = cohort_items(data, pids)
    if spec.contribution == "distinct":
        kept = distinct_items(items, index, cap=spec.item_cap)
    else:  # a uniform subsample of the occurrences, keyed by the round's hash seed
        start = np.searchsorted(index, index)  # each item's position inside its client's list
        keys = _uniforms(spec.seed, pids[index], np.arange(len(items)) - start)
        kept = cap_items(items, index, cap=spec.item_cap, seed=0, keys=keys)
    return kept.items, kept.client_index


def bounded_items(spec: RoundSpec, data: DataSpec, pid: int) -> np.ndarray:
    """The items partition `pid` contributes this round (at most `item_cap`)."""
    return cohort_bounded_items(spec, data, np.array([pid]))[0]


def _sketch(spec: RoundSpec):
    from fedsketch import CountSketch

    return CountSketch(spec.depth, spec.width, spec.seed)


def client_table(spec: RoundSpec, data: DataSpec, pid: int) -> np.ndarray:
    """The bounded int64 (depth, width) table of partition `pid` this round, before noise."""
    return cohort_tables(spec, data, np.array([pid]))[0]


def cohort_tables(spec: RoundSpec, data: DataSpec, pids: np.ndarray) -> np.ndarray:
    """`client_table` of many clients at once, shape (n, depth, width) (`fedsketch.contribution.bounded_tables`)."""
    from fedsketch.contribution import bounded_tables

    items, index = cohort_bounded_items(spec, data, pids)
    return bounded_tables(_sketch(spec), items, index, len(pids), contribution=spec.contribution)


def cohort_sum(spec: RoundSpec, data: DataSpec, pids: np.ndarray) -> np.ndarray:
    """``cohort_tables(...).sum(0)`` without the per-client tables (`fedsketch.contribution.bounded_sum`)."""
    from fedsketch.contribution import bounded_sum

    items, index = cohort_bounded_items(spec, data, pids)
    return bounded_sum(_sketch(spec), items, index, contribution=spec.contribution)


def noise_share(spec: RoundSpec, *, seed: tuple[int, ...] | None = None) -> np.ndarray | None:
    """One client's Skellam share (depth, width), or None without DP.

    ``seed=None`` (the default): a fresh generator keyed from the OS CSPRNG (`secrets`), so nothing the server
    sends or sees determines the share. A seed tuple makes it reproducible: NOT PRIVATE AGAINST THE SERVER when
    the server knows or chose the seed (simulation only)."""
    if spec.noise_var <= 0:
        return None
    from fedsketch.privacy import SkellamNoise

    noise = SkellamNoise(spec.noise_var, spec.noise_shares, secure_mode=seed is None)
    return noise.client_noise((spec.depth, spec.width), None if seed is None else np.random.default_rng(list(seed)))


def check_table(table: object, spec: RoundSpec) -> np.ndarray:
    """Client-side validation before masking: shape (depth, width), an integer dtype, every |entry| <= bound.

    SecAgg+ would silently clip an out-of-range entry into the sum, and the server cannot see one table, so the
    client refuses to upload instead (ValueError; the round goes on without it).
    """
    arr = np.asarray(table)
    if arr.shape != (spec.depth, spec.width):
        raise ValueError(f"table must have shape (depth, width) = {(spec.depth, spec.width)}, got {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"table must have an integer dtype, got {arr.dtype}")
    peak = int(np.abs(arr).max()) if arr.size else 0
    if peak > spec.bound:
        raise ValueError(f"table entries must lie in [-bound, bound] = [-{spec.bound}, {spec.bound}], got |entry| = {peak}")
    return arr.astype(np.int64, copy=False)
