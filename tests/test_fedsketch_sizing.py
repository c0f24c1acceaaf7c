"""TwoPhaseSizer: small widths on easy instances, the target met, communication accounted."""

from __future__ import annotations

import numpy as np
import pytest

from fedsketch import TwoPhaseSizer, linf_error, synthetic_instance

D, M, N, R, TARGET = 2000, 4, 2000, 9, 0.005


def test_near_sparse_instance_gets_a_small_width_and_meets_the_target():
    # measured (seeds 0-2): widths 99/91/76, errors 0.00025 each, worst-case width 392
    inst = synthetic_instance("near_sparse", D, M, N, support=4, tail_mass=0.02, seed=0)
    sizer = TwoPhaseSizer(target_error=TARGET, domain=D, depth=R, phase1_width=64, seed=0)
    res = sizer.run(inst.items, clients_per_round=N)
    assert res.plan.target_met and res.predicted_error <= TARGET
    assert res.width <= sizer.worst_case_width([N] * M) / 3
    assert linf_error(res.estimate, inst.counts, scale="frequency") <= TARGET
    # phase-1 clients send a W1 and (combine="reencode") a W2 sketch; the others a W2 sketch
    assert res.ints_per_client == [R * (64 + res.width)] + [R * res.width] * (M - 1)
    assert res.total_ints == N * sum(res.ints_per_client)


def test_heavier_tail_needs_a_wider_sketch_than_near_sparse():
    # measured (seeds 0-2, target 0.002): near-sparse 99/91/76, Zipf(1.1) 362 each
    widths = {}
    for kind, kw in (("near_sparse", {"support": 4, "tail_mass": 0.02}), ("zipf", {"zipf_s": 1.1})):
        inst = synthetic_instance(kind, D, M, N, seed=1, **kw)
        sizer = TwoPhaseSizer(target_error=0.002, domain=D, depth=R, phase1_width=64, seed=1)
        widths[kind] = sizer.run(inst.items).width
    assert widths["zipf"] >= 2 * widths["near_sparse"], widths


@pytest.mark.parametrize("combine", ["reencode", "phase2", "all"])
def test_analytic_predictor_is_monotone_and_every_combine_mode_runs(combine):
    inst = synthetic_instance("zipf", D, M, N, zipf_s=1.1, seed=2)
    sizer = TwoPhaseSizer(
        target_error=0.01, domain=D, depth=5, phase1_width=64, predictor="analytic", combine=combine, seed=2
    )
    res = sizer.run(inst.items)
    errs = [sizer.predict_error(res.plan, [N] * M, w) for w in (16, 64, 256, 1024, 4096)]
    assert all(a >= b for a, b in zip(errs, errs[1:]))
    assert res.estimate.shape == (D,) and np.isfinite(res.estimate).all()
    if res.plan.target_met:
        assert res.predicted_error <= 0.01


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_error": 0.0}, "target_error must be in"),
        ({"target_error": 1.5}, "target_error must be in"),
        ({"depth": 0}, "depth must be an integer"),
        ({"phase1_width": 0}, "phase1_width must be an integer"),
        ({"min_width": 10, "max_width": 5}, "min_width must be an integer in \\[1, 5\\]"),
        ({"predictor": "oracle"}, "predictor must be one of"),
        ({"combine": "sum"}, "combine must be one of"),
        ({"tail_constant": 0.5}, "tail_constant"),
    ],
)
def test_bad_configuration_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TwoPhaseSizer(**{"target_error": 0.01, "domain": 100, **kwargs})


def test_run_needs_more_rounds_than_phase_one():
    sizer = TwoPhaseSizer(target_error=0.01, domain=100, phase1_rounds=2)
    with pytest.raises(ValueError, match="more than phase1_rounds=2"):
        sizer.run([np.arange(10), np.arange(10)])


def test_undetected_tail_follows_the_fitted_power_law():
    from fedsketch.sizing import _tail_shape

    top = 1000.0 * np.arange(1, 61) ** -0.8  # 60 detected items on an exact Zipf(0.8) profile
    w = _tail_shape(top, 1000)
    assert w.shape == (1000,) and np.isclose(w.sum(), 1.0)
    # ranks 61 and 610 of the tail: ratio (610/61)^0.8 = 6.31 (even spreading would give 1)
    assert np.isclose(w[0] / w[549], 10**0.8, rtol=1e-6)
    # too few items to fit (or a flat profile) -> even spreading
    assert np.allclose(_tail_shape(np.array([9.0, 8.0, 7.0]), 50), 1 / 50)
    assert np.allclose(_tail_shape(np.full(20, 7.0), 50), 1 / 50)
