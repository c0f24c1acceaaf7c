"""The Flower FFE app through Ray: SecAgg+ as an exact sum under secure client noise, the noise floor, what the server
sees, the in-process backend reproducing the run, and a client that hangs past the SecAgg+ time-out.

One module-scoped Flower simulation (the ffe-flower smoke preset: 18 nodes, 6 per round; round 2 loses one client
and is released at the noise floor of 5, round 3 loses two and is never unmasked) serves most assertions; the
time-out test starts its own small simulation. Tests without Ray are in tests/test_flower_app.py.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from simulations.flower.ffe_flower import Config
from simulations.flower.settings import RoundRecord
from simulations.flower.task import client_table, cohort_sum

# one Ray simulation per run: keep every Ray-backed test on the same xdist worker (make test uses --dist loadgroup)
pytestmark = [pytest.mark.timeout(400), pytest.mark.xdist_group("ray")]


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory):
    """The smoke preset through Flower's Ray simulation (one Ray start-up for the whole module)."""
    import ray
    from conftest import run_smoke

    out = tmp_path_factory.mktemp("ffe-flower")
    try:
        result = run_smoke("ffe-flower", out)
    finally:
        ray.shutdown()
    rounds = json.loads((out / "rounds.json").read_text())
    sums = dict(np.load(out / "round_sums.npz"))
    return result, rounds, sums


def _config(result: dict) -> Config:
    return Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in result["config"].items()})


def _settings(result: dict):
    return _config(result).settings(result["metrics"]["privacy"]["sum_variance_per_entry"])


def test_secagg_sum_minus_the_noise_shares_equals_the_plain_sum_with_and_without_a_dropout(flower_run):
    result, rounds, sums = flower_run
    config, settings = _config(result), _settings(result)
    faults = config.faults(settings)
    assert [r["survived"] for r in rounds[:2]] == [6, 5]  # round 1: nobody drops; round 2: one client drops
    for r in rounds[:2]:
        t = r["round"]
        assert r["survivors"] == sorted(set(settings.planner.cohort(t).tolist()) - faults.failing(t))
        spec = settings.round_spec(t)
        plain = sum(client_table(spec, config.data, p) for p in r["survivors"])  # outside Flower, client by client
        total = sums[f"round_{t}"]
        assert total.dtype == np.int64
        noise = total - plain
        assert np.abs(plain).max() >= 3 and np.abs(noise).max() > 0  # real counts, and real noise on top
        # the noise is a sum of Skellam shares of the calibrated law: variance ~ survivors * share variance
        assert 0.5 < noise.var() / (r["survived"] * spec.share_variance) < 1.6
    m = result["metrics"]
    assert m["sum_max_abs_diff_vs_inprocess"] == 0 and m["sum_max_abs_diff_vs_plain"] == 0
    assert m["noise_ledger_rounds"] == [1, 2]


def test_round_below_the_noise_floor_is_not_unmasked_and_the_run_goes_on(flower_run):
    result, rounds, sums = flower_run
    assert result["metrics"]["noise_floor"] == 5
    assert rounds[2]["survived"] == 0 and not rounds[2]["released"] and "round_3" not in sums
    assert "below the noise floor min_survivors=5; not unmasked" in rounds[2]["skipped"]
    assert [r["failures"] for r in rounds] == [0, 1, 2]
    assert result["metrics"]["rounds_released"] == 2
    p = result["metrics"]["privacy"]
    assert p["rounds_released"] == 2 and p["rounds_planned"] == 3


def test_server_only_ever_receives_the_aggregate(flower_run):
    result, rounds, _ = flower_run
    config, settings = _config(result), _settings(result)
    for r in rounds[:2]:
        # every FitRes the strategy got carries the same array: the unmasked aggregate, never a client's own table
        assert len(r["received_digests"]) == r["survived"] and len(set(r["received_digests"])) == 1
        spec = settings.round_spec(r["round"])
        own = {_digest(client_table(spec, config.data, p).astype(np.float64)) for p in r["survivors"]}
        assert own.isdisjoint(r["received_digests"])


def test_inprocess_backend_reproduces_the_noise_free_sums_and_releases_other_noise(flower_run, tmp_path):
    """Same server configuration and seed: identical noise-free sums, different released (noisy) sums."""
    result, rounds, sums = flower_run
    from simulations import registry

    config, settings = _config(result), _settings(result)
    inproc = registry.run("ffe-flower", smoke=True, overrides={"backend": "inprocess"}, out_dir=tmp_path)
    in_rounds = json.loads((tmp_path / "rounds.json").read_text())
    in_sums = dict(np.load(tmp_path / "round_sums.npz"))
    assert [r["survivors"] for r in in_rounds] == [r["survivors"] for r in rounds]
    assert sorted(in_sums) == sorted(sums) == ["round_1", "round_2"]
    for r in rounds[:2]:
        k = f"round_{r['round']}"
        free = cohort_sum(settings.round_spec(r["round"]), config.data, np.array(r["survivors"]))
        assert not np.array_equal(in_sums[k], sums[k])  # each client's noise is its own: never reproduced
        assert np.abs(in_sums[k] - free).max() > 0 and np.abs(sums[k] - free).max() > 0
    assert inproc["metrics"]["sum_max_abs_diff_vs_plain"] == 0
    assert inproc["metrics"]["hybrid_linf_noise_free"] == result["metrics"]["hybrid_linf_noise_free"]


def test_claims_and_privacy_report(flower_run):
    result, _, _ = flower_run
    p = result["metrics"]["privacy"]
    assert p["dp"] and p["private_against_server"] and abs(p["epsilon"] - 4.0) < 1e-3 and p["delta"] == 1e-5
    assert p["unit_of_privacy"].startswith("user-level") and p["neighbouring_relation"] == "add/remove one client"
    assert p["sensitivity_l2"] == pytest.approx(np.sqrt(10 * 5)) and p["min_survivors"] == 5
    assert "secrets" in p["noise_generator"] and "colluding with at most 0 clients" in p["adversary"]
    kinds = {c["name"]: c["kind"] for c in result["claims"]}
    assert kinds["SecAgg+ sum - noise == InProcessSecureSum of noise-free tables (max |diff|)"] == "sanity"
    assert kinds["released hybrid / shared-hash l_inf < 1"] == "observation"  # the smoke preset
    assert all(c["holds"] for c in result["claims"] if c["strict"])


def test_a_client_hanging_past_the_secagg_timeout_is_dropped_and_the_others_sum_is_exact(tmp_path):
    """Five clients, one sleeps 30 s in its fit; the collect stage's 10 s time-out drops it."""
    import ray

    from simulations.flower.evaluate import oracle_round_sum
    from simulations.flower.ffe_flower import node_configs, read_noise_ledger, run_flower
    from simulations.flower.settings import FaultPlan

    config = Config(n_clients=5, clients_per_round=5, rounds=1, dropout=0.0, timeout=10.0, min_survivors=3)
    from simulations.flower.privacy import calibrate_noise

    settings = config.settings(calibrate_noise(config.settings(0.0), 4.0, 1e-5))
    faults = FaultPlan(hangs={1: (2,)}, hang_seconds=30.0)
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    try:
        log = run_flower(settings, node_configs(config, faults, str(noise_dir)))
    finally:
        ray.shutdown()
    (rec,) = log.records
    assert rec.released and rec.survived == 4 and rec.survivors == [0, 1, 3, 4] and rec.failures == 1
    ledger = read_noise_ledger(log, str(noise_dir))
    np.testing.assert_array_equal(rec.total - ledger.noise[1], oracle_round_sum(rec, settings, config.data))
    assert isinstance(rec, RoundRecord)
