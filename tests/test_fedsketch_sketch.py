"""CountSketch: linearity, exact decoding on sparse inputs, per-client encoding, decoders and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsketch import CountSketch
from fedsketch.hashing import MAX_ID

ids_strategy = st.lists(st.integers(min_value=0, max_value=MAX_ID - 1), max_size=40)


@settings(max_examples=40, deadline=None)
@given(a=ids_strategy, b=ids_strategy, seed=st.integers(0, 2**32))
def test_sketch_is_linear_in_the_items(a, b, seed):
    cs = CountSketch(depth=3, width=64, seed=seed)
    ta, tb = cs.encode(np.array(a, dtype=np.int64)), cs.encode(np.array(b, dtype=np.int64))
    assert np.array_equal(cs.encode(np.array(a + b, dtype=np.int64)), ta + tb)


@settings(max_examples=30, deadline=None)
@given(
    ids=st.lists(st.integers(0, 5000), min_size=1, max_size=30),
    c1=st.lists(st.integers(0, 1000), min_size=30, max_size=30),
    c2=st.lists(st.integers(0, 1000), min_size=30, max_size=30),
)
def test_sketch_is_linear_in_the_counts(ids, c1, c2):
    cs = CountSketch(depth=4, width=32, seed=3)
    x = np.array(ids, dtype=np.int64)
    a, b = np.array(c1[: len(ids)]), np.array(c2[: len(ids)])
    assert np.array_equal(cs.encode(x, a + b), cs.encode(x, a) + cs.encode(x, b))


def test_items_and_ids_with_counts_give_the_same_table_on_every_path():
    rng = np.random.default_rng(0)
    items = rng.integers(0, 300, 5000)
    cs = CountSketch(5, 128, seed=1)
    ids, counts = np.unique(items, return_counts=True)
    table = cs.encode(items)  # bincount path (bounded ids)
    assert table.dtype == np.int64 and table.shape == (5, 128)
    assert np.array_equal(table, cs.encode(ids, counts))
    # huge ids take the np.unique path; shifting ids changes hashes, so compare against the counts form
    big = items.astype(np.int64) * 10**15
    assert np.array_equal(cs.encode(big), cs.encode(ids * 10**15, counts))
    # a domain (hash cache) does not change the table
    assert np.array_equal(CountSketch(5, 128, seed=1, domain=300).encode(items), table)
    # each row sums to the signed total; |entries| sum to at most the number of items
    assert np.abs(table).sum(axis=1).max() <= items.size


def test_decode_is_exact_on_sparse_inputs_with_wide_tables():
    rng = np.random.default_rng(1)
    support = rng.choice(10**9, 20, replace=False)
    counts = rng.integers(1, 10_000, 20)
    cs = CountSketch(5, 4096, seed=2)
    table = cs.encode(support, counts)
    assert np.array_equal(cs.decode(table, support), counts.astype(np.float64))
    others = rng.integers(10**9, 2 * 10**9, 1000)
    assert np.count_nonzero(cs.decode(table, others)) == 0


def test_decode_all_ids_of_a_domain_and_the_mean_decoder():
    rng = np.random.default_rng(2)
    d = 2000
    items = rng.zipf(1.3, 20_000) % d
    truth = np.bincount(items, minlength=d)
    cs = CountSketch(5, 512, seed=4, domain=d)
    table = cs.encode(items)
    est = cs.decode(table)
    assert est.dtype == np.float64 and est.shape == (d,)
    assert np.array_equal(est, cs.decode(table, np.arange(d)))
    assert np.array_equal(est, CountSketch(5, 512, seed=4).decode(table, np.arange(d)))
    mean = cs.decode(table, method="mean")
    assert np.allclose(mean, cs.row_estimates(table).mean(axis=0))
    # count-median isolates heavy hitters: far smaller l_inf error than count-mean here
    assert np.abs(est - truth).max() < 0.5 * np.abs(mean - truth).max()


def test_l2_estimate_is_close_to_the_count_norm():
    rng = np.random.default_rng(3)
    items = rng.zipf(1.2, 50_000) % 10_000
    cs = CountSketch(7, 1024, seed=5)
    true = np.linalg.norm(np.bincount(items))
    assert abs(cs.l2_estimate(cs.encode(items)) / true - 1.0) < 0.1


@pytest.mark.parametrize("id_range", [1000, 10**6, 1 << 62])  # lookup-table path, np.unique path, huge ids
def test_encode_clients_equals_per_client_encode_and_sums_to_encode(id_range):
    rng = np.random.default_rng(4)
    n_clients, n = 37, 3000
    items = rng.integers(0, id_range, n, dtype=np.int64)
    client = rng.integers(0, n_clients - 2, n)  # the last two clients hold nothing
    cs = CountSketch(4, 256, seed=6)
    per = cs.encode_clients(items, client, n_clients)
    assert per.shape == (n_clients, 4, 256) and per.dtype == np.int64
    for c in range(n_clients):
        assert np.array_equal(per[c], cs.encode(items[client == c]))
    assert np.array_equal(per.sum(axis=0), cs.encode(items))
    counts = rng.integers(0, 5, n)
    per_w = cs.encode_clients(items, client, n_clients, counts=counts)
    assert np.array_equal(per_w.sum(axis=0), cs.encode(items, counts))
    assert cs.encode_clients(items, client).shape[0] == n_clients - 2


@pytest.mark.parametrize("top", [1, 50, 10**5])
def test_distinct_matches_np_unique(top):
    from fedsketch.sketch import _distinct

    ids = np.random.default_rng(top).integers(0, top, 2000, dtype=np.int64)
    uniq, inverse = _distinct(ids)
    ref_u, ref_i = np.unique(ids, return_inverse=True)
    assert np.array_equal(uniq, ref_u) and np.array_equal(inverse, ref_i) and uniq.dtype == np.int64


def test_sign_seed_keeps_buckets_and_changes_signs():
    ids = np.arange(5000)
    b1, s1 = CountSketch(3, 64, seed=1).hash(ids)
    b2, s2 = CountSketch(3, 64, seed=1, sign_seed=2).hash(ids)
    assert np.array_equal(b1, b2) and 0.4 < np.mean(s1 != s2) < 0.6
    assert np.array_equal(s2, CountSketch(3, 64, seed=2).hash(ids)[1])  # the signs of seed=sign_seed
    assert np.array_equal(CountSketch(3, 64, seed=1, sign_seed=1).hash(ids)[1], s1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 0}, "depth must be an integer in \\[1, 64\\]"),
        ({"depth": 65}, "depth"),
        ({"width": 0}, "width must be an integer in \\[1, 1073741824\\]"),
        ({"width": 2.5}, "width"),
        ({"seed": -1}, "seed"),
        ({"domain": 0}, "domain"),
    ],
)
def test_bad_configuration_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CountSketch(**{"depth": 5, "width": 64, "seed": 0, **kwargs})


def test_bad_items_counts_and_tables_are_rejected():
    cs = CountSketch(5, 64, seed=0, domain=100)
    with pytest.raises(ValueError, match=r"items must lie in \[0, 100\)"):
        cs.encode(np.array([3, 100]))
    with pytest.raises(ValueError, match=r"items must lie in \[0, 100\)"):
        cs.encode(np.array([-1, 3]))
    with pytest.raises(ValueError, match="items must have an integer dtype"):
        cs.encode(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="items must be a 1-d array"):
        cs.encode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"items must lie in \[0, 4611686018427387904\)"):
        CountSketch(5, 64, seed=0).encode(np.array([-5]))
    with pytest.raises(ValueError, match="counts must be non-negative"):
        cs.encode(np.array([1, 2]), np.array([3, -1]))
    with pytest.raises(ValueError, match=r"counts must have shape \(2,\)"):
        cs.encode(np.array([1, 2]), np.array([3]))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 100\)"):
        cs.decode(np.zeros((5, 64), dtype=np.int64), np.array([100]))
    with pytest.raises(ValueError, match=r"table must have shape \(depth, width\) = \(5, 64\)"):
        cs.decode(np.zeros((5, 63), dtype=np.int64))
    with pytest.raises(ValueError, match="table must have a signed integer"):
        cs.decode(np.zeros((5, 64), dtype=np.complex128))
    with pytest.raises(ValueError, match="table must have a signed integer"):
        cs.decode(np.zeros((5, 64), dtype=bool))
    with pytest.raises(ValueError, match="method must be one of"):
        cs.decode(np.zeros((5, 64), dtype=np.int64), method="max")
    with pytest.raises(ValueError, match="ids must be given"):
        CountSketch(5, 64, seed=0).decode(np.zeros((5, 64), dtype=np.int64))
    with pytest.raises(ValueError, match=r"client_index must lie in \[0, 3\)"):
        cs.encode_clients(np.array([1, 2]), np.array([0, 3]), n_clients=3)
    with pytest.raises(ValueError, match=r"client_index must have shape \(2,\)"):
        cs.encode_clients(np.array([1, 2]), np.array([0]))


def test_empty_inputs_give_zero_tables():
    cs = CountSketch(3, 16, seed=0)
    assert not cs.encode(np.array([], dtype=np.int64)).any()
    assert cs.encode_clients(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 4).shape == (4, 3, 16)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6, 7, 8, 15, 16])
def test_row_median_is_bit_identical_to_numpy_median(depth):
    from fedsketch.sketch import combine_rows

    rng = np.random.default_rng(depth)
    for rows in (rng.integers(-4, 4, (depth, 500)).astype(np.float64), rng.normal(size=(depth, 500)) * 1e6):
        assert np.array_equal(combine_rows(rows, "median"), np.median(rows, axis=0))
        assert np.allclose(combine_rows(rows, "mean"), rows.mean(axis=0))
