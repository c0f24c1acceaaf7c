"""``DelayedPrecondRMSprop``: DP²'s delayed preconditioner applied after the noise ("noise, then precondition").

The authors' ablation of DP² (Li et al., ICLR 2023): a plain ``torch.optim.Optimizer`` that only ever sees the
privatized gradient, so it runs under any Opacus ``DPOptimizer`` and every grad-sample mode (ghost clipping
included) with DP-SGD's accounting, at the cost of clipping raw rather than preconditioned gradients.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from dpopt.dp2 import DP2Config, NonFiniteGradientError, _finite_positive

__all__ = ["DelayedPrecondRMSprop"]


class DelayedPrecondRMSprop(Optimizer):
    """Delayed-preconditioner RMSProp applied AFTER privatization ("noise, then precondition").

    Update on the (already privatized) gradient g̃ = p.grad, counting calls to ``step()``::

        phase A (t mod 2s < s): w -= lr·g̃ ; G += g̃ ; at the phase end v = β v + (1-β)(G/k)², G = 0
        phase B:                w -= lr2·g̃ / (√v + eps)

    Everything is a function of released gradients, so wrapping it in any Opacus ``DPOptimizer`` (every
    grad-sample mode, ghost clipping included) keeps DP-SGD's guarantee. Unlike :class:`DP2RMSprop`, the clip
    norm is the same in both phases and applies to raw per-sample gradients, so preconditioned directions get
    the raw-geometry noise: the authors' ablation, which the paper reports loses some utility.

    An LR scheduler that sets a group's ``lr`` to f·lr scales ``lr2`` by the same f. A non-finite gradient
    raises :class:`NonFiniteGradientError` before any parameter, G, v or counter changes (the wrapping
    ``DPOptimizer`` has already added noise and accounted that release).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        lr2: float | None = None,
        delay: int | None = None,
        beta: float = 0.9,
        eps: float = 1e-7,
        weight_decay: float = 0.0,
    ) -> None:
        if not _finite_positive(lr):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real) or not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        cfg = DP2Config(delay=delay, lr2=lr2, beta=beta, eps=eps).resolve()  # DP²'s validation and default
        lr2 = float(lr) if cfg.lr2 is None else cfg.lr2
        defaults = dict(lr=float(lr), lr2=lr2, delay=cfg.delay, beta=cfg.beta, eps=cfg.eps,
                        weight_decay=float(weight_decay))
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.setdefault("dp2_step", 0)
            group.setdefault("dp2_count", 0)
            group.setdefault("dp2_lr1", group["lr"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update on p.grad; refreshes v at the end of each phase A."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            t = int(self.param_groups[0]["dp2_step"])
            raise NonFiniteGradientError(
                f"non-finite (privatized) gradient at step {t}: the model, G, v and the step counter are unchanged; "
                "the wrapping DPOptimizer already accounted this release (ε counts it). Check the loss, inputs, lr"
            )
        for group in self.param_groups:
            s, t = group["delay"], int(group["dp2_step"])
            adaptive = (t % (2 * s)) >= s
            last_a = (t % (2 * s)) == s - 1
            k = int(group["dp2_count"]) + (0 if adaptive else 1)
            lr2 = group["lr2"] * group["lr"] / group["dp2_lr1"]  # a schedule on lr scales lr2 alike
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                st = self.state[p]
                if not st:
                    st["G"] = torch.zeros_like(p)
                    st["v"] = torch.zeros_like(p)
                if adaptive:
                    d = st["v"].sqrt().add_(group["eps"])
                    upd = g / d
                    lr = lr2
                else:
                    st["G"].add_(g)
                    if last_a:
                        st["v"].mul_(group["beta"]).addcmul_(st["G"], st["G"], value=(1 - group["beta"]) / (k * k))
                        st["G"].zero_()
                    upd = g
                    lr = group["lr"]
                if group["weight_decay"]:
                    upd = upd.add(p, alpha=group["weight_decay"])
                p.add_(upd, alpha=-lr)
            group["dp2_count"] = 0 if (adaptive or last_a) else k
            group["dp2_step"] = t + 1
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a ``state_dict`` of this class; another optimizer's checkpoint is a clear ValueError."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        need = ("dp2_step", "dp2_count", "lr2", "delay")
        if not groups or any(k not in g for g in groups for k in need) or any("dp2_method" in g for g in groups):
            raise ValueError(
                "this checkpoint was not saved by DelayedPrecondRMSprop (its param groups lack "
                f"{list(need)} or belong to DP² proper): load it into the optimizer that saved it"
            )
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group.setdefault("dp2_lr1", group["lr"])
