"""The Flower FFE app without Ray: the wire, the client's fail-closed rules and secure noise, the noise floor and
released-round accounting, dropouts, the in-process paths, checks before anything runs, the deployed ServerApp.

Each test reads like the check it makes; the Ray-backed runs are in tests/test_flower.py.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from simulations import registry
from simulations.flower.client_app import PlainFitRefused, SketchClient, secagg_only
from simulations.flower.exact_sum import exact_sum_params, mean_to_sum, secagg_shares
from simulations.flower.ffe_flower import Config
from simulations.flower.inprocess import run_inprocess
from simulations.flower.privacy import calibrate_noise, privacy_report
from simulations.flower.settings import (
    ClientSettings,
    DataSpec,
    FaultPlan,
    OracleLedger,
    RoundPlanner,
    RoundSpec,
    ServerLog,
    ServerSettings,
)
from simulations.flower.task import (
    bounded_items,
    check_table,
    client_items,
    client_table,
    cohort_bounded_items,
    cohort_items,
    cohort_sum,
    cohort_tables,
)

ZIPF = DataSpec("zipf", zipf_d=2000, zipf_items=60, data_seed=3)


def _settings(**kw) -> ServerSettings:
    base = {"n_clients": 40, "clients_per_round": 10, "rounds": 3, "width": 64, "dataset": "zipf", "zipf_d": 2000}
    return ServerSettings(**{**base, **kw})


def _dp(settings: ServerSettings, eps: float = 4.0) -> ServerSettings:
    return dataclasses.replace(settings, noise_var=calibrate_noise(settings, eps, 1e-5))


# ---------------------------------------------------------------- the wire and the client


def test_round_spec_carries_only_what_a_client_needs_and_nothing_noise_can_be_derived_from():
    assert {f.name for f in dataclasses.fields(RoundSpec)} == {
        "round", "seed", "depth", "width", "bound", "item_cap", "contribution", "noise_var", "noise_shares"}
    spec = _dp(_settings()).round_spec(1)
    cfg = spec.to_config()
    assert RoundSpec.from_config(cfg) == spec
    with pytest.raises(ValueError, match="unknown fit config keys"):
        RoundSpec.from_config({**cfg, "noise-seed": 3})
    with pytest.raises(ValueError, match="missing keys"):
        RoundSpec.from_config({k: v for k, v in cfg.items() if k != "seed"})
    # the same spec to the same client twice: different tables, and the difference is noise only
    client = SketchClient(ClientSettings(partition_id=4, **_zipf_node()))
    (a,), _, _ = client.fit([np.zeros(1)], cfg)
    (b,), _, _ = client.fit([np.zeros(1)], cfg)
    free = client_table(spec, ZIPF, 4)
    assert not np.array_equal(a, b) and np.abs(a - free).max() > 0 and np.abs(b - free).max() > 0


def _zipf_node() -> dict:
    return {"dataset": "zipf", "zipf_d": 2000, "zipf_items": 60, "data_seed": 3}


def test_client_returns_weight_one_no_metrics_and_its_validated_table_and_tells_no_partition_id():
    spec = _settings().round_spec(1)  # no DP: the table is the bounded sketch itself
    client = SketchClient(ClientSettings(partition_id=3, **_zipf_node()))
    arrays, weight, metrics = client.fit([np.zeros(1)], spec.to_config())
    assert weight == 1 and metrics == {} and client.get_properties({}) == {}
    np.testing.assert_array_equal(arrays[0], client_table(spec, ZIPF, 3).astype(np.float64))
    oracle_node = SketchClient(ClientSettings(partition_id=3, answer_oracle=True, **_zipf_node()))
    assert oracle_node.get_properties({}) == {"partition-id": 3}  # simulation only


def test_client_data_comes_from_its_node_config_and_unknown_keys_are_errors():
    s = ClientSettings.from_node_config({"partition-id": 7, "num-partitions": 10, "dataset": "zipf",
                                         "drop-rounds": "2,3"})
    assert s.partition_id == 7 and s.data.dataset == "zipf" and s.drop_rounds == (2, 3) and not s.allow_plain
    assert ClientSettings.from_node_config(s.to_node_config()) == s
    with pytest.raises(ValueError, match="unknown node config keys"):
        ClientSettings.from_node_config({"partition-id": 1, "allow-plian": True})
    with pytest.raises(ValueError, match="partition-id"):
        ClientSettings.from_node_config({"dataset": "zipf"})


def _message(secagg: bool):
    """A stand-in TRAIN message: the mod reads only its type and whether it carries SecAgg+ configs."""
    from types import SimpleNamespace

    from flwr.common import MessageType
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    records = {RECORD_KEY_CONFIGS: {"stage": "setup"}} if secagg else {}
    return SimpleNamespace(metadata=SimpleNamespace(message_type=MessageType.TRAIN),
                           content=SimpleNamespace(config_records=records))


def _context(**node_config):
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=1, node_config={"partition-id": 0, **node_config}, state=RecordDict(),
                   run_config={})


def test_client_refuses_a_plain_fit_by_default_and_answers_it_only_when_its_node_config_allows():
    mod = secagg_only()
    passed = []
    with pytest.raises(PlainFitRefused, match="only through SecAgg"):
        mod(_message(secagg=False), _context(), lambda m, c: passed.append(m))
    assert not passed
    mod(_message(secagg=False), _context(**{"allow-plain": True}), lambda m, c: passed.append(m))
    assert len(passed) == 1


@pytest.mark.parametrize(
    "bad, match",
    [(np.zeros((5, 63), dtype=np.int64), "shape"), (np.zeros((5, 64)), "integer"),
     (np.eye(5, 64, dtype=np.int64) * 2, r"cells must lie in \[-1, 1\]")],
)
def test_client_refuses_a_bad_table_before_masking(monkeypatch, bad, match):
    import simulations.flower.client_app as ca

    monkeypatch.setattr(ca, "client_table", lambda spec, data, pid: bad)
    spec = _settings().round_spec(1)
    with pytest.raises(ValueError, match=match):
        ca.SketchClient(ClientSettings(partition_id=0, **_zipf_node())).fit([np.zeros(1)], spec.to_config())
    with pytest.raises(ValueError, match="bound"):
        check_table(np.full((5, 64), spec.bound + 1, dtype=np.int64), spec)


def test_per_client_and_vectorized_items_and_tables_agree_in_both_contribution_modes():
    pids = np.array([3, 9, 11])
    items, index = cohort_items(ZIPF, pids)
    for i, p in enumerate(pids):
        np.testing.assert_array_equal(items[index == i], client_items(ZIPF, int(p)))
    for mode in ("distinct", "occurrences"):
        spec = dataclasses.replace(_settings(contribution=mode, item_cap=20).round_spec(2))
        kept, kidx = cohort_bounded_items(spec, ZIPF, pids)
        tables = cohort_tables(spec, ZIPF, pids)
        for i, p in enumerate(pids):
            mine = bounded_items(spec, ZIPF, int(p))
            assert len(mine) <= 20
            np.testing.assert_array_equal(np.sort(kept[kidx == i]), np.sort(mine))
            np.testing.assert_array_equal(tables[i], client_table(spec, ZIPF, int(p)))
        np.testing.assert_array_equal(cohort_sum(spec, ZIPF, pids), tables.sum(axis=0))
        if mode == "distinct":
            assert len(np.unique(mine)) == len(mine) and np.abs(tables).max() <= 1


# ---------------------------------------------------------------- noise floor, accounting, dropouts


@pytest.mark.parametrize("masking", ["masked", "simulated"])
def test_round_below_the_noise_floor_is_not_released_and_epsilon_counts_released_rounds_only(masking):
    # overlapping cohorts (3 x 10 of 20 clients): rounds compose sequentially, so a skipped round saves budget
    settings = _dp(_settings(n_clients=20, min_survivors=8))
    faults = FaultPlan(drops={2: tuple(settings.planner.cohort(2)[:3].tolist())})  # 7 survivors < 8
    log = run_inprocess(settings, ZIPF, faults, masking=masking)
    assert [r.released for r in log.records] == [True, False, True]
    assert "below the noise floor" in log.records[1].skipped or "min_survivors=8" in log.records[1].skipped
    report = privacy_report(settings, log.records, epsilon_target=4.0, delta=1e-5)
    from fedsketch.privacy import SkellamNoise, sketch_sensitivity

    sens = sketch_sensitivity(5, settings.item_cap, contribution="distinct")
    two = SkellamNoise(settings.noise_var, 8).epsilon(1e-5, sens, rounds=2, composition="repeated")
    assert report["composition"] == "repeated" and report["rounds_released"] == 2
    assert report["epsilon"] == pytest.approx(two) and report["epsilon"] < 4.0 - 0.3


def test_noise_is_calibrated_for_the_floor_and_two_runs_release_different_sums_of_identical_data():
    settings = _dp(_settings())
    assert settings.noise_floor == 8  # ceil(0.8 * 10): an expected dropout rate of 20 %
    assert settings.round_spec(1).noise_shares == 8
    ledgers = [OracleLedger(), OracleLedger()]
    a, b = (run_inprocess(settings, ZIPF, ledger=led).records for led in ledgers)
    for ra, rb in zip(a, b):
        assert not np.array_equal(ra.total, rb.total)  # released sums differ ...
        free = cohort_sum(settings.round_spec(ra.round), ZIPF, np.array(ra.survivors))
        np.testing.assert_array_equal(ra.total - ledgers[0].noise[ra.round], free)  # ... noise-free sums do not
        np.testing.assert_array_equal(rb.total - ledgers[1].noise[rb.round], free)


def test_dropout_and_noise_floor_are_checked_before_anything_runs():
    import ray

    for overrides, match in [
        ({"dropout": 0.9}, "every round would be skipped"),
        ({"width": -5}, "width must be an integer"),
        ({"epsilon": 0.0}, "epsilon must be a number in"),
        ({"backend": "inprocess", "width": 3_000_000, "clients_per_round": 200}, "masked path would hold"),
        ({"masking": "simulated"}, "needs backend='inprocess'"),
        ({"contribution": "occurrences", "item_cap": 9_000_000, "clients_per_round": 200, "dp": False}, "could wrap"),
    ]:
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(Config(), **overrides)
    assert not ray.is_initialized()
    # the simulated path needs no per-client tables, so the same width is fine there
    dataclasses.replace(Config(), backend="inprocess", masking="simulated", width=3_000_000, clients_per_round=200)


def test_a_sampled_partition_without_a_connected_node_is_a_dropout_not_a_crash():
    from flwr.common import ndarrays_to_parameters

    from simulations.flower.server_app import SketchSumStrategy

    settings = _settings()
    log = ServerLog(partitions={1000 + p: p for p in range(settings.n_clients)})
    strategy = SketchSumStrategy(settings, log)
    missing = int(settings.planner.cohort(1)[0])

    class _Manager:
        def all(self):
            return {str(1000 + p): f"proxy-{p}" for p in range(settings.n_clients) if p != missing}

    out = strategy.configure_fit(1, ndarrays_to_parameters([np.zeros(1)]), _Manager())
    assert len(out) == settings.clients_per_round - 1 and strategy._pending[1].unreachable == 1


def test_deployment_sampling_without_a_partition_map_takes_the_connected_nodes():
    plan = RoundPlanner(100, 10, 3, seed=1)
    nodes = list(range(500, 530))
    got = plan.sample_nodes(2, nodes)
    assert len(got) == 10 and set(got) <= set(nodes) and got == plan.sample_nodes(2, nodes[::-1])
    assert plan.sample_nodes(1, nodes[:4]) == nodes[:4]


# ---------------------------------------------------------------- the in-process paths


def test_simulated_path_gives_exactly_the_masked_sum_without_noise(tmp_path):
    settings = _settings(rounds=4)
    faults = FaultPlan(drops={2: (int(settings.planner.cohort(2)[0]),)})
    masked = run_inprocess(settings, ZIPF, faults, masking="masked")
    simulated = run_inprocess(settings, ZIPF, faults, masking="simulated")
    for a, b in zip(masked.records, simulated.records):
        assert a.survivors == b.survivors
        np.testing.assert_array_equal(a.total, b.total)


def test_simulated_path_noise_has_the_masked_paths_law():
    """One Skellam draw with n times a share's variance against the sum of n clients' own shares."""
    from scipy.stats import ks_2samp

    settings = _dp(_settings(width=4096, rounds=3), eps=2.0)
    noise = {}
    for masking in ("masked", "simulated"):
        ledger = OracleLedger()
        log = run_inprocess(settings, ZIPF, masking=masking, ledger=ledger)
        for r in log.records:
            free = cohort_sum(settings.round_spec(r.round), ZIPF, np.array(r.survivors))
            np.testing.assert_array_equal(r.total - ledger.noise[r.round], free)
        noise[masking] = np.concatenate([ledger.noise[t].ravel() for t in sorted(ledger.noise)])
    want = 10 * settings.noise_var / settings.noise_floor  # 10 survivors, shares sized for the floor of 8
    for x in noise.values():  # 61,440 entries each: the variance ratio has sd ~0.6 %
        assert abs(x.var() / want - 1) < 0.03 and abs(x.mean()) < 4 * np.sqrt(want / x.size)
    assert ks_2samp(noise["masked"], noise["simulated"]).pvalue > 1e-3


def test_inprocess_backend_runs_a_thousand_clients_per_round(tmp_path):
    res = registry.run("ffe-flower", overrides={
        "backend": "inprocess", "dataset": "zipf", "n_clients": "2000", "clients_per_round": "1000", "rounds": "2",
        "width": "512", "dp": "false", "item_cap": "100"}, out_dir=tmp_path)
    m = res["metrics"]
    assert m["rounds_released"] == 2 and [r["survived"] for r in m["rounds"]] == [900, 900]
    assert m["sum_max_abs_diff_vs_plain"] == 0
    assert m["hybrid_linf"] < m["shared_linf"]


def test_demo_defaults_release_an_informative_private_estimate(tmp_path):
    """In-process at the demo defaults (eps = 4, user-level, m = 10 distinct words): released hybrid l_inf below
    shared-hash and below 1/3 of the largest true count (seeded noise here, so the test is deterministic)."""
    res = registry.run("ffe-flower", overrides={"backend": "inprocess",
                                                "seeded_noise_not_private_against_server": "true"}, out_dir=tmp_path)
    by_name = {c["name"]: c for c in res["claims"]}
    assert by_name["released hybrid / shared-hash l_inf < 1"]["strict"]
    assert all(c["holds"] for c in res["claims"] if c["strict"]), res["claims"]
    p = res["metrics"]["privacy"]
    assert not p["private_against_server"] and "NOT PRIVATE AGAINST THE SERVER" in p["statement"]
    bias = res["metrics"]["contribution_bias"]
    assert 0 < bias["cell_mass_clipped_fraction"] < 0.05


def test_two_phase_sizing_rebroadcasts_the_chosen_width(tmp_path):
    """In-process run, then the Flower strategy's own re-broadcast after phase 1 (no Ray: a stand-in manager)."""
    from flwr.common import ndarrays_to_parameters

    from simulations.flower.evaluate import oracle_round_sum
    from simulations.flower.server_app import SketchSumStrategy

    res = registry.run("ffe-flower", overrides={"backend": "inprocess", "dp": "false", "target_error": "0.02",
                                                "rounds": "3"}, out_dir=tmp_path)
    m = res["metrics"]
    w2 = m["two_phase"]["width"]
    assert [r["width"] for r in m["rounds"]] == [64, w2, w2] and 16 <= w2 <= 256
    assert m["sum_max_abs_diff_vs_plain"] == 0 and m["pooled_linf"] is None

    settings = Config(rounds=3, target_error=0.02).settings(0.0)
    log = ServerLog(partitions={p: p for p in range(settings.n_clients)})
    strategy = SketchSumStrategy(settings, log)

    class _Manager:
        def all(self):
            return {str(p): f"proxy-{p}" for p in range(settings.n_clients)}

    params = ndarrays_to_parameters([np.zeros(1)])
    first = strategy.configure_fit(1, params, _Manager())
    assert {ins.config["width"] for _, ins in first} == {64}
    rec = strategy._pending.pop(1)
    rec.survivors = settings.planner.cohort(1).tolist()
    rec.survived = len(rec.survivors)
    rec.total = oracle_round_sum(rec, settings, Config().data)
    log.records.append(rec)
    second = strategy.configure_fit(2, params, _Manager())
    assert {ins.config["width"] for _, ins in second} == {w2}
    assert log.sizing["width"] == w2 and strategy.settings.phase2_width == w2


# ---------------------------------------------------------------- SecAgg+ exactness


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


# ---------------------------------------------------------------- the deployed apps


def test_apps_load_by_module_attribute_reference():
    from flwr.clientapp import ClientApp
    from flwr.server import ServerApp
    from flwr.supercore.object_ref import load_app, validate

    for ref, cls in (("simulations.flower.client_app:app", ClientApp),
                     ("simulations.flower.deployment:app", ServerApp)):
        ok, err = validate(ref, check_module=True)
        assert ok, err
        assert isinstance(load_app(ref, RuntimeError), cls)


@pytest.mark.parametrize(
    "run_config, match",
    [({"epsilon": 0.0, "delta": 1e-5}, "epsilon must be a finite number > 0"),
     ({"epsilon": -1.0, "delta": 1e-5}, "epsilon must be a finite number > 0"),
     ({"delta": 1e-5}, "epsilon must be a finite number > 0"),
     ({"epsilon": 4.0}, "delta is required"),
     ({"dp": False, "epsilon": 4.0}, "epsilon given with dp=false"),
     ({"dp": False, "zipf-s": 1.2}, "belong to the evaluation oracle"),
     ({"dp": False, "noise-var": 3.0}, "calibrated by the server"),
     ({"dp": False, "roundz": 2}, "unknown run config keys")],
)
def test_deployed_run_config_never_turns_dp_off_silently(run_config, match):
    from simulations.flower.deployment import settings_from_run_config

    with pytest.raises(ValueError, match=match):
        settings_from_run_config({"n-clients": 10, "clients-per-round": 5, **run_config})


def test_deployed_server_never_runs_the_oracle_unless_asked(tmp_path, monkeypatch):
    import simulations.flower.evaluate as ev
    from simulations.flower.deployment import report, settings_from_run_config

    cfg = {"n-clients": 40, "clients-per-round": 10, "rounds": 2, "width": 64, "dataset": "zipf", "zipf-d": 2000,
           "epsilon": 8.0, "delta": 1e-5, "out-dir": str(tmp_path / "plain")}
    settings, opts = settings_from_run_config(cfg)
    log = run_inprocess(settings, ZIPF)
    monkeypatch.setattr(ev, "score", lambda *a, **k: pytest.fail("the oracle ran without being asked"))
    res = report(settings, log, opts)
    assert res["experiment"] == "ffe-flower-deployed" and "top_estimates" in res["metrics"]
    assert res["privacy_report"]["epsilon"] == pytest.approx(8.0, abs=1e-3) and res["claims"] == []
    monkeypatch.undo()
    settings, opts = settings_from_run_config({**cfg, "oracle": True, "zipf-items": 60, "data-seed": 3,
                                               "out-dir": str(tmp_path / "oracle")})
    res = report(settings, log, opts)
    assert res["metrics"]["evaluation"].startswith("SIMULATION ONLY") and res["metrics"]["items_total"] > 0
    assert json.loads((tmp_path / "oracle" / "result.json").read_text())["experiment"] == "ffe-flower"
