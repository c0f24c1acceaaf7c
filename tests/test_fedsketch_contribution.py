"""Contribution bounding: a client's table cannot exceed the sensitivity its privacy accounting assumes.

For adversarial data (every item in one bucket, items repeated many times) the bounded table of a client with a cap
of m distinct items has l1 <= m R and l2 <= sqrt(m R); the fast sum equals the sum of the per-client tables.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsketch import CountSketch
from fedsketch.contribution import (
    bound_items,
    bounded_sum,
    bounded_tables,
    check_contribution,
    distinct_items,
)
from fedsketch.privacy import sketch_sensitivity


def _norms(table: np.ndarray) -> tuple[float, float]:
    t = table.astype(np.float64)
    return float(np.abs(t).sum()), float(np.sqrt((t * t).sum()))


@settings(max_examples=60, deadline=None)
@given(
    width=st.sampled_from([1, 2, 3, 8]),
    depth=st.integers(1, 7),
    cap=st.integers(1, 12),
    n_items=st.integers(0, 200),
    id_range=st.sampled_from([3, 50, 10**9]),
    seed=st.integers(0, 2**31),
)
def test_bounded_table_respects_l1_mr_and_l2_sqrt_mr_for_adversarial_data(width, depth, cap, n_items, id_range, seed):
    """Width 1 puts every item of a client in the same bucket of every row; a small id range repeats items."""
    rng = np.random.default_rng(seed)
    items = rng.integers(0, id_range, n_items)
    clients = rng.integers(0, 4, n_items)
    kept = distinct_items(items, clients, cap=cap)
    sketch = CountSketch(depth, width, seed=seed)
    tables = bounded_tables(sketch, kept.items, kept.client_index, 4)
    sens = sketch_sensitivity(depth, cap, contribution="distinct")
    assert sens.l1 == cap * depth and sens.l2 == pytest.approx(math.sqrt(cap * depth))
    for table in tables:
        l1, l2 = _norms(table)
        assert l1 <= sens.l1 and l2 <= sens.l2 + 1e-12
        check_contribution(table, cap=cap)
    np.testing.assert_array_equal(bounded_sum(sketch, kept.items, kept.client_index), tables.sum(axis=0))


def test_one_client_repeating_one_item_counts_once_and_colliding_items_are_clipped():
    sketch = CountSketch(5, 1, seed=0)  # one bucket per row: every item collides with every other
    kept = distinct_items(np.array([7] * 1000 + [3] * 10 + [9, 11]), cap=3)
    np.testing.assert_array_equal(kept.items, [3, 7, 9])  # 7 and 3 are the most frequent; 9 and 11 tie -> 9
    assert kept.n_dropped == 1012 - 3 and kept.n_clients_capped == 1
    (table,) = bounded_tables(sketch, kept.items, np.zeros(3, dtype=np.int64), 1)
    assert np.abs(table).max() <= 1 and _norms(table)[1] <= math.sqrt(3 * 5)
    raw = sketch.encode(kept.items)  # without the cell bound the same items could reach 3 per row
    assert np.abs(raw).max() <= 3
    occ = bound_items(np.array([7] * 1000), cap=3, contribution="occurrences", seed=0)
    assert np.array_equal(occ.items, [7, 7, 7])  # the occurrence mode keeps repeats: Delta2 = m sqrt(R)
    assert sketch_sensitivity(5, 3, contribution="occurrences").l2 == pytest.approx(3 * math.sqrt(5))


def test_distinct_items_keeps_each_clients_most_frequent_items_ties_to_the_smaller_id():
    items = np.array([5, 5, 5, 9, 9, 1, 2, 2, 8, 8, 8, 4, 4, 4, 6, 6, 6])
    clients = np.array([0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    out = distinct_items(items, clients, cap=2)
    np.testing.assert_array_equal(out.client_index, [0, 0, 2, 2])
    np.testing.assert_array_equal(out.items, [2, 5, 4, 6])  # client 0: 5 (x3), then 2 and 9 tie (x2) -> 2; client 2: all x3
    assert out.n_clients_capped == 2


def test_distinct_items_matches_a_reference_implementation():
    rng = np.random.default_rng(4)
    items = rng.zipf(1.3, 3000) % 400
    clients = rng.integers(0, 30, 3000)
    out = distinct_items(items, clients, cap=7)
    want_items, want_clients = [], []
    for c in range(30):
        vals, counts = np.unique(items[clients == c], return_counts=True)
        order = sorted(range(len(vals)), key=lambda i: (-counts[i], vals[i]))[:7]
        want_items += sorted(vals[order].tolist())
        want_clients += [c] * len(order)
    np.testing.assert_array_equal(out.items, want_items)
    np.testing.assert_array_equal(out.client_index, want_clients)
    assert out.n_dropped == 3000 - len(want_items)


@pytest.mark.parametrize("id_range", [1000, 10**15])  # one int64 key per pair, and the lexsort path for huge ids
def test_bounded_sum_equals_the_sum_of_per_client_tables(id_range):
    rng = np.random.default_rng(1)
    items = rng.integers(0, id_range, 5000)
    clients = rng.integers(0, 60, 5000)
    kept = distinct_items(items, clients, cap=40)
    sketch = CountSketch(5, 16, seed=3)  # narrow: many collisions inside each client
    tables = bounded_tables(sketch, kept.items, kept.client_index, 60)
    assert (np.abs(sketch.encode_clients(kept.items, kept.client_index, 60)) > 1).any()  # the clip mattered
    np.testing.assert_array_equal(bounded_sum(sketch, kept.items, kept.client_index), tables.sum(axis=0))
    occ = sketch.encode_clients(items, clients, 60)
    np.testing.assert_array_equal(bounded_sum(sketch, items, clients, contribution="occurrences"), occ.sum(axis=0))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: distinct_items(np.arange(3), cap=0), "cap"),
        (lambda: distinct_items(np.arange(3), cap=1.5), "cap"),
        (lambda: distinct_items(np.array([1.0, 2.0]), cap=1), "items"),
        (lambda: distinct_items(np.arange(3), np.array([0, 1]), cap=1), "client_index"),
        (lambda: bound_items(np.arange(3), cap=1, contribution="occurrences"), "seed"),
        (lambda: bound_items(np.arange(3), cap=1, contribution="all"), "contribution"),
        (lambda: check_contribution(np.array([[2, 0]]), cap=3), r"cells must lie in \[-1, 1\]"),
        (lambda: check_contribution(np.array([[1, 1, -1]]), cap=2), "l1 <= cap"),
        (lambda: check_contribution(np.array([[0.5]]), cap=2), "integer"),
    ],
)
def test_bad_input_names_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cap_items_with_keys_keeps_each_clients_smallest_keys_so_one_client_alone_gets_the_same_subsample():
    from fedsketch.privacy import cap_items

    items = np.arange(12)
    clients = np.repeat([0, 1], 6)
    keys = np.array([5, 1, 4, 0, 3, 2, 0.5, 0.1, 0.9, 0.3, 0.2, 0.8])
    out = cap_items(items, clients, cap=2, seed=0, keys=keys)
    np.testing.assert_array_equal(out.items, [1, 3, 7, 10])
    alone = cap_items(items[6:], cap=2, seed=99, keys=keys[6:])
    np.testing.assert_array_equal(alone.items, [7, 10])
    with pytest.raises(ValueError, match="keys must have the shape"):
        cap_items(items, clients, cap=2, seed=0, keys=keys[:3])
