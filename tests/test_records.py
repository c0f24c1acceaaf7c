"""Every committed run record (docs/results/**/result*.json) against the one record schema (schema 2).

One test per record, so a failure names it. Records that predate schema 2 are expected failures until their area
re-makes them with the current code (then the xfail goes: see `_SCHEMA1_REASON`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from pathlib import Path
from typing import Any

import pytest

from simulations import registry
from simulations.results import RECORD_SCHEMA, load_record

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
RECORDS = sorted(RESULTS.glob("**/result*.json"))

_SCHEMA1_REASON = "record predates schema 2; re-made by its area"
_NONFINITE_STRINGS = {"inf", "-inf", "+inf", "nan", "infinity", "-infinity"}
_PROVENANCE = {"toolkit_version", "git_commit", "command", "smoke", "preset", "started_at", "wall_s"}
_CLAIM = {"name": str, "holds": bool, "strict": bool, "kind": str}


def _schema(path: Path) -> int:
    try:
        return int(json.loads(path.read_text()).get("schema", 1))
    except (ValueError, TypeError):
        return 0


def _params() -> list:
    out = []
    for path in RECORDS:
        rel = path.relative_to(RESULTS).as_posix()
        marks = [pytest.mark.xfail(strict=False, reason=_SCHEMA1_REASON)] if _schema(path) < RECORD_SCHEMA else []
        out.append(pytest.param(path, id=rel, marks=marks))
    return out


def _strict_json(path: Path) -> Any:
    def refuse(token: str) -> None:
        raise ValueError(f"{path.name}: non-standard JSON token {token} (write non-finite numbers as null + a note)")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def _walk(obj: Any, where: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{where}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{where}/{i}")
    else:
        yield where, obj


def test_there_are_records_to_check():
    assert RECORDS, "no committed records under docs/results/"


@pytest.mark.parametrize("path", _params())
def test_record_follows_the_schema(path: Path):
    check_record(path)


def test_a_fresh_record_passes_the_same_check(tmp_path):
    """The check itself accepts what `finalize` writes today (so the xfails above cannot hide a broken check)."""
    out = tmp_path / "ffe-single"
    registry.run("ffe-single", smoke=True, overrides={"seeds": "1", "widths": "64,256"}, out_dir=out)
    check_record(out / "result.json", committed=False)


def check_record(path: Path, committed: bool = True) -> None:
    """Assert that the record at `path` follows schema 2 (`committed`: it also sits in docs/results as a
    full-size run)."""
    raw = _strict_json(path)
    for where, value in _walk({k: v for k, v in raw.items() if k != "nonfinite"}):
        assert not (isinstance(value, str) and value.strip().lower() in _NONFINITE_STRINGS), \
            f"{where}: non-finite number written as the string {value!r}"
    assert raw.get("schema") == RECORD_SCHEMA, f"schema is {raw.get('schema')}, want {RECORD_SCHEMA}"
    for key in ("experiment", "config", "environment", "provenance", "metrics", "claims"):
        assert key in raw, f"missing top-level key {key!r}"
    assert raw["experiment"] in registry.names(), f"unknown experiment {raw['experiment']!r}"
    if committed and path.name == "result.json":
        assert path.parent.name == raw["experiment"], "docs/results/NAME/result.json must hold experiment NAME"

    prov = raw["provenance"]
    assert _PROVENANCE <= set(prov), f"provenance lacks {sorted(_PROVENANCE - set(prov))}"
    assert isinstance(prov["command"], str) and prov["command"].startswith("python -m simulations run")
    assert isinstance(prov["smoke"], bool) and isinstance(prov["preset"], str)
    if committed and path.name == "result.json":
        assert prov["smoke"] is False, "a committed docs/results/NAME/result.json must be a full-size run"
    datetime.datetime.fromisoformat(prov["started_at"])
    assert isinstance(prov["wall_s"], int | float) and prov["wall_s"] >= 0

    for note in raw.get("nonfinite", []):
        obj = raw
        for key in note["path"]:
            obj = obj[key]
        assert obj is None and note["value"] in ("inf", "-inf", "nan"), note

    assert isinstance(raw["claims"], list) and raw["claims"], "a record lists its claims"
    for c in raw["claims"]:
        for key, tp in _CLAIM.items():
            assert isinstance(c.get(key), tp), f"claim {c.get('name')!r}: {key} must be {tp.__name__}"
        assert c["kind"] in ("claim", "observation", "sanity"), c["kind"]
        assert c["strict"] == (c["kind"] != "observation"), f"claim {c['name']!r}: kind and strict disagree"
        for key in ("measured", "threshold"):
            v = c.get(key, "missing")
            assert v is None or isinstance(v, bool | int | float), f"claim {c['name']!r}: {key} = {v!r}"
    loaded = load_record(path)  # the non-finite notes restore to floats
    assert all(isinstance(v, float) and not math.isfinite(v) for n in raw.get("nonfinite", [])
               for v in [_at(loaded, n["path"])])


def _at(obj: Any, path: list) -> Any:
    for key in path:
        obj = obj[key]
    return obj


@pytest.mark.parametrize("path", [p for p in RECORDS if p.name == "result.json"],
                         ids=[p.parent.name for p in RECORDS if p.name == "result.json"])
def test_record_config_matches_the_current_config_fields(path: Path):
    """A full-size record must come from the current code: its config has exactly the Config's fields."""
    raw = json.loads(path.read_text())
    exp = registry.get(raw["experiment"])
    fields = {f.name for f in dataclasses.fields(exp.config)}
    recorded = set(raw["config"])
    assert recorded == fields, (f"re-make the record: not in it {sorted(fields - recorded)}, "
                                f"no longer fields {sorted(recorded - fields)}")
