"""DP² (Li et al., ICLR 2023, arXiv 2212.00309): adaptive DP optimization with delayed preconditioners.

DP² alternates two phases of ``s`` real optimizer steps each (the step counter ``t`` runs across epochs)::

    phase A (t mod 2s < s):  g̃ = (Σ_i clip(g_i, C1) + N(0, σ²C1²)) / B ;  w -= α1·g̃ ;  G += g̃ ; k += 1
                             last step of phase A:  v = β·v + (1-β)·(G/k)²   (Adagrad: v += (G/k)²) ; G = k = 0
    phase B (otherwise):     g̃ = (Σ_i clip(g_i / (√v + ε), C2) + N(0, σ²C2²)) / B ;  w -= α2·g̃   (v frozen)

The preconditioner is built only from privatized phase-A gradients averaged over ``s`` steps (less noisy, a
little stale), so it is post-processing: every step is one subsampled Gaussian release with the same σ and the
accounting is DP-SGD's. In phase B each example's gradient is preconditioned *before* clipping and noise.

Two implementations:

* :class:`DP2RMSprop` / :class:`DP2Adagrad` — the paper's method, as Opacus ``DPOptimizer`` subclasses. They
  need per-sample gradients (grad-sample modes "hooks", "functorch", "ew") and wrap a plain ``torch.optim.SGD``
  whose ``lr`` is α1.
* :class:`DelayedPrecondRMSprop` — "noise, then precondition" (the authors' ablation): a plain
  ``torch.optim.Optimizer`` that divides the already privatized gradient by the delayed √v+ε in phase B. It
  works under any Opacus ``DPOptimizer`` and every grad-sample mode, ghost clipping included, but clips all
  steps with the same C in the raw geometry, which the paper reports costs utility.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch.optim import Optimizer

__all__ = [
    "DP2Config",
    "DP2RMSprop",
    "DP2Adagrad",
    "DelayedPrecondRMSprop",
    "NonFiniteGradientError",
]


class NonFiniteGradientError(FloatingPointError):
    """A per-sample gradient held NaN or inf; the step was stopped before it could touch the model or v."""


@dataclass(frozen=True)
class DP2Config:
    """DP² hyperparameters beyond DP-SGD's (σ, C1 = ``max_grad_norm``, α1 = the SGD optimizer's ``lr``).

    Attributes:
        delay: s, real optimizer steps per phase (s >= 1). The paper's IMDB setting is half an epoch.
        clip2: C2, the clip norm of preconditioned per-sample gradients in phase B (> 0); typically ~10·C1.
        lr2: α2, the phase-B learning rate (> 0), or None to keep α1. Typically much larger than α1.
        beta: RMSProp decay β in [0, 1) for the preconditioner refresh (ignored by the Adagrad variant).
        eps: ε in √v + ε (> 0, the denominator constant, not a privacy ε).
        method: "rmsprop" (v = βv + (1-β)(G/k)²) or "adagrad" (v += (G/k)²).
        check_finite: stop a step whose per-sample gradients are NaN/inf (one host sync per step).
    """

    delay: int = 100
    clip2: float = 1.0
    lr2: float | None = None
    beta: float = 0.9
    eps: float = 1e-7
    method: str = "rmsprop"
    check_finite: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.delay, bool) or not isinstance(self.delay, int) or self.delay < 1:
            raise ValueError(f"delay (s) must be an integer >= 1, got {self.delay!r}")
        if not (self.clip2 > 0 and self.clip2 < float("inf")):
            raise ValueError(f"clip2 (C2) must be a finite number > 0, got {self.clip2!r}")
        if self.lr2 is not None and not (self.lr2 > 0 and self.lr2 < float("inf")):
            raise ValueError(f"lr2 (alpha2) must be a finite number > 0 or None, got {self.lr2!r}")
        if not (0.0 <= self.beta < 1.0):
            raise ValueError(f"beta must be in [0, 1), got {self.beta!r}")
        if not (self.eps > 0 and self.eps < float("inf")):
            raise ValueError(f"eps must be a finite number > 0, got {self.eps!r}")
        if self.method not in ("rmsprop", "adagrad"):
            raise ValueError(f"method must be 'rmsprop' or 'adagrad', got {self.method!r}")


def _check_sgd(optimizer: Optimizer) -> None:
    """DP²'s update is w -= α·g̃; only momentum-free SGD applies exactly that to the privatized gradient."""
    if not isinstance(optimizer, torch.optim.SGD):
        raise ValueError(
            f"DP² wraps torch.optim.SGD (its lr is alpha1), got {type(optimizer).__name__}; pass "
            "torch.optim.SGD(params, lr=alpha1) and set the phase-B rate with DP2Config(lr2=...)"
        )
    for group in optimizer.param_groups:
        if group.get("momentum", 0) != 0 or group.get("nesterov", False):
            raise ValueError(f"DP² needs SGD with momentum=0, got momentum={group.get('momentum')}")


def _scaled_sq_norms(flat: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """‖g_i ⊙ scale‖² = Σ_j g_ij² scale_j² for each row g_i of ``flat`` (B × P).

    On CPU this runs in column blocks of ~2^20 elements (g² block, then a matrix-vector product with
    scale²), so no B × P temporary is allocated and phase B costs about what phase A's plain norm pass
    costs. On GPUs, where launches cost more than bandwidth, it is one fused expression.
    """
    n, width = flat.shape
    if flat.device.type != "cpu" or n * width <= 1 << 20:
        return torch.linalg.vector_norm(flat * scale, dim=1) ** 2
    block = max(1, (1 << 20) // n)
    scale2 = scale * scale
    out = torch.zeros(n, dtype=flat.dtype, device=flat.device)
    for a in range(0, width, block):
        part = flat[:, a : a + block]
        out.addmv_(part * part, scale2[a : a + block])
    return out


class DP2RMSprop(DPOptimizer):
    """DP²-RMSProp: Opacus ``DPOptimizer`` with per-sample preconditioning in phase B (see module docstring).

    ``max_grad_norm`` is C1; the wrapped ``torch.optim.SGD``'s ``lr`` is α1; ``config`` holds s, C2, α2, β, ε.
    Per-parameter G and v live in ``optimizer.state[p]`` ("dp2_G", "dp2_v"); the step counter, the phase-A
    count k and α1 live in each param group ("dp2_step", "dp2_count", "dp2_lr1"), so Opacus' ``state_dict``
    delegation to the wrapped optimizer checkpoints all DP² state. Skipped (virtual) steps of Opacus'
    ``BatchMemoryManager`` only accumulate clipped gradients and never advance the phase.
    The optimizer sets each group's ``lr`` to α1 or α2 before every step; to schedule α1, change the
    group's "dp2_lr1" (a scheduler that writes ``lr`` would be overridden).
    """

    _METHOD = "rmsprop"

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int | None,
        config: DP2Config | None = None,
        loss_reduction: str = "mean",
        generator: torch.Generator | None = None,
        secure_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        config = DP2Config(method=self._METHOD) if config is None else config
        if config.method != self._METHOD:
            raise ValueError(
                f"{type(self).__name__} needs DP2Config(method={self._METHOD!r}), got method={config.method!r}"
            )
        if not isinstance(max_grad_norm, int | float) or not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm (C1) must be a number > 0 (flat clipping), got {max_grad_norm!r}")
        if not noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier!r}")
        _check_sgd(optimizer)
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=float(max_grad_norm),
            expected_batch_size=expected_batch_size,
            loss_reduction=loss_reduction,
            generator=generator,
            secure_mode=secure_mode,
            **kwargs,
        )
        self.config = config
        self.clip1 = float(max_grad_norm)
        for group in self.original_optimizer.param_groups:
            group.setdefault("dp2_lr1", group["lr"])
            group.setdefault("dp2_step", 0)
            group.setdefault("dp2_count", 0)
        for p in self.params:
            st = self.original_optimizer.state[p]
            st.setdefault("dp2_G", torch.zeros_like(p, memory_format=torch.preserve_format))
            st.setdefault("dp2_v", torch.zeros_like(p, memory_format=torch.preserve_format))

    # ----------------------------------------------------------------------------------------------------
    # phase bookkeeping
    @property
    def dp2_step(self) -> int:
        """Real (noised, accounted) steps taken so far; drives the phase schedule."""
        return int(self.original_optimizer.param_groups[0]["dp2_step"])

    @property
    def in_adaptive_phase(self) -> bool:
        """True in phase B (preconditioned, clip C2, lr α2) for the next real step."""
        s = self.config.delay
        return (self.dp2_step % (2 * s)) >= s

    def preconditioner(self, p: torch.Tensor) -> torch.Tensor:
        """D = √v + ε for parameter ``p`` (frozen during phase B)."""
        return self.original_optimizer.state[p]["dp2_v"].sqrt().add_(self.config.eps)

    def _set_phase(self) -> bool:
        adaptive = self.in_adaptive_phase
        self.max_grad_norm = self.config.clip2 if adaptive else self.clip1  # noise std follows: σ·C
        for group in self.original_optimizer.param_groups:
            lr2 = self.config.lr2 if self.config.lr2 is not None else group["dp2_lr1"]
            group["lr"] = lr2 if adaptive else group["dp2_lr1"]
        return adaptive

    # ----------------------------------------------------------------------------------------------------
    # the DP stages
    def _get_flat_grad_sample(self, p: torch.Tensor) -> torch.Tensor:
        """Per-sample gradients g_i, preconditioned to g_i / (√v + ε) in phase B (what gets clipped)."""
        g = super()._get_flat_grad_sample(p)
        if self.in_adaptive_phase:
            g = g / self.preconditioner(p).to(g.dtype)
        return g

    def clip_and_accumulate(self) -> None:
        """p.summed_grad += Σ_i c_i·g_i/D with c_i = min(1, C/‖g/D‖_i) (D = 1 in phase A).

        Same result as clipping ``_get_flat_grad_sample`` but without materializing g_i/D for the sum:
        Σ_i c_i (g_i/D) = (Σ_i c_i g_i)/D since D does not depend on i. Raises NonFiniteGradientError before
        anything is accumulated if a per-sample gradient is NaN/inf.
        """
        params = self.params
        raw = [DPOptimizer._get_flat_grad_sample(self, p) for p in params]
        adaptive = self.in_adaptive_phase
        inv_d = [self.preconditioner(p).reciprocal_() for p in params] if adaptive else None
        n = len(raw[0])
        if n == 0:
            factor = torch.zeros((0,), device=raw[0].device)
        else:
            sq = []
            for i, g in enumerate(raw):
                flat = g.reshape(n, -1)
                if inv_d is None:
                    sq.append(torch.linalg.vector_norm(flat, dim=1).to(raw[0].device) ** 2)
                else:
                    sq.append(_scaled_sq_norms(flat, inv_d[i].reshape(-1).to(flat.dtype)).to(raw[0].device))
            norms = torch.stack(sq, dim=1).sum(dim=1).sqrt()
            if self.config.check_finite and not bool(torch.isfinite(norms).all()):
                bad = int((~torch.isfinite(norms)).sum())
                raise NonFiniteGradientError(
                    f"{bad} of {n} per-sample gradients are NaN/inf at DP² step {self.dp2_step}; the step was "
                    "stopped before updating the model or the preconditioner (check the loss, inputs and lr)"
                )
            factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        for i, p in enumerate(params):
            _check_processed_flag(p.grad_sample)
            g = raw[i].to(p.dtype)
            grad = torch.einsum("i,i...", factor.to(g.device, p.dtype), g)
            if inv_d is not None:
                grad = grad * inv_d[i].to(grad.dtype)
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)

    def _refresh(self, G: torch.Tensor, v: torch.Tensor, k: int) -> None:
        """RMSProp refresh: v = β v + (1-β) (G/k)²."""
        v.mul_(self.config.beta).addcmul_(G, G, value=(1.0 - self.config.beta) / (k * k))

    def _update_preconditioner(self) -> None:
        """Post-processing of the privatized phase-A gradient p.grad: G += g̃, refresh v at the phase end."""
        s = self.config.delay
        groups = self.original_optimizer.param_groups
        k = int(groups[0]["dp2_count"]) + 1
        for p in self.params:
            self.original_optimizer.state[p]["dp2_G"].add_(p.grad)
        if self.dp2_step % (2 * s) == s - 1:
            for p in self.params:
                st = self.original_optimizer.state[p]
                self._refresh(st["dp2_G"], st["dp2_v"], k)
                st["dp2_G"].zero_()
            k = 0
        for group in groups:
            group["dp2_count"] = k

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool:
        """Clip (phase geometry), and on a real step: noise σ·C, scale, account, then update G/v and t."""
        adaptive = self._set_phase()
        if not self.params:
            return True
        self.clip_and_accumulate()
        if self._check_skip_next_step():
            self._is_last_step_skipped = True
            return False
        self.add_noise()
        self.scale_grad()
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        if not adaptive:
            self._update_preconditioner()
        for group in self.original_optimizer.param_groups:
            group["dp2_step"] = int(group["dp2_step"]) + 1
        return True


class DP2Adagrad(DP2RMSprop):
    """DP²-AdaGrad: DP²-RMSProp with the refresh v += (G/k)² (a running sum, no decay)."""

    _METHOD = "adagrad"

    def _refresh(self, G: torch.Tensor, v: torch.Tensor, k: int) -> None:
        v.addcmul_(G, G, value=1.0 / (k * k))


class DelayedPrecondRMSprop(Optimizer):
    """Delayed-preconditioner RMSProp applied AFTER privatization ("noise, then precondition").

    Update on the (already privatized) gradient g̃ = p.grad, counting calls to ``step()``::

        phase A (t mod 2s < s): w -= lr·g̃ ; G += g̃ ; at the phase end v = β v + (1-β)(G/k)², G = 0
        phase B:                w -= lr2·g̃ / (√v + eps)

    Everything is a function of released gradients, so wrapping it in any Opacus ``DPOptimizer`` (every
    grad-sample mode, ghost clipping included) keeps DP-SGD's guarantee. Unlike :class:`DP2RMSprop`, the clip
    norm is the same in both phases and applies to raw per-sample gradients, so preconditioned directions get
    the raw-geometry noise: the authors' ablation, which the paper reports loses some utility.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        lr2: float | None = None,
        delay: int = 100,
        beta: float = 0.9,
        eps: float = 1e-7,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        DP2Config(delay=delay, lr2=lr2, beta=beta, eps=eps)  # the same validation as DP² proper
        lr2 = lr if lr2 is None else lr2
        defaults = dict(lr=lr, lr2=lr2, delay=delay, beta=beta, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        for group in self.param_groups:
            group.setdefault("dp2_step", 0)
            group.setdefault("dp2_count", 0)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update on p.grad; refreshes v at the end of each phase A."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            s, t = group["delay"], int(group["dp2_step"])
            adaptive = (t % (2 * s)) >= s
            last_a = (t % (2 * s)) == s - 1
            k = int(group["dp2_count"]) + (0 if adaptive else 1)
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not bool(torch.isfinite(g).all()):
                    raise NonFiniteGradientError(f"non-finite gradient at step {t}; v left untouched")
                st = self.state[p]
                if not st:
                    st["G"] = torch.zeros_like(p)
                    st["v"] = torch.zeros_like(p)
                if adaptive:
                    d = st["v"].sqrt().add_(group["eps"])
                    upd = g / d
                    lr = group["lr2"]
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
