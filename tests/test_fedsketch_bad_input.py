"""Bad input at the fedsketch API boundary: a ValueError naming the parameter, never a silently wrong answer.

Each case is one of the inputs that used to pass unnoticed (or leak a numpy/TypeError) and is refused now.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsketch import CountSketch, InProcessSecureSum, SkellamNoise, multiround_estimate
from fedsketch.privacy import ORDERS, calibrate, rdp_to_epsilon, sketch_sensitivity
from fedsketch.secure_sum import SecureSumAborted

_CS = CountSketch(3, 8, seed=1, domain=20)
_ONES = np.ones((4, 5), dtype=np.int64)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: _CS.decode(np.full((3, 8), np.nan)), "finite"),
        (lambda: _CS.decode(np.full((3, 8), np.inf)), "finite"),
        (lambda: _CS.decode(np.zeros((3, 8), dtype=np.uint64)), "signed integer or float.*from_ring"),
        (lambda: _CS.decode(np.zeros((3, 8), dtype=np.uint8)), "signed integer or float"),
        (lambda: multiround_estimate([np.zeros((3, 8), np.int64)], [1, 2], 3, 8, domain=20), "one seed per round"),
        (lambda: multiround_estimate([np.zeros((3, 8), np.int64)] * 2, [1, 2, 3], 3, 8, domain=20, method="shared"),
         "one seed per round"),
        (lambda: InProcessSecureSum(seed=0).sum(_ONES, dropped=[1.5]), "dropped must hold integer"),
        (lambda: InProcessSecureSum(seed=0).sum(_ONES, dropped=[True]), "dropped must hold integer"),
        (lambda: InProcessSecureSum(seed=0, min_survivors=1.5), "min_survivors must be an integer >= 2"),
        (lambda: InProcessSecureSum(seed=0, min_survivors=1), "min_survivors must be an integer >= 2"),
        (lambda: InProcessSecureSum(seed=0).sum(_ONES, bound=5.5), "bound must be an integer"),
        (lambda: InProcessSecureSum(seed=0, neighbours=2.5), "neighbours must be an integer"),
        (lambda: SkellamNoise(1e30), "variance must be in"),
        (lambda: rdp_to_epsilon(ORDERS, np.full(len(ORDERS), np.nan), 1e-5), "rdp must hold non-negative"),
        (lambda: rdp_to_epsilon(ORDERS, -np.ones(len(ORDERS)), 1e-5), "rdp must hold non-negative"),
        (lambda: rdp_to_epsilon(ORDERS, np.ones(3), 1e-5), "one value per order"),
        (lambda: sketch_sensitivity(5, 3, contribution="users"), "contribution"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_inprocess_secure_sum_never_releases_a_lone_survivor_by_default():
    x = np.arange(12, dtype=np.int64).reshape(3, 4)
    with pytest.raises(SecureSumAborted, match="min_survivors=2"):
        InProcessSecureSum(seed=0).sum(x, dropped=[0, 1])
    np.testing.assert_array_equal(InProcessSecureSum(seed=0).sum(x, dropped=[0]).total, x[1:].sum(0))


def test_rdp_conversion_keeps_infinite_orders_and_a_huge_target_is_refused_clearly():
    rdp = np.full(len(ORDERS), np.inf)
    rdp[0] = 0.1
    assert 0 < rdp_to_epsilon(ORDERS, rdp, 1e-5) < np.inf
    with pytest.raises(ValueError, match="not reachable"):
        calibrate(1e-9, 1e-12, sketch_sensitivity(64, 10_000))
