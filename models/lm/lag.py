"""LAG, landscape-aware growing (Karp, Saunshi, Miryoosefi, Reddi, Kumar 2024): choose a growth by its loss after
a short lag of training, not by its loss at the moment of growth.

At a growth boundary every candidate strategy grows the same model, trains for `lag` steps from there (the same
batches, learning rate, optimizer state and RNG for each), and is scored (by default a validation loss); the
candidate with the lowest score is kept and training continues from where its lag ended. Loss at growth (lag 0)
rewards function preservation, which the paper finds a weak predictor of the final loss; after a lag of a few
hundred steps (at their scale) the ranking settles. Used at every boundary of a `GrowthSchedule` this is the
paper's adaptive stacking (`GrowthHook(schedule, lag=...)`).

The lag steps of the kept candidate count as its training steps; the other candidates' lag steps are the price
of the choice and are added to the trainer's FLOPs count.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from models.lm.growth import check_strategy, plan_growth

__all__ = ["LagChoice", "LagSelect", "branch", "lag_select"]

Score = Callable[[nn.Module], float]


@dataclass(frozen=True)
class LagChoice:
    """What one LAG selection saw: each candidate's score after the lag (and at growth), and the one kept."""

    step: int
    lag: int
    scores: dict[str, float]
    scores_at_growth: dict[str, float]
    chosen: str
    overhead_flops: float

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "lag": self.lag, "scores": dict(self.scores),
                "scores_at_growth": dict(self.scores_at_growth), "chosen": self.chosen,
                "overhead_flops": self.overhead_flops}


@dataclass(frozen=True)
class LagSelect:
    """How `GrowthHook` chooses at each boundary: the candidate strategies, the lag in steps, the score
    (model -> number, lower is better: a validation loss), whether copies carry Adam moments, the fresh-block seed."""

    candidates: tuple[str, ...]
    lag: int
    score: Score
    carry_moments: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.candidates) < 1:
            raise ValueError("LAG needs at least one candidate strategy")
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"candidates must be distinct, got {self.candidates}")
        for c in self.candidates:
            check_strategy(c)
        if not isinstance(self.lag, int) or self.lag < 0:
            raise ValueError(f"lag must be an integer >= 0 (steps), got {self.lag!r}")
        if not callable(self.score):
            raise ValueError("score must be callable as score(model) -> float")


def branch(trainer: Any, start: dict[str, Any], base: nn.Module, strategy: str, block_size: int,
           carry_moments: bool = True, seed: int = 0) -> dict[str, int]:
    """Put `trainer` back at the snapshot `start` (a `trainer.state_dict()` taken with model `base`, which is
    not touched) and grow its model by `strategy`: the trainer is then exactly where training would be had this
    growth been made at that step. Returns `replace_model`'s moment counts."""
    model = copy.deepcopy(base)
    trainer.replace_model(model)
    trainer.load_state_dict(start)  # weights, optimizer moments, schedule position, RNG, step, data position
    plan = plan_growth(len(model.blocks), strategy, block_size)
    grown = plan.apply(model, seed)
    return trainer.replace_model(grown, moments_from=plan.moments_from(grown), carry_moments=carry_moments)


def lag_select(trainer: Any, select: LagSelect, block_size: int) -> LagChoice:
    """Grow `trainer`'s model by each candidate, train each for `select.lag` steps, keep the lowest-scoring one.

    The trainer is left with the kept candidate, `lag` steps further on, its optimizer state and RNG as that
    candidate's run left them. Every candidate starts from the same snapshot, so they see the same batches."""
    cfg = trainer.config
    if trainer.step + select.lag >= cfg.steps:
        raise ValueError(f"lag={select.lag} from step {trainer.step} runs past the end of training "
                         f"(steps={cfg.steps})")
    step0, flops0 = trainer.step, trainer.flops_done
    start = copy.deepcopy(trainer.state_dict())
    base = copy.deepcopy(trainer.model)
    scores: dict[str, float] = {}
    at_growth: dict[str, float] = {}
    lag_flops: dict[str, float] = {}
    best: tuple[float, str, nn.Module, dict[str, Any]] | None = None
    for cand in select.candidates:
        branch(trainer, start, base, cand, block_size, select.carry_moments, select.seed)
        at_growth[cand] = float(_scored(trainer.model, select.score))
        for _ in range(select.lag):
            trainer.train_step()
        scores[cand] = at_growth[cand] if select.lag == 0 else float(_scored(trainer.model, select.score))
        lag_flops[cand] = trainer.flops_done - flops0
        if best is None or scores[cand] < best[0]:
            best = (scores[cand], cand, trainer.model, copy.deepcopy(trainer.state_dict()))
    _, chosen, model, state = best
    trainer.replace_model(model)
    trainer.load_state_dict(state)
    overhead = sum(f for c, f in lag_flops.items() if c != chosen)
    trainer.flops_done += overhead
    return LagChoice(step0, select.lag, scores, at_growth, chosen, overhead)


def _scored(model: nn.Module, score: Score) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        value = score(model)
    model.train(was)
    return value
