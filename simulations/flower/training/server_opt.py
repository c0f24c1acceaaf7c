"""Server optimizers on the flat global model: FedAvg, FedAdam, and the DP² server optimizer.

Each takes the round's aggregate update ``delta`` (mean client change of the model, possibly noised) and moves the
global vector ``x``. All state is in `state_dict()`, so a checkpoint resumes the *same* trajectory.

- `FedAvgServer`: ``x += lr * delta`` (lr 1 is McMahan et al.'s FedAvg; DP-FedAvg with a server lr).
- `FedAdamServer`: Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), with the update and defaults of
  Flower's ``flwr.serverapp.strategy.FedAdam`` (eta 0.1, beta1 0.9, beta2 0.99, tau 1e-3, its bias-corrected
  step ``eta * sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1))`` at round t).
- `DP2Server`: the federated analogue of DP² (Li et al., ICLR 2023): `dpopt.DelayedPrecondRMSprop` driven by the
  pseudo-gradient ``-delta``. For ``delay`` rounds it takes plain DP-FedAvg steps and sums the noisy aggregates;
  then the preconditioner ``v = beta v + (1 - beta) (mean of the window)^2`` is refreshed, and for ``delay``
  rounds it steps ``lr2 * delta / (sqrt(v) + eps)``. Averaging s noisy aggregates before squaring divides the
  noise's share of v by s: the delayed preconditioner. It only post-processes released aggregates, so it costs no
  privacy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["ServerOptimizer", "FedAvgServer", "FedAdamServer", "DP2Server", "make_server_optimizer", "SERVER_OPTS"]


class ServerOptimizer:
    """Base: ``step(x, delta, round) -> new x`` on float64 numpy vectors; state_dict/load_state_dict."""

    name = "base"

    def step(self, x: np.ndarray, delta: np.ndarray, server_round: int) -> np.ndarray:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FedAvgServer(ServerOptimizer):
    name = "fedavg"

    def __init__(self, lr: float = 1.0) -> None:
        if not lr > 0:
            raise ValueError(f"server lr must be > 0, got {lr}")
        self.lr = float(lr)

    def step(self, x, delta, server_round):
        return x + self.lr * delta


class FedAdamServer(ServerOptimizer):
    name = "fedadam"

    def __init__(self, eta: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3) -> None:
        if not eta > 0 or not tau > 0 or not (0 <= beta_1 < 1 and 0 <= beta_2 < 1):
            raise ValueError(f"FedAdam needs eta > 0, tau > 0, betas in [0, 1); got {eta}, {tau}, {beta_1}, {beta_2}")
        self.eta, self.beta_1, self.beta_2, self.tau = float(eta), float(beta_1), float(beta_2), float(tau)
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def step(self, x, delta, server_round):
        if self.m is None:
            self.m, self.v = np.zeros_like(x), np.zeros_like(x)
        self.m = self.beta_1 * self.m + (1 - self.beta_1) * delta
        self.v = self.beta_2 * self.v + (1 - self.beta_2) * delta**2
        eta_t = self.eta * np.sqrt(1 - self.beta_2 ** (server_round + 1.0)) / (1 - self.beta_1 ** (server_round + 1.0))
        return x + eta_t * self.m / (np.sqrt(self.v) + self.tau)

    def state_dict(self):
        return {"m": None if self.m is None else self.m.copy(), "v": None if self.v is None else self.v.copy()}

    def load_state_dict(self, state):
        self.m, self.v = state["m"], state["v"]


class DP2Server(ServerOptimizer):
    name = "dp2"

    def __init__(self, dim: int, lr: float = 1.0, lr2: float | None = None, delay: int = 5, beta: float = 0.9,
                 eps: float = 1e-3) -> None:
        from dpopt.delayed import DelayedPrecondRMSprop  # DP²'s own delayed preconditioner, unchanged

        self._p = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))
        self.opt = DelayedPrecondRMSprop([self._p], lr=lr, lr2=lr2, delay=delay, beta=beta, eps=eps)

    def step(self, x, delta, server_round):
        with torch.no_grad():
            self._p.copy_(torch.from_numpy(np.asarray(x, dtype=np.float64)))
        self._p.grad = torch.from_numpy(-np.asarray(delta, dtype=np.float64)).clone()
        self.opt.step()
        return self._p.detach().numpy().copy()

    @property
    def preconditioner(self) -> np.ndarray:
        st = self.opt.state.get(self._p, {})
        return st["v"].numpy().copy() if "v" in st else np.zeros(self._p.numel())

    def state_dict(self):
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, state):
        self.opt.load_state_dict(state["opt"])


SERVER_OPTS = ("fedavg", "fedadam", "dp2")


def make_server_optimizer(name: str, dim: int, *, lr: float, lr2: float | None = None, delay: int = 5,
                          beta: float = 0.9, eps: float = 1e-3, tau: float = 1e-3) -> ServerOptimizer:
    """The server optimizer called `name` (one of SERVER_OPTS)."""
    if name == "fedavg":
        return FedAvgServer(lr)
    if name == "fedadam":
        return FedAdamServer(eta=lr, tau=tau)
    if name == "dp2":
        return DP2Server(dim, lr=lr, lr2=lr2, delay=delay, beta=beta, eps=eps)
    raise ValueError(f"server optimizer must be one of {SERVER_OPTS}, got {name!r}")
