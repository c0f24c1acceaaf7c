"""DDP under torchrun (gloo, 2 CPU processes) equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


def _run(args: list[str], nproc: int | None) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    launcher = [sys.executable] if nproc is None else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run(launcher + [str(WORKER), *args], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("source, resume_at", [("indexed", 0), ("shuffled", 3)])
def test_two_cpu_ranks_follow_the_single_process_trajectory(tmp_path, source, resume_at):
    single, ddp = tmp_path / "single.json", tmp_path / "ddp.json"
    _run([str(single), source, "2"], None)  # one process, 2 micro-batches per step
    _run([str(ddp), source, "1", *([str(resume_at)] if resume_at else [])], 2)  # 2 ranks × 1 micro-batch
    a, b = json.loads(single.read_text()), json.loads(ddp.read_text())
    assert b["world"] == 2 and a["world"] == 1
    n = len(a["loss"])
    assert n == 8 and b["loss"][-(8 - resume_at):] == pytest.approx(a["loss"][resume_at:], rel=1e-5, abs=1e-7)
    torch.testing.assert_close(torch.tensor(b["params"]), torch.tensor(a["params"]), rtol=1e-5, atol=1e-6)
    assert b["lines"] == 8  # rank 0 alone writes the log, one line a step (the resumed run appends)
