"""Data-parallel training under `torchrun`: process-group setup and the few collectives the Trainer uses.

`torchrun --nproc_per_node N script.py` sets RANK, LOCAL_RANK and WORLD_SIZE; `setup(device)` then joins the
group (gloo on CPU, nccl on CUDA) and returns this process's rank, world size and device (cuda:LOCAL_RANK on a
GPU). A plain `python script.py` is world size 1 and touches nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank in [0, world), and the device it trains on."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and runs evaluation."""
        return self.rank == 0


def setup(device: str) -> DistInfo:
    """Join the torchrun process group if WORLD_SIZE > 1 (idempotent), else report a single process.

    device 'cpu' uses gloo; 'cuda' uses nccl on cuda:LOCAL_RANK (each rank its own GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistInfo(0, 1, torch.device(device))
    cuda = device.startswith("cuda")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), dev)


def cleanup() -> None:
    """Leave the process group (call once at the end of a torchrun script).

    All ranks meet at a barrier first: a rank that tears gloo down while a peer is still writing its results
    closes the peer's pairs under it, which aborts the peer ("terminate called without an active exception",
    seen once in CI on a loaded 2-core machine).
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def mean_across(t: torch.Tensor, world: int) -> torch.Tensor:
    """The mean of `t` over all ranks (a no-op for one process)."""
    if world == 1:
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / world


def gather_objects(obj: Any, world: int) -> list[Any]:
    """[obj of rank 0, obj of rank 1, …] on every rank (picklable objects)."""
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
