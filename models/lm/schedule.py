"""When to grow: the stage schedule of gradual stacking / MIDAS (Saunshi et al. NeurIPS 2024), as a Trainer hook.

k stages; stage i (1-based) trains a model of i·b layers for T_i steps with T_i ∝ i^α ("PROP-α"), Σ T_i = T, so
the last stage has the full depth L = k·b. One learning-rate schedule (the Trainer's warmup + decay over T) runs
across all stages and is never restarted: `Trainer.replace_model` continues it at the current step.

Training FLOPs relative to training depth L for all T steps, if a layer's cost dominates (PROP-1):
Σ_i i·T_i / (k·T) = (2k + 1) / (3k) — 0.75 at k = 4, 0.72 at k = 6 (the paper's "up to 40% faster"); PROP-2
gives 3(k + 1) / (2(2k + 1)). `flops_fraction` computes it with the embedding and attention terms included.

What the notes mark recalled, not verified, and is therefore a switch here: α (default 1), the strategy
(default 'middle' = MIDAS), whether copied layers carry the Adam moments of their sources (default yes), and the
rounding of T_i to whole steps (largest remainder, every stage at least one step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models.lm.growth import check_strategy, plan_growth
from models.lm.lag import LagSelect, lag_select

__all__ = ["GrowthSchedule", "GrowthHook", "prop_steps"]


def prop_steps(steps: int, stages: int, alpha: float = 1.0) -> tuple[int, ...]:
    """T_1..T_k ∝ i^α summing to `steps` exactly (largest-remainder rounding, each at least 1)."""
    if not isinstance(stages, int) or stages < 1:
        raise ValueError(f"stages must be an integer >= 1, got {stages!r}")
    if not isinstance(steps, int) or steps < stages:
        raise ValueError(f"steps must be an integer >= stages={stages} (one step per stage at least), got {steps!r}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    w = [(i + 1) ** alpha for i in range(stages)]
    exact = [steps * x / sum(w) for x in w]
    out = [max(1, math.floor(e)) for e in exact]
    order = sorted(range(stages), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True)
    j = 0
    while sum(out) < steps:
        out[order[j % stages]] += 1
        j += 1
    while sum(out) > steps:  # only when a stage was lifted to 1 step: take it back from the longest
        out[max(range(stages), key=lambda i: out[i])] -= 1
    return tuple(out)


@dataclass(frozen=True)
class GrowthSchedule:
    """k = `stages` stages of i·`block_size` layers, T_i ∝ i^alpha steps, `steps` in all (the Trainer's steps).
    strategy: how each growth is made (see `models.lm.growth`); carry_moments: copied layers start with their
    source's Adam moments (else zero moments); seed: fresh blocks' init (stage i uses seed + i)."""

    steps: int
    stages: int
    block_size: int
    alpha: float = 1.0
    strategy: str = "middle"
    carry_moments: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be an integer >= 1, got {self.block_size!r}")
        check_strategy(self.strategy)
        prop_steps(self.steps, self.stages, self.alpha)  # validates steps, stages, alpha
        plan_growth(self.block_size, self.strategy, self.block_size)  # the first growth must fit: b -> 2b

    @property
    def final_depth(self) -> int:
        return self.stages * self.block_size

    def stage_steps(self) -> tuple[int, ...]:
        """Steps of each stage, T_1..T_k."""
        return prop_steps(self.steps, self.stages, self.alpha)

    def boundaries(self) -> tuple[int, ...]:
        """The steps at which stages 2..k begin (the model grows just before training that step)."""
        t = self.stage_steps()
        return tuple(sum(t[:i]) for i in range(1, self.stages))

    def stage_at(self, step: int) -> int:
        """The stage (1-based) that trains optimizer step `step` (0-based)."""
        if not 0 <= step < self.steps:
            raise ValueError(f"step must be in [0, steps={self.steps}), got {step}")
        return 1 + sum(step >= b for b in self.boundaries())

    def depth_at(self, step: int) -> int:
        """Layers of the model that trains step `step`."""
        return self.stage_at(step) * self.block_size

    def flops_fraction(self, flops_per_token: Callable[[int], float]) -> float:
        """Training FLOPs of this schedule over those of the full depth for every step, given the per-token cost
        of a model of n layers (e.g. `lambda n: 6·N(n) + 12·n·C·T`)."""
        grown = sum(t * flops_per_token((i + 1) * self.block_size) for i, t in enumerate(self.stage_steps()))
        return grown / (self.steps * flops_per_token(self.final_depth))


class GrowthHook:
    """A Trainer hook that grows the model at each boundary of `schedule` (hooks=[GrowthHook(schedule)]).

    The model handed to the Trainer has block_size layers (stage 1). Stateless in the model: before every step it
    compares the model's depth with the schedule's, so a run resumed from a checkpoint (with the model rebuilt at
    the checkpoint's depth) grows at the same steps. With `lag`, each boundary is decided by LAG
    (`models.lm.lag.lag_select`) among its candidates instead of the fixed strategy: adaptive stacking.
    `events` records every growth; pass the hook in the Trainer's `state` to checkpoint them."""

    def __init__(self, schedule: GrowthSchedule, lag: LagSelect | None = None) -> None:
        if not isinstance(schedule, GrowthSchedule):
            raise ValueError(f"schedule must be a GrowthSchedule, got {type(schedule).__name__}")
        if lag is not None:
            shortest = min(schedule.stage_steps()[1:], default=schedule.steps)
            if lag.lag >= shortest:
                raise ValueError(f"lag={lag.lag} must be shorter than the shortest grown stage ({shortest} steps)")
        self.schedule, self.lag = schedule, lag
        self.events: list[dict[str, Any]] = []

    def __call__(self, trainer: Any) -> None:
        s = self.schedule
        if trainer.config.steps != s.steps:
            raise ValueError(f"the schedule is for steps={s.steps}, the Trainer runs steps={trainer.config.steps}")
        step, depth, want = trainer.step, len(trainer.model.blocks), s.depth_at(trainer.step)
        if depth == want:
            return
        if depth != want - s.block_size or step not in s.boundaries():
            raise ValueError(f"at step {step} the schedule expects {want} layers (or {want - s.block_size} at a "
                             f"boundary, {s.boundaries()}); the model has {depth}")
        stage = s.stage_at(step)
        if self.lag is None:
            plan = plan_growth(depth, s.strategy, s.block_size)
            grown = plan.apply(trainer.model, s.seed + stage)
            counts = trainer.replace_model(grown, moments_from=plan.moments_from(grown),
                                           carry_moments=s.carry_moments)
            self.events.append({"step": step, "stage": stage, "from": depth, "to": depth + s.block_size,
                                "strategy": s.strategy, "moments": counts})
        else:
            choice = lag_select(trainer, self.lag, s.block_size)
            self.events.append({"step": step, "stage": stage, "from": depth, "to": depth + s.block_size,
                                "strategy": choice.chosen, "lag": choice.as_dict()})

    def state_dict(self) -> dict[str, Any]:
        return {"events": [dict(e) for e in self.events]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.events = [dict(e) for e in state["events"]]
