"""Batch sources the Trainer can resume exactly.

Two shapes resume exactly, because the data position is part of the checkpoint:

- **step-indexed**: a callable `index -> batch` that is a pure function of `index` (the Trainer passes the
  global micro-batch index, so the position *is* the step). Draw randomness from `index_generator(seed, index)`
  instead of a generator that lives across calls: a generator's position is state the checkpoint cannot see.
- **stateful**: an iterator with `state_dict()` / `load_state_dict()` (e.g. `ShuffledBatches` below, or
  torchdata's `StatefulDataLoader`); the Trainer saves and restores that state with the checkpoint.

A plain iterable has neither; the Trainer refuses to resume one unless told how (`resume_iterable`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def index_seed(seed: int, index: int) -> int:
    """A 63-bit seed that depends on (seed, index) only: neighbouring indices get unrelated streams."""
    return int(np.random.SeedSequence([seed & (2**63 - 1), index]).generate_state(1, np.uint64)[0]) >> 1


def index_generator(seed: int, index: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh torch.Generator for batch `index` of a step-indexed source seeded by `seed`."""
    return torch.Generator(device=device).manual_seed(index_seed(seed, index))


def is_stateful(obj: Any) -> bool:
    """Whether `obj` has `state_dict()` and `load_state_dict()`."""
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


class ShuffledBatches:
    """Epochs over tensors that share a first dimension, in a fresh permutation each epoch, as a *stateful*
    iterator: `state_dict()` holds (epoch, position), so a resumed run reads the same batches as an uninterrupted
    one. The permutation of epoch e is a function of (seed, e) only.

    Under data parallelism the Trainer calls `shard(rank, world)`: every rank walks the same permutation, and
    rank r takes the r-th slice of each global batch of world·batch_size rows, so N ranks see what one process
    with grad_accum·N micro-batches sees. drop_last=False keeps a short last batch (only without sharding).
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, seed: int = 0, drop_last: bool = True) -> None:
        if not tensors:
            raise ValueError("ShuffledBatches needs at least one tensor")
        n = len(tensors[0])
        if any(len(t) != n for t in tensors):
            raise ValueError(f"all tensors must have the same length, got {[len(t) for t in tensors]}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} cannot be filled from {n} examples")
        self.tensors, self.batch_size, self.seed, self.drop_last = tensors, batch_size, seed, drop_last
        self.rank, self.world = 0, 1
        self.epoch, self.position = 0, 0
        self._perm: torch.Tensor | None = None

    def shard(self, rank: int, world: int) -> None:
        """Read only this rank's slice of every global batch."""
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world={world}), got {rank}")
        if world * self.batch_size > len(self.tensors[0]):
            raise ValueError(f"{world} ranks × batch_size={self.batch_size} cannot be filled from "
                             f"{len(self.tensors[0])} examples")
        if world > 1 and not self.drop_last:
            raise ValueError("sharded ShuffledBatches needs drop_last=True (equal batches on every rank)")
        self.rank, self.world = rank, world
        self._perm = None

    def _permutation(self) -> torch.Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(index_seed(self.seed, self.epoch))
            self._perm = torch.randperm(len(self.tensors[0]), generator=g)
        return self._perm

    def __iter__(self) -> ShuffledBatches:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        n, span = len(self.tensors[0]), self.batch_size * self.world
        start = self.position * span
        if start + (span if self.drop_last else 1) > n:
            self.epoch, self.position, self._perm = self.epoch + 1, 0, None
            start = 0
        lo = start + self.rank * self.batch_size
        idx = self._permutation()[lo: lo + self.batch_size]
        self.position += 1
        return tuple(t[idx] for t in self.tensors)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"ShuffledBatches seed differs from the checkpoint's: {self.seed} vs {state['seed']}")
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), None
