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
