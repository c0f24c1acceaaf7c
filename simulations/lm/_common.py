"""What the LM experiments share: training a `GPT` on a token corpus with the shared `Trainer` (random-window
batches, AdamW with warmup + cosine, periodic validation on a fixed prefix of the validation split), the
unigram baseline, and the loss-curve plot."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.lm import GPT, GPTConfig, RandomWindows, evaluate_loss, lm_loss
from models.train import TrainConfig, Trainer


@dataclass(frozen=True)
class LMRun:
    """A trained model and how it got there."""

    model: GPT
    curve: list[dict[str, float]]  # {"step", "train_loss"} and {"step", "val_loss"} records
    train_s: float  # wall seconds of the training loop (periodic validation included)
    tokens_per_s: float  # training throughput (validation and checkpoints excluded)
    flops: float  # training FLOPs (6N + attention per token)


def train_lm(
    model_config: GPTConfig,
    train: np.ndarray,
    val: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    min_lr_ratio: float,
    betas: tuple[float, float],
    weight_decay: float,
    grad_clip: float,
    eval_every: int,
    eval_windows: int,
    seed: int,
    device: str = "cpu",
    compile: bool = False,
    progress: bool = False,
) -> LMRun:
    """Train GPT(model_config) from seed on random windows of `train`; validate every eval_every steps on the
    first eval_windows non-overlapping windows of `val` (the same windows every time)."""
    block = model_config.block_size
    model = GPT(model_config, seed=seed)
    src = RandomWindows(train, block, batch_size, seed=seed)

    def val_loss(m: torch.nn.Module) -> dict[str, float]:
        return {"val_loss": evaluate_loss(m, val, block, 64, max_windows=eval_windows, device=device)}

    cfg = TrainConfig(steps=steps, lr=lr, warmup_steps=warmup_steps, schedule="cosine", min_lr_ratio=min_lr_ratio,
                      betas=betas, weight_decay=weight_decay, grad_clip=grad_clip, device=device,
                      compile=compile, log_every=max(steps // 50, 1), eval_every=eval_every, progress=progress)
    trainer = Trainer(model, src, lm_loss, cfg, eval_fns=[val_loss], tokens_per_batch=src.tokens_per_batch,
                      flops_per_token=lambda m: m.flops_per_token(block))
    t0 = time.perf_counter()
    trainer.fit()
    train_s = time.perf_counter() - t0
    curve = [{"step": r["step"], "train_loss": r["loss"]} for r in trainer.history if "loss" in r]
    curve += [{"step": r["step"], "val_loss": r["eval/val_loss"]} for r in trainer.history if "eval/val_loss" in r]
    rates = [r["tokens_per_s"] for r in trainer.history if math.isfinite(r.get("tokens_per_s", math.nan))]
    return LMRun(model=model, curve=curve, train_s=train_s, tokens_per_s=float(np.median(rates)) if rates else 0.0,
                 flops=trainer.flops_done)


def full_loss(model: GPT, tokens: np.ndarray, device: str = "cpu") -> float:
    """Loss (nats/token) over every non-overlapping window of a split."""
    return evaluate_loss(model, tokens, model.config.block_size, 64, device=device)


def unigram_loss(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of `val` under train's token frequencies (add-one smoothed): the floor any
    model that learned anything must beat."""
    counts = np.bincount(np.asarray(train), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[np.asarray(val)].mean())


def plot_curves(ax, curve: list[dict[str, float]], title: str, anchor: float | None = None,
                anchor_label: str = "") -> None:
    """Train and validation loss against step, with the external anchor as a horizontal line."""
    tr = [(p["step"], p["train_loss"]) for p in curve if "train_loss" in p]
    va = [(p["step"], p["val_loss"]) for p in curve if "val_loss" in p]
    ax.plot(*zip(*tr), label="train (batch)", alpha=0.7)
    if va:
        ax.plot(*zip(*va), "o-", label="validation")
    if anchor is not None:
        ax.axhline(anchor, color="k", ls=":", label=anchor_label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.legend(fontsize=7)


def lm_metrics(run: LMRun, val_loss: float, extra: dict[str, Any]) -> dict[str, Any]:
    """The fields every LM record carries."""
    return {"val_loss": val_loss, "train_s": run.train_s, "tokens_per_s": run.tokens_per_s,
            "train_flops": run.flops, "n_params": run.model.num_params(),
            "n_params_non_embedding": run.model.num_params(non_embedding=True), "curve": run.curve, **extra}
