"""What every ICL experiment shares: training a model on a prompt sampler with the shared `Trainer` (optionally
under Garg et al.'s dimension-and-points `Curriculum`), and evaluating predictors on one fixed held-out set of
prompts (the same prompts for every model, so differences between models are not sampling noise).

Only `models` is used here (no opacus/flwr), so the ICL experiments run on a bare GPU machine too.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from models.icl.tasks import Prompts, TaskConfig, TaskSampler
from models.train import TrainConfig, Trainer
from simulations.icl._bootstrap import Predictor, per_prompt_errors

if TYPE_CHECKING:
    from simulations.icl._loops import LoopCurriculum


def check_device(device: str) -> None:
    """ValueError unless `device` is 'cpu' or a CUDA device that exists."""
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:i]', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use device='cpu'")


COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_gpt2_config(n_layer: int, n_embd: int, n_head: int, compile_mode: str | None = None) -> None:
    """ValueError unless a GPT-2 size is valid (all >= 1, n_head dividing n_embd) and compile_mode is None or a
    torch.compile mode."""
    if n_layer < 1 or n_embd < 1 or n_head < 1 or n_embd % n_head:
        raise ValueError(f"n_layer, n_embd, n_head must be >= 1 with n_head dividing n_embd, got "
                         f"{n_layer}, {n_embd}, {n_head}")
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {compile_mode!r}")


def seed_all(seed: int) -> None:
    """Seed python and torch (model inits that take no generator; all data comes from explicit generators)."""
    random.seed(seed)
    torch.manual_seed(seed)


def query_mse_loss(model: nn.Module, batch: Prompts) -> torch.Tensor:
    """Mean squared error of the query prediction (the model never sees y[:, -1])."""
    pred = model(batch.x, batch.y)
    return (pred.float() - batch.y[:, -1]).pow(2).mean()


@dataclass(frozen=True)
class Curriculum:
    """Garg et al.'s curriculum: train on `d_start` active dims (the rest of x zeroed) and `points_start` rows per
    prompt, adding `d_inc` dims and `points_inc` points every `every` steps until `d_end` / `points_end`. Shapes
    stay static (inactive coordinates are zero; extra rows are masked out of the loss, or not drawn for a model
    that predicts only the query), so the schedule does not recompile a compiled model or break CUDA graphs.
    Garg et al. (d=20, 41 points): `Curriculum.garg(20, 41)` = dims 5→20 (+1), points 11→41 (+2) every 2000 steps."""

    d_start: int
    d_end: int
    points_start: int
    points_end: int
    d_inc: int = 1
    points_inc: int = 2
    every: int = 2000

    def __post_init__(self) -> None:
        if not 1 <= self.d_start <= self.d_end:
            raise ValueError(f"d_start must be in [1, d_end={self.d_end}], got {self.d_start}")
        if not 2 <= self.points_start <= self.points_end:
            raise ValueError(f"points_start must be in [2, points_end={self.points_end}], got {self.points_start}")
        if self.d_inc < 1 or self.points_inc < 1 or self.every < 1:
            raise ValueError(f"d_inc, points_inc, every must be >= 1, got {self.d_inc}, {self.points_inc}, {self.every}")

    @classmethod
    def garg(cls, d: int, n_points: int, every: int = 2000) -> Curriculum:
        """Garg et al.'s schedule (dims from 5, points from 11, +1 / +2 every `every` steps), capped at d / n_points."""
        return cls(min(5, d), d, min(11, n_points), n_points, every=every)

    @classmethod
    def within(cls, span: int, d_start: int, d_end: int, points_start: int, points_end: int, d_inc: int = 1,
               points_inc: int = 2) -> Curriculum:
        """Garg et al.'s stages, with `every` chosen so the last stage starts by step `span` (a compressed run)."""
        stages = max(math.ceil((d_end - d_start) / d_inc), math.ceil((points_end - points_start) / points_inc), 1)
        return cls(d_start, d_end, points_start, points_end, d_inc, points_inc, max(span // stages, 1))

    def at(self, step: int) -> tuple[int, int]:
        """(active dims, points) at optimizer step `step`."""
        i = max(step, 0) // self.every
        return min(self.d_start + i * self.d_inc, self.d_end), min(self.points_start + i * self.points_inc,
                                                                     self.points_end)


class Staged(NamedTuple):
    """A curriculum batch: prompts with `dims` active coordinates, of which the first `points` rows count."""

    prompts: Prompts
    dims: int
    points: int


def curriculum_loss(model: nn.Module, batch: Staged) -> torch.Tensor:
    """Squared error / active dims (the normalized error, 1 for the zero predictor when noiseless) over the first
    `points` rows of a model that predicts every row, or of the query for one that does not. Unnormalized, the
    loss would grow with the dims curriculum itself (E y² = active dims), hiding whether the model learns."""
    p = batch.prompts
    pred = model(p.x, p.y).float()
    if getattr(model, "predicts_all_positions", False):
        return (pred[:, : batch.points] - p.y[:, : batch.points]).pow(2).mean() / batch.dims
    return (pred - p.y[:, -1]).pow(2).mean() / batch.dims


def _staged_draw(curriculum: Curriculum, query_only: bool) -> Callable[[TaskSampler, int, torch.Generator, int], Staged]:
    def draw(sampler: TaskSampler, b: int, gen: torch.Generator, step: int) -> Staged:
        dims, points = curriculum.at(step)
        n = points - 1 if query_only else None  # a query-only model reads its last row: draw just `points` rows
        return Staged(sampler.sample(b, generator=gen, n=n, d_active=dims), dims, points)

    return draw


def train(
    model: nn.Module,
    task: TaskConfig,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    device: str,
    seed: int,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = query_mse_loss,
    warmup_frac: float = 0.05,
    grad_clip: float = 1.0,
    amp: bool = False,
    sample: Callable[[TaskSampler, int, torch.Generator, int], Any] | None = None,
    points: int = 25,
    compile: bool = False,
    compile_mode: str | None = None,
    curriculum: Curriculum | None = None,
    loops: LoopCurriculum | None = None,
) -> list[dict[str, float]]:
    """Train `model` with AdamW (warmup + cosine) on fresh prompts from `task` every step; returns the loss curve
    ([{"step", "loss"}], about `points` records). amp=False keeps linear models in fp32: their claims compare
    errors to closed forms within a few percent, below bf16's resolution. `sample(sampler, batch_size, generator,
    step)` replaces plain sampling. `curriculum` draws `Staged` batches on its schedule (its end must be the
    task's d and n + 1 rows) and, unless `loss_fn` is given, trains on `curriculum_loss`. compile_mode goes to
    torch.compile (implies compile; "reduce-overhead" = CUDA graphs, for small models on a GPU). `loops` (a
    looped model whose `window` equals loops.window) trains on Yang et al.'s loop curriculum: the model runs
    loops.at(step) loops and the loss is loops.loss, the window loss over the last T loops (with `curriculum`,
    over its active dims and points); it replaces loss_fn."""
    if curriculum is not None:
        if sample is not None:
            raise ValueError("give sample or curriculum, not both")
        if (curriculum.d_end, curriculum.points_end) != (task.d, task.n + 1):
            raise ValueError(f"curriculum must end at the task's d={task.d} and n + 1={task.n + 1} points, got "
                             f"d_end={curriculum.d_end}, points_end={curriculum.points_end}")
        sample = _staged_draw(curriculum, not getattr(model, "predicts_all_positions", False))
        loss_fn = curriculum_loss if loss_fn is query_mse_loss else loss_fn
    if loops is not None:
        if getattr(model, "window", None) != loops.window:
            raise ValueError(f"loops.window={loops.window} must equal the model's window "
                             f"{getattr(model, 'window', None)}")
        loss_fn = loops.loss
    sampler = TaskSampler(task, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    draw = sample or (lambda s, b, g, step: s.sample(b, generator=g))
    cfg = TrainConfig(
        steps=steps,
        lr=lr,
        warmup_steps=int(warmup_frac * steps),
        schedule="cosine",
        min_lr_ratio=0.01,
        grad_clip=grad_clip,
        device=device,
        amp=amp,
        log_every=max(steps // points, 1),
        progress=steps >= 1000,  # a bar for full-size training; smoke runs stay quiet
        compile=compile or compile_mode is not None,
        compile_mode=compile_mode,
    )
    trainer = Trainer(model, lambda step: draw(sampler, batch_size, gen, step), loss_fn, cfg)
    trainer.fit()
    return [{"step": r["step"], "loss": r["loss"]} for r in trainer.history if "loss" in r]


@torch.no_grad()
def evaluate(
    predictors: dict[str, Predictor],
    task: TaskConfig,
    *,
    prompts: int,
    device: str,
    seed: int,
    chunk: int = 10_000,
    transform: Callable[[Prompts], Prompts] | None = None,
) -> dict[str, float]:
    """Query MSE E(ŷ − y_q)² of each predictor on the same `prompts` held-out prompts (drawn in chunks from a
    generator seeded by `seed`, so every call with that seed sees the same prompts). `transform` maps a batch
    of prompts to a shifted one (distribution-shift tests). A predictor may return [T, B] (e.g. one row per
    depth); its entry is then a list of T errors. Returns {name: mse}, plus "zero": E y_q²."""
    errors = per_prompt_errors(predictors, task, prompts=prompts, device=device, seed=seed, chunk=chunk,
                               transform=transform)
    return {name: e.mean(-1).tolist() if e.ndim > 1 else float(e.mean()) for name, e in errors.items()}


def model_predictor(model: nn.Module, **kwargs: Any) -> Predictor:
    """A trained model as a predictor in eval mode (kwargs go to forward, e.g. depth=…)."""
    model.eval()
    return lambda x, y: model(x, y, **kwargs)


def tuned_gd(
    task: TaskConfig,
    steps: int,
    *,
    device: str,
    seed: int,
    precond: torch.Tensor | None = None,
    prompts: int = 4096,
) -> float:
    """Step size of k-step (preconditioned) GD tuned on its own batch of prompts (not the evaluation set)."""
    from models.icl import baselines

    batch = TaskSampler(task, device=device).sample(prompts, generator=torch.Generator(device=device).manual_seed(seed))
    x, y = batch.x[:, :-1], batch.y[:, :-1]
    lr, _ = baselines.tune_gd_lr(x, y, batch.x[:, -1], batch.y[:, -1], steps, precond=precond)
    return lr


def gd_predictor(steps: int, lr: float, precond: torch.Tensor | None = None) -> Predictor:
    """k-step (preconditioned) GD from 0 as a predictor on prompts."""
    from models.icl import baselines

    return lambda x, y: baselines.gd(x[:, :-1], y[:, :-1], x[:, -1], steps, lr, precond)


def curve_png(ax, curves: dict[str, list[dict[str, float]]], title: str, ylabel: str = "train loss") -> None:
    """Training-loss curves on a log y-axis."""
    for name, pts in curves.items():
        ax.plot([p["step"] for p in pts], [p["loss"] for p in pts], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
