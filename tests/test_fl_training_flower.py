"""Federated training through Flower's Message API (issue 11): a 4-client, 2-round run end to end, equal to the
in-process engine with the same seeds, with a failing client counted, not fatal."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.timeout(400), pytest.mark.xdist_group("ray")]


def test_four_clients_two_rounds_match_the_inprocess_engine_and_a_failure_is_counted():
    pytest.importorskip("flwr")
    from simulations.flower.training.engine import FederatedRun
    from simulations.flower.training.settings import FLSettings
    from simulations.flower.training.simulate import run_flower

    s = FLSettings(workload="icl", population=4, cohort=4, rounds=2, local_steps=3, batch_size=8, dp="central",
                   clip=0.5, noise_multiplier=1.0, eval_every=1, timeout=120.0, fail_clients="2:2", seed=4)
    flower = run_flower(s, total_timeout=300)
    local = FederatedRun(s)
    local.run_inprocess()
    assert flower.round == 2 and flower.nodes_found == 4
    assert [h["survived"] for h in flower.history] == [4, 3]
    assert len(flower.history[1]["failures"]) == 1 and "injected" in flower.history[1]["failures"][0]
    assert np.abs(flower.x - local.x).max() < 1e-6
    assert flower.privacy()["epsilon"] == pytest.approx(local.privacy()["epsilon"])


def test_fl_icl_smoke_through_flower(tmp_path):
    pytest.importorskip("flwr")
    import ray
    from conftest import run_smoke

    try:
        result = run_smoke("fl-icl", tmp_path)
    finally:
        ray.shutdown()
    assert result["metrics"]["engine"] == "flower" and result["metrics"]["ratio"] > 0


def test_fl_lm_shakespeare_smoke_inprocess(tmp_path):
    from conftest import run_smoke

    result = run_smoke("fl-lm-shakespeare", tmp_path, engine="inprocess")
    arms = result["metrics"]["arms"]
    assert set(arms) == {"fedavg", "fedadam", "dp-fedavg", "dp2", "distributed"}
    p = arms["distributed"]["privacy"]
    assert p["epsilon"] <= 8.0 + 1e-6 < p["epsilon_vs_server"]  # both adversaries stated
    assert arms["dp-fedavg"]["privacy"]["epsilon_no_amplification"] > arms["dp-fedavg"]["privacy"]["epsilon"]
