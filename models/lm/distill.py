"""SALT (Rawat et al. 2024, "A little help goes a long way"): a *smaller* trained LM teaches a larger one, early.

Phase 1 (the first `kd_steps` steps): the student's loss mixes the data's next token with the teacher's
distribution,

    L = (1 − ω)·CE(y, p_s) + ω·τ²·KL(p_t^τ ‖ p_s^τ),      p^τ = softmax(logits / τ),

token by token over the whole vocabulary; phase 2: plain next-token CE (ω = 0). The switch is hard, or ω decays
linearly to 0 over the last `decay_steps` of phase 1. A small teacher is good early (the student is worse than
it and soft labels cut the gradient's variance) and bad late (its bias caps the student), hence "KD early only".

SALT_DS also lets the teacher choose phase-1 data: every candidate sequence is scored by the teacher's
per-token loss (a robust aggregate, the median by default) and phase 1 trains on the sequences whose score lies in
a quantile band, "challenging but learnable": above the easy bulk, below the noisy top.

What is only recalled from the paper ([mem] in ../shared/notes/lm.md §2) is a parameter here, with the reading
we default to: ω = 0.67, τ = 1, KD for the first ~15–20% of steps, hard switch; the DS score aggregate (median)
and band (quantiles 0.5–0.9) are our choice — the paper's exact quantile was not recovered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.data import index_seed
from models.lm.data import _check_windows

__all__ = [
    "KDSchedule", "kd_loss", "DistillLoss", "PhasedBatches", "WindowSet", "sequence_scores", "select_band",
    "SCORE_AGGREGATES",
]

SCORE_AGGREGATES = ("median", "mean")


def _check_omega(omega: float) -> None:
    if not 0.0 <= omega <= 1.0:
        raise ValueError(f"omega (the distillation weight) must be in [0, 1], got {omega}")


def _check_tau(tau: float) -> None:
    if not tau > 0:
        raise ValueError(f"tau (the distillation temperature) must be > 0, got {tau}")


@dataclass(frozen=True)
class KDSchedule:
    """ω at each optimizer step: ω for steps < kd_steps − decay_steps, then ω·(kd_steps − step)/decay_steps
    (a linear ramp down that reaches 0 at kd_steps; decay_steps = 0 is a hard switch at kd_steps), 0 from
    kd_steps on. kd_steps = 0 is plain training."""

    omega: float = 0.67
    kd_steps: int = 0
    decay_steps: int = 0

    def __post_init__(self) -> None:
        _check_omega(self.omega)
        if self.kd_steps < 0:
            raise ValueError(f"kd_steps must be >= 0, got {self.kd_steps}")
        if not 0 <= self.decay_steps <= self.kd_steps:
            raise ValueError(f"decay_steps must be in [0, kd_steps={self.kd_steps}], got {self.decay_steps}")

    def __call__(self, step: int) -> float:
        if step >= self.kd_steps:
            return 0.0
        start = self.kd_steps - self.decay_steps
        if step < start:
            return self.omega
        return self.omega * (self.kd_steps - step) / self.decay_steps


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, omega: float,
            tau: float = 1.0, ignore_index: int = -1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(1 − ω)·CE(targets, student) + ω·τ²·KL(teacher^τ ‖ student^τ), each the mean over (non-ignored) tokens.

    logits [..., V] (fp32 inside), targets [...] token ids. The τ² factor keeps the soft term's gradient scale
    independent of τ (Hinton et al. 2015); at τ = 1 it is 1. Returns (loss, {"ce", "kl"}) with both parts
    detached, for logging."""
    _check_omega(omega)
    _check_tau(tau)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape (same vocabulary and tokens)")
    v = student_logits.shape[-1]
    s = student_logits.reshape(-1, v).float()
    y = targets.reshape(-1)
    ce = F.cross_entropy(s, y, ignore_index=ignore_index)
    keep = y != ignore_index
    log_ps = F.log_softmax(s[keep] / tau, dim=-1)
    log_pt = F.log_softmax(teacher_logits.reshape(-1, v)[keep].float() / tau, dim=-1)
    # KL(p_t ‖ p_s) = Σ p_t (log p_t − log p_s), averaged over tokens
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean() * tau**2
    if omega == 0.0:
        loss = ce
    elif omega == 1.0:
        loss = kl
    else:
        loss = (1.0 - omega) * ce + omega * kl
    return loss, {"ce": ce.detach(), "kl": kl.detach()}


class DistillLoss:
    """The SALT loss as a Trainer `loss_fn(model, (x, y), step=, teacher=)`: the KD mixture with ω =
    schedule(step) while ω > 0 (the teacher's forward runs under no_grad), plain CE afterwards (no teacher
    forward at all). Logs "omega", "ce" and, in phase 1, "kl"."""

    def __init__(self, schedule: KDSchedule, tau: float = 1.0) -> None:
        if not isinstance(schedule, KDSchedule):
            raise ValueError(f"schedule must be a KDSchedule, got {type(schedule).__name__}")
        _check_tau(tau)
        self.schedule, self.tau = schedule, tau

    def __call__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], *, step: int,
                 teacher: nn.Module | None) -> tuple[torch.Tensor, dict[str, Any]]:
        x, y = batch
        logits = model(x)
        omega = self.schedule(step)
        if omega == 0.0:
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), ignore_index=-1)
            return ce, {"omega": 0.0, "ce": ce.detach()}
        if teacher is None:
            raise ValueError(f"step {step} distills (omega={omega:g}) but the Trainer has no teacher: pass teacher=")
        with torch.no_grad():
            t_logits = teacher(x)
        loss, parts = kd_loss(logits, t_logits, y, omega, self.tau)
        return loss, {"omega": omega, **parts}


# ----------------------------------------------------------------------------------------------- data (SALT_DS)


class WindowSet:
    """Step-indexed batches drawn from a fixed set of windows: batch i is `batch_size` windows sampled uniformly
    (with replacement) from `starts` by a generator seeded by (seed, i); (x, y) [batch, block_size] int64."""

    def __init__(self, tokens: np.ndarray, starts: np.ndarray, block_size: int, batch_size: int,
                 seed: int = 0) -> None:
        windows = _check_windows(tokens, block_size, "the corpus")
        starts = np.asarray(starts, dtype=np.int64)
        if starts.ndim != 1 or starts.size == 0:
            raise ValueError("starts must be a non-empty 1-D array of window start positions")
        if starts.min() < 0 or starts.max() >= windows:
            raise ValueError(f"window starts must be in [0, {windows}) for block_size={block_size}, got "
                             f"[{starts.min()}, {starts.max()}]")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size > starts.size:
            raise ValueError(f"batch_size={batch_size} cannot be filled from {starts.size} selected windows")
        self.tokens, self.starts, self.block_size, self.batch_size, self.seed = (
            tokens, starts, block_size, batch_size, seed)
        self._offsets = np.arange(block_size + 1)

    def __call__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(index_seed(self.seed, index))
        pick = self.starts[rng.integers(0, self.starts.size, size=self.batch_size)]
        rows = torch.from_numpy(self.tokens[pick[:, None] + self._offsets].astype(np.int64))
        return rows[:, :-1], rows[:, 1:]

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.block_size


class PhasedBatches:
    """A step-indexed batch source that reads `first` for batch indices < switch_index and `then` afterwards
    (SALT_DS: the selected windows during distillation, the whole corpus after). With the Trainer, the batch
    index is the micro-batch index, so switch_index = kd_steps · grad_accum · world."""

    def __init__(self, first: Callable[[int], Any], then: Callable[[int], Any], switch_index: int) -> None:
        if switch_index < 0:
            raise ValueError(f"switch_index must be >= 0, got {switch_index}")
        self.first, self.then, self.switch_index = first, then, switch_index

    def __call__(self, index: int) -> Any:
        return self.first(index) if index < self.switch_index else self.then(index)

    @property
    def tokens_per_batch(self) -> int | None:
        return getattr(self.then, "tokens_per_batch", None)


@torch.no_grad()
def sequence_scores(teacher: nn.Module, tokens: np.ndarray, starts: np.ndarray, block_size: int,
                    aggregate: str = "median", batch_size: int = 256,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """The teacher's per-token next-token loss on each window tokens[s : s + block_size + 1], aggregated per
    window by its median (robust to a few unpredictable tokens) or mean. Returns float64 [len(starts)]."""
    if aggregate not in SCORE_AGGREGATES:
        raise ValueError(f"aggregate must be one of {SCORE_AGGREGATES}, got {aggregate!r}")
    windows = _check_windows(tokens, block_size, "the corpus")
    starts = np.asarray(starts, dtype=np.int64)
    if starts.size and (starts.min() < 0 or starts.max() >= windows):
        raise ValueError(f"window starts must be in [0, {windows}), got [{starts.min()}, {starts.max()}]")
    was_training = teacher.training
    teacher.eval()
    offsets = np.arange(block_size + 1)
    out = np.empty(starts.size, dtype=np.float64)
    for lo in range(0, starts.size, batch_size):
        rows = torch.from_numpy(tokens[starts[lo:lo + batch_size, None] + offsets].astype(np.int64)).to(device)
        logits = teacher(rows[:, :-1]).float()
        nll = F.cross_entropy(logits.transpose(1, 2), rows[:, 1:], reduction="none")  # [b, T]
        agg = nll.median(dim=1).values if aggregate == "median" else nll.mean(dim=1)
        out[lo:lo + batch_size] = agg.double().cpu().numpy()
    teacher.train(was_training)
    return out


def select_band(scores: np.ndarray, lo_quantile: float, hi_quantile: float) -> np.ndarray:
    """Indices of the scores in the quantile band [q(lo), q(hi)] (inclusive), in increasing index order: with
    teacher losses as scores, lo > 0 drops what the teacher finds easy and hi < 1 the top it cannot predict
    (noise)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError("scores must be a non-empty 1-D array")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    if not 0.0 <= lo_quantile < hi_quantile <= 1.0:
        raise ValueError(f"the band needs 0 <= lo_quantile < hi_quantile <= 1, got [{lo_quantile}, {hi_quantile}]")
    lo, hi = np.quantile(scores, [lo_quantile, hi_quantile])
    return np.flatnonzero((scores >= lo) & (scores <= hi))
