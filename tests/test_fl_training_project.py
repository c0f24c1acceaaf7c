"""The federated-training Flower app projects (flower-apps/fl-training, and fl-training-secagg for distributed DP):
their `[tool.flwr.app]` validates, their FABs build, their default run configs are accepted before any round, and
(slow) the apps run under `flwr run` on the local simulation federation and on the deployment engine (a SuperLink
and three SuperNodes), where the rounds equal the in-process engine's."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import flwr_run_local, stop_process_groups

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = ("fl-training", "fl-training-secagg")
PROJECT = ROOT / "flower-apps" / "fl-training"


def _config(name: str) -> dict:
    return tomllib.loads((ROOT / "flower-apps" / name / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


CONFIG = _config("fl-training")

pytest.importorskip("flwr")


@pytest.mark.parametrize("name", PROJECTS)
def test_the_app_validates_and_its_fab_builds(name):
    from flwr.cli.build import build_fab_from_disk
    from flwr.common.config import validate_config

    project = ROOT / "flower-apps" / name
    ok, errors, warnings = validate_config(tomllib.loads((project / "pyproject.toml").read_text()),
                                           check_module=True, project_dir=project)
    assert ok and not warnings, (errors, warnings)
    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(project)))
    assert sorted(fab.namelist()) == [".info/CONTENT", "README.md", "pyproject.toml"]


@pytest.mark.parametrize("name", PROJECTS)
def test_the_default_run_config_is_checked_before_any_round(name):
    from simulations.flower.training.deploy import run_from_config

    cfg = _config(name)
    run, out = run_from_config(dict(cfg))
    assert run.population == cfg["population"] and out.name == name
    if run.settings.dp == "central":
        assert run.sigma > 0  # calibrated by the server before round 1
    else:
        assert run.ddp is not None and run.ddp.variance > 0 and name.endswith("secagg")
        assert run.ddp.exact().max_clients >= run.ddp.max_clients  # the modulus check ran
    with pytest.raises(ValueError, match="unknown run-config keys"):
        run_from_config({**cfg, "roundz": 3})


def _inprocess_losses(overrides: dict, name: str = "fl-training") -> list[float]:
    from simulations.flower.training.deploy import run_from_config

    run, _ = run_from_config({**_config(name), **overrides})
    run.run_inprocess()
    return [h["val_loss"] for h in run.history]


def _env(home: Path, **extra: str) -> dict[str, str]:
    bindir = Path(sys.executable).parent
    return dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                RAY_USAGE_STATS_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT), **extra)


def _need_cli() -> Path:
    bindir = Path(sys.executable).parent
    if shutil.which("flwr", path=str(bindir)) is None or not (bindir / "flower-superlink").exists():
        pytest.skip("the flwr CLI and flower-superlink are not installed beside this Python")
    return bindir


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.xdist_group("ray")
@pytest.mark.parametrize("name", PROJECTS)
def test_flwr_run_on_the_local_simulation_federation(tmp_path, name):
    cfg = _config(name)
    out = tmp_path / "out"
    extra = {"rounds": 2, "simulate-noise-seed": 3}  # seeded shares (simulation only) so in-process can repeat them
    result = flwr_run_local(
        ROOT / "flower-apps" / name, tmp_path / "flwr-home", out,
        federation=f"num-supernodes={cfg['population']} client-resources-num-cpus=1",
        run_config=" ".join(f"{k}={json.dumps(v)}" for k, v in {**extra, "out-dir": str(out)}.items()),
        ports=(39391, 39393))
    assert result["nodes_found"] == cfg["population"]
    assert [h["val_loss"] for h in result["history"]] == pytest.approx(_inprocess_losses(extra, name), abs=1e-6)
    assert result["privacy"]["epsilon"] == pytest.approx(cfg["target-epsilon"], abs=1e-2)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_app_on_a_superlink_and_three_supernodes(tmp_path):
    bindir = _need_cli()
    if shutil.which("flower-superexec", path=str(bindir)) is None:
        pytest.skip("flower-superexec is not installed beside this Python")
    port, home, out = 18100, tmp_path / "flwr", tmp_path / "out"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    env, procs = _env(home), []

    def start(*args: str, log: str) -> None:
        procs.append(subprocess.Popen(args, env=env, cwd=tmp_path, stdout=open(tmp_path / log, "w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))

    overrides = {"population": 3, "cohort": 3.0, "rounds": 2, "dp": "none"}
    try:
        start(str(bindir / "flower-superlink"), "--insecure", "--port", str(port), log="superlink.log")
        time.sleep(5)
        for i in range(3):
            start(str(bindir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                  "--port", str(19194 + i), "--node-config", f"partition-id={i}", log=f"node{i}.log")
        cfg = " ".join(f"{k}={json.dumps(v)}" for k, v in {**overrides, "out-dir": str(out)}.items())
        run = subprocess.run([str(bindir / "flwr"), "run", str(PROJECT), "test", "--stream", "--run-config", cfg],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=800)
        deadline = time.monotonic() + 60
        while not (out / "result.json").is_file() and time.monotonic() < deadline:
            time.sleep(1)
        assert (out / "result.json").is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    finally:
        stop_process_groups(procs)
    result = json.loads((out / "result.json").read_text())
    assert [h["survived"] for h in result["history"]] == [3, 3] and result["nodes_found"] == 3
    assert [h["val_loss"] for h in result["history"]] == pytest.approx(_inprocess_losses(overrides), abs=1e-6)
