"""The experiment framework: registry, --set parsing, result records and the CLI's exit codes."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass

import pytest

from simulations import registry
from simulations.__main__ import main
from simulations.registry import Claim
from simulations.results import finalize, new_figure, save_figure


@dataclass(frozen=True)
class _Cfg:
    n: int = 10
    rate: float = 0.5
    flag: bool = False
    widths: tuple[int, ...] = (1, 2)
    mode: str = "a"
    threshold: float = 1.0

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")

    @classmethod
    def smoke(cls) -> _Cfg:
        return cls(n=2)


def _claims(result):
    m = result["metrics"]["value"]
    return [Claim("value below threshold", m, result["config"]["threshold"], m <= result["config"]["threshold"]),
            Claim("an observation", m, 0.0, False, strict=False)]


def _run(cfg, out_dir):
    fig, ax = new_figure()
    ax[0, 0].plot([0, 1], [0, cfg.rate])
    save_figure(fig, out_dir)
    return finalize(out_dir, "toy", cfg, {"value": cfg.n * cfg.rate}, _claims, seed=0)


@pytest.fixture
def toy(monkeypatch):
    mod = types.ModuleType("simulations._toy_test_exp")
    registry.register("toy", _Cfg, _run, _claims, description="A toy experiment.\nmore")
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(registry, "_catalogue", lambda: {"toy": mod.__name__})
    yield
    registry._REGISTRY.pop("toy", None)


def test_set_values_are_parsed_against_field_types():
    cfg = registry.apply_overrides(_Cfg(), {"n": "7", "rate": "0.25", "flag": "true", "widths": "4,8,16", "mode": "b"})
    assert cfg == _Cfg(n=7, rate=0.25, flag=True, widths=(4, 8, 16), mode="b")


@pytest.mark.parametrize(
    "key,value,match",
    [("nope", "1", "unknown config key"), ("n", "1.5", "integer"), ("rate", "fast", "number"),
     ("flag", "maybe", "boolean"), ("n", "0", "n must be >= 1")],
)
def test_bad_set_values_are_clear_errors(key, value, match):
    with pytest.raises(ValueError, match=match):
        registry.apply_overrides(_Cfg(), {key: value})


def test_malformed_set_item_is_an_error():
    with pytest.raises(ValueError, match="key=value"):
        registry.parse_set_args(["n7"])


def test_run_writes_record_with_claims(toy, tmp_path):
    result = registry.run("toy", smoke=True, out_dir=tmp_path)
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk["experiment"] == "toy" and on_disk["config"]["n"] == 2
    assert set(on_disk) >= {"experiment", "config", "environment", "metrics", "claims"}
    assert on_disk["claims"][0] == {"name": "value below threshold", "measured": 1.0, "threshold": 1.0,
                                    "holds": True, "strict": True, "kind": "claim"}
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert registry.failed_strict(result) == []


def test_cli_exit_codes(toy, tmp_path, capsys):
    assert main(["run", "toy", "--smoke", "--out", str(tmp_path / "a")]) == 0
    assert "value below threshold" in capsys.readouterr().out
    # a failing strict claim -> exit 1; an observation that fails does not matter
    assert main(["run", "toy", "--set", "n=10", "--out", str(tmp_path / "b")]) == 1
    assert main(["run", "toy", "--set", "bogus=1", "--out", str(tmp_path / "c")]) == 2
    assert main(["run", "no-such-experiment"]) == 2
    assert main(["run", "toy", "--device", "cuda", "--out", str(tmp_path / "d")]) == 2
    assert main(["list"]) == 0
    assert "toy" in capsys.readouterr().out
