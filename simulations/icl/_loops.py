"""Yang et al.'s loop curriculum for a looped transformer: the loop count b grows during training, and the loss
averages the errors over the last T loops (the truncated window), so the block learns a map whose iterates
settle instead of one whose b-th iterate alone is right.

Schedule (Leiay/looped_transformer `scripts/curriculum.py`, `configs/base_loop.yaml`): b starts at `start`
(their scripts: T), grows by `inc` (2) every `every` (500) steps and stops at `end` (the trained b):

    b(step) = min(start + ⌊step / every⌋ · inc, end)

Loss at step s, b = b(s), over the last min(T, b) loops t and the first `points` rows of each prompt
(the points curriculum), normalized by the active dims like `_common.curriculum_loss`:

    L = (1 / min(T, b)) Σ_t mean_{i, k < points} (ŷ_k^{(t)} − y_k)² / dims

Prompt shapes stay static (dims/points come from Garg's `Curriculum` via `Staged` batches); only the Python loop
count changes, at most ⌈(end − start) / inc⌉ + 1 distinct values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class LoopCurriculum:
    """Loops b(step) from `start` to `end` (+`inc` every `every` steps); the loss covers the last `window` (T)
    loops. Yang et al.'s linear regression: `LoopCurriculum.yang(b=20, window=15)` (start = T, +2 every 500)."""

    start: int
    end: int
    window: int
    inc: int = 2
    every: int = 500

    def __post_init__(self) -> None:
        if not 1 <= self.start <= self.end:
            raise ValueError(f"start must be in [1, end={self.end}], got {self.start}")
        if not 1 <= self.window <= self.end:
            raise ValueError(f"window must be in [1, end={self.end}], got {self.window}")
        if self.inc < 1 or self.every < 1:
            raise ValueError(f"inc and every must be >= 1, got inc={self.inc}, every={self.every}")

    @classmethod
    def yang(cls, b: int, window: int, every: int = 500) -> LoopCurriculum:
        """Yang et al.'s schedule: from b = T, +2 loops every `every` steps, up to b."""
        return cls(window, b, window, 2, every)

    @classmethod
    def within(cls, span: int, start: int, end: int, window: int, inc: int = 2) -> LoopCurriculum:
        """Yang et al.'s stages, with `every` chosen so b reaches `end` by step `span` (a compressed run)."""
        stages = max(math.ceil((end - start) / inc), 1)
        return cls(start, end, window, inc, max(span // stages, 1))

    def at(self, step: int) -> int:
        """Loops b at optimizer step `step`."""
        return min(self.start + (max(step, 0) // self.every) * self.inc, self.end)

    def loss(self, model: nn.Module, batch: Any, step: int) -> torch.Tensor:
        """The window loss of `model` (a LoopedTransformer with window == self.window) run for b(step) loops on a
        `Staged` batch (dims, points from Garg's curriculum) or on plain `Prompts` (every dim and row active)."""
        prompts = getattr(batch, "prompts", batch)
        dims = getattr(batch, "dims", prompts.x.shape[-1])
        points = getattr(batch, "points", prompts.x.shape[1])
        preds = model(prompts.x, prompts.y, n_loops=self.at(step), return_all=True).float()  # [min(T, b), B, N]
        return window_loss(preds, prompts.y, points, dims)


def window_loss(preds: torch.Tensor, y: torch.Tensor, points: int, dims: int) -> torch.Tensor:
    """Mean over loops, prompts and the first `points` rows of (ŷ − y)² / dims: preds [loops, B, N], y [B, N]."""
    return (preds[:, :, :points] - y[None, :, :points]).pow(2).mean() / dims
