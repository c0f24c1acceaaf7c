"""Secure summation: masking hides a client's vector, the sum is exact, dropouts recover, wraps are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsketch.secure_sum import (
    InProcessSecureSum,
    SecureSum,
    SecureSumAborted,
    from_ring,
    required_modulus_bits,
    to_ring,
)


def _clients(n: int, length: int, low: int = -3, high: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high + 1, size=(n, length), dtype=np.int64)


@pytest.mark.parametrize("prg", ["sfc64", "philox"])
def test_masked_upload_looks_uniform_and_differs_from_raw_while_sum_is_exact(prg):
    x = _clients(20, 8192)
    ss = InProcessSecureSum(modulus_bits=32, seed=3, prg=prg)
    assert isinstance(ss, SecureSum)
    res = ss.sum(x)
    np.testing.assert_array_equal(res.total, x.sum(axis=0))
    assert res.total.dtype == np.int64 and res.n_survivors == 20 and res.dropped == ()

    up = ss.server_view.uploads[0].astype(np.float64)  # what the server received from client 0
    raw = x[0].astype(np.float64)
    assert np.mean(up == to_ring(x[0], 32)) < 0.001  # not the raw residues
    # the top 4 bits of a uniform 32-bit residue are uniform on 16 cells: chi-square, 15 dof
    top = (ss.server_view.uploads[0] >> 28).astype(np.int64)
    counts = np.bincount(top, minlength=16)
    chi2 = float(((counts - len(top) / 16) ** 2 / (len(top) / 16)).sum())
    assert chi2 < 37.7  # 99.9% quantile of chi2(15); measured 11.7 (sfc64) / 26.7 (philox); 12-27 over seeds 0-3
    assert abs(np.corrcoef(up, raw)[0, 1]) < 0.05  # measured 0.002 / 0.004; |r| <= 0.015 over seeds 0-3
    assert abs(up.mean() / 2**32 - 0.5) < 0.01  # measured 0.499 / 0.495; raw residues sit near 0 and 2^32


def test_dropped_clients_masks_are_removed_and_survivors_counted():
    x = _clients(40, 257, seed=1)
    ss = InProcessSecureSum(modulus_bits=24, seed=5, neighbours=6)
    drop = [0, 13, 39, 20]
    res = ss.sum(x, dropped=drop)
    alive = np.ones(40, dtype=bool)
    alive[drop] = False
    np.testing.assert_array_equal(res.total, x[alive].sum(axis=0))
    assert res.n_survivors == 36 and res.n_clients == 40 and res.dropped == (0, 13, 20, 39)
    assert len(ss.server_view.revealed_pairs) > 0  # some pair keys had to be revealed
    assert ss.server_view.uploads.shape == (36, 257)
    # without the revealed masks the survivors' masked sum is garbage: unmasking really was needed
    raw_masked = from_ring(ss.server_view.masked_sum, 24)
    assert not np.array_equal(raw_masked, res.total)


def test_too_few_survivors_aborts():
    ss = InProcessSecureSum(modulus_bits=16, seed=0, min_survivors=8)
    with pytest.raises(SecureSumAborted, match="min_survivors=8"):
        ss.sum(_clients(10, 5), dropped=[1, 2, 3])


def test_split_masking_graph_aborts_instead_of_leaking_partial_sums():
    ss = InProcessSecureSum(modulus_bits=16, seed=2, neighbours=2)  # a plain ring
    n = 12
    pairs = ss.mask_graph(n, round_id=0)
    assert len(pairs) == n  # a cycle over a permutation
    adj = {i: [] for i in range(n)}
    for a, b in pairs.tolist():
        adj[a].append(b)
        adj[b].append(a)
    cycle, prev = [0], None
    while len(cycle) < n:
        nxt = [v for v in adj[cycle[-1]] if v != prev][0]
        prev = cycle[-1]
        cycle.append(nxt)
    with pytest.raises(SecureSumAborted, match="components"):
        ss.sum(_clients(n, 4), dropped=[cycle[0], cycle[6]])  # two cuts split the ring


def test_masks_are_fresh_every_round():
    x = _clients(6, 64)
    ss = InProcessSecureSum(modulus_bits=32, seed=9)
    ss.sum(x)
    first = ss.server_view.uploads.copy()
    res = ss.sum(x)
    np.testing.assert_array_equal(res.total, x.sum(axis=0))
    assert np.mean(first == ss.server_view.uploads) < 0.01


def test_complete_graph_when_neighbours_cover_everyone():
    ss = InProcessSecureSum(seed=0, neighbours=100)
    assert ss.mask_graph(10).shape == (45, 2)
    assert InProcessSecureSum(seed=0).mask_graph(1000).shape == (1000 * 10, 2)  # 2*ceil(log2 1000) = 20 neighbours


def test_wrap_around_is_refused_and_the_boundary_is_exact():
    with pytest.raises(ValueError, match="modulus_bits=8.*modulus_bits >= 9"):
        InProcessSecureSum(modulus_bits=8).sum(np.full((10, 3), 13))  # 130 > 127
    ones = np.ones((127, 2), dtype=np.int64)
    np.testing.assert_array_equal(InProcessSecureSum(modulus_bits=8).sum(ones).total, [127, 127])
    np.testing.assert_array_equal(InProcessSecureSum(modulus_bits=8).sum(-ones).total, [-127, -127])
    with pytest.raises(ValueError, match="modulus_bits"):
        InProcessSecureSum(modulus_bits=8).sum(np.ones((128, 2), dtype=np.int64))
    assert required_modulus_bits(128, 1) == 9 and required_modulus_bits(1000, 1) == 11


def test_public_bound_rejects_a_client_outside_it():
    x = _clients(5, 10)
    x[3, 4] = 50
    with pytest.raises(ValueError, match="client 3"):
        InProcessSecureSum(modulus_bits=16).sum(x, bound=10)
    with pytest.raises(ValueError, match="modulus_bits=16"):
        InProcessSecureSum(modulus_bits=16).sum(_clients(5, 10), bound=10_000)  # 5 * 10^4 > 2^15 - 1


@pytest.mark.parametrize(
    ("kwargs", "vectors", "match"),
    [
        ({"modulus_bits": 7}, None, "modulus_bits"),
        ({"modulus_bits": 63}, None, "modulus_bits"),
        ({"neighbours": 1}, None, "neighbours"),
        ({"min_survivors": 0}, None, "min_survivors"),
        ({"min_survivors": 1}, None, "min_survivors"),
        ({"min_survivors": 1.5}, None, "min_survivors"),
        ({"neighbours": 2.5}, None, "neighbours"),
        ({"prg": "mt19937"}, None, "prg"),
        ({}, np.ones((3, 4), dtype=np.float64), "dtype"),
        ({}, np.ones((3, 4), dtype=bool), "dtype"),
        ({}, np.ones(4, dtype=np.int64), "ndim >= 2"),
        ({}, [np.ones(3, dtype=np.int64), np.ones(4, dtype=np.int64)], "common length"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, vectors, match):
    with pytest.raises(ValueError, match=match):
        InProcessSecureSum(**kwargs).sum(vectors if vectors is not None else np.ones((3, 4), dtype=np.int64))


def test_invalid_client_can_be_rejected_as_a_dropout_without_corrupting_the_round():
    x = _clients(12, 30, seed=4)
    x[7, 3] = 99
    ss = InProcessSecureSum(modulus_bits=16, seed=1)
    res = ss.sum(x, dropped=[2], bound=3, reject_invalid=True)
    assert res.rejected == (7,) and res.dropped == (2, 7) and res.n_survivors == 10
    np.testing.assert_array_equal(res.total, np.delete(x, [2, 7], axis=0).sum(axis=0))
    with pytest.raises(ValueError, match="bound"):
        ss.sum(x, reject_invalid=True)


def test_tables_keep_their_shape():
    x = np.random.default_rng(2).integers(-5, 6, size=(7, 3, 16))  # 7 clients' depth x width tables
    res = InProcessSecureSum(modulus_bits=20, seed=4).sum(x, dropped=[2])
    assert res.total.shape == (3, 16)
    np.testing.assert_array_equal(res.total, np.delete(x, 2, axis=0).sum(axis=0))
    with pytest.raises(ValueError, match="client 5"):
        x[5, 2, 9] = -6
        InProcessSecureSum(modulus_bits=20).sum(x, bound=5)


def test_bad_dropped_index_and_list_input():
    ss = InProcessSecureSum(modulus_bits=16)
    with pytest.raises(ValueError, match=r"dropped .*\[0, 3\)"):
        ss.sum(np.ones((3, 4), dtype=np.int64), dropped=[3])
    res = ss.sum([np.arange(4), np.arange(4) * -2, np.ones(4, dtype=np.int32)])
    np.testing.assert_array_equal(res.total, [1, 0, -1, -2])


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(8, 62), data=st.data())
def test_property_signed_ring_round_trip(bits, data):
    half = 2 ** (bits - 1)
    vals = data.draw(st.lists(st.integers(-half, half - 1), min_size=1, max_size=20))
    v = np.array(vals, dtype=np.int64)
    r = to_ring(v, bits)
    assert r.dtype == np.uint64 and int(r.max()) < 2**bits
    np.testing.assert_array_equal(from_ring(r, bits), v)
    # ring addition then lifting equals integer addition whenever the sum stays in range
    w = np.clip(-v, -half, half - 1)
    s = from_ring((to_ring(v, bits) + to_ring(w, bits)) & np.uint64(2**bits - 1), bits)
    np.testing.assert_array_equal(s, v + w)


@settings(max_examples=25, deadline=None)
@given(
    bits=st.integers(12, 62),
    n=st.integers(1, 9),
    length=st.integers(1, 17),
    seed=st.integers(0, 2**32),
    neighbours=st.sampled_from([None, 2, 4, 100]),
    data=st.data(),
)
def test_property_sum_is_exact_over_survivors(bits, n, length, seed, neighbours, data):
    limit = (2 ** (bits - 1) - 1) // n
    rng = np.random.default_rng(seed)
    x = rng.integers(-limit, limit + 1, size=(n, length), dtype=np.int64)
    drop = data.draw(st.lists(st.integers(0, n - 1), max_size=n - 1, unique=True))
    ss = InProcessSecureSum(modulus_bits=bits, seed=seed, neighbours=neighbours)
    alive = np.ones(n, dtype=bool)
    alive[drop] = False
    try:
        res = ss.sum(x, dropped=drop)
    except SecureSumAborted:  # a lone survivor, or a sparse ring split by the dropouts: refusing is correct
        assert alive.sum() < 2 or neighbours == 2 or len(drop) >= 2
        return
    assert alive.sum() >= 2  # a single survivor's "sum" is its own vector: never released
    np.testing.assert_array_equal(res.total, x[alive].sum(axis=0))
    assert res.n_survivors == int(alive.sum())
