"""Shared test setup: no telemetry, headless plots, and a helper that runs an experiment's smoke preset."""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def run_smoke(name: str, out_dir: Path, **overrides: str) -> dict:
    """Run `name`'s smoke preset into `out_dir`; assert it wrote its record and plot and its strict claims hold."""
    from simulations import registry

    result = registry.run(name, smoke=True, overrides=overrides or None, out_dir=out_dir)
    assert (out_dir / "result.json").is_file()
    assert list(out_dir.glob("*.png")), f"{name} wrote no plot"
    for key in ("experiment", "config", "environment", "metrics", "claims"):
        assert key in result, key
    failed = registry.failed_strict(result)
    assert not failed, f"{name}: strict claims failed: {failed}"
    return result


@pytest.fixture
def smoke(tmp_path):
    """`smoke("ffe-single")` runs that experiment's smoke preset in a temp folder and checks its claims."""
    return lambda name, **kw: run_smoke(name, tmp_path / name, **kw)


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test: the models are tiny, and two threads spinning against each other on
    the shared 2-core CI machine run such steps up to ~30x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def token_cache(tmp_path_factory, monkeypatch):
    """Token-array caches (FEDPRIVACY_CACHE) in the session's temp folder, not the user's cache."""
    monkeypatch.setenv("FEDPRIVACY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def stop_local_superlink(marker: str) -> None:
    """`flwr run` starts the local SuperLink detached: stop the one whose command line has `marker` (our private
    FLWR_HOME), by pid."""
    import signal

    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "flower-superlink" in cmd and marker in cmd:
            try:
                os.kill(int(proc.name), signal.SIGTERM)
            except ProcessLookupError:
                pass


def stop_process_groups(procs: list) -> None:
    """SIGTERM each started process group (last first), then SIGKILL any that outlive 20 s."""
    import signal
    import subprocess

    for p in reversed(procs):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def flwr_run_local(project: Path, home: Path, out: Path, *, federation: str, run_config: str,
                   ports: tuple[int, int]) -> dict:
    """`flwr run PROJECT` on the local simulation federation with a private FLWR_HOME and ports; waits for
    OUT/result.json (the ServerApp writes it), always stops the local SuperLink, and returns the parsed result.
    Skips when the flwr CLI is not installed beside this Python."""
    import json
    import shutil
    import subprocess
    import sys
    import time

    bindir = Path(sys.executable).parent
    if shutil.which("flwr", path=str(bindir)) is None or not (bindir / "flower-superlink").exists():
        pytest.skip("the flwr CLI and flower-superlink are not installed beside this Python")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               RAY_USAGE_STATS_ENABLED="0", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
               FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(ports[0]), FLWR_LOCAL_CONTROL_API_PORT=str(ports[1]),
               PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(root))
    try:
        run = subprocess.run([str(bindir / "flwr"), "run", str(project), "--stream", "--federation-config",
                              federation, "--run-config", run_config],
                             cwd=root, env=env, capture_output=True, text=True, timeout=540)
        deadline = time.monotonic() + 60
        while not (out / "result.json").is_file() and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        stop_local_superlink(str(home))
    assert (out / "result.json").is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((out / "result.json").read_text())
