"""Multi-round frequency estimation from per-round summed count-sketch tables (Wu, Zhu, Kairouz, Braverman 2023).

Round t = 1..M has its own cohort; secure summation gives the server only S_t = sum of the cohort's tables. Each
estimator below is a function of (S_1..S_M) and the seeds the rounds used, estimating the global counts
c = sum_t c_t:

- `shared_hash_estimate` (adaptation A): every round used the same seed; decode sum_t S_t once. This is a single
  sketch of all N items: error ~ ||tail_k(sum_t c_t)||_2 / sqrt(W), no gain from the M-fold communication.
- `pooled_estimate` (adaptation B): fresh seeds per round; the M*R row estimates X_t[r, j] are pooled into one
  median, times M (count-mean: the mean, times M, i.e. sum_t mean_r X_t). Pooling loses heavy-hitter isolation:
  an item collides with different heavy items in different rounds.
- `hybrid_estimate` (**default**, our reading of the paper's hybrid sketch): fresh seeds per round, count-median
  within each round, estimates summed across rounds: c_hat_j = sum_t median_r X_t[r, j]. Each round's median is
  unbiased with symmetric error and isolates that round's heavy hitters; errors are independent across rounds, so
  the l_inf error is ~ sqrt(sum_t ||tail_k(c_t)||_2^2 / W * log d), never worse than A up to log factors and
  ~sqrt(M) better on homogeneous rounds.
- `shared_bucket_estimate` (the alternative reading, kept switchable): the same buckets every round (seeds[0]) but
  fresh signs (round t's signs from seeds[t]); per row the estimates are summed over rounds, then the median is
  taken over the R rows. In our simulations it did worse than the default reading (docs/RESULTS.md).

The paper's algorithm box was not available to us; the default is the reading that our simulations and the
variance argument above support. All functions return float64 count estimates (divide by N for frequencies).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from numpy.typing import ArrayLike

from fedsketch.sketch import CountSketch, combine_rows

METHODS = ("hybrid", "shared", "pooled", "shared_buckets")
DECODERS = ("median", "mean")


def _check(tables: Sequence[ArrayLike], seeds: Sequence[int], need: int) -> list[np.ndarray]:
    if len(tables) == 0:
        raise ValueError("tables must hold at least one round's table, got 0")
    if len(seeds) < need:
        raise ValueError(f"seeds must hold at least {need} seed(s) for {len(tables)} round(s), got {len(seeds)}")
    if len(seeds) not in (need, len(tables)):  # an extra seed means a round is missing: never ignore it
        raise ValueError(f"seeds must hold one seed per round ({len(tables)}), got {len(seeds)}")
    return [np.asarray(t) for t in tables]


def _check_decode(decode: str) -> None:
    if decode not in DECODERS:
        raise ValueError(f"decode must be one of {DECODERS}, got {decode!r}")


def shared_hash_estimate(
    tables: Sequence[ArrayLike],
    seed: int,
    depth: int,
    width: int,
    ids: ArrayLike | None = None,
    *,
    domain: int | None = None,
    decode: str = "median",
) -> np.ndarray:
    """Adaptation A: all rounds hashed with `seed`; decode the summed table once."""
    _check_decode(decode)
    arrs = _check(tables, [seed], 1)
    cs = CountSketch(depth, width, seed, domain=domain)
    checked = [cs.check_table(t, f"tables[{i}]") for i, t in enumerate(arrs)]
    exact = all(np.issubdtype(t.dtype, np.integer) for t in checked)
    total = np.zeros(cs.shape, dtype=np.int64 if exact else np.float64)  # integer sums stay exact
    for t in checked:
        total += t
    return cs.decode(total, ids, method=decode)


def _round_rows(
    tables: list[np.ndarray], seeds: Sequence[int], depth: int, width: int, ids: ArrayLike | None, domain: int | None
) -> Iterator[np.ndarray]:
    """Each round's (R, n) row estimates, one round at a time."""
    for t, table in enumerate(tables):
        cs = CountSketch(depth, width, seeds[t], domain=domain)
        yield cs.row_estimates(cs.check_table(table, f"tables[{t}]"), ids)


_POOL_BLOCK = 1 << 24  # row estimates held at once by `pooled_estimate` (M * R * ids per block)


def pooled_estimate(
    tables: Sequence[ArrayLike],
    seeds: Sequence[int],
    depth: int,
    width: int,
    ids: ArrayLike | None = None,
    *,
    domain: int | None = None,
    decode: str = "median",
) -> np.ndarray:
    """Adaptation B: round t hashed with seeds[t]; M * (median or mean of all M*R row estimates).

    Items are processed in blocks so that at most ~2^24 row estimates are held at once."""
    _check_decode(decode)
    arrs = _check(tables, seeds, len(tables))
    m = len(arrs)
    probe = CountSketch(depth, width, seeds[0], domain=domain)
    all_ids = probe._decode_ids(ids)  # validated once against the domain
    sketches = [CountSketch(depth, width, seeds[t]) for t in range(m)]  # no (R, d) caches for M rounds
    checked = [sketches[t].check_table(arrs[t], f"tables[{t}]") for t in range(m)]
    block = max(1, _POOL_BLOCK // (m * sketches[0].depth))
    out = np.empty(all_ids.shape[0])
    for a in range(0, all_ids.shape[0], block):
        chunk = all_ids[a : a + block]
        rows = np.concatenate([sketches[t].row_estimates(checked[t], chunk) for t in range(m)], axis=0)
        out[a : a + block] = m * combine_rows(rows, decode)
    return out


def hybrid_estimate(
    tables: Sequence[ArrayLike],
    seeds: Sequence[int],
    depth: int,
    width: int,
    ids: ArrayLike | None = None,
    *,
    domain: int | None = None,
    decode: str = "median",
) -> np.ndarray:
    """Hybrid sketch: round t hashed with seeds[t]; sum over rounds of each round's median (or mean) over rows."""
    _check_decode(decode)
    arrs = _check(tables, seeds, len(tables))
    total: np.ndarray | None = None
    for rows in _round_rows(arrs, seeds, depth, width, ids, domain):
        est = combine_rows(rows, decode)
        total = est if total is None else total + est
    return total  # type: ignore[return-value]


def shared_bucket_estimate(
    tables: Sequence[ArrayLike],
    seeds: Sequence[int],
    depth: int,
    width: int,
    ids: ArrayLike | None = None,
    *,
    domain: int | None = None,
    decode: str = "median",
) -> np.ndarray:
    """Alternative reading: buckets from seeds[0] in every round, signs from seeds[t] in round t
    (encode with `CountSketch(..., seed=seeds[0], sign_seed=seeds[t])`); rows summed over rounds, then median."""
    _check_decode(decode)
    arrs = _check(tables, seeds, len(tables))
    acc: np.ndarray | None = None
    for t, table in enumerate(arrs):
        cs = CountSketch(depth, width, seeds[0], domain=domain, sign_seed=seeds[t])
        rows = cs.row_estimates(cs.check_table(table, f"tables[{t}]"), ids)
        acc = rows if acc is None else acc + rows
    return combine_rows(acc, decode)  # type: ignore[arg-type]


def round_sketch(method: str, t: int, seeds: Sequence[int], depth: int, width: int, **kwargs) -> CountSketch:
    """The CountSketch that round t must encode with under `method` (the client side of `multiround_estimate`)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "shared":
        return CountSketch(depth, width, seeds[0], **kwargs)
    if method == "shared_buckets":
        return CountSketch(depth, width, seeds[0], sign_seed=seeds[t], **kwargs)
    return CountSketch(depth, width, seeds[t], **kwargs)


def multiround_estimate(
    tables: Sequence[ArrayLike],
    seeds: Sequence[int],
    depth: int = 5,
    width: int = 4096,
    ids: ArrayLike | None = None,
    method: str = "hybrid",
    *,
    decode: str = "median",
    domain: int | None = None,
) -> np.ndarray:
    """Global count estimates (float64) for `ids` from M per-round summed tables.

    `method`: "hybrid" (default), "shared" (every round used seeds[0]), "pooled", or "shared_buckets" (buckets
    from seeds[0], signs from seeds[t]); for "hybrid" and "pooled" round t used seeds[t]. `decode`: "median" or
    "mean" (count-mean; then hybrid and pooled coincide). `ids=None` needs `domain` and estimates all of [0, d).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "shared":
        if len(seeds) not in (1, len(tables)):
            raise ValueError(f"seeds must hold the shared seed or one seed per round ({len(tables)}) for "
                             f"method='shared', got {len(seeds)}")
        return shared_hash_estimate(tables, seeds[0], depth, width, ids, domain=domain, decode=decode)
    fn = {"hybrid": hybrid_estimate, "pooled": pooled_estimate, "shared_buckets": shared_bucket_estimate}[method]
    return fn(tables, seeds, depth, width, ids, domain=domain, decode=decode)
