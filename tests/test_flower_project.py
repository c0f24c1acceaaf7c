"""The repository root is a Flower app: `[tool.flwr.app]` validates, its FAB builds, its default run config is
accepted by the deployed ServerApp, and (slow) `flwr run .` runs it on the simulation engine, releasing every round.

(The Ray-free checks of the app itself are in tests/test_flower_app.py.)"""

from __future__ import annotations

import io
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import flwr_run_local

ROOT = Path(__file__).resolve().parent.parent
APP = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]


def test_the_app_section_validates_and_its_fab_builds():
    from flwr.cli.build import build_fab_from_disk
    from flwr.common.config import validate_config

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ok, errors, warnings = validate_config(config, check_module=True, project_dir=ROOT)
    assert ok and not warnings, (errors, warnings)
    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(ROOT)))
    assert sorted(fab.namelist()) == [".info/CONTENT", "LICENSE", "README.md", "pyproject.toml"]


def test_the_default_run_config_is_accepted_by_the_server_app():
    from simulations.flower.deployment import settings_from_run_config

    settings, opts = settings_from_run_config(dict(APP["config"]))
    settings.exact_params()  # an exact SecAgg+ sum at these sizes
    assert settings.n_clients == APP["config"]["n-clients"]
    assert opts["dp"] and settings.noise_var > 0  # DP by default, calibrated by the server


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.xdist_group("ray")
def test_flwr_run_from_the_repository_root(tmp_path):
    out = tmp_path / "out"
    result = flwr_run_local(ROOT, tmp_path / "flwr-home", out,
                            federation="num-supernodes=10 client-resources-num-cpus=1",
                            run_config=f'rounds=2 out-dir="{out}"', ports=(39291, 39293))
    rounds = result["metrics"]["rounds"]
    assert len(rounds) == 2 and all(r["released"] for r in rounds), rounds
    assert result["metrics"]["privacy"]["private_against_server"] is True
    assert result["metrics"]["top_estimates"], "the deployed server decodes the released sums"
