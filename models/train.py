"""The one training loop of the toolkit: a plain loop over steps that any model, data and optimizer plug into.

`Trainer(model, batches, loss_fn, config)` runs AdamW (or an optimizer made outside, e.g. Opacus' `DPOptimizer`
on a `GradSampleModule`) with warmup + cosine/constant learning rate, gradient clipping and accumulation, bf16
autocast on CUDA (fp32 on CPU), optional `torch.compile`, periodic evaluation callbacks, a tqdm bar, metrics as
JSONL, tokens/s and (on CUDA) MFU. Checkpoints hold model, optimizer, scheduler, every RNG state and the step, so
a resumed run continues the *same* trajectory as an uninterrupted one, provided the batches are a function of
the step (`batches` given as a callable `step -> batch`) or are drawn from the global RNG.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

_SCHEDULES = ("cosine", "constant")
# dense bf16 peak FLOP/s by device-name fragment, for MFU (H100/H200 SXM; A100)
_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}

Batch = Any
LossFn = Callable[[nn.Module, Batch], "torch.Tensor | tuple[torch.Tensor, dict[str, Any]]"]
EvalFn = Callable[[nn.Module], dict[str, float]]


@dataclass(frozen=True)
class TrainConfig:
    """How to train. lr is the peak; the schedule warms up linearly over `warmup_steps`, then stays (constant) or
    decays by a cosine to min_lr_ratio·lr at `steps`. grad_clip ≤ 0 disables clipping (use that with a DP
    optimizer, which clips per example itself). grad_accum micro-batches make one step. Every `*_every` of 0
    disables that action; checkpoints go to ckpt_path, metrics (one JSON object a line) to metrics_path.
    compile_mode is passed to torch.compile ("reduce-overhead" uses CUDA graphs: small models on a GPU are
    launch-bound: GPT2ICL 12×256 at batch 64 runs 165 steps/s with it vs 36 eager on an H100)."""

    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    device: str = "cpu"
    amp: bool = True
    compile: bool = False
    compile_mode: str | None = None
    log_every: int = 50
    eval_every: int = 0
    ckpt_every: int = 0
    ckpt_path: str | None = None
    metrics_path: str | None = None
    progress: bool = True
    seed: int | None = None
    peak_flops: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        for name in ("log_every", "eval_every", "ckpt_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.ckpt_every and not self.ckpt_path:
            raise ValueError("ckpt_every > 0 needs ckpt_path")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} but CUDA is not available; use device='cpu'")


def lr_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the peak lr at `step` (0-based): linear warmup, then constant or cosine to min_lr_ratio."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    span = max(config.steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of a known CUDA device, else None (MFU is then not reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in _PEAK_FLOPS.items() if k in name), None)


class Trainer:
    """Train `model` on `batches` with `loss_fn(model, batch) -> loss` (or `(loss, {name: value})`).

    batches: a callable `step -> batch` (resumes exactly) or an iterable (its iterator is advanced; exact resume
    then needs batches drawn from the global RNG, which checkpoints restore). The model is moved to
    config.device; batches are moved there too (tensors, and tuples/lists/dicts of them).
    optimizer: None builds AdamW(lr, betas, weight_decay) with no decay on 1-D parameters; pass one made outside
    (e.g. Opacus' DPOptimizer) to use it unchanged; its lr is then scaled by the same schedule.
    eval_fns: callables `model -> {name: value}` run under no_grad in eval mode every eval_every steps and at
    the end. tokens_per_batch and flops_per_token (per micro-batch) enable tokens/s and, on CUDA, MFU.
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Callable[[int], Batch] | Iterable[Batch],
        loss_fn: LossFn,
        config: TrainConfig,
        optimizer: torch.optim.Optimizer | None = None,
        eval_fns: Sequence[EvalFn] = (),
        tokens_per_batch: int | None = None,
        flops_per_token: float | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise ValueError("loss_fn must be callable as loss_fn(model, batch)")
        if tokens_per_batch is not None and tokens_per_batch < 1:
            raise ValueError(f"tokens_per_batch must be >= 1, got {tokens_per_batch}")
        self.config = config
        self.device = torch.device(config.device)
        if config.seed is not None:
            _seed_everything(config.seed)
        self.model = model.to(self.device)
        self._forward_model = torch.compile(self.model, mode=config.compile_mode) if config.compile else self.model
        self.loss_fn = loss_fn
        self._batch_fn = batches if callable(batches) and not isinstance(batches, Iterable) else None
        self._iterable = None if self._batch_fn is not None else batches
        self._iter: Iterator[Batch] | None = None
        self.optimizer = optimizer if optimizer is not None else _adamw(self.model, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, config))
        self.eval_fns = list(eval_fns)
        self.tokens_per_batch, self.flops_per_token = tokens_per_batch, flops_per_token
        self.peak_flops = config.peak_flops or peak_flops(self.device)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._amp = config.amp and self.device.type == "cuda"

    # ------------------------------------------------------------------------------------------- one step
    def _next_batch(self, micro: int) -> Batch:
        if self._batch_fn is not None:
            batch = self._batch_fn(self.step * self.config.grad_accum + micro)
        else:
            if self._iter is None:
                self._iter = iter(self._iterable)
            batch = next(self._iter)
        return _to_device(batch, self.device)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimizer step over grad_accum micro-batches; returns device tensors (no host sync)."""
        cfg = self.config
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        extras: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            batch = self._next_batch(micro)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._amp):
                out = self.loss_fn(self._forward_model, batch)
            loss, more = out if isinstance(out, tuple) else (out, {})
            (loss / cfg.grad_accum).backward()
            total = total + loss.detach().float() / cfg.grad_accum
            for k, v in more.items():
                v = torch.as_tensor(v, device=self.device).detach().float() / cfg.grad_accum
                extras[k] = extras[k] + v if k in extras else v
        out_metrics = {"loss": total, **extras}
        if cfg.grad_clip > 0:
            out_metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return out_metrics

    # ------------------------------------------------------------------------------------------- the loop
    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Train from the current step to `until` (default config.steps; smaller to stop early, as an
        interruption would), evaluating, logging and checkpointing on the way. Returns the last log record."""
        cfg = self.config
        until = cfg.steps if until is None else until
        if not self.step <= until <= cfg.steps:
            raise ValueError(f"until must be in [current step {self.step}, steps={cfg.steps}], got {until}")
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=until, initial=self.step, desc="train", leave=False, dynamic_ncols=True)
        last: dict[str, Any] = {}
        t0, s0 = time.perf_counter(), self.step
        while self.step < until:
            metrics = self.train_step()
            if bar is not None:
                bar.update(1)
            log_now = cfg.log_every and (self.step % cfg.log_every == 0 or self.step == until)
            if log_now:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t0
                last = self._record(metrics, (self.step - s0) / dt if dt > 0 else float("nan"))
                t0, s0 = time.perf_counter(), self.step
                if bar is not None:
                    bar.set_postfix(loss=f"{last['loss']:.4g}")
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step != cfg.steps:
                last = {**last, **self.evaluate()}
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                self.save_checkpoint(cfg.ckpt_path)
        if bar is not None:
            bar.close()
        if self.step == cfg.steps and self.eval_fns:
            last = {**last, **self.evaluate()}
        if cfg.ckpt_path and self.step == until and (not cfg.ckpt_every or self.step % cfg.ckpt_every):
            self.save_checkpoint(cfg.ckpt_path)
        return last

    def _record(self, metrics: dict[str, torch.Tensor], steps_per_s: float) -> dict[str, Any]:
        rec: dict[str, Any] = {"step": self.step, "lr": self.optimizer.param_groups[0]["lr"]}
        rec.update({k: float(v) for k, v in metrics.items()})
        rec["steps_per_s"] = steps_per_s
        if self.tokens_per_batch:
            tps = steps_per_s * self.tokens_per_batch * self.config.grad_accum
            rec["tokens_per_s"] = tps
            if self.flops_per_token and self.peak_flops:
                rec["mfu"] = tps * self.flops_per_token / self.peak_flops
        self._log(rec)
        return rec

    def evaluate(self) -> dict[str, Any]:
        """Run every eval callback under no_grad in eval mode; log and return {"step", names...}."""
        rec: dict[str, Any] = {"step": self.step}
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._amp):
            for fn in self.eval_fns:
                rec.update({f"eval/{k}": float(v) for k, v in fn(self.model).items()})
        self.model.train()
        self._log(rec)
        return rec

    def _log(self, rec: dict[str, Any]) -> None:
        self.history.append(rec)
        if self.config.metrics_path:
            Path(self.config.metrics_path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.config.metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue the same trajectory."""
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; the iterator of an iterable `batches` restarts (see the class docstring)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write the state atomically (temp file + rename), so an interrupted save never corrupts the last one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | os.PathLike) -> bool:
        """Resume from `path` if it exists; returns whether it did."""
        if not Path(path).exists():
            return False
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))
        return True


def _adamw(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    fused = cfg.device.startswith("cuda")
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, fused=fused)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_to_device(b, device) for b in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - user code may draw from the legacy global RNG
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}  # noqa: NPY002
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
