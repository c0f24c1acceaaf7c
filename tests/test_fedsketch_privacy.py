"""Distributed DP: RDP formulas against hand values, Gaussian limit, calibration, noise laws, the item cap."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsketch.privacy import (
    ORDERS,
    DiscreteGaussianNoise,
    Sensitivity,
    SkellamNoise,
    calibrate,
    cap_items,
    discrete_gaussian_rdp,
    rdp_to_epsilon,
    sample_discrete_gaussian,
    skellam_rdp,
    sketch_sensitivity,
)


def test_sketch_sensitivity_scales_with_rows_and_item_cap():
    s = sketch_sensitivity(depth=5, item_cap=3)
    assert s.l1 == 15 and s.l2 == pytest.approx(3 * math.sqrt(5))
    r = sketch_sensitivity(depth=5, item_cap=3, neighbouring="replace")
    assert r.l1 == 30 and r.l2 == pytest.approx(6 * math.sqrt(5))


def test_skellam_rdp_matches_the_papers_expression_by_hand():
    # Agarwal-Kairouz-Liu 2021, scale 1: a*D2^2/(2mu) + min(((2a-1)D2^2 + 6 D1)/(4 mu^2), 3 D1/(2 mu)).
    # a=10, mu=50, D1=5, D2^2=5:  10*5/100 = 0.5;  (19*5 + 30)/(4*2500) = 125/10000 = 0.0125;  15/100 = 0.15
    got = skellam_rdp([10], 50.0, Sensitivity(l1=5.0, l2=math.sqrt(5.0)))
    assert got[0] == pytest.approx(0.5 + 0.0125, rel=1e-12)
    # small mu: the second branch 3 D1/(2 mu) is the min.  a=3, mu=2: 3*5/4 = 3.75; min(0.3125*... , 3.75)
    # (5*5 + 30)/(4*4) = 55/16 = 3.4375 < 3*5/(2*2) = 3.75
    got = skellam_rdp([3], 2.0, Sensitivity(l1=5.0, l2=math.sqrt(5.0)))
    assert got[0] == pytest.approx(3.75 + 3.4375, rel=1e-12)
    got = skellam_rdp([3], 0.5, Sensitivity(l1=5.0, l2=math.sqrt(5.0)))  # 55/1 = 55 > 15 -> 15
    assert got[0] == pytest.approx(15.0 + 15.0, rel=1e-12)


@pytest.mark.parametrize("mu", [100.0, 1e3, 1e4])
def test_skellam_epsilon_approaches_gaussian_mechanism_for_large_variance(mu):
    s = sketch_sensitivity(depth=5)
    eps = SkellamNoise(mu).epsilon(1e-5, s)
    acc = dp_accounting.rdp.RdpAccountant([float(o) for o in ORDERS])
    acc.compose(dp_accounting.GaussianDpEvent(noise_multiplier=math.sqrt(mu) / s.l2))
    gauss = acc.get_epsilon(1e-5)
    assert eps >= gauss  # Skellam's RDP is the Gaussian's plus a positive term
    assert eps / gauss - 1 < 0.02  # measured 0.6% at mu=100, 0.06% at 1e3, 0.005% at 1e4


def test_discrete_gaussian_rdp_by_hand_and_gaussian_limit():
    s = Sensitivity(l1=4.0, l2=2.0)
    # n=2 clients, per-client sigma^2 = 0.05: tau = 10 exp(-2 pi^2 * 0.05 * 1/2); D = 3; a1 = 4/sqrt(.1), a2 = 2/sqrt(.1)
    tau = 10 * math.exp(-(math.pi**2) * 0.05)
    a1, a2, d, a = 4 / math.sqrt(0.1), 2 / math.sqrt(0.1), 3, 4
    want = min(a / 2 * a2**2 + tau * d, a / 2 * (a2**2 + 2 * a1 * tau + tau**2 * d), a / 2 * (a2 + math.sqrt(d) * tau) ** 2)
    got = discrete_gaussian_rdp([a], 0.1, s, num_clients=2, dim=d)
    assert got[0] == pytest.approx(want, rel=1e-12)
    # large per-client sigma: tau ~ 0 and the curve is the Gaussian a D2^2 / (2 var)
    got = discrete_gaussian_rdp(np.array([2, 8]), 400.0, s, num_clients=100, dim=10_000)
    np.testing.assert_allclose(got, np.array([2, 8]) * 4 / 800, rtol=1e-9)


def test_rdp_conversion_is_dp_accountings():
    orders = np.array(ORDERS)
    rdp = orders * 0.01
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    assert rdp_to_epsilon(orders, rdp, 1e-6) == pytest.approx(compute_epsilon(list(orders), list(rdp), 1e-6)[0])


@pytest.mark.parametrize("mechanism", ["skellam", "discrete_gaussian"])
def test_calibrate_hits_the_target_from_above(mechanism):
    s = sketch_sensitivity(depth=5, item_cap=2)
    cls = SkellamNoise if mechanism == "skellam" else DiscreteGaussianNoise
    var = calibrate(2.0, 1e-6, s, mechanism=mechanism, num_clients=50, dim=5 * 256)
    eps = cls(var, 50).epsilon(1e-6, s, dim=5 * 256)
    assert eps <= 2.0 and eps > 2.0 * (1 - 1e-4)
    assert cls(var * 0.999, 50).epsilon(1e-6, s, dim=5 * 256) > 2.0
    noise = cls.calibrate(2.0, 1e-6, s, num_clients=50, dim=5 * 256)
    assert noise.variance == pytest.approx(var) and noise.num_clients == 50
    assert calibrate(4.0, 1e-6, s, mechanism=mechanism, num_clients=50, dim=5 * 256) < var


def test_rounds_compose_in_parallel_for_disjoint_cohorts_and_add_up_when_repeated():
    s = sketch_sensitivity(depth=4)
    noise = SkellamNoise(200.0)
    one = noise.epsilon(1e-5, s)
    assert noise.epsilon(1e-5, s, rounds=16, composition="disjoint") == one
    rep = noise.epsilon(1e-5, s, rounds=16, composition="repeated")
    assert rep == pytest.approx(rdp_to_epsilon(ORDERS, 16 * noise.rdp(s), 1e-5))
    assert 3 * one < rep < 16 * one  # RDP composition: about sqrt(16) = 4x, far below the 16x of basic composition
    assert SkellamNoise.calibrate(1.0, 1e-5, s, rounds=16, composition="repeated").variance > 10 * calibrate(1.0, 1e-5, s)


def test_skellam_shares_sum_to_the_target_variance():
    noise = SkellamNoise(variance=30.0, num_clients=20)
    shares = noise.clients_noise(20, (4, 5000), rng=1)
    assert shares.dtype == np.int64 and shares.shape == (20, 4, 5000)
    total = shares.sum(axis=0)
    assert abs(total.var() / 30.0 - 1) < 0.03  # 20,000 samples: sd of the ratio ~1%; measured -0.9%
    assert abs(total.mean()) < 0.15  # sd 0.04
    direct = noise.sum_noise((4, 5000), rng=2)  # same law drawn in one go
    assert abs(direct.var() / 30.0 - 1) < 0.03
    np.testing.assert_array_equal(noise.client_noise((3, 7), rng=5), noise.client_noise((3, 7), rng=5))


def test_discrete_gaussian_sampler_matches_the_exact_pmf():
    sigma2 = 0.7
    x = sample_discrete_gaussian(np.random.default_rng(0), sigma2, (100_000,))
    support = np.arange(-6, 7)
    pmf = np.exp(-(support**2) / (2 * sigma2))
    pmf /= pmf.sum()
    counts = np.array([(x == k).sum() for k in support])
    assert counts.sum() == len(x)  # nothing beyond |6| (mass < 1e-11)
    keep = pmf * len(x) > 5
    chi2 = float(((counts[keep] - pmf[keep] * len(x)) ** 2 / (pmf[keep] * len(x))).sum())
    assert keep.sum() == 7
    assert chi2 < 22.5  # 99.9% quantile of chi2(7 cells - 1); measured 6.7
    big = DiscreteGaussianNoise(variance=16.0 * 10, num_clients=10).clients_noise(10, 20_000, rng=3)
    assert abs(big.var() / 16.0 - 1) < 0.03  # sigma=4: variance 16 (to 1e-9); measured +0.2%


def test_secure_mode_is_unseeded_and_refuses_a_seed():
    noise = SkellamNoise(100.0, 2, secure_mode=True)
    a, b = noise.client_noise(1000), noise.client_noise(1000)
    assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match="rng"):
        noise.client_noise(10, rng=0)
    with pytest.raises(ValueError, match="rng"):
        SkellamNoise(1.0).client_noise(10)  # non-secure mode needs an explicit seed or generator


def test_item_cap_subsamples_only_clients_over_the_cap_and_counts_the_drop():
    rng = np.random.default_rng(0)
    client = np.repeat(np.arange(6), [1, 5, 12, 3, 30, 4])
    items = rng.integers(0, 1000, size=len(client))
    out = cap_items(items, client, cap=4, seed=7)
    per_client = np.bincount(out.client_index, minlength=6)
    np.testing.assert_array_equal(per_client, [1, 4, 4, 3, 4, 4])
    assert out.n_dropped == (5 - 4) + (12 - 4) + (30 - 4) and out.n_clients_capped == 3
    for c in (0, 3, 5):  # under the cap: untouched, in order
        np.testing.assert_array_equal(out.items[out.client_index == c], items[client == c])
    again = cap_items(items, client, cap=4, seed=7)
    np.testing.assert_array_equal(again.items, out.items)
    # the subsample is uniform: over many seeds each of client 4's 30 items is kept ~4/30 of the time
    kept = np.zeros(30)
    pos = np.flatnonzero(client == 4)
    idx = np.arange(len(client))
    for seed in range(300):
        k = cap_items(idx, client, cap=4, seed=seed).items
        kept += np.isin(pos, k)
    assert np.all(np.abs(kept / 300 - 4 / 30) < 0.08)  # sd 0.02; measured max 0.05


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: calibrate(0.0, 1e-5, sketch_sensitivity(5)), "target_epsilon"),
        (lambda: calibrate(float("inf"), 1e-5, sketch_sensitivity(5)), "target_epsilon"),
        (lambda: calibrate(1.0, 0.0, sketch_sensitivity(5)), "delta"),
        (lambda: calibrate(1.0, 1.0, sketch_sensitivity(5)), "delta"),
        (lambda: calibrate(1.0, 1e-5, sketch_sensitivity(5), mechanism="laplace"), "mechanism"),
        (lambda: SkellamNoise(0.0), "variance"),
        (lambda: SkellamNoise(float("nan")), "variance"),
        (lambda: SkellamNoise(1.0, num_clients=0), "num_clients"),
        (lambda: SkellamNoise(1.0).epsilon(1e-5, sketch_sensitivity(5), rounds=0), "rounds"),
        (lambda: SkellamNoise(1.0).epsilon(1e-5, sketch_sensitivity(5), composition="serial"), "composition"),
        (lambda: DiscreteGaussianNoise(1.0).epsilon(1e-5, sketch_sensitivity(5), dim=0), "dim"),
        (lambda: DiscreteGaussianNoise(1.0).epsilon(1e-5, sketch_sensitivity(5)), "dim is required"),
        (lambda: sketch_sensitivity(0), "depth"),
        (lambda: sketch_sensitivity(5, item_cap=0), "item_cap"),
        (lambda: cap_items(np.arange(3), cap=0, seed=0), "cap"),
        (lambda: cap_items(np.arange(3), np.zeros(2), cap=1, seed=0), "client_index"),
    ],
)
def test_bad_input_names_the_parameter_and_range(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@settings(max_examples=15, deadline=None)
@given(
    depth=st.integers(1, 9),
    cap=st.integers(1, 8),
    eps=st.floats(0.1, 16.0),
    log_delta=st.floats(-12.0, -3.0),
    repeated=st.integers(1, 50),
)
def test_property_calibrated_variance_is_the_smallest_that_meets_the_target(depth, cap, eps, log_delta, repeated):
    s = sketch_sensitivity(depth, item_cap=cap)
    delta = 10.0**log_delta
    var = calibrate(eps, delta, s, rounds=repeated, composition="repeated")
    noise = SkellamNoise(var)
    assert noise.epsilon(delta, s, rounds=repeated, composition="repeated") <= eps
    assert SkellamNoise(var * (1 - 1e-4)).epsilon(delta, s, rounds=repeated, composition="repeated") > eps
    # more noise never costs privacy: the RDP curve falls with the variance at every order
    assert np.all(np.diff(np.stack([skellam_rdp(ORDERS, v, s) for v in (var / 2, var, 2 * var)]), axis=0) < 0)
