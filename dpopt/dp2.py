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

import dataclasses
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch.optim import Optimizer

from dpopt._clip import clip_factors, clipped_sum

__all__ = [
    "DP2Config",
    "DP2RMSprop",
    "DP2Adagrad",
    "NonFiniteGradientError",
]


class NonFiniteGradientError(FloatingPointError):
    """A gradient held NaN or inf; the step was stopped before it could touch the model, G or v.

    :class:`DP2RMSprop` raises it from per-sample gradients, before noise and accounting, and drops the whole
    logical batch (under ``BatchMemoryManager`` its remaining physical batches are ignored), so a caller that
    catches it and goes on continues with the next logical batch: no noisy release mixes two Poisson batches.
    :class:`DelayedPrecondRMSprop` raises it from the already privatized gradient: that release was made and is
    accounted (ε counts it, which is conservative), the model and its state are untouched.
    """


_DEFAULT_DELAY = 100


@dataclass(frozen=True)
class DP2Config:
    """DP² hyperparameters beyond DP-SGD's (σ, C1 = ``max_grad_norm``, α1 = the SGD optimizer's ``lr``).

    Attributes:
        delay: s, real optimizer steps per phase (an integer >= 1). None (the default) means 100 steps, with a
            warning: a run of at most s steps never leaves phase A (it is plain DP-SGD). The paper's IMDB
            setting is half an epoch (195 steps at B = 64).
        delay_epochs: s in epochs of the data loader instead (> 0; exclusive with ``delay``), resolved to
            ``max(1, round(delay_epochs · steps_per_epoch))`` by ``dpopt.PrivacyEngine.make_private``, which
            knows ``len(data_loader)``.
        clip2: C2, the clip norm of preconditioned per-sample gradients in phase B (> 0); typically ~10·C1.
        lr2: α2, the phase-B learning rate (> 0), or None to keep α1. Typically much larger than α1.
        beta: RMSProp decay β in [0, 1) for the preconditioner refresh (ignored by the Adagrad variant).
        eps: ε in √v + ε (> 0, the denominator constant, not a privacy ε).
        method: "rmsprop" (v = βv + (1-β)(G/k)²) or "adagrad" (v += (G/k)²).
        check_finite: stop a step whose per-sample gradients are NaN/inf (one host sync per step).
    """

    delay: int | None = None
    clip2: float = 1.0
    lr2: float | None = None
    beta: float = 0.9
    eps: float = 1e-7
    method: str = "rmsprop"
    check_finite: bool = True
    delay_epochs: float | None = None

    def __post_init__(self) -> None:
        if self.delay is not None:
            if isinstance(self.delay, bool) or not isinstance(self.delay, numbers.Integral) or self.delay < 1:
                raise ValueError(f"delay (s) must be an integer >= 1 (steps) or None, got {self.delay!r}")
            object.__setattr__(self, "delay", int(self.delay))
        if self.delay_epochs is not None:
            if self.delay is not None:
                raise ValueError("give delay (steps) or delay_epochs (epochs), not both")
            if not _finite_positive(self.delay_epochs):
                raise ValueError(f"delay_epochs must be a finite number > 0 or None, got {self.delay_epochs!r}")
            object.__setattr__(self, "delay_epochs", float(self.delay_epochs))
        if not _finite_positive(self.clip2):
            raise ValueError(f"clip2 (C2) must be a finite number > 0, got {self.clip2!r}")
        if self.lr2 is not None and not _finite_positive(self.lr2):
            raise ValueError(f"lr2 (alpha2) must be a finite number > 0 or None, got {self.lr2!r}")
        if isinstance(self.beta, bool) or not isinstance(self.beta, numbers.Real) or not (0.0 <= self.beta < 1.0):
            raise ValueError(f"beta must be in [0, 1), got {self.beta!r}")
        if not _finite_positive(self.eps):
            raise ValueError(f"eps must be a finite number > 0, got {self.eps!r}")
        if self.method not in ("rmsprop", "adagrad"):
            raise ValueError(f"method must be 'rmsprop' or 'adagrad', got {self.method!r}")
        for name in ("clip2", "lr2", "beta", "eps"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, float(value))

    def resolve(self, steps_per_epoch: int | None = None) -> DP2Config:
        """This config with ``delay`` in steps: from ``delay_epochs`` (needs ``steps_per_epoch``) or the default
        100 (with a warning that says how long phase A then lasts)."""
        if self.delay is not None:
            return self
        if self.delay_epochs is not None:
            if steps_per_epoch is None:
                raise ValueError(
                    "DP2Config(delay_epochs=...) needs the steps per epoch: build the optimizer with "
                    "dpopt.PrivacyEngine.make_private (it reads len(data_loader)) or pass steps_per_epoch="
                )
            delay = max(1, round(self.delay_epochs * steps_per_epoch))
            return dataclasses.replace(self, delay=delay, delay_epochs=None)
        span = f" (= {_DEFAULT_DELAY / steps_per_epoch:.3g} epochs of this data loader)" if steps_per_epoch else ""
        warnings.warn(
            f"DP2Config.delay not set: using s = {_DEFAULT_DELAY} steps per phase{span}. A run of at most "
            f"{_DEFAULT_DELAY} steps never leaves phase A, i.e. it is plain DP-SGD. Set delay= (steps) or "
            "delay_epochs= (the paper's IMDB setting is half an epoch)",
            UserWarning,
            stacklevel=3,
        )
        return dataclasses.replace(self, delay=_DEFAULT_DELAY)


def _finite_positive(x: object) -> bool:
    return not isinstance(x, bool) and isinstance(x, numbers.Real) and 0 < x < float("inf")


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


class DP2RMSprop(DPOptimizer):
    """DP²-RMSProp: Opacus ``DPOptimizer`` with per-sample preconditioning in phase B (see module docstring).

    ``max_grad_norm`` is C1; the wrapped ``torch.optim.SGD``'s ``lr`` is α1; ``config`` holds s, C2, α2, β, ε.
    Per-parameter G and v live in ``optimizer.state[p]`` ("dp2_G", "dp2_v"); the step counter, the phase-A
    count, the base α1 and the variant live in each param group ("dp2_step", "dp2_count", "dp2_lr1",
    "dp2_method"), so Opacus' ``state_dict`` delegation to the wrapped optimizer checkpoints all DP² state, and
    ``load_state_dict`` refuses a checkpoint of another optimizer. Skipped (virtual) steps of Opacus'
    ``BatchMemoryManager`` only accumulate clipped gradients and never advance the phase.

    Schedules are honoured: between steps each group's ``lr`` is the (scheduled) α1 and ``max_grad_norm`` the
    (scheduled) C1, so torch LR schedulers and Opacus' clip schedulers work as with DP-SGD; phase B uses α2 and
    C2 scaled by the same factors (lr / base α1, max_grad_norm / base C1). Noise schedulers change σ, which the
    accountant records per step.
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
        steps_per_epoch: int | None = None,
        **kwargs: Any,
    ) -> None:
        config = DP2Config(method=self._METHOD) if config is None else config
        if not isinstance(config, DP2Config):
            raise ValueError(f"config must be a dpopt.DP2Config, got {type(config).__name__}")
        if config.method != self._METHOD:
            raise ValueError(
                f"{type(self).__name__} needs DP2Config(method={self._METHOD!r}), got method={config.method!r}"
            )
        if not _finite_positive(max_grad_norm):
            raise ValueError(f"max_grad_norm (C1) must be a number > 0 (flat clipping), got {max_grad_norm!r}")
        if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, numbers.Real) or not (
            0 <= noise_multiplier < float("inf")
        ):
            raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
        _check_sgd(optimizer)
        super().__init__(
            optimizer,
            noise_multiplier=float(noise_multiplier),
            max_grad_norm=float(max_grad_norm),
            expected_batch_size=expected_batch_size,
            loss_reduction=loss_reduction,
            generator=generator,
            secure_mode=secure_mode,
            **kwargs,
        )
        self.config = config.resolve(steps_per_epoch)
        self.clip1 = float(max_grad_norm)
        self._discarding = False  # dropping the rest of a logical batch after a non-finite gradient
        for group in self.original_optimizer.param_groups:
            group.setdefault("dp2_lr1", group["lr"])
            group.setdefault("dp2_step", 0)
            group.setdefault("dp2_count", 0)
            group.setdefault("dp2_method", self._METHOD)
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

    def _enter_phase(self) -> tuple[float, list[float]]:
        """Set this step's clip norm and learning rates from the scheduled C1 and α1; return them for
        :meth:`_leave_phase`. Phase A keeps them; phase B uses C2·(C1_now/C1) and α2·(α1_now/α1)."""
        scheduled = (float(self.max_grad_norm), [float(g["lr"]) for g in self.original_optimizer.param_groups])
        if not _finite_positive(scheduled[0]):
            raise ValueError(
                f"max_grad_norm must be a number > 0 (flat clipping; a clip scheduler set {scheduled[0]!r})"
            )
        if self.in_adaptive_phase:
            self.max_grad_norm = self.config.clip2 * scheduled[0] / self.clip1  # noise std follows: σ·C
            for group, lr in zip(self.original_optimizer.param_groups, scheduled[1]):
                alpha2 = self.config.lr2 if self.config.lr2 is not None else group["dp2_lr1"]
                group["lr"] = alpha2 * lr / group["dp2_lr1"]
        return scheduled

    def _leave_phase(self, scheduled: tuple[float, list[float]]) -> None:
        self.max_grad_norm = scheduled[0]
        for group, lr in zip(self.original_optimizer.param_groups, scheduled[1]):
            group["lr"] = lr

    # ----------------------------------------------------------------------------------------------------
    # the DP stages
    def _raw_grad_sample(self, p: torch.Tensor) -> torch.Tensor:
        """p's per-sample gradients (dense, or row-sparse COO; several accumulated batches concatenated)."""
        gs = p.grad_sample
        if isinstance(gs, list) and gs and gs[0].is_sparse:
            return torch.cat(gs, dim=0)
        return DPOptimizer._get_flat_grad_sample(self, p)

    def _get_flat_grad_sample(self, p: torch.Tensor) -> torch.Tensor:
        """Per-sample gradients g_i, preconditioned to g_i / (√v + ε) in phase B (what gets clipped)."""
        g = self._raw_grad_sample(p)
        if not self.in_adaptive_phase:
            return g
        d = self.preconditioner(p)
        if g.is_sparse:
            g = g.coalesce()
            vals = g.values() / d[g.indices()[1]].to(g.dtype)
            return torch.sparse_coo_tensor(g.indices(), vals, g.shape)
        return g / d.to(g.dtype)

    def clip_and_accumulate(self) -> None:
        """p.summed_grad += Σ_i c_i·g_i/D with c_i = min(1, C/‖g/D‖_i) (D = 1 in phase A).

        Same result as clipping ``_get_flat_grad_sample`` but without materializing g_i/D for the sum:
        Σ_i c_i (g_i/D) = (Σ_i c_i g_i)/D since D does not depend on i. Per-sample gradients may be dense or
        row-sparse (``dpopt._clip``). Raises NonFiniteGradientError before anything is accumulated if a
        per-sample gradient is NaN/inf.
        """
        params = self.params
        raw = [self._raw_grad_sample(p) for p in params]
        inv_d = [self.preconditioner(p).reciprocal_() for p in params] if self.in_adaptive_phase else None
        norms, factor = clip_factors(raw, self.max_grad_norm, inv_d)
        if self.config.check_finite and len(norms) and not bool(torch.isfinite(norms).all()):
            bad = int((~torch.isfinite(norms)).sum())
            raise NonFiniteGradientError(
                f"{bad} of {len(norms)} per-sample gradients are NaN/inf at DP² step {self.dp2_step}; this logical "
                "batch was dropped (no noise, no accounting; under BatchMemoryManager its remaining physical "
                "batches are ignored) and the model, G and v are unchanged. Check the loss, inputs and lr"
            )
        for i, p in enumerate(params):
            _check_processed_flag(p.grad_sample)
            grad = clipped_sum(raw[i], factor, p.shape, p.dtype)
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

    def _drop_logical_batch(self) -> None:
        """Forget this physical batch and what its logical batch accumulated; take its skip signal off the
        queue and, if more physical batches of the same logical batch follow, ignore them too."""
        more = bool(self._check_skip_next_step())
        self._discarding = more
        self._is_last_step_skipped = False
        for p in self.params:
            p.summed_grad = None
            p.grad_sample = None

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool:
        """Clip (phase geometry), and on a real step: noise σ·C, scale, account, then update G/v and t."""
        if not self.params:
            return True
        if self._discarding:  # the rest of a logical batch that held a non-finite gradient
            self._drop_logical_batch()
            return False
        adaptive = self.in_adaptive_phase
        try:
            self.clip_and_accumulate()
        except NonFiniteGradientError:
            self._drop_logical_batch()
            raise
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

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One DP² step: the phase's C and α are set for the duration of the step only (schedules see C1, α1)."""
        if closure is not None:
            with torch.enable_grad():
                closure()
        scheduled = self._enter_phase()
        try:
            if self.pre_step():
                return self.original_optimizer.step()
            return None
        finally:
            self._leave_phase(scheduled)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a DP² ``state_dict``; a checkpoint of another optimizer (DP-SGD, DP-Adam, the other DP²
        variant) is refused with a ValueError instead of failing later with a KeyError."""
        _check_dp2_state(state_dict, self._METHOD, type(self).__name__)
        self.original_optimizer.load_state_dict(state_dict)


def _check_dp2_state(state: dict[str, Any], method: str, who: str) -> None:
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not groups:
        raise ValueError(f"{who}.load_state_dict needs an optimizer state_dict, got {type(state).__name__}")
    missing = [k for k in ("dp2_step", "dp2_count", "dp2_lr1") if any(k not in g for g in groups)]
    if any("lr2" in g and "delay" in g for g in groups):  # DelayedPrecondRMSprop's groups
        missing.append("dp2_method (it is a DelayedPrecondRMSprop checkpoint)")
    if missing:
        raise ValueError(
            f"this checkpoint was not saved by a DP² optimizer (its param groups lack {missing}): it comes from "
            f"another optimizer (e.g. DP-SGD or DP-Adam). Load it into that optimizer, or start {who} fresh and "
            "restore only the model's weights"
        )
    saved = {g.get("dp2_method", "rmsprop") for g in groups}
    if saved != {method}:
        raise ValueError(f"this checkpoint is a DP²-{saved.pop()} optimizer's; {who} is DP²-{method}")
    for idx, st in state.get("state", {}).items():
        if "dp2_G" not in st or "dp2_v" not in st:
            raise ValueError(f"this checkpoint's state for parameter {idx} has no DP² G/v (saved by another optimizer)")


class DP2Adagrad(DP2RMSprop):
    """DP²-AdaGrad: DP²-RMSProp with the refresh v += (G/k)² (a running sum, no decay)."""

    _METHOD = "adagrad"

    def _refresh(self, G: torch.Tensor, v: torch.Tensor, k: int) -> None:
        v.addcmul_(G, G, value=1.0 / (k * k))
