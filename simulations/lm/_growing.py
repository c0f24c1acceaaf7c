"""What the growth experiments (lm-midas, lm-lag) share: the model/optimizer fields of their Config, one training
arm on Tiny Shakespeare through the shared Trainer (optionally grown by a hook), and a fork pool so that two
arms train side by side on two cores, each single-threaded (two intra-op threads on a loaded 2-core machine
spin against each other: a tiny GPT step measured 12 ms with one thread and 290 ms with two)."""

from __future__ import annotations

import contextlib
import copy
import multiprocessing as mp
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.lm import GPT, GPTConfig, RandomWindows, evaluate_loss, lm_loss
from models.train import TrainConfig, Trainer
from simulations.config import ExperimentConfig, check_device, param


@dataclass(frozen=True)
class GrowthConfig(ExperimentConfig):
    """Model width, context and the one AdamW + warmup + cosine schedule every arm shares."""

    n_head: int = param(4, "attention heads", bounds="[1, 128]")
    n_embd: int = param(64, "model width", bounds="[8, 8192]")
    block_size: int = param(128, "context length (characters)", bounds="[8, 4096]")
    batch_size: int = param(8, "sequences per step", bounds="[1, 4096]")
    lr: float = param(2e-3, "peak learning rate", bounds="(0, 1]")
    warmup_steps: int = param(100, "linear warmup steps", bounds="[0, 1e7]")
    min_lr_ratio: float = param(0.1, "final lr / peak lr of the cosine decay", bounds="[0, 1]")
    beta2: float = param(0.99, "AdamW beta2", bounds="[0, 1)")
    weight_decay: float = param(0.1, "AdamW weight decay (matrices and embeddings)", bounds="[0, 10]")
    grad_clip: float = param(1.0, "gradient-norm clip (0 = off)", bounds="[0, 1e6]")
    dropout: float = param(0.0, "dropout probability", bounds="[0, 1)")
    eval_windows: int = param(200, "validation windows for the curves and LAG's score (the end uses all)",
                              bounds="[1, 1e7]")
    seed: int = param(0, "seed of the init and of the batch positions", bounds="[0, 4294967295]")
    device: str = param("cpu", "cpu or cuda[:i]")
    workers: int = param(2, "arms trained side by side (forked processes, one thread each; 1 = in process)",
                         bounds="[1, 64]")

    def check(self) -> None:
        check_device(self.device)
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.workers > 1 and self.device != "cpu":
            raise ValueError(f"workers > 1 forks CPU processes; use workers=1 on device={self.device!r}")

    @classmethod
    def presets(cls):
        return {**super().presets(), "gpu": cls.gpu}

    @classmethod
    def gpu(cls) -> GrowthConfig:
        raise NotImplementedError

    def gpt(self, vocab_size: int, n_layer: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, n_layer=n_layer, n_head=self.n_head,
                         n_embd=self.n_embd, dropout=self.dropout, bias=False)

    def train_config(self, steps: int, log_every: int) -> TrainConfig:
        return TrainConfig(steps=steps, lr=self.lr, warmup_steps=min(self.warmup_steps, steps), schedule="cosine",
                           min_lr_ratio=self.min_lr_ratio, betas=(0.9, self.beta2), weight_decay=self.weight_decay,
                           grad_clip=self.grad_clip, device=self.device, log_every=log_every, eval_every=log_every,
                           progress=False, compile=self.device != "cpu")


def shakespeare():
    from simulations.datasets import load_shakespeare_char

    return load_shakespeare_char()


def val_loss(config: GrowthConfig, val: np.ndarray, windows: int | None = None) -> Callable[[torch.nn.Module], float]:
    """model -> mean loss on the first `windows` (default eval_windows; None = all) non-overlapping windows."""
    n = config.eval_windows if windows is None else windows
    return lambda m: evaluate_loss(m, val, config.block_size, 64, max_windows=n, device=config.device)


def trainer(config: GrowthConfig, model: GPT, train: np.ndarray, val: np.ndarray, steps: int, every: int,
            hooks: Sequence[Callable] = (), snapshots: list | None = None) -> Trainer:
    """A Trainer for one arm: random windows of `train` (the same for every arm: seeded by config.seed), the
    validation loss every `every` steps (and a copy of the weights then, into `snapshots` when given)."""
    score = val_loss(config, val)

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        if snapshots is not None:
            snapshots.append({k: v.detach().cpu().clone() for k, v in m.state_dict().items()})
        return {"val_loss": score(m)}

    src = RandomWindows(train, config.block_size, config.batch_size, seed=config.seed)
    return Trainer(model, src, lm_loss, config.train_config(steps, every), eval_fns=[evaluate], hooks=hooks,
                   tokens_per_batch=src.tokens_per_batch, flops_per_token=lambda m: m.flops_per_token(
                       config.block_size))


def curve(tr: Trainer) -> list[dict[str, float]]:
    """[{"step", "val_loss", "flops", "train_loss"}] at every evaluation (training records share its steps)."""
    train = {r["step"]: r for r in tr.history if "loss" in r}
    return [{"step": r["step"], "val_loss": r["eval/val_loss"], "flops": train.get(r["step"], {}).get("flops"),
             "train_loss": train.get(r["step"], {}).get("loss")} for r in tr.history if "eval/val_loss" in r]


def clone_model(model: GPT) -> GPT:
    return copy.deepcopy(model).cpu()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch single-threaded within the block (as each pool worker is), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_JOBS: dict[str, Any] = {}


def _call(i: int) -> bytes:
    torch.set_num_threads(1)
    # plain pickle: multiprocessing's own pickler would pass tensors as shared-memory handles, which hang once
    # the worker that made them has exited
    return pickle.dumps(_JOBS["fn"](_JOBS["jobs"][i]))


def pool_map(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> list[Any]:
    """[fn(job) for job in jobs], in `workers` forked single-threaded processes when workers > 1 (results come
    back pickled, in order). fn and jobs reach the children by fork, so they need not be picklable."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in jobs]
    _JOBS.update(fn=fn, jobs=list(jobs))
    try:
        with mp.get_context("fork").Pool(min(workers, len(jobs)), maxtasksperchild=1) as pool:
            return [pickle.loads(r) for r in pool.map(_call, range(len(jobs)), chunksize=1)]
    finally:
        _JOBS.clear()
