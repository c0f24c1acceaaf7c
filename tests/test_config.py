"""The declarative experiment config: one statement of a field's range serves validation, --set and show."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from simulations.config import ExperimentConfig, Interval, fields_info, param
from simulations.registry import Claim, apply_overrides


@dataclass(frozen=True)
class _Cfg(ExperimentConfig):
    steps: int = param(100, "training steps", bounds="[1, 1e6]")
    lr: float = param(1e-3, "peak learning rate", bounds="(0, inf)")
    frac: float = param(0.5, "a fraction", bounds="[0, 1)")
    depths: tuple[int, ...] = param((5, 15), "sketch depths", bounds="[1, 64]", nonempty=True)
    kind: str = param("zipf", "instance", choices=("zipf", "shakespeare"))
    cap: int | None = param(None, "optional cap", bounds="[1, 100]")
    flag: bool = param(False, "a switch")

    def check(self) -> None:
        if self.steps < len(self.depths):
            raise ValueError("steps must be >= len(depths)")

    @classmethod
    def smoke(cls) -> _Cfg:
        return cls(steps=10)


def test_interval_parsing_and_membership() -> None:
    iv = Interval.parse("(0, 1]")
    assert 0 not in iv and 1 in iv and 0.5 in iv and float("nan") not in iv
    assert str(Interval.parse("[1, 1e7]")) == "[1, 10000000]"
    assert str(Interval.parse("(0, inf)")) == "(0, inf)"
    with pytest.raises(ValueError, match="bounds"):
        Interval.parse("0..1")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 0}, r"steps must be an integer in \[1, 1000000\], got 0"),
        ({"steps": 2.5}, r"steps must be an integer"),
        ({"steps": True}, r"steps must be an integer"),
        ({"lr": 0.0}, r"lr must be a number in \(0, inf\), got 0.0"),
        ({"lr": float("nan")}, r"lr must be a number in \(0, inf\)"),
        ({"frac": 1.0}, r"frac must be a number in \[0, 1\)"),
        ({"depths": ()}, r"depths must be non-empty"),
        ({"depths": (5, 65)}, r"every element of depths must be an integer in \[1, 64\], got \(5, 65\)"),
        ({"depths": "5"}, r"depths must be a tuple"),
        ({"kind": "uniform"}, r"kind must be one of \['zipf', 'shakespeare'\], got 'uniform'"),
        ({"cap": 0}, r"cap must be an integer in \[1, 100\], got 0"),
        ({"flag": 1}, r"flag must be a boolean"),
        ({"steps": 1}, r"steps must be >= len\(depths\)"),
    ],
)
def test_bad_values_are_refused_naming_the_field(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _Cfg(**change)


def test_numpy_scalars_become_python_values() -> None:
    cfg = _Cfg(steps=np.int64(7), lr=np.float32(0.5), depths=[np.int32(3)], cap=np.int16(4), flag=np.bool_(True))
    assert type(cfg.steps) is int and type(cfg.lr) is float and cfg.depths == (3,) and type(cfg.depths[0]) is int
    assert type(cfg.cap) is int and cfg.flag is True
    assert _Cfg(cap=None).cap is None


def test_overrides_parse_against_the_declared_types_then_validate() -> None:
    cfg = apply_overrides(_Cfg(), {"steps": "20", "depths": "3,4", "cap": "none", "flag": "true"})
    assert (cfg.steps, cfg.depths, cfg.cap, cfg.flag) == (20, (3, 4), None, True)
    with pytest.raises(ValueError, match="depths"):
        apply_overrides(_Cfg(), {"depths": "3,99"})


def test_fields_info_lists_type_default_help_and_allowed_values() -> None:
    info = {f.name: f for f in fields_info(_Cfg)}
    assert info["steps"].type == "int" and info["steps"].default == 100 and info["steps"].help == "training steps"
    assert info["steps"].allowed == "in [1, 1000000]"
    assert info["depths"].type == "tuple[int, ...]" and "non-empty" in info["depths"].allowed
    assert info["kind"].allowed == "one of 'zipf', 'shakespeare'"
    assert info["cap"].type == "int | None"


def test_param_refuses_mutable_defaults_and_missing_help() -> None:
    with pytest.raises(ValueError, match="immutable"):
        param([1, 2], "a list")
    with pytest.raises(ValueError, match="help"):
        param(1, "")


def test_presets_default_to_full_and_smoke() -> None:
    presets = _Cfg.presets()
    assert presets["full"]().steps == 100 and presets["smoke"]().steps == 10


def test_claim_kinds() -> None:
    assert Claim("a", 1.0, 2.0, True).kind == "claim"
    assert Claim("a", 1.0, 2.0, True, strict=False).kind == "observation"
    assert Claim("a", 1.0, 2.0, True, sanity=True).as_dict()["kind"] == "sanity"
    with pytest.raises(ValueError, match="sanity"):
        Claim("a", 1.0, 2.0, True, strict=False, sanity=True)


def test_records_are_strict_json_and_restore_non_finite_numbers(tmp_path) -> None:
    import json

    from simulations.results import dump_record, load_record

    result = {"metrics": {"a": float("inf"), "b": [1.0, float("-inf"), {"K=0.5": float("nan")}]}, "claims": []}
    text = dump_record(result)
    raw = json.loads(text)  # strict JSON: no Infinity / NaN tokens
    assert raw["metrics"]["a"] is None and raw["metrics"]["b"][1] is None
    assert {tuple(n["path"]): n["value"] for n in raw["nonfinite"]} == {
        ("metrics", "a"): "inf", ("metrics", "b", 1): "-inf", ("metrics", "b", 2, "K=0.5"): "nan"}
    (tmp_path / "r.json").write_text(text)
    back = load_record(tmp_path / "r.json")
    assert back["metrics"]["a"] == float("inf") and back["metrics"]["b"][1] == float("-inf")
    assert back["metrics"]["b"][2]["K=0.5"] != back["metrics"]["b"][2]["K=0.5"]  # nan


def test_a_run_records_its_provenance(tmp_path) -> None:
    from simulations import registry
    from simulations.results import load_record

    registry.run("ffe-single", smoke=True, overrides={"widths": "64,256", "seeds": "1"}, out_dir=tmp_path)
    prov = load_record(tmp_path / "result.json")["provenance"]
    assert prov["smoke"] is True and prov["preset"] == "smoke" and prov["wall_s"] > 0
    assert prov["command"] == "python -m simulations run ffe-single --smoke --set widths=64,256 --set seeds=1"
    assert prov["started_at"].endswith("+00:00")
    assert "toolkit_version" in prov and "git_commit" in prov
