"""lm-salt, lm-cbs and lite-ranking: smoke presets run on the CPU, write their records and plots, and their setup
is what the claims read; bad configurations say what to change; the committed full-size records hold."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


pytestmark = pytest.mark.usefixtures("one_torch_thread", "token_cache")


def test_salt_smoke_distills_for_the_configured_steps_and_keeps_the_ds_band(smoke):
    result = smoke("lm-salt")
    m, cfg = result["metrics"], result["config"]
    runs = m["runs"]
    assert runs["baseline"]["kd_steps"] == 0 and runs["kd_all"]["kd_steps"] == cfg["steps"]
    assert runs["salt"]["kd_steps"] == runs["salt_ds"]["kd_steps"] == round(cfg["kd_fraction"] * cfg["steps"])
    lo, hi = cfg["ds_band"]
    assert m["ds"]["kept"] == pytest.approx((hi - lo) * m["ds"]["candidates"], rel=0.1)
    assert m["ds"]["band_scores"][0] < m["ds"]["band_scores"][1]
    for r in runs.values():  # every arm learned something: below the uniform distribution's loss
        assert r["final_val"] < math.log(m["corpus"]["vocab_size"]) and r["val_steps"][0] == 0
    assert {c["name"].split(":")[0] for c in result["claims"]} >= {
        "SALT's steps to the baseline's final val loss / baseline's steps"}


def test_salt_config_refuses_omega_outside_0_1_and_a_ds_band_that_cannot_fill_a_batch():
    from simulations.lm.salt import Config

    with pytest.raises(ValueError, match="omega"):
        Config(omega=1.5)
    with pytest.raises(ValueError, match="ds_band"):
        Config(ds_band=(0.9, 0.5))
    with pytest.raises(ValueError, match="cannot fill a batch"):
        Config(ds_candidates=40, ds_band=(0.5, 0.9), batch_size=32)
    with pytest.raises(ValueError, match="divisible"):
        Config(n_embd=100, n_head=3)


def test_cbs_smoke_finds_fewer_steps_at_larger_batches_and_fits_them(smoke):
    result = smoke("lm-cbs")
    res = result["metrics"]["widths"]["16"]
    steps = [res["batches"][str(b)]["best_steps"][0] for b in result["config"]["batch_sizes"]]
    assert all(math.isfinite(s) for s in steps) and steps[0] > steps[1] > steps[2]
    fit = res["fits"][str(result["config"]["targets"][0])]
    assert fit["a"] >= 0 and fit["b"] > 0 and fit["rel_rmse"] < 0.2
    for b in result["config"]["batch_sizes"]:  # every run validated its EWA model on the geometric grid
        for r in res["batches"][str(b)]["runs"]:
            assert r["steps"][0] == 1 and all(x < y for x, y in zip(r["steps"], r["steps"][1:]))


def test_cbs_grid_centres_the_lr_and_steps_grow_geometrically():
    from simulations.lm.cbs import Config, eval_steps

    c = Config()
    assert c.lrs(8)[0] == pytest.approx(4e-3) and c.lrs(256)[0] == pytest.approx(4e-3 * 32**0.2)
    assert sorted(c.lrs(8)) == pytest.approx([1e-3, 2e-3, 4e-3, 8e-3])
    assert c.ewa_decay(8) == pytest.approx(1 - 8 / 2048) and c.ewa_decay(4096) == 0.0
    s = eval_steps(1000, 0.05)
    assert s[:5] == [1, 2, 3, 4, 5] and s[-1] == 1000 and all(b > a for a, b in zip(s, s[1:]))
    assert all(b <= math.ceil(a * 1.05) + 1 for a, b in zip(s[:-1], s[1:-1]))
    with pytest.raises(ValueError, match="targets"):
        Config(targets=(1.9, 2.1))
    with pytest.raises(ValueError, match="batch_sizes"):
        Config(batch_sizes=(64, 8))
    with pytest.raises(ValueError, match="head_dim"):
        Config(widths=(40,))


def test_lite_smoke_reports_storage_and_mrr_for_every_arm(smoke):
    result = smoke("lite-ranking")
    m, cfg = result["metrics"], result["config"]
    arms = m["arms"]
    assert arms["maxsim"]["storage_bytes_per_doc"] == arms["lite"]["storage_bytes_per_doc"] == \
        cfg["d_len"] * cfg["dim"] * 4
    assert arms["lite_pooled"]["storage_bytes_per_doc"] == cfg["pooled_vectors"] * cfg["dim"] * 4
    assert all(0 <= a["mrr_at_10"] <= 1 for a in arms.values())
    assert m["chance_mrr_at_10"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 50)


def test_lite_config_refuses_pooling_more_vectors_than_tokens_and_short_documents():
    from simulations.lm.lite_ranking import Config

    with pytest.raises(ValueError, match="pooled_vectors"):
        Config(pooled_vectors=17)
    with pytest.raises(ValueError, match="d_len"):
        Config(q_len=4, d_len=8)


@pytest.mark.parametrize("name", ["lm-salt", "lm-cbs", "lite-ranking"])
def test_committed_full_size_record_holds_its_strict_claims(name):
    from simulations import registry
    from simulations.results import load_record

    path = RESULTS / name / "result.json"
    if not path.exists():
        pytest.skip(f"no committed record for {name}")
    record = load_record(path)
    exp = registry.get(name)
    assert set(record["config"]) == {f for f in exp.config.__dataclass_fields__}, "record is from an old Config"
    assert not record["provenance"].get("smoke")
    assert not registry.failed_strict(record), registry.failed_strict(record)
    assert any(c["strict"] for c in record["claims"])


@pytest.mark.parametrize("module", ["salt", "cbs", "lite_ranking"])
def test_gpu_presets_exist_and_need_cuda(module):
    import importlib

    cfg = importlib.import_module(f"simulations.lm.{module}").Config
    assert set(cfg.presets()) >= {"full", "smoke", "gpu"}
    if torch.cuda.is_available():
        assert cfg.gpu().device == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            cfg.gpu()
