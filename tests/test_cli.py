"""The command line explains itself: `list` (cheap, one line per experiment), `show` (every registered experiment),
`run NAME --help`, where `run` wrote its files, observations marked as such, and "did you mean"."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simulations import catalog, registry
from simulations.__main__ import main
from simulations.config import fields_info

ROOT = Path(__file__).resolve().parent.parent
NAMES = registry.names()


def _py(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **env))


def test_list_prints_each_experiment_once_with_its_area_and_imports_neither_torch_nor_flower():
    proc = _py("import sys; from simulations.__main__ import main; main(['list']); "
               "print('HEAVY', sorted(m for m in ('torch', 'flwr', 'ray', 'opacus', 'matplotlib') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    *lines, heavy = proc.stdout.strip().splitlines()
    assert heavy == "HEAVY []"
    assert [ln.split()[0] for ln in lines] == NAMES
    areas = {e.name: e.area for e in catalog.entries()}
    for ln in lines:
        name, area, *desc = ln.split()
        assert area == areas[name] and desc, ln
        assert ln.count(name) == 1, f"name printed twice: {ln}"


@pytest.mark.parametrize("name", NAMES)
def test_show_explains_every_registered_experiment(name, capsys):
    assert main(["show", name]) == 0
    out = capsys.readouterr().out
    exp = registry.get(name)
    assert out.startswith(f"{name}: ") and "paper:" in out and "presets (--set scale=NAME)" in out
    table = out.split("config (--set")[1].split("presets (")[0]
    smoke = exp.config.smoke()
    for f in fields_info(exp.config):
        row = next((ln for ln in table.splitlines() if ln.split() and ln.split()[0] == f.name), None)
        assert row is not None, f"field {f.name} missing from show"
        assert f.type.split("[")[0] in row
    assert dataclasses.fields(smoke)  # the smoke column comes from a real preset
    record = ROOT / "docs" / "results" / name / "result.json"
    if record.is_file():
        assert "committed full-size record" in out and "threshold" in out
    else:
        assert "no committed full-size record" in out


def test_run_help_lists_the_experiments_fields(capsys):
    assert main(["run", "ffe-single", "--help"]) == 0
    out = capsys.readouterr().out
    for f in fields_info(registry.get("ffe-single").config):
        assert f.name in out and f.help in out
    assert "smoke" in out and "usage: python -m simulations run ffe-single" in out


@pytest.mark.parametrize("argv,suggestion", [
    (["run", "ffe-singel", "--smoke"], "did you mean 'ffe-single'?"),
    (["show", "dp2-imbd"], "did you mean 'dp2-imdb'?"),
    (["run", "ffe-single", "--help-me"], None),
    (["run", "ffe-single", "--smoke", "--set", "widht=64"], "did you mean 'widths'?"),
])
def test_mistyped_names_and_keys_suggest_the_closest(argv, suggestion, capsys):
    if suggestion is None:  # an unknown option is argparse's error
        with pytest.raises(SystemExit):
            main(argv)
        return
    assert main(argv) == 2
    assert suggestion in capsys.readouterr().err


@dataclasses.dataclass(frozen=True)
class _Cfg:
    value: float = 2.0

    @classmethod
    def smoke(cls) -> _Cfg:
        return cls()


def _toy_run(cfg, out_dir):
    from simulations.results import finalize, new_figure, save_figure

    for name in ("a.png", "b.png"):
        fig, ax = new_figure()
        ax[0, 0].plot([0, 1], [0, cfg.value])
        save_figure(fig, out_dir, name)
    return finalize(out_dir, "toy-cli", cfg, {"v": cfg.value}, _toy_claims)


def _toy_claims(result):
    v = result["metrics"]["v"]
    return [registry.Claim("strict one", v, 1.0, v >= 1.0),
            registry.Claim("an observation that fails", v, 0.0, False, strict=False),
            registry.Claim("a sanity check", v, 0.0, True, sanity=True)]


@pytest.fixture
def toy(monkeypatch):
    registry.register("toy-cli", _Cfg, _toy_run, _toy_claims, description="toy-cli: a toy.")
    monkeypatch.setattr(registry, "_catalogue", lambda: {"toy-cli": __name__})
    yield
    registry._REGISTRY.pop("toy-cli", None)


def test_run_prints_the_claims_by_kind_and_where_the_record_and_plots_went(toy, tmp_path, capsys):
    assert main(["run", "toy-cli", "--out", str(tmp_path)]) == 0  # a failing observation does not fail the run
    out = capsys.readouterr().out
    rows = {ln.split("  ")[0]: ln for ln in out.splitlines() if ln.startswith(("strict one", "an obs", "a sanity"))}
    assert rows["strict one"].split()[-2:] == ["yes", "claim"]
    assert rows["an observation that fails"].split()[-2:] == ["no", "observation"]
    assert rows["a sanity check"].split()[-2:] == ["yes", "sanity"]
    assert f"record: {tmp_path / 'result.json'}" in out
    assert f"plot:   {tmp_path / 'a.png'}" in out and f"plot:   {tmp_path / 'b.png'}" in out
    assert main(["run", "toy-cli", "--set", "value=0.5", "--out", str(tmp_path)]) == 1
    assert " NO  claim" in capsys.readouterr().out
