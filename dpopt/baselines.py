"""DP baselines through Opacus with stock torch optimizers: DP-SGD, DP-Adam, DP-RMSProp, DP-Adagrad, and
bias-corrected DP-Adam (:class:`~dpopt.adam_bc.DPAdamBC`, Tang et al. 2024; opacus#679).

Each is Opacus' ``DPOptimizer`` (clip per example, add N(0, σ²C²), average) around the inner optimizer, so the
optimizer's moments are post-processing of privatized gradients. :func:`make_dp_training` also builds the two
DP² variants, so experiments can sweep all methods through one call::

    run = make_dp_training("dp-adam", model, loader, lr=1e-3, max_grad_norm=1.0, noise_multiplier=1.0)
    for x, y in run.data_loader: ...; run.optimizer.step(); eps = run.engine.get_epsilon(1e-5)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from dpopt.adam_bc import DPAdamBC
from dpopt.delayed import DelayedPrecondRMSprop
from dpopt.dp2 import DP2Config
from dpopt.engine import PrivacyEngine

__all__ = ["BASELINES", "METHODS", "DPTraining", "make_optimizer", "make_dp_training"]

BASELINES = ("dp-sgd", "dp-adam", "dp-adam-bc", "dp-rmsprop", "dp-adagrad")
METHODS = BASELINES + ("dp2-rmsprop", "dp2-adagrad", "dp2-noise-then-precond")


class DPTraining(NamedTuple):
    """What :func:`make_dp_training` returns: use ``module``/``optimizer``/``data_loader`` as usual."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: DataLoader
    engine: PrivacyEngine
    criterion: nn.Module | None = None  # Opacus' two-pass loss wrapper, only with grad_sample_mode="ghost"


def make_optimizer(
    name: str,
    params: Iterable[torch.Tensor],
    lr: float,
    *,
    eps: float | None = None,
    beta: float | None = None,
    weight_decay: float = 0.0,
    dp2: DP2Config | None = None,
) -> torch.optim.Optimizer:
    """The stock optimizer behind method ``name`` (before Opacus wraps it).

    ``eps``/``beta`` default to torch's (Adam: 1e-8, betas (0.9, 0.999); RMSprop: 1e-8, alpha 0.99;
    Adagrad: 1e-10; DP-AdamBC: γ' = 1e-8 inside the square root); ``beta`` is Adam's β2 or RMSprop's decay.
    DP² proper wraps SGD(lr = α1); the noise-then-precondition variant reads s, α2, β, ε from ``dp2`` (its
    ``delay`` in steps: resolve ``delay_epochs`` first with ``DP2Config.resolve``).
    """
    if name not in METHODS:
        raise ValueError(f"name must be one of {METHODS}, got {name!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if name in ("dp-sgd", "dp2-rmsprop", "dp2-adagrad"):
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    if name == "dp-adam":
        return torch.optim.Adam(
            params, lr=lr, eps=1e-8 if eps is None else eps, betas=(0.9, 0.999 if beta is None else beta),
            weight_decay=weight_decay,
        )
    if name == "dp-adam-bc":
        return DPAdamBC(
            params, lr=lr, eps_root=1e-8 if eps is None else eps, betas=(0.9, 0.999 if beta is None else beta),
            weight_decay=weight_decay,
        )
    if name == "dp-rmsprop":
        return torch.optim.RMSprop(
            params, lr=lr, eps=1e-8 if eps is None else eps, alpha=0.99 if beta is None else beta,
            weight_decay=weight_decay,
        )
    if name == "dp-adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=1e-10 if eps is None else eps, weight_decay=weight_decay)
    cfg = (dp2 or DP2Config()).resolve()
    return DelayedPrecondRMSprop(
        params, lr=lr, lr2=cfg.lr2, delay=cfg.delay, beta=cfg.beta, eps=cfg.eps, weight_decay=weight_decay
    )


def make_dp_training(
    name: str,
    module: nn.Module,
    data_loader: DataLoader,
    *,
    lr: float,
    max_grad_norm: float,
    noise_multiplier: float,
    dp2: DP2Config | None = None,
    eps: float | None = None,
    beta: float | None = None,
    weight_decay: float = 0.0,
    grad_sample_mode: str = "hooks",
    accountant: str = "prv",
    noise_generator: torch.Generator | None = None,
    criterion: nn.Module | None = None,
) -> DPTraining:
    """Wrap ``module``/``data_loader`` for method ``name`` in a fresh :class:`dpopt.PrivacyEngine`.

    ``max_grad_norm`` is C (C1 for DP²). For "dp2-rmsprop"/"dp2-adagrad", ``dp2`` gives s, C2, α2, β, ε
    (its ``method`` is set from the name; ``delay_epochs`` is resolved against ``len(data_loader)``). The data
    loader is replaced by Opacus' Poisson loader with q = 1/len(data_loader). The accountant defaults to
    Opacus' (PRV). For "dp-adam-bc" the inner :class:`~dpopt.adam_bc.DPAdamBC` follows the optimizer's σ·C/B.
    """
    if name in ("dp2-rmsprop", "dp2-adagrad"):
        if dp2 is None:
            raise ValueError(f"{name} needs dp2=DP2Config(delay=..., clip2=..., lr2=...)")
        method = name.split("-")[1]
        if dp2.method != method:
            dp2 = dataclasses.replace(dp2, method=method)
    elif name == "dp2-noise-then-precond" and dp2 is not None:
        dp2 = dp2.resolve(len(data_loader))
    optimizer = make_optimizer(
        name, module.parameters(), lr, eps=eps, beta=beta, weight_decay=weight_decay, dp2=dp2
    )
    engine = PrivacyEngine(accountant=accountant)
    extra = {} if criterion is None else {"criterion": criterion}
    out = engine.make_private(
        module=module,
        optimizer=optimizer,
        data_loader=data_loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        dp2=dp2 if name in ("dp2-rmsprop", "dp2-adagrad") else None,
        grad_sample_mode=grad_sample_mode,
        noise_generator=noise_generator,
        **extra,
    )
    gsm, opt, crit, loader = out if len(out) == 4 else (out[0], out[1], None, out[2])
    if isinstance(optimizer, DPAdamBC):
        optimizer.attach(opt)
    return DPTraining(gsm, opt, loader, engine, crit)
