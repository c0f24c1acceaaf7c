"""Critical batch size (Zhang, Morwani, Vyas, Wu, Zou, Ghai, Foster, Kakade, ICLR 2025): the pieces of the measure.

1. Train at a **constant** learning rate and keep an **exponential weight average** (EWA) of the weights
   θ̄ ← β·θ̄ + (1 − β)·θ: the averaged model is as good as a decayed schedule at every step, so "steps to reach a
   target loss" can be read off one run, with no fixed horizon (`EWA`, `steps_to_target`).
2. Per batch size B take the best steps-to-target over a small learning-rate grid, and fit
   steps(B) = a + b/B (b/B: the noise-dominated regime where doubling B halves the steps; a: the floor of steps
   no batch size can beat) by least squares on log(steps), as the authors' notebook does (`fit_steps`).
3. The critical batch size B* is where steps exceed ideal linear scaling from a reference batch B₀ by 20%:
   a + b/B* = 1.2·(a + b/B₀)·B₀/B*  ⇔  B* = 1.2·B₀ + 0.2·b/a (`critical_batch_size`; the authors' code uses
   B₀ = 256 sequences on a grid from 64; B₀ = 0 measures against the fit's own asymptote b/B: B* = 0.2·b/a).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["EWA", "steps_to_target", "fit_steps", "critical_batch_size"]


class EWA:
    """An exponential weight average of `model` (a frozen deep copy, `self.model`).

    update(model): θ̄ ← β_t·θ̄ + (1 − β_t)·θ for every parameter (buffers are copied), with
    β_t = min(decay, 1 − 1/t) at the t-th update, so the first update copies θ and the first 1/(1 − decay)
    updates are a plain running mean (no bias towards the initialisation)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    def beta(self, t: int) -> float:
        """The averaging weight of the t-th update (t ≥ 1)."""
        return min(self.decay, 1.0 - 1.0 / t)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        w = 1.0 - self.beta(self.updates)
        for avg, p in zip(self.model.parameters(), model.parameters(), strict=True):
            avg.lerp_(p.detach(), w)
        for avg, b in zip(self.model.buffers(), model.buffers(), strict=True):
            avg.copy_(b)

    def hook(self, trainer) -> None:
        """A Trainer hook (called before each step): averages in the weights of every step taken since the last
        call, i.e. after optimizer step s the average holds steps 1..s. Call `sync(trainer)` after `fit`."""
        self.sync(trainer)

    def sync(self, trainer) -> None:
        """Catch up with the trainer: one update if it took a step since the last update."""
        if trainer.step > self.updates:
            if trainer.step != self.updates + 1:
                raise ValueError(f"EWA saw {self.updates} updates but the trainer is at step {trainer.step}: "
                                 "register ewa.hook before training starts")
            self.update(trainer.model)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates, self.decay = int(state["updates"]), float(state["decay"])


def steps_to_target(steps: Sequence[float], losses: Sequence[float], target: float) -> float:
    """The first step at which the loss curve reaches `target`, linearly interpolated between the last
    evaluation above it and the first at or below; the first evaluation's step if it is already there; inf when
    it never does. steps must increase strictly."""
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(losses, dtype=np.float64)
    if s.shape != v.shape or s.ndim != 1 or s.size == 0:
        raise ValueError(f"steps and losses must be non-empty 1-D sequences of equal length, got {s.shape}, {v.shape}")
    if np.any(np.diff(s) <= 0):
        raise ValueError("steps must increase strictly")
    hit = np.flatnonzero(v <= target)
    if hit.size == 0:
        return math.inf
    i = int(hit[0])
    if i == 0:
        return float(s[0])
    s0, s1, v0, v1 = s[i - 1], s[i], v[i - 1], v[i]
    if not np.isfinite(v0):
        return float(s1)
    return float(s0 + (v0 - target) / (v0 - v1) * (s1 - s0))


def fit_steps(batch_sizes: Sequence[float], steps: Sequence[float], iters: int = 50) -> tuple[float, float]:
    """(a, b) ≥ 0 minimising Σ (log(a + b/B) − log steps)² (relative error: every batch size counts alike, as
    in the authors' fit). Points with infinite steps (target never reached) are left out. Starts from the
    relative-error linear solution and refines by projected Gauss–Newton."""
    B = np.asarray(batch_sizes, dtype=np.float64)
    S = np.asarray(steps, dtype=np.float64)
    if B.shape != S.shape or B.ndim != 1:
        raise ValueError(f"batch_sizes and steps must be 1-D of equal length, got {B.shape}, {S.shape}")
    if np.any(B <= 0):
        raise ValueError("batch sizes must be > 0")
    keep = np.isfinite(S)
    B, S = B[keep], S[keep]
    if B.size < 2 or np.unique(B).size < 2:
        raise ValueError(f"fitting a + b/B needs finite steps at >= 2 distinct batch sizes, got {B.size}")
    if np.any(S <= 0):
        raise ValueError("steps must be > 0")
    # linear start: minimise Σ ((a + b/B)/S − 1)²
    X = np.stack([1.0 / S, 1.0 / (B * S)], axis=1)
    a, b = np.linalg.lstsq(X, np.ones_like(S), rcond=None)[0]
    a, b = max(a, 0.0), max(b, 1e-12)
    for _ in range(iters):
        pred = a + b / B
        r = np.log(pred) - np.log(S)
        J = np.stack([1.0 / pred, 1.0 / (B * pred)], axis=1)
        step = np.linalg.lstsq(J, -r, rcond=None)[0]
        loss = float(r @ r)
        t = 1.0
        while t > 1e-6:  # backtracking keeps a, b >= 0 and the objective decreasing
            na, nb = max(a + t * step[0], 0.0), max(b + t * step[1], 1e-12)
            nr = np.log(na + nb / B) - np.log(S)
            if float(nr @ nr) <= loss:
                break
            t /= 2
        if t <= 1e-6 or (abs(na - a) <= 1e-12 * max(a, 1.0) and abs(nb - b) <= 1e-12 * b):
            a, b = na, nb
            break
        a, b = na, nb
    return float(a), float(b)


def critical_batch_size(a: float, b: float, overhead: float = 0.2, reference: float = 0.0) -> float:
    """B* with a + b/B* = (1 + overhead)·(ideal linear scaling at B*): ideal = (a + b/B₀)·B₀/B from the
    reference batch B₀ = `reference`, giving B* = (1 + overhead)·B₀ + overhead·b/a; reference 0 scales from the
    fit's noise-dominated asymptote b/B, giving B* = overhead·b/a. inf when a = 0 (pure linear scaling)."""
    if a < 0 or b <= 0:
        raise ValueError(f"need a >= 0 and b > 0, got a={a}, b={b}")
    if not overhead > 0:
        raise ValueError(f"overhead must be > 0, got {overhead}")
    if reference < 0:
        raise ValueError(f"reference batch size must be >= 0, got {reference}")
    if a == 0:
        return math.inf
    return (1.0 + overhead) * reference + overhead * b / a
