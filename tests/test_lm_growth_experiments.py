"""The growth experiments (lm-midas, lm-lag): smoke presets run, write their record and plot, and their strict
claims hold; the committed full-size records hold their claims and match today's Config fields."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


pytestmark = pytest.mark.usefixtures("one_torch_thread", "token_cache")


def test_midas_smoke_grows_through_every_stage_and_saves_flops(smoke):
    m = smoke("lm-midas")["metrics"]
    assert m["arms"]["middle"]["n_layer"] == m["arms"]["baseline"]["n_layer"] == 4
    assert [g["to"] for g in m["arms"]["middle"]["growths"]] == [2, 3, 4]
    assert [g["step"] for g in m["arms"]["top"]["growths"]] == list(m["schedule"]["boundaries"])
    assert sum(m["schedule"]["stage_steps"]) == 80
    assert 0.7 < m["flops_ratio"]["middle"] < 0.8
    assert m["flops_ratio"]["middle"] == pytest.approx(m["flops_ratio"]["top"])
    assert set(m["primitives"]) == {"baseline@equal", "baseline", "top", "middle"}
    for r in m["primitives"].values():
        assert all(0 <= v <= 1 for v in (*r["few_shot"].values(), *r["fine_tuned"].values()))


def test_lag_smoke_ranks_every_candidate_at_every_lag(smoke):
    result = smoke("lm-lag")
    m, c = result["metrics"], result["config"]
    assert set(m["candidates"]) == set(c["candidates"])
    for r in m["candidates"].values():
        assert set(r["lag_loss"]) == {str(k) for k in c["lags"]}
    ident = m["candidates"]["identity"]["lag_loss"]["0"]
    assert ident == pytest.approx(m["base_val_loss"], rel=1e-5)  # identity growth keeps the function exactly
    assert all(-1 <= t <= 1 for t in m["kendall_tau"].values())


@pytest.mark.parametrize("name, module", [("lm-midas", "simulations.lm.midas"), ("lm-lag", "simulations.lm.lag")])
def test_committed_full_record_holds_its_claims_with_today_s_config(name, module):
    path = RESULTS / name / "result.json"
    if not path.exists():
        pytest.skip(f"no committed record for {name}")
    import importlib

    record = json.loads(path.read_text())
    cfg = importlib.import_module(module).Config
    assert set(record["config"]) == {f.name for f in dataclasses.fields(cfg)}
    assert not record["provenance"]["smoke"]
    assert all(cl["holds"] for cl in record["claims"] if cl["strict"]), record["claims"]
