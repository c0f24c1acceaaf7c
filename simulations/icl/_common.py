"""What every ICL experiment shares: training a model on a prompt sampler with the shared `Trainer`, and
evaluating predictors on one fixed held-out set of prompts (the same prompts for every model, so differences
between models are not sampling noise).

Only `models` is used here (no opacus/flwr), so the ICL experiments run on a bare GPU machine too.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from models.icl.tasks import Prompts, TaskConfig, TaskSampler
from models.train import TrainConfig, Trainer

Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [B,N,d], y [B,N]) -> query predictions [B]


def check_device(device: str) -> None:
    """ValueError unless `device` is 'cpu' or a CUDA device that exists."""
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:i]', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available; use device='cpu'")


def seed_all(seed: int) -> None:
    """Seed python and torch (model inits that take no generator; all data comes from explicit generators)."""
    random.seed(seed)
    torch.manual_seed(seed)


def query_mse_loss(model: nn.Module, batch: Prompts) -> torch.Tensor:
    """Mean squared error of the query prediction (the model never sees y[:, -1])."""
    pred = model(batch.x, batch.y)
    return (pred.float() - batch.y[:, -1]).pow(2).mean()


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
) -> list[dict[str, float]]:
    """Train `model` with AdamW (warmup + cosine) on fresh prompts from `task` every step; returns the loss curve
    ([{"step", "loss"}], about `points` records). amp=False keeps linear models in fp32: their claims compare
    errors to closed forms within a few percent, below bf16's resolution. `sample(sampler, batch_size, generator,
    step)` replaces plain sampling (e.g. for a curriculum)."""
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
        compile=compile,
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
    sampler = TaskSampler(task, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    sums: dict[str, Any] = {name: 0.0 for name in predictors} | {"zero": 0.0}
    done = 0
    while done < prompts:
        b = min(chunk, prompts - done)
        batch = sampler.sample(b, generator=gen)
        if transform is not None:
            batch = transform(batch)
        yq = batch.y[:, -1]
        for name, fn in predictors.items():
            sums[name] = sums[name] + (fn(batch.x, batch.y).float() - yq).pow(2).sum(-1).double().cpu()
        sums["zero"] += float(yq.pow(2).sum())
        done += b
    return {name: (s / prompts).tolist() if torch.is_tensor(s) else s / prompts for name, s in sums.items()}


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
