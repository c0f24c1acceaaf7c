"""The one training loop of the toolkit: a plain loop over steps that any model, data and optimizer plug into.

`Trainer(model, batches, loss_fn, config)` runs AdamW (or an optimizer made outside, e.g. Opacus' `DPOptimizer`
on a `GradSampleModule`) with warmup + cosine/constant learning rate, gradient clipping and accumulation, bf16
autocast on CUDA (fp32 on CPU), optional `torch.compile`, DDP under `torchrun`, periodic evaluation callbacks,
step hooks that may replace the model (growth), a teacher slot (distillation), a tqdm bar, metrics as JSONL (and
TensorBoard), tokens/s and MFU. Checkpoints hold model, optimizer, scheduler, every RNG state, the data position,
extra stateful objects, the step, and the train and model configs, so a resumed run continues the *same*
trajectory as an uninterrupted one, and a resume under a different config refuses.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import _state
from models import distributed as _dist
from models._log import MetricsLog
from models._optim import adamw, transfer_state
from models.data import is_stateful
from models.perf import peak_flops

__all__ = ["TrainConfig", "Trainer", "lr_factor", "peak_flops", "checkpoint_configs"]

_SCHEDULES = ("cosine", "constant")
_RESUME_ITERABLE = ("error", "restart", "skip")

Batch = Any
LossFn = Callable[..., "torch.Tensor | tuple[torch.Tensor, dict[str, Any]]"]
EvalFn = Callable[[nn.Module], dict[str, float]]
Hook = Callable[["Trainer"], None]


@dataclass(frozen=True)
class TrainConfig:
    """How to train. lr is the peak; the schedule warms up linearly over `warmup_steps`, then stays (constant) or
    decays by a cosine to min_lr_ratio·lr at `steps`. grad_clip ≤ 0 disables clipping (use that with a DP
    optimizer, which clips per example itself). grad_accum micro-batches make one step (per rank, under DDP).
    Every `*_every` of 0 disables that action; checkpoints go to ckpt_path, metrics (one JSON object a line) to
    metrics_path and, if tensorboard_dir is set and tensorboard is installed, to TensorBoard.
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
    tensorboard_dir: str | None = None
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


def checkpoint_configs(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(train config, model config) a checkpoint was made with, e.g. to rebuild a grown model before resuming."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state["config"], state.get("model_config")


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


class Trainer:
    """Train `model` on `batches` with `loss_fn(model, batch) -> loss` (or `(loss, {name: value})`).

    batches — where the data position lives, so resume is exact:
      a callable `index -> batch` (step-indexed; `index` is the global micro-batch index
      (step·grad_accum + micro)·world + rank, so data-parallel ranks read disjoint batches and N ranks equal one
      process with N× the accumulation); or a stateful iterator (`state_dict`/`load_state_dict`, e.g.
      `models.data.ShuffledBatches`: its state is checkpointed; under DDP its `shard(rank, world)` is called); or
      a plain iterable, which cannot say where it is: resuming one refuses unless `resume_iterable` is
      'restart' (a new iterator; exact when batches are drawn from the global RNG, which checkpoints restore) or
      'skip' (a new iterator advanced past the consumed batches; exact for a deterministic iterable).
    loss_fn: called as loss_fn(model, batch), plus `step=` (the optimizer step) and `teacher=` when its signature
      has those names (KD weight schedules, distillation). Batches are moved to the device (nested tensors too).
    optimizer: None builds AdamW(lr, betas, weight_decay) with no decay on 1-D parameters; pass one made outside
      (e.g. Opacus' DPOptimizer) to use it unchanged (its lr is scaled by the same schedule); optimizer_factory
      (model -> optimizer) is what `replace_model` rebuilds it with (default: the built-in AdamW).
      A DP optimizer (duck-typed: it has `noise_multiplier` and `signal_skip_step`, as Opacus' DPOptimizer and
      dpopt's DP² do) clips per example itself, so grad_clip must be 0; its grad_accum micro-batches are the
      pieces of one logical (e.g. Poisson) batch: each is clipped per example and accumulated as a skipped step
      (BatchMemoryManager's protocol), and the last one releases one noisy step, scaled by the optimizer's
      expected batch size. Put its accountant in `state` so that a resumed run reports the same ε.
    eval_fns: `model -> {name: value}` run under no_grad in eval mode (on rank 0) every eval_every steps and at
      the end. hooks: `hook(trainer)` called before every step (trainer.step is the step about to run), in grad
      mode, on every rank; a hook may call `trainer.replace_model(...)`.
    teacher: a fixed model for distillation, moved to the device, in eval mode, with requires_grad off.
    state: extra objects checkpointed with the run (state_dict/load_state_dict, or a torch.Generator), e.g. a
      privacy accountant or a growth schedule. model_config: recorded in checkpoints (default: `model.config` if
      it is a dataclass); a resume whose model or train config differs raises a ValueError naming the fields.
    tokens_per_batch (per micro-batch) and flops_per_token (a number, or `model -> number`, re-read after
      replace_model) enable tokens/s, cumulative training FLOPs and, on a known GPU, MFU.
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
        flops_per_token: float | Callable[[nn.Module], float] | None = None,
        *,
        hooks: Sequence[Hook] = (),
        teacher: nn.Module | None = None,
        state: Mapping[str, Any] | None = None,
        model_config: Any = None,
        optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
        resume_iterable: str = "error",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise ValueError("loss_fn must be callable as loss_fn(model, batch)")
        if tokens_per_batch is not None and tokens_per_batch < 1:
            raise ValueError(f"tokens_per_batch must be >= 1, got {tokens_per_batch}")
        if resume_iterable not in _RESUME_ITERABLE:
            raise ValueError(f"resume_iterable must be one of {_RESUME_ITERABLE}, got {resume_iterable!r}")
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise ValueError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        self.extra_state = dict(state or {})
        for name, obj in self.extra_state.items():
            _state.check_stateful(name, obj)
        self.config = config
        self.dist = _dist.setup(config.device)
        self.device = self.dist.device
        if config.seed is not None:
            _state.seed_everything(config.seed + self.dist.rank)  # per-rank seeds (DDP syncs the weights)
        self.loss_fn = loss_fn
        self._loss_kwargs = {k for k in ("step", "teacher") if _accepts(loss_fn, k)}
        self._batch_fn = batches if callable(batches) and not isinstance(batches, Iterable) else None
        self._iterable = None if self._batch_fn is not None else batches
        self._stateful_batches = self._iterable is not None and is_stateful(self._iterable)
        if self._stateful_batches and self.dist.world > 1 and callable(getattr(self._iterable, "shard", None)):
            self._iterable.shard(self.dist.rank, self.dist.world)
        self._iter: Iterator[Batch] | None = None
        self._consumed = 0
        self.resume_iterable = resume_iterable
        self.teacher = None if teacher is None else teacher.to(self.device).eval().requires_grad_(False)
        self.hooks = list(hooks)
        self.eval_fns = list(eval_fns)
        self.tokens_per_batch, self._flops_per_token = tokens_per_batch, flops_per_token
        self._amp = config.amp and self.device.type == "cuda"
        dtype = torch.bfloat16 if self._amp else torch.float32
        self.peak_flops = config.peak_flops or peak_flops(self.device, dtype)
        self._model_config = model_config
        self._optimizer_factory = optimizer_factory
        self._external_optimizer = optimizer is not None and optimizer_factory is None
        self.step = 0
        self.flops_done = 0.0
        self.compile_s = 0.0
        self._log = MetricsLog(config.metrics_path, config.tensorboard_dir, enabled=self.dist.is_main)
        self._install(model, optimizer)

    # ------------------------------------------------------------------------------------------- model & optimizer
    def _install(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        cfg = self.config
        self.model = model.to(self.device)
        wrapped: nn.Module = self.model
        self._ddp = None
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = wrapped = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self._forward_model = torch.compile(wrapped, mode=cfg.compile_mode) if cfg.compile else wrapped
        self._warm = not cfg.compile  # the first step after (re)compiling is compile time, not throughput
        if optimizer is None:
            factory = self._optimizer_factory or (lambda m: adamw(m, cfg.lr, cfg.betas, cfg.weight_decay,
                                                                  fused=self.device.type == "cuda"))
            optimizer = factory(self.model)
        self.optimizer = optimizer
        self._dp = _is_dp_optimizer(optimizer)
        if self._dp and cfg.grad_clip > 0:
            raise ValueError(
                f"grad_clip={cfg.grad_clip} with a DP optimizer ({type(optimizer).__name__}): it clips each example's "
                "gradient itself; clipping the noisy sum again changes the update and logs a non-private gradient "
                "norm. Set TrainConfig(grad_clip=0)"
            )
        if self._dp and self.dist.world > 1:
            raise ValueError("a DP optimizer under DDP is not supported by the Trainer (use one process)")
        for g in self.optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        # one schedule for the whole run: a rebuilt scheduler continues at the current step, never restarts
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg),
                                                           last_epoch=self.step - 1)
        fpt = self._flops_per_token
        self.flops_per_token = fpt(self.model) if callable(fpt) else fpt
        if self._model_config is None and hasattr(self.model, "config"):
            mc = self.model.config
            self.model_config = _state.as_plain(mc) if hasattr(mc, "__dataclass_fields__") else None
        else:
            self.model_config = _state.as_plain(self._model_config)

    def replace_model(self, model: nn.Module, moments_from: Mapping[str, str] | None = None,
                      carry_moments: bool = True, model_config: Any = None) -> dict[str, int]:
        """Continue training with `model` (e.g. a grown copy) from the current step.

        Rebuilds the optimizer (with optimizer_factory or the built-in AdamW), the scheduler (continuing the one
        learning-rate schedule at the current step), the compile and DDP wrappers. Optimizer state: parameters
        the new model shares with the old one keep theirs; a new parameter named in `moments_from`
        ({new name: old name}, a copied layer) gets a copy of its source's Adam moments when carry_moments, or
        fresh ones when not. model_config (default: the new model's `.config`) is what checkpoints record next.
        Returns {"kept", "copied", "fresh"} parameter counts."""
        if self._external_optimizer:
            raise ValueError("replace_model needs optimizer_factory when the optimizer was made outside the Trainer")
        old_model, old_opt = self.model, self.optimizer
        self._model_config = model_config
        self._install(model, None)
        return transfer_state(old_opt, old_model, self.optimizer, self.model, moments_from or {}, carry_moments)

    # ------------------------------------------------------------------------------------------- one step
    def _next_batch(self, micro: int) -> Batch:
        if self._batch_fn is not None:
            index = (self.step * self.config.grad_accum + micro) * self.dist.world + self.dist.rank
            batch = self._batch_fn(index)
        else:
            if self._iter is None:
                self._iter = iter(self._iterable)
            batch = next(self._iter)
            self._consumed += 1
        return _to_device(batch, self.device)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimizer step over grad_accum micro-batches; returns device tensors (no host sync)."""
        cfg = self.config
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        extras: dict[str, torch.Tensor] = {}
        kwargs = {k: v for k, v in (("step", self.step), ("teacher", self.teacher)) if k in self._loss_kwargs}
        for micro in range(cfg.grad_accum):
            batch = self._next_batch(micro)
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if self._ddp is None or last else self._ddp.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._amp):
                    out = self.loss_fn(self._forward_model, batch, **kwargs)
                loss, more = out if isinstance(out, tuple) else (out, {})
                if self._dp:  # per-example gradients stay exact: no 1/grad_accum before clipping
                    loss.backward()
                    if not last:  # clip and accumulate this piece of the logical batch, no noise yet
                        self.optimizer.signal_skip_step(do_skip=True)
                        self.optimizer.step()
                        self.optimizer.zero_grad(set_to_none=True)
                else:
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
        if self.tokens_per_batch and self.flops_per_token:
            self.flops_done += self.flops_per_token * self.tokens_per_batch * cfg.grad_accum * self.dist.world
        self.step += 1
        return out_metrics

    # ------------------------------------------------------------------------------------------- the loop
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Train from the current step to `until` (default config.steps; smaller to stop early, as an
        interruption would), evaluating, logging and checkpointing on the way. Returns the last log record.
        Throughput counts training steps only: hooks, evaluation, checkpoints and compile time are excluded."""
        cfg = self.config
        until = cfg.steps if until is None else until
        if not self.step <= until <= cfg.steps:
            raise ValueError(f"until must be in [current step {self.step}, steps={cfg.steps}], got {until}")
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=until, initial=self.step, desc="train", leave=False, dynamic_ncols=True)
        last: dict[str, Any] = {}
        t0, timed, excluded = time.perf_counter(), 0, 0.0
        while self.step < until:
            if self.hooks:
                self._sync()
                tx = time.perf_counter()
                for hook in self.hooks:
                    hook(self)
                self._sync()
                excluded += time.perf_counter() - tx
            if not self._warm:  # first step after (re)compiling: time it as compile time
                self._sync()
                tx = time.perf_counter()
                metrics = self.train_step()
                self._sync()
                dt = time.perf_counter() - tx
                self.compile_s += dt
                excluded += dt
                self._warm = True
            else:
                metrics = self.train_step()
                timed += 1
            if bar is not None:
                bar.update(1)
            if cfg.log_every and (self.step % cfg.log_every == 0 or self.step == until):
                self._sync()
                dt = time.perf_counter() - t0 - excluded
                last = self._record(metrics, timed / dt if dt > 0 and timed else float("nan"))
                t0, timed, excluded = time.perf_counter(), 0, 0.0
                if bar is not None:
                    bar.set_postfix(loss=f"{last['loss']:.4g}")
            tx = time.perf_counter()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step != cfg.steps:
                last = {**last, **self.evaluate()}
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                self.save_checkpoint(cfg.ckpt_path)
            excluded += time.perf_counter() - tx
        if bar is not None:
            bar.close()
        if self.step == cfg.steps and self.eval_fns:
            last = {**last, **self.evaluate()}
        if cfg.ckpt_path and self.step == until and (not cfg.ckpt_every or self.step % cfg.ckpt_every):
            self.save_checkpoint(cfg.ckpt_path)
        return last

    def _record(self, metrics: dict[str, torch.Tensor], steps_per_s: float) -> dict[str, Any]:
        rec: dict[str, Any] = {"step": self.step, "lr": self.optimizer.param_groups[0]["lr"]}
        rec.update({k: float(_dist.mean_across(v.float(), self.dist.world)) for k, v in metrics.items()})
        rec["steps_per_s"] = steps_per_s
        if self.tokens_per_batch:
            tps = steps_per_s * self.tokens_per_batch * self.config.grad_accum * self.dist.world
            rec["tokens_per_s"] = tps
            if self.flops_per_token:
                rec["flops"] = self.flops_done
                if self.peak_flops:
                    rec["mfu"] = tps * self.flops_per_token / (self.peak_flops * self.dist.world)
        if self.compile_s:
            rec["compile_s"] = self.compile_s
        self._log.write(rec)
        return rec

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every record logged so far (training and evaluation), in order."""
        return self._log.history

    def evaluate(self) -> dict[str, Any]:
        """Run every eval callback under no_grad in eval mode (rank 0 only); log and return {"step", names...}."""
        rec: dict[str, Any] = {"step": self.step}
        if self.dist.is_main:
            self.model.eval()
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._amp):
                for fn in self.eval_fns:
                    rec.update({f"eval/{k}": float(v) for k, v in fn(self.model).items()})
            self.model.train()
            self._log.write(rec)
        _dist.barrier(self.dist.world)
        return rec

    # ------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue the same trajectory (collective under DDP: every rank
        contributes its RNG and data state)."""
        per_rank = {"rng": _state.rng_state()}
        if self._stateful_batches:
            per_rank["batches"] = self._iterable.state_dict()
        ranks = _dist.gather_objects(per_rank, self.dist.world)
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ranks[0]["rng"],
            "ranks": ranks,
            "consumed": self._consumed,
            "flops_done": self.flops_done,
            "extra": {k: _state.object_state(v) for k, v in self.extra_state.items()},
            "config": asdict(self.config),
            "model_config": self.model_config,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`, refusing (ValueError naming the fields) if the train config (other than how
        the run is watched: device, logging, checkpoint paths, compile) or the model config differs."""
        _state.check_resumable(state, asdict(self.config), self.model_config, set(self.extra_state),
                               self.dist.world)
        mine = (state.get("ranks") or [{"rng": state["rng"]}])[self.dist.rank]
        if self._iterable is not None and not self._stateful_batches and state.get("consumed", 0):
            if self.resume_iterable == "error":
                raise ValueError("cannot resume exactly: `batches` is a plain iterable, which cannot say where it "
                                 "was; pass a step-indexed callable or a stateful loader (models.data), or "
                                 "resume_iterable='restart' | 'skip'")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for k, v in state.get("extra", {}).items():
            _state.load_object_state(self.extra_state[k], v)
        if self._stateful_batches:
            self._iterable.load_state_dict(mine["batches"])
        self._iter, self._consumed = None, int(state.get("consumed", 0))
        if self._iterable is not None and not self._stateful_batches and self.resume_iterable == "skip":
            self._iter = iter(self._iterable)
            for _ in range(self._consumed):
                next(self._iter)
        _state.set_rng_state(mine["rng"])
        self.step = int(state["step"])
        self.flops_done = float(state.get("flops_done", 0.0))

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write the state atomically (temp file + rename) on rank 0, so an interrupted save never corrupts the
        last one. Collective under DDP: call it on every rank."""
        state = self.state_dict()
        if self.dist.is_main:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            torch.save(state, tmp)
            os.replace(tmp, path)
        _dist.barrier(self.dist.world)

    def load_checkpoint(self, path: str | os.PathLike) -> bool:
        """Resume from `path` if it exists; returns whether it did."""
        if not Path(path).exists():
            return False
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))
        return True


def _is_dp_optimizer(optimizer: Any) -> bool:
    """A per-example-clipping DP optimizer (Opacus' DPOptimizer protocol), recognized without importing Opacus."""
    return hasattr(optimizer, "noise_multiplier") and callable(getattr(optimizer, "signal_skip_step", None))


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
