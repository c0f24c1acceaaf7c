"""The DP training core shared by the DP² experiments: models with closed-form per-example gradients, the
optimizers (Opacus baselines, dpopt's DP²), Poisson sampling, and a training loop.

Why closed form: the experiments' models are linear (logistic regression) or bilinear (matrix factorization), so
per-example gradients are two or three vectorized tensor ops. We hand them to the optimizer as ``p.grad_sample``
(what Opacus' ``GradSampleModule`` would have produced), so clipping, noise, scaling and DP²'s phase logic are
exactly Opacus' and dpopt's code — the experiments test the library, not a re-implementation of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

METHODS = ("dp-sgd", "dp-rmsprop", "dp-adam", "dp-adagrad", "dp2-rmsprop", "dp2-adagrad", "dp2-delayed")
LABELS = {
    "dp-sgd": "DP-SGD",
    "dp-rmsprop": "DP-RMSProp",
    "dp-adam": "DP-Adam",
    "dp-adagrad": "DP-Adagrad",
    "dp2-rmsprop": "DP²-RMSProp",
    "dp2-adagrad": "DP²-Adagrad",
    "dp2-delayed": "DP² noise-then-precondition",
}


class PerExampleModel(Protocol):
    """A model whose per-example gradients have a closed form."""

    params: list[torch.Tensor]

    def per_example_grads(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """One (B, *p.shape) tensor per parameter for the training examples `idx`."""

    def evaluate(self) -> dict[str, float]:
        """Metrics on the full train and test sets (e.g. train_loss, test_acc)."""


def calibrate_sigma(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """σ for (ε, δ) after `steps` Poisson-subsampled Gaussian steps at rate q (RDP accountant, via dpopt)."""
    from dpopt import calibrate_noise

    return float(calibrate_noise(epsilon, delta, sample_rate, steps, accountant="rdp"))


def epsilon_spent(sigma: float, delta: float, sample_rate: float, steps: int) -> dict[str, float]:
    """ε at δ by accountant (dpopt.privacy_report: RDP and PLD) for the record."""
    from dpopt import privacy_report

    rep = privacy_report(sigma, sample_rate, steps, delta, accountants=("rdp", "pld"))
    return {k: float(v) for k, v in rep.epsilon.items()}


def build_optimizer(
    method: str,
    params: Sequence[torch.Tensor],
    hp: dict[str, float],
    *,
    sigma: float,
    batch_size: int,
    generator: torch.Generator,
) -> Any:
    """An Opacus ``DPOptimizer`` for `method` with hyperparameters `hp`.

    Baselines wrap stock torch optimizers (lr, clip, eps); "dp2-rmsprop"/"dp2-adagrad" are dpopt's DP² proper
    (lr = α1, clip = C1, lr2 = α2, clip2 = C2, eps, delay = s, beta); "dp2-delayed" is dpopt's
    noise-then-precondition ``DelayedPrecondRMSprop`` inside a plain ``DPOptimizer``.
    """
    from opacus.optimizers import DPOptimizer

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    params = list(params)
    lr, clip = float(hp["lr"]), float(hp["clip"])
    common = dict(noise_multiplier=sigma, max_grad_norm=clip, expected_batch_size=batch_size, generator=generator)
    if method in ("dp2-rmsprop", "dp2-adagrad"):
        from dpopt.dp2 import DP2Adagrad, DP2Config, DP2RMSprop

        cfg = DP2Config(
            delay=int(hp["delay"]),
            clip2=float(hp["clip2"]),
            lr2=float(hp["lr2"]),
            beta=float(hp.get("beta", 0.9)),
            eps=float(hp["eps"]),
            method=method.split("-")[1],
            check_finite=False,
        )
        cls = DP2RMSprop if method == "dp2-rmsprop" else DP2Adagrad
        return cls(torch.optim.SGD(params, lr=lr), config=cfg, **common)
    if method == "dp2-delayed":
        from dpopt.dp2 import DelayedPrecondRMSprop

        inner = DelayedPrecondRMSprop(
            params, lr, lr2=float(hp["lr2"]), delay=int(hp["delay"]), beta=float(hp.get("beta", 0.9)),
            eps=float(hp["eps"]),
        )
    elif method == "dp-sgd":
        inner = torch.optim.SGD(params, lr=lr)
    elif method == "dp-rmsprop":
        inner = torch.optim.RMSprop(params, lr=lr, alpha=float(hp.get("beta", 0.9)), eps=float(hp["eps"]))
    elif method == "dp-adam":
        inner = torch.optim.Adam(params, lr=lr, eps=float(hp["eps"]))
    else:
        inner = torch.optim.Adagrad(params, lr=lr, eps=float(hp["eps"]))
    return DPOptimizer(inner, **common)


@dataclass
class Curve:
    """Metrics recorded every `eval_every` steps (step 0 = initialization)."""

    steps: list[int]
    metrics: dict[str, list[float]]
    diverged: bool = False

    def final(self, key: str) -> float:
        return self.metrics[key][-1]


def poisson_batch(n: int, q: float, generator: torch.Generator, device: str = "cpu") -> torch.Tensor:
    """Indices of a Poisson-subsampled batch: each of the n examples independently with probability q."""
    return torch.nonzero(torch.rand(n, generator=generator, device=device) < q).squeeze(1)


def train(
    model: PerExampleModel,
    optimizer: Any,
    *,
    n: int,
    sample_rate: float,
    steps: int,
    eval_every: int,
    generator: torch.Generator,
    device: str = "cpu",
    on_step: Callable[[int], None] | None = None,
) -> Curve:
    """Run `steps` DP steps (Poisson batches, closed-form per-example gradients), evaluating every `eval_every`.

    A run whose parameters turn non-finite stops early and is marked diverged (its metrics are +inf losses and
    chance-level scores from then on), so a tuning grid can include aggressive learning rates safely.
    """
    curve = Curve(steps=[0], metrics={k: [v] for k, v in model.evaluate().items()})
    for t in range(1, steps + 1):
        idx = poisson_batch(n, sample_rate, generator, device)
        for p, g in zip(model.params, model.per_example_grads(idx)):
            p.grad_sample = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(t)
        if t % eval_every == 0 or t == steps:
            if not all(bool(torch.isfinite(p).all()) for p in model.params):
                curve.diverged = True
                break
            curve.steps.append(t)
            for k, v in model.evaluate().items():
                curve.metrics[k].append(v)
    if curve.diverged:
        _pad_diverged(curve, steps, eval_every)
    return curve


def _pad_diverged(curve: Curve, steps: int, eval_every: int) -> None:
    t = curve.steps[-1]
    while t < steps:
        t = min(t + eval_every, steps)
        curve.steps.append(t)
        for k, vals in curve.metrics.items():
            vals.append(math.inf if "loss" in k or "mse" in k else 0.0)


# --------------------------------------------------------------------------------------------------------------
# models


class LogisticRegression:
    """Binary logistic regression w·x + b on dense features; closed-form per-example gradients.

    Per-example gradient of the log loss: r_i·[x_i, 1] with r_i = sigmoid(w·x_i + b) − y_i.
    """

    def __init__(self, x_train, y_train, x_test=None, y_test=None, *, device: str = "cpu") -> None:
        self.x = torch.as_tensor(x_train, dtype=torch.float32, device=device)
        self.y = torch.as_tensor(y_train, dtype=torch.float32, device=device)
        self.xt = None if x_test is None else torch.as_tensor(x_test, dtype=torch.float32, device=device)
        self.yt = None if y_test is None else torch.as_tensor(y_test, dtype=torch.float32, device=device)
        self.w = torch.zeros(self.x.shape[1], device=device, requires_grad=True)
        self.b = torch.zeros(1, device=device, requires_grad=True)
        self.params = [self.w, self.b]

    def per_example_grads(self, idx: torch.Tensor) -> list[torch.Tensor]:
        x = self.x[idx]
        with torch.no_grad():
            r = torch.sigmoid(x @ self.w + self.b) - self.y[idx]
        return [r[:, None] * x, r[:, None]]

    @torch.no_grad()
    def _scores(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        z = x @ self.w + self.b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y).item()
        acc = ((z > 0).float() == y).float().mean().item()
        return loss, acc

    def evaluate(self) -> dict[str, float]:
        out = dict(zip(("train_loss", "train_acc"), self._scores(self.x, self.y)))
        if self.xt is not None:
            out.update(zip(("test_loss", "test_acc"), self._scores(self.xt, self.yt)))
        return out


class MatrixFactorization:
    """Ratings r̂(u, i) = U_u·V_i (the DP² paper's MovieLens model, no bias terms); loss (r̂ − r)².

    Per-example gradients are dense (B, rows, k) tensors with one non-zero row each (what Opacus' embedding
    grad sampler produces): 2e·V_i in row u of U and 2e·U_u in row i of V, e = r̂ − r.
    """

    def __init__(self, data, *, dim: int, init_scale: float, seed: int, device: str = "cpu") -> None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        as_long = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)  # noqa: E731
        self.u, self.i = as_long(data.train_users), as_long(data.train_items)
        self.r = torch.as_tensor(data.train_ratings, dtype=torch.float32, device=device)
        self.ut, self.it = as_long(data.test_users), as_long(data.test_items)
        self.rt = torch.as_tensor(data.test_ratings, dtype=torch.float32, device=device)
        self.U = (init_scale * torch.randn(data.n_users, dim, generator=g)).to(device).requires_grad_()
        self.V = (init_scale * torch.randn(data.n_items, dim, generator=g)).to(device).requires_grad_()
        self.params = [self.U, self.V]

    def per_example_grads(self, idx: torch.Tensor) -> list[torch.Tensor]:
        u, i = self.u[idx], self.i[idx]
        with torch.no_grad():
            uu, vv = self.U[u], self.V[i]
            e2 = 2.0 * ((uu * vv).sum(1) - self.r[idx])
            b = torch.arange(len(idx), device=idx.device)
            gu = torch.zeros(len(idx), *self.U.shape, device=idx.device)
            gv = torch.zeros(len(idx), *self.V.shape, device=idx.device)
            gu[b, u] = e2[:, None] * vv
            gv[b, i] = e2[:, None] * uu
        return [gu, gv]

    @torch.no_grad()
    def _mse(self, u: torch.Tensor, i: torch.Tensor, r: torch.Tensor) -> float:
        return ((self.U[u] * self.V[i]).sum(1) - r).pow(2).mean().item()

    def evaluate(self) -> dict[str, float]:
        return {"train_mse": self._mse(self.u, self.i, self.r), "test_mse": self._mse(self.ut, self.it, self.rt)}


def preconditioner_snr(x: torch.Tensor, y: torch.Tensor, *, clip: float, sigma: float, batch_size: int,
                       delay: int) -> dict[str, float]:
    """How well DP²'s averaged phase-A gradient can estimate the coordinate scales, for logistic regression at w = 0.

    Signal: |mean_i clip(g_i, C1)_j| per coordinate j; noise: the std of the privacy noise in the mean of `delay`
    noisy gradients, σ·C1 / (B·√s). A preconditioner built from noise (SNR ≪ 1) is isotropic on average and DP²'s
    phase B degenerates to rescaled DP-SGD.
    """
    x = torch.as_tensor(x).float()
    g = (0.5 - torch.as_tensor(y).float())[:, None] * x
    f = (clip / (g.norm(dim=1) + 1e-6)).clamp(max=1.0)
    signal = (f[:, None] * g).mean(0).abs()
    noise = sigma * clip / (batch_size * math.sqrt(delay))
    q = torch.quantile(signal.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return {"noise_std": noise, "snr_q10": q[0].item() / noise, "snr_median": q[1].item() / noise,
            "snr_q90": q[2].item() / noise}
