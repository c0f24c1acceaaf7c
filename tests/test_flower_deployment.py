"""The same apps on Flower's deployment engine: one SuperLink, three SuperNodes, `flwr run` (slow: minutes).

Runs the commands docs/flower.md documents, with private ports and a private FLWR_HOME, and checks that the
ServerApp wrote an exact result. The nodes are configured for the evaluation oracle (``answer-oracle=true``, a
folder for their noise shares), which the run config asks for (``oracle = true``): a simulation-only check that the
released sums are the survivors' tables plus their own noise, to the integer. Every process started here is
stopped by its pid.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import stop_process_groups

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

_APP_TOML = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "ffe-flower-app"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["ffe_flower_app"]

[tool.flwr.app]
publisher = "toolkit"

[tool.flwr.app.components]
serverapp = "simulations.flower.deployment:app"
clientapp = "simulations.flower.client_app:app"

[tool.flwr.app.config]
n-clients = 3
clients-per-round = 3
rounds = 2
width = 256
secagg = true
epsilon = 8.0
delta = 1e-5
oracle = true
oracle-noise-dir = "{noise}"
out-dir = "{out}"
"""


def test_apps_run_on_superlink_and_supernodes(tmp_path):
    bindir = Path(sys.executable).parent
    if not (bindir / "flower-superlink").exists() or shutil.which("flower-superexec", path=str(bindir)) is None:
        pytest.skip("flower-superlink / flower-superexec not installed beside this Python")
    port = 18000
    home, app, out, noise = tmp_path / "flwr", tmp_path / "app", tmp_path / "out", tmp_path / "noise"
    (app / "ffe_flower_app").mkdir(parents=True)
    noise.mkdir()
    (app / "ffe_flower_app" / "__init__.py").write_text("")
    (app / "pyproject.toml").write_text(_APP_TOML.format(out=out, noise=noise))
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    procs: list[subprocess.Popen] = []

    def start(*args: str, log: str) -> None:
        procs.append(subprocess.Popen(args, env=env, cwd=tmp_path, stdout=open(tmp_path / log, "w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start(str(bindir / "flower-superlink"), "--insecure", "--port", str(port), log="superlink.log")
        time.sleep(5)
        for i in range(3):
            start(str(bindir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                  "--port", str(19094 + i), "--node-config",
                  f'partition-id={i} answer-oracle=true oracle-noise-dir="{noise}"', log=f"node{i}.log")
        run = subprocess.run([str(bindir / "flwr"), "run", str(app), "test", "--stream"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=800)
        assert (out / "result.json").is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    finally:
        stop_process_groups(procs)
    result = json.loads((out / "result.json").read_text())
    assert result["metrics"]["rounds_released"] == 2
    assert result["metrics"]["sum_max_abs_diff_vs_inprocess"] == 0
    assert abs(result["privacy_report"]["epsilon"] - 8.0) < 1e-3
