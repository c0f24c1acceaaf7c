"""Seeded Mersenne-prime hashing: exact arithmetic, ranges, determinism and independence statistics."""

from __future__ import annotations

import numpy as np
import pytest

from fedsketch.hashing import MAX_ID, MERSENNE_P, RowHashes, split

P = MERSENNE_P
EDGE_IDS = np.array([0, 1, 2, P - 2, P - 1, P, P + 1, 2 * P - 1, 2 * P, 2 * P + 1, MAX_ID - 1], dtype=np.int64)


def _reference_g(coef: list[list[int]], x: int) -> int:
    """g(x) = sum_j v^j sum_i c_{j,i} u^i mod p with Python integers (x = v p + u)."""
    v, u = divmod(x, P)
    return sum(sum(coef[j][i] * u**i for i in range(4)) * v**j for j in range(3)) % P


@pytest.mark.parametrize("sign_seed", [None, 99])
def test_vectorized_hash_equals_python_integer_reference(sign_seed):
    rng = np.random.default_rng(1)
    ids = np.concatenate([EDGE_IDS, rng.integers(0, MAX_ID, 200, dtype=np.int64)])
    h = RowHashes(depth=3, width=1000, seed=7, sign_seed=sign_seed)
    buckets, signs = h.hash(ids)
    for r in range(3):
        for i, x in enumerate(ids.tolist()):
            g = _reference_g(h._coef[r], x)
            s = g if sign_seed is None else _reference_g(h._sign_coef[r], x)
            assert buckets[r, i] == (g >> 1) % 1000
            assert signs[r, i] == 1 - 2 * (s & 1)


def test_ranges_over_the_whole_id_range():
    rng = np.random.default_rng(2)
    ids = np.concatenate([EDGE_IDS, rng.integers(0, MAX_ID, 20_000, dtype=np.int64)])
    for width in (1, 7, 256, 1 << 20):
        buckets, signs = RowHashes(4, width, seed=3).hash(ids)
        assert buckets.dtype == np.intp and buckets.min() >= 0 and buckets.max() < width
        assert set(np.unique(signs).tolist()) <= {-1, 1}


def test_same_seed_same_hashes_pinned_values():
    """Golden values: BLAKE2b-derived coefficients and exact uint64 arithmetic make these machine-independent."""
    b, s = RowHashes(3, 1000, seed=0).hash(np.array([0, 1, 12345, 2**61 - 1, 2**62 - 1]))
    assert b.tolist() == [[223, 228, 695, 851, 14], [791, 868, 673, 427, 27], [999, 164, 873, 790, 296]]
    assert s.tolist() == [[-1, -1, -1, -1, 1], [-1, -1, -1, -1, -1], [1, -1, -1, 1, -1]]
    ids = np.arange(1000)
    b1, s1 = RowHashes(5, 64, seed=11).hash(ids)
    b2, s2 = RowHashes(5, 64, seed=11).hash(ids)
    b3, _ = RowHashes(5, 64, seed=12).hash(ids)
    assert np.array_equal(b1, b2) and np.array_equal(s1, s2)
    assert np.mean(b1 != b3) > 0.9


def test_raw_values_split_to_the_same_hashes_at_any_width():
    ids = np.arange(5000)
    h = RowHashes(4, 300, seed=5)
    raw = h.raw(ids)
    b, s = split(raw, raw, 300)
    b2, s2 = h.hash(ids)
    assert np.array_equal(b, b2) and np.array_equal(s, s2)
    with pytest.raises(ValueError, match="sign_seed"):
        RowHashes(2, 8, seed=1, sign_seed=2).raw(ids)


def _many_rows(ids: np.ndarray, width: int, n_seeds: int = 100, depth: int = 64):
    """Hashes of `ids` under n_seeds * depth independent rows: (rows, len(ids)) each."""
    bs, ss = zip(*(RowHashes(depth, width, seed=1000 + k).hash(ids) for k in range(n_seeds)))
    return np.concatenate(bs), np.concatenate(ss)


def test_pairwise_collision_rate_is_one_over_width():
    # consecutive ids (Zipf heavy hitters), far apart ids, and ids on both sides of p; 6,400 rows each
    ids = np.array([0, 1, 2, 3, 10**6, P - 1, P, 2**62 - 1], dtype=np.int64)
    b, _ = _many_rows(ids, width=16)
    for i, j in [(0, 1), (1, 2), (0, 4), (5, 6), (4, 7), (0, 6)]:
        rate = np.mean(b[:, i] == b[:, j])
        assert abs(rate - 1 / 16) < 0.02, (i, j, rate)  # sd ~0.003


def test_sign_balance_and_4wise_sign_products_vanish():
    rng = np.random.default_rng(4)
    ids = rng.integers(0, MAX_ID, 100_000, dtype=np.int64)
    _, s = RowHashes(5, 8, seed=9).hash(ids)
    assert np.abs(s.mean(axis=1)).max() < 0.015  # sd 0.0032
    quad = np.array([0, 1, 2, 3, P, 2 * P + 5], dtype=np.int64)
    _, s = _many_rows(quad, width=2)
    s = s.astype(np.float64)
    for idx in [(0, 1), (2, 3), (0, 4), (4, 5), (0, 1, 2), (0, 1, 2, 3), (1, 2, 4, 5), (0, 3, 4, 5)]:
        mean = np.prod(s[:, list(idx)], axis=1).mean()
        assert abs(mean) < 0.05, (idx, mean)  # sd 0.0125 over 6,400 rows


def test_bucket_load_is_uniform_chi_square():
    buckets, _ = RowHashes(3, 64, seed=21).hash(np.arange(64_000))
    for row in buckets:
        load = np.bincount(row, minlength=64)
        chi2 = float(((load - 1000.0) ** 2 / 1000.0).sum())
        assert chi2 < 120.0  # 63 degrees of freedom: P(chi2 > 120) < 1e-5
