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
from simulations.config import ExperimentConfig, check_device, param


@dataclass(frozen=True)
class LMConfig(ExperimentConfig):
    """The fields every LM-pretraining experiment shares (defaults: nanoGPT's shakespeare_char CPU run)."""

    n_layer: int = param(4, "transformer blocks", bounds="[1, 96]")
    n_head: int = param(4, "attention heads", bounds="[1, 128]")
    n_embd: int = param(128, "model width", bounds="[8, 8192]")
    block_size: int = param(64, "context length (tokens)", bounds="[2, 4096]")
    batch_size: int = param(12, "sequences per step", bounds="[1, 4096]")
    dropout: float = param(0.0, "dropout probability", bounds="[0, 1)")
    steps: int = param(2000, "optimizer steps", bounds="[1, 1e7]")
    lr: float = param(1e-3, "peak learning rate", bounds="(0, 1]")
    warmup_steps: int = param(100, "linear warmup steps", bounds="[0, 1e7]")
    min_lr_ratio: float = param(0.1, "final lr / peak lr of the cosine decay", bounds="[0, 1]")
    beta2: float = param(0.99, "AdamW beta2", bounds="[0, 1)")
    weight_decay: float = param(0.1, "AdamW weight decay (matrices and embeddings)", bounds="[0, 10]")
    grad_clip: float = param(1.0, "gradient-norm clip (0 = off)", bounds="[0, 1e6]")
    eval_every: int = param(250, "validate every this many steps (on eval_windows windows)", bounds="[0, 1e7]")
    eval_windows: int = param(256, "validation windows used during training (the end uses every window)",
                              bounds="[1, 1e7]")
    seed: int = param(0, "seed of the init and of the batch positions", bounds="[0, 4294967295]")
    device: str = param("cpu", "cpu or cuda[:i]")
    compile: bool = param(False, "torch.compile the model")

    def check(self) -> None:
        check_device(self.device)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be <= steps={self.steps}")

    @classmethod
    def presets(cls):
        return {**super().presets(), "gpu": cls.gpu}

    @classmethod
    def gpu(cls) -> LMConfig:
        raise NotImplementedError

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout, bias=False)

    def train(self, vocab_size: int, train: np.ndarray, val: np.ndarray) -> LMRun:
        """Train this configuration's GPT (see `train_lm`)."""
        return train_lm(self.model_config(vocab_size), train, val, steps=self.steps, batch_size=self.batch_size,
                        lr=self.lr, warmup_steps=self.warmup_steps, min_lr_ratio=self.min_lr_ratio,
                        betas=(0.9, self.beta2), weight_decay=self.weight_decay, grad_clip=self.grad_clip,
                        eval_every=self.eval_every, eval_windows=self.eval_windows, seed=self.seed,
                        device=self.device, compile=self.compile, progress=self.steps >= 500)


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
                anchor_label: str = "", eval_windows: int | None = None, final: float | None = None,
                tolerance: float | None = None) -> None:
    """Train and validation loss against step, the final full-split validation loss as a star, and the external
    anchor (with its tolerance) as horizontal lines."""
    tr = [(p["step"], p["train_loss"]) for p in curve if "train_loss" in p]
    va = [(p["step"], p["val_loss"]) for p in curve if "val_loss" in p]
    ax.plot(*zip(*tr), label="train (batch)", alpha=0.7)
    if va:
        ax.plot(*zip(*va), "o-", label=f"validation (first {eval_windows} windows)" if eval_windows else "validation")
    if final is not None and tr:
        ax.plot([tr[-1][0]], [final], "r*", ms=12, label=f"validation, whole split: {final:.3f}")
    if anchor is not None:
        ax.axhline(anchor, color="k", ls=":", label=anchor_label)
        if tolerance:
            ax.axhline(anchor * (1 + tolerance), color="k", ls="--", lw=0.8,
                       label=f"+{tolerance:.0%}: {anchor * (1 + tolerance):.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def lm_metrics(run: LMRun, val_loss: float, extra: dict[str, Any]) -> dict[str, Any]:
    """The fields every LM record carries."""
    return {"val_loss": val_loss, "train_s": run.train_s, "tokens_per_s": run.tokens_per_s,
            "train_flops": run.flops, "n_params": run.model.num_params(),
            "n_params_non_embedding": run.model.num_params(non_embedding=True), "curve": run.curve, **extra}
