"""The Flower FFE app: SecAgg+ as an exact sum (with and without dropouts), what the server sees, wrap refusal,
client-side validation, the in-process backend, and loading the apps by reference.

One module-scoped Flower simulation (the ffe-flower smoke preset: 18 nodes, 6 per round, round 2 loses one client,
round 3 loses half the cohort and is skipped) serves every assertion that needs Ray.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from simulations.flower.exact_sum import exact_sum_params, mean_to_sum, secagg_shares
from simulations.flower.ffe_flower import Config
from simulations.flower.rounds import RoundPlanner
from simulations.flower.server_app import ServerSettings
from simulations.flower.task import RoundSpec, check_table, client_table, cohort_tables

# one Ray simulation per run: keep every Ray-backed test on the same xdist worker (make test uses --dist loadgroup)
pytestmark = [pytest.mark.timeout(300), pytest.mark.xdist_group("ray")]


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


def _settings(result: dict) -> ServerSettings:
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in result["config"].items()})
    return cfg.settings(result["metrics"]["privacy"].get("sum_variance_per_entry", 0.0))


# ---------------------------------------------------------------- the Flower run


def test_secagg_sum_equals_plain_sum_exactly_with_and_without_a_dropout(flower_run):
    result, rounds, sums = flower_run
    settings = _settings(result)
    plan = settings.planner
    assert [r["survived"] for r in rounds[:2]] == [6, 5]  # round 1: nobody drops; round 2: one client drops
    for r in rounds[:2]:
        t = r["round"]
        expected_survivors = sorted(set(plan.cohort(t).tolist()) - set(plan.dropped(t).tolist()))
        assert r["survivors"] == expected_survivors
        spec = settings.round_spec(t)
        plain = sum(client_table(spec, p) for p in r["survivors"])  # computed outside Flower, client by client
        total = sums[f"round_{t}"]
        assert total.dtype == np.int64
        np.testing.assert_array_equal(total, plain)
        assert np.abs(plain).max() > 100  # real counts plus DP noise, not a trivial all-zero table


def test_round_below_reconstruction_threshold_is_skipped_and_the_run_goes_on(flower_run):
    result, rounds, sums = flower_run
    assert rounds[2]["survived"] == 0 and "round_3" not in sums
    assert [r["failures"] for r in rounds] == [0, 1, 3]
    assert "below the SecAgg+ reconstruction threshold" in rounds[2]["skipped"]
    assert result["metrics"]["rounds_completed"] == 2


def test_server_only_ever_receives_the_aggregate(flower_run):
    result, rounds, _ = flower_run
    settings = _settings(result)
    for r in rounds[:2]:
        # every FitRes the strategy got carries the same array: the unmasked aggregate, never a client's own table
        assert len(r["received_digests"]) == r["survived"] and len(set(r["received_digests"])) == 1
        spec = settings.round_spec(r["round"])
        own = {_digest(client_table(spec, p).astype(np.float64)) for p in r["survivors"]}
        assert own.isdisjoint(r["received_digests"])


def test_flower_sum_equals_inprocess_secure_sum_and_inprocess_backend_reproduces_the_run(flower_run, tmp_path):
    result, rounds, sums = flower_run
    m = result["metrics"]
    assert m["sum_max_abs_diff_vs_inprocess"] == 0 and m["sum_max_abs_diff_vs_plain"] == 0
    from simulations import registry

    inproc = registry.run("ffe-flower", smoke=True, overrides={"backend": "inprocess"}, out_dir=tmp_path)
    in_rounds = json.loads((tmp_path / "rounds.json").read_text())
    in_sums = dict(np.load(tmp_path / "round_sums.npz"))
    assert [r["survivors"] for r in in_rounds] == [r["survivors"] for r in rounds]
    assert sorted(in_sums) == sorted(sums)
    for k in sums:
        np.testing.assert_array_equal(in_sums[k], sums[k])
    assert inproc["metrics"]["hybrid_linf"] == m["hybrid_linf"]


def test_claims_and_privacy_report(flower_run):
    result, _, _ = flower_run
    m = result["metrics"]
    p = m["privacy"]
    assert p["dp"] and abs(p["epsilon"] - 4.0) < 1e-3 and p["delta"] == 1e-5
    assert p["noise_shares"] == 3  # calibrated for the fewest planned survivors (round 3: 6 - 3)
    assert m["hybrid_linf_noise_free"] < m["shared_linf_noise_free"]
    by_name = {c["name"]: c for c in result["claims"]}
    assert by_name["secure sum == in-process secure sum (max |diff|)"]["holds"]


# ---------------------------------------------------------------- refusal before anything runs


def test_configuration_whose_sum_could_wrap_is_refused_before_any_client_runs(tmp_path):
    import ray

    from simulations import registry

    # item cap 2^24 -> clipping range 2^24, Q = 2^25: at most 127 clients fit in 2^32; ask for 200
    with pytest.raises(ValueError, match="could wrap the modulus"):
        registry.run("ffe-flower", overrides={"clients_per_round": "200", "rounds": "1", "item_cap": str(2**24),
                                              "dp": "false"}, out_dir=tmp_path)
    assert not ray.is_initialized()
    assert not (tmp_path / "result.json").exists()


def test_exact_sum_params_boundaries():
    p = exact_sum_params(1000, 10)
    assert p.clipping_range == 1024.0 and p.quantization_range == 2048 and p.modulus_range == 2**32
    assert p.max_clients == (2**32 - 1) // 2048
    exact_sum_params(1000, p.max_clients)
    with pytest.raises(ValueError, match="could wrap"):
        exact_sum_params(1000, p.max_clients + 1)
    with pytest.raises(ValueError, match="bound"):
        exact_sum_params(-1, 3)
    with pytest.raises(ValueError, match="clients"):
        exact_sum_params(5, 0)
    assert exact_sum_params(0, 2).clipping_range == 1.0
    assert all(secagg_shares(n) % 2 == 1 or secagg_shares(n) == n for n in range(2, 500))


def test_flower_quantization_pipeline_is_exact_at_the_bound():
    """Flower's own quantize -> modular sum -> dequantize path (masks cancel mod M) with our parameters."""
    from flwr.common.secure_aggregation.quantization import dequantize, quantize

    n, bound = 50, 3000
    p = exact_sum_params(bound, n)
    rng = np.random.default_rng(0)
    x = rng.integers(-bound, bound + 1, size=(n, 64))
    x[0, :2] = (bound, -bound)
    q = [quantize([row.astype(np.float64)], p.clipping_range, p.quantization_range)[0] for row in x]
    total_q = np.sum(q, axis=0).astype(np.int64) % p.modulus_range  # what unmasking leaves
    weight = (n * p.quantization_range) % p.modulus_range  # the weight channel, q_ratio = Q per client
    mean = dequantize([total_q], p.clipping_range, p.quantization_range)[0]
    mean = (mean - (n - 1) * p.clipping_range) * (p.quantization_range / weight)
    np.testing.assert_array_equal(mean_to_sum(mean, n), x.sum(axis=0))


# ---------------------------------------------------------------- the client


def _spec(**kw) -> RoundSpec:
    s = ServerSettings(n_clients=18, clients_per_round=6, rounds=1, width=64, item_cap=50)
    return replace(s.round_spec(1), **kw)


def test_client_returns_weight_one_and_its_validated_table():
    from simulations.flower.client_app import SketchClient

    spec = _spec()
    arrays, weight, metrics = SketchClient(3).fit([np.zeros(1)], spec.to_config())
    assert weight == 1 and metrics == {"partition-id": 3}
    np.testing.assert_array_equal(arrays[0], client_table(spec, 3).astype(np.float64))
    np.testing.assert_array_equal(cohort_tables(spec, np.array([3, 5]))[1], client_table(spec, 5))


@pytest.mark.parametrize(
    "bad, match",
    [(np.zeros((5, 63), dtype=np.int64), "shape"), (np.zeros((5, 64)), "integer dtype"),
     (np.full((5, 64), 51, dtype=np.int64), "bound")],
)
def test_client_refuses_a_bad_table_before_masking(monkeypatch, bad, match):
    import simulations.flower.client_app as ca

    monkeypatch.setattr(ca, "client_table", lambda spec, pid: bad)
    with pytest.raises(ValueError, match=match):
        ca.SketchClient(0).fit([np.zeros(1)], _spec().to_config())
    with pytest.raises(ValueError, match=match):
        check_table(bad, _spec())


def test_unknown_config_keys_are_errors():
    from simulations.flower.client_app import SketchClient

    with pytest.raises(ValueError, match="unknown fit config keys"):
        SketchClient(0).fit([np.zeros(1)], {**_spec().to_config(), "widht": 3})
    with pytest.raises(ValueError, match="unknown run config keys"):
        ServerSettings.from_run_config({"clients-per-round": 4, "n-clients": 10, "roundz": 2})
    s = ServerSettings.from_run_config({"clients-per-round": 4, "n-clients": 10, "dropout-counts": "0,1"
                                        , "rounds": 2})
    assert s.dropout_counts == (0, 1) and s.clients_per_round == 4


# ---------------------------------------------------------------- planning, in-process scale, app loading


def test_planner_cohorts_are_disjoint_and_dropouts_come_from_the_cohort():
    plan = RoundPlanner(299, 59, 5, dropout=0.1, seed=3)
    cohorts = [plan.cohort(t) for t in range(1, 6)]
    assert plan.disjoint and len(np.unique(np.concatenate(cohorts))) == 295
    for t, c in enumerate(cohorts, 1):
        d = plan.dropped(t)
        assert len(d) == 6 and set(d) <= set(c)
    with pytest.raises(ValueError, match="clients_per_round"):
        RoundPlanner(10, 11, 1)


def test_inprocess_backend_runs_a_thousand_clients_per_round(tmp_path):
    from simulations import registry

    res = registry.run("ffe-flower", overrides={
        "backend": "inprocess", "dataset": "zipf", "n_clients": "2000", "clients_per_round": "1000", "rounds": "2",
        "width": "512", "dp": "false", "item_cap": "100"}, out_dir=tmp_path)
    m = res["metrics"]
    assert m["rounds_completed"] == 2 and [r["survived"] for r in m["rounds"]] == [900, 900]
    assert m["sum_max_abs_diff_vs_plain"] == 0
    assert m["hybrid_linf"] < m["shared_linf"]


def test_apps_load_by_module_attribute_reference():
    from flwr.clientapp import ClientApp
    from flwr.server import ServerApp
    from flwr.supercore.object_ref import load_app, validate

    for ref, cls in (("simulations.flower.client_app:app", ClientApp), ("simulations.flower.server_app:app", ServerApp)):
        ok, err = validate(ref, check_module=True)
        assert ok, err
        assert isinstance(load_app(ref, RuntimeError), cls)


def test_deployed_server_report_writes_result_with_privacy(tmp_path):
    """What the deployment engine's ServerApp does after its rounds (rounds here from the in-process backend)."""
    from simulations.flower.ffe_flower import calibrate_privacy, report_deployed
    from simulations.flower.inprocess import run_inprocess

    base = ServerSettings.from_run_config({"n-clients": 40, "clients-per-round": 10, "rounds": 3, "width": 256,
                                           "dataset": "zipf", "dropout": 0.1})
    noise_var, privacy = calibrate_privacy(base, 8.0, 1e-5)
    settings = replace(base, noise_var=noise_var)
    res = report_deployed(settings, run_inprocess(settings), str(tmp_path), privacy)
    assert (tmp_path / "result.json").is_file() and list(tmp_path.glob("*.png"))
    assert abs(res["privacy_report"]["epsilon"] - 8.0) < 1e-3 and res["privacy_report"]["noise_shares"] == 9
    by_name = {c["name"]: c for c in res["claims"]}
    assert not by_name["final hybrid / shared-hash l_inf, as released (with DP noise)"]["strict"]
    assert by_name["secure sum == in-process secure sum (max |diff|)"]["holds"]


def test_two_phase_sizing_rebroadcasts_the_chosen_width(tmp_path):
    """In-process run, then the Flower strategy's own re-broadcast after phase 1 (no Ray: a stand-in client manager)."""
    from flwr.common import ndarrays_to_parameters

    from simulations import registry
    from simulations.flower.evaluate import oracle_round_sum
    from simulations.flower.rounds import RoundRecord
    from simulations.flower.server_app import ServerLog, SketchSumStrategy

    res = registry.run("ffe-flower", overrides={"backend": "inprocess", "dp": "false", "target_error": "0.005",
                                                "rounds": "3"}, out_dir=tmp_path)
    m = res["metrics"]
    w2 = m["two_phase"]["width"]
    assert [r["width"] for r in m["rounds"]] == [256, w2, w2] and 16 <= w2 <= 1024
    assert m["sum_max_abs_diff_vs_plain"] == 0 and m["pooled_linf"] is None

    settings = ServerSettings(rounds=3, target_error=0.005, dropout=0.1)  # = the Config defaults above
    log = ServerLog(partitions={p: p for p in range(settings.n_clients)})
    strategy = SketchSumStrategy(settings, log)

    class _Clients:
        def all(self):
            return {str(p): f"proxy-{p}" for p in range(settings.n_clients)}

    params = ndarrays_to_parameters([np.zeros(1)])
    first = strategy.configure_fit(1, params, _Clients())
    assert {ins.config["width"] for _, ins in first} == {256}
    rec = strategy._pending.pop(1)
    rec.survivors = sorted(set(settings.planner.cohort(1).tolist()) - set(settings.planner.dropped(1).tolist()))
    rec.total = oracle_round_sum(rec, settings)
    log.records.append(RoundRecord(**{**rec.__dict__}))
    second = strategy.configure_fit(2, params, _Clients())
    assert {ins.config["width"] for _, ins in second} == {w2}
    assert log.sizing["width"] == w2 and strategy.settings.phase2_width == w2
