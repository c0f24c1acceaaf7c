"""DP training for the DP² experiments, through the toolkit's own pieces: ``dpopt.PrivacyEngine`` builds the
optimizer (Opacus baselines, DP², bias-corrected DP-Adam) and its accountant, ``models.train.Trainer`` runs the
loop, and a step-indexed Poisson batch source draws the batches (so a run is a pure function of its seed).

The experiments' models are linear (logistic regression) or bilinear (matrix factorization), so their exact
per-example gradients are a few tensor operations: each model is an ``nn.Module`` whose autograd function writes
``p.grad_sample`` in Opacus' convention (the gradient of example i's own loss; mean-loss batches are scaled
back by their size) as a **row-sparse** tensor, which ``dpopt`` clips and sums without densifying
(``grad_sample_mode="no_op"``). tests/test_dp_experiments.py checks these per-sample gradients against Opacus'
hooks, and the whole update against a dense Opacus step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

METHODS = ("dp-sgd", "dp-rmsprop", "dp-adam", "dp-adam-bc", "dp-adagrad", "dp2-rmsprop", "dp2-adagrad",
           "dp2-delayed")
LABELS = {
    "dp-sgd": "DP-SGD",
    "dp-rmsprop": "DP-RMSProp",
    "dp-adam": "DP-Adam",
    "dp-adam-bc": "DP-Adam (bias-corrected)",
    "dp-adagrad": "DP-Adagrad",
    "dp2-rmsprop": "DP²-RMSProp",
    "dp2-adagrad": "DP²-Adagrad",
    "dp2-delayed": "DP² noise-then-precondition",
}
_DPOPT_NAME = {"dp2-delayed": "dp2-noise-then-precond"}


# ------------------------------------------------------------------------------------------------ per-sample grads
def _store(p: torch.Tensor, g: torch.Tensor) -> None:
    """Attach per-sample gradients as Opacus' GradSampleModule does (a list when batches accumulate)."""
    old = getattr(p, "grad_sample", None)
    p.grad_sample = g if old is None else (old + [g] if isinstance(old, list) else [old, g])


class _LinearLogits(torch.autograd.Function):
    """z = X w + b for a sparse COO batch X (n × d); backward writes the per-sample gradients of a mean loss:
    example i's own gradient is n·∂L/∂z_i · [x_i, 1] (row-sparse in w)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.params = (w, b)
        idx = x.indices()  # a gather and an index_add: cheaper than torch.sparse.mm at these sizes
        z = torch.zeros(x.shape[0], dtype=w.dtype).index_add_(0, idx[0], x.values() * w[idx[1]])
        return z + b

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[None, None, None]:
        (x,) = ctx.saved_tensors
        w, b = ctx.params
        n = x.shape[0]
        r = grad_out * max(n, 1)  # the loss is sum / max(n, 1): undo the mean (Opacus' loss_reduction="mean")
        idx = x.indices()
        g = torch.sparse_coo_tensor(idx, x.values() * r[idx[0]], (n, w.shape[0]), is_coalesced=True,
                                    check_invariants=False)
        _store(w, g)
        _store(b, r.unsqueeze(1))
        return None, None, None


class SparseLogistic(nn.Module):
    """Binary logistic regression w·x + b on sparse feature rows, zero init (as the DP² paper)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LinearLogits.apply(x, self.weight, self.bias)


def logistic_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean log loss over the batch (sum / max(n, 1): an empty Poisson batch gives 0, not NaN)."""
    x, y = batch
    z = model(x)
    return nn.functional.binary_cross_entropy_with_logits(z, y, reduction="sum") / max(len(y), 1)


class _Ratings(torch.autograd.Function):
    """r̂ = <U_u, V_i>; backward writes row-sparse per-sample gradients n·∂L/∂r̂ · (V_i in row u, U_u in row i)."""

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, i: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        uu, vv = U[u], V[i]
        ctx.save_for_backward(u, i, uu, vv)
        ctx.params = (U, V)
        return (uu * vv).sum(1)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[None, None, None, None]:
        u, i, uu, vv = ctx.saved_tensors
        U, V = ctx.params
        n = len(u)
        e = (grad_out * max(n, 1)).unsqueeze(1)
        ar = torch.arange(n, device=u.device)
        _store(U, torch.sparse_coo_tensor(torch.stack([ar, u]), e * vv, (n, *U.shape), check_invariants=False))
        _store(V, torch.sparse_coo_tensor(torch.stack([ar, i]), e * uu, (n, *V.shape), check_invariants=False))
        return None, None, None, None


class MatrixFactorization(nn.Module):
    """Ratings r̂(u, i) = U_u·V_i (the DP² paper's MovieLens model, no bias terms), init N(0, init_scale²)."""

    def __init__(self, n_users: int, n_items: int, dim: int, init_scale: float, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.U = nn.Parameter(init_scale * torch.randn(n_users, dim, generator=g))
        self.V = nn.Parameter(init_scale * torch.randn(n_items, dim, generator=g))

    def forward(self, pairs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return _Ratings.apply(pairs[0], pairs[1], self.U, self.V)


def squared_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean squared rating error over the batch (sum / max(n, 1))."""
    u, i, r = batch
    return ((model((u, i)) - r) ** 2).sum() / max(len(r), 1)


# ------------------------------------------------------------------------------------------------ data
class SparseRows:
    """CSR feature rows (scipy) sliced into sparse COO torch batches: one C-level row slice per batch."""

    def __init__(self, csr: Any) -> None:
        self.csr = csr.tocsr().astype(np.float32)
        self.csr.sort_indices()
        self.shape = tuple(self.csr.shape)
        self._indptr = self.csr.indptr.astype(np.int64)
        self._indices = self.csr.indices.astype(np.int64)

    def rows(self, idx: np.ndarray | torch.Tensor) -> torch.Tensor:
        idx = np.asarray(idx, dtype=np.int64)
        start = self._indptr[idx]
        length = self._indptr[idx + 1] - start
        pos = np.repeat(start - (np.cumsum(length) - length), length) + np.arange(int(length.sum()))
        ij = np.stack([np.repeat(np.arange(len(idx), dtype=np.int64), length), self._indices[pos]])
        return torch.sparse_coo_tensor(torch.from_numpy(ij), torch.from_numpy(self.csr.data[pos]),
                                       (len(idx), self.shape[1]), is_coalesced=True, check_invariants=False)

    def matvec(self, w: np.ndarray) -> np.ndarray:
        """X w for every row (evaluation)."""
        return self.csr @ w


def _mix(seed: int, index: int) -> int:
    """A 63-bit seed from (seed, index) by SplitMix64 (neighbouring indices get unrelated streams)."""
    z = (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1


def poisson_indices(n: int, sample_rate: float, seed: int, index: int) -> np.ndarray:
    """Batch ``index`` of Poisson sampling: each of the n examples independently with probability q.

    Drawn as |S| ~ Binomial(n, q), then S uniform among the |S|-subsets: the same distribution as n coin flips
    (given its size a Poisson sample is a uniform subset), at O(|S|) cost instead of n random numbers. The
    generator is seeded by (seed, index) only, so the batches are a pure function of the step."""
    rng = np.random.default_rng(_mix(seed, index))
    k = int(rng.binomial(n, sample_rate))
    return np.sort(rng.choice(n, size=k, replace=False))


def poisson_batches(n: int, sample_rate: float, seed: int, make: Callable[[np.ndarray], Any]) -> Callable[[int], Any]:
    """Step-indexed Poisson batch source for models.train.Trainer: ``index -> make(poisson_indices(...))``."""
    return lambda index: make(poisson_indices(n, sample_rate, seed, index))


# ------------------------------------------------------------------------------------------------ one run
class Diverged(FloatingPointError):
    """The weights turned non-finite: the run stops and counts as the worst score."""


@dataclass
class RunResult:
    """Metrics at each evaluation (step 0 = the initial model), and the privacy spent."""

    steps: list[int]
    metrics: dict[str, list[float]]
    epsilon: dict[str, float] = field(default_factory=dict)
    diverged: bool = False

    def final(self) -> dict[str, float]:
        return {k: v[-1] for k, v in self.metrics.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"final": self.final(), "curve": {"steps": self.steps, **self.metrics}, "diverged": self.diverged,
                "epsilon": self.epsilon}


def build(method: str, model: nn.Module, hp: dict[str, float], *, sigma: float, n: int, batch_size: int,
          seed: int, accountant: str = "prv", grad_sample_mode: str = "no_op",
          ) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """(wrapped model, DP optimizer, engine) for ``method`` with hyperparameters ``hp`` (lr, clip; eps, beta,
    lr2, clip2, delay for the adaptive ones), through ``dpopt.make_dp_training``. The sampling rate is
    1/(n // batch_size), the steps of an epoch, as in Opacus; the noise generator is seeded by ``seed``.
    ``grad_sample_mode`` "no_op": the model writes its own per-sample gradients (this module's models);
    "hooks" (or another Opacus mode) for a general ``nn.Module``."""
    from torch.utils.data import DataLoader, TensorDataset

    from dpopt import DP2Config, make_dp_training

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    dp2 = None
    if method.startswith("dp2"):
        dp2 = DP2Config(delay=int(hp["delay"]), clip2=float(hp.get("clip2", 1.0)), lr2=float(hp["lr2"]),
                        beta=float(hp.get("beta", 0.9)), eps=float(hp["eps"]), check_finite=False)
    # a loader only to tell the engine q = 1/len(loader) and the expected batch size; batches come from
    # poisson_batches at that rate
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=batch_size, drop_last=True)
    run = make_dp_training(
        _DPOPT_NAME.get(method, method), model, loader, lr=float(hp["lr"]), max_grad_norm=float(hp["clip"]),
        noise_multiplier=sigma, dp2=dp2, eps=hp.get("eps"), beta=hp.get("beta"), grad_sample_mode=grad_sample_mode,
        accountant=accountant, noise_generator=torch.Generator().manual_seed(seed + 7919),
    )
    return run.module, run.optimizer, run.engine


def train(method: str, model: nn.Module, hp: dict[str, float], *, loss_fn: Callable, make_batch: Callable,
          evaluate: Callable[[], dict[str, float]], n: int, batch_size: int, steps: int, evals: int, sigma: float,
          seed: int) -> RunResult:
    """Train ``model`` with ``method`` for ``steps`` Poisson steps through models.train.Trainer; evaluate
    ``evals`` times (and at step 0). A run whose weights turn non-finite stops, its later metrics padded with
    +inf losses and 0 scores (so a tuning grid may include aggressive learning rates)."""
    from models.train import TrainConfig, Trainer

    module, opt, engine = build(method, model, hp, sigma=sigma, n=n, batch_size=batch_size, seed=seed)
    every = max(1, steps // evals)
    result = RunResult(steps=[0], metrics={k: [v] for k, v in evaluate().items()})

    def record(_model: nn.Module) -> dict[str, float]:
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise Diverged
        out = evaluate()
        result.steps.append(trainer.step)
        for k, v in out.items():
            result.metrics[k].append(v)
        return out

    cfg = TrainConfig(steps=steps, lr=float(hp["lr"]), grad_clip=0.0, schedule="constant", log_every=0,
                      eval_every=every, progress=False)
    batches = poisson_batches(n, engine.sample_rate, seed, make_batch)
    trainer = Trainer(module, batches, loss_fn, cfg, optimizer=opt, eval_fns=[record],
                      state={"accountant": engine.accountant})
    try:
        trainer.fit()
    except Diverged:
        result.diverged = True
        t = result.steps[-1]
        while t < steps:
            t = min(t + every, steps)
            result.steps.append(t)
            for k, vals in result.metrics.items():
                vals.append(math.inf if ("loss" in k or "mse" in k) else 0.0)
    if result.steps[-1] != steps:  # the Trainer evaluates at the end; keep the record aligned if it did not
        record(module)
    # the engine's record of what was released; ε of it is computed once per setting by the experiment (the same
    # for every run of a setting; PRV costs ~1 s per evaluation)
    result.epsilon = {"accountant": engine.accountant.mechanism(),
                      "history": [list(h) for h in engine.accountant.history]}
    return result
