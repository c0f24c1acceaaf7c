"""The theory experiments' smoke presets: each writes its record and plot and its strict claims hold (the `smoke`
fixture asserts that); here we also check the numbers the claims rest on."""

from __future__ import annotations

import pytest

from simulations import registry
from simulations.theory import EXPERIMENTS


def test_every_theory_experiment_is_registered_with_its_paper():
    assert len(EXPERIMENTS) == 8
    for name in EXPERIMENTS:
        exp = registry.get(name)
        assert "arXiv:" in exp.paper, name
        assert exp.description.strip(), name


def test_scaling_law_slopes_match_minus_a_minus_1_and_minus_a_minus_1_over_a(smoke):
    m = smoke("scaling-law-linear")["metrics"]["exponents"]
    assert abs(m["2.0"]["approx_slope"] + 1.0) <= 0.1 and abs(m["1.5"]["approx_slope"] + 0.5) <= 0.1
    # against N_eff = N / log2 N the log factor is gone: within 0.03 of -(a-1)/a
    assert abs(m["2.0"]["excess_slope_in_Neff"] + 0.5) <= 0.03
    assert abs(m["1.5"]["excess_slope_in_Neff"] + 1 / 3) <= 0.03


def test_large_stepsize_gd_beats_every_stable_stepsize_by_10x_from_T_300(smoke):
    m = smoke("large-stepsize-logistic")["metrics"]
    assert m["min_ratio_from_claim_horizon"] >= 10
    assert m["slope_eta_T_over_3"] <= -1.7 <= -1.2 <= m["slope_best_stable"] <= -0.8
    assert m["two_over_beta"] == pytest.approx(11.66, abs=0.01)


def test_eos_logistic_converges_with_max_margin_bias_and_exponential_loss_blows_up(smoke):
    m = smoke("eos-logistic")["metrics"]
    assert m["worst_final_loss"] < 1e-4
    assert m["w2_star"] == pytest.approx(0.0, abs=1e-8)
    eos = m["stepsizes"]["30.0"]
    assert eos["eos"] and eos["last_increase"] > 0 and eos["exp_loss_diverged"]
    assert abs(eos["w1_slope_over_theory"] - 1) <= 0.05


def test_two_layer_large_stepsize_oscillates_then_margin_grows(smoke):
    p = smoke("large-stepsize-two-layer")["metrics"]["datasets"]["separable"]
    rows = p["stepsizes"]
    assert rows["16384.0"]["max_loss"] > rows["16384.0"]["initial_loss"]
    assert rows["4.0"]["loss_increases"] == 0
    assert p["loss_ratio_largest_over_smallest"] <= 0.01


def test_asgd_wins_on_the_tail_loses_in_variance(smoke):
    m = smoke("asgd-vs-sgd")["metrics"]
    assert m["sign_changes"] == 1 and m["asgd_faster_at_smallest_eigenvalue"]
    assert m["variance_ratio_min"] >= 1.0 and m["excess_ratio_at_N"] <= 0.8


def test_label_noise_collapses_features_to_the_predicted_rank_one_matrix(smoke):
    m = smoke("label-noise-rank-one")["metrics"]
    assert m["label_noise"]["sv_ratio"] < 0.05 < 0.2 < m["plain_gd"]["sv_ratio"]
    assert m["label_noise"]["trace_hessian"] == pytest.approx(m["min_trace_hessian_on_manifold"], rel=1e-3)
    assert m["label_noise"]["loss"] < 1e-12


def test_mup_depth_exponent_is_near_minus_three_halves_with_a_bootstrap_interval(smoke):
    d = smoke("mup-depth")["metrics"]["depth"]
    lo, hi = d["eta_exponent_ci95"]
    assert lo < d["eta_exponent"] < hi and hi - lo < 0.3
    assert abs(d["eta_exponent"] + 1.5) <= 0.3


def test_beta2_stability_reports_observations_only(smoke):
    result = smoke("beta2-stability")
    assert result["claims"] and all(not c["strict"] for c in result["claims"])
    corr = result["metrics"]["spearman_vs_beta2"]
    assert set(corr) == {"Adam", "RMSProp"}
    assert all(-1 <= v <= 1 for c in corr.values() for v in c.values())


def test_configs_reject_settings_outside_the_theorems():
    from simulations.theory import asgd_vs_sgd, eos_logistic, label_noise, large_stepsize_logistic

    with pytest.raises(ValueError, match="2/beta"):
        large_stepsize_logistic.Config(stable_etas=(1.0, 20.0))
    with pytest.raises(ValueError, match="EoS"):
        eos_logistic.Config(etas=(1.0, 4.0))
    with pytest.raises(ValueError, match="n must be <= d"):
        label_noise.Config(n=50, d=10)
    with pytest.raises(ValueError, match="head"):
        asgd_vs_sgd.Config(head=400)
