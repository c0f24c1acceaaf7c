"""DP-AdamBC: Adam whose second moment has the privacy noise's variance taken out (bias-corrected DP-Adam).

Tang, Panchenko, Chen, Wei, Liu, Daumé, "DP-AdamBC: Your DP-Adam Is Actually DP-SGD (Unless You Apply Bias
Correction)", AAAI 2024, arXiv 2312.14334; asked of Opacus in opacus#679. Under DP the optimizer sees
g̃ = ḡ + z with z ~ N(0, s² I), s = σ·C/B (the std of the noise in the averaged gradient), so Adam's second
moment estimates E[g̃²] = ḡ² + s²: when the noise dominates, √v ≈ s for every coordinate and Adam is DP-SGD with
step lr/s. The correction subtracts the known s² (public: σ, C and B are hyperparameters, so this is
post-processing of released gradients and costs no privacy)::

    m = β1 m + (1-β1) g̃ ;  v = β2 v + (1-β2) g̃² ;  m̂ = m / (1-β1^t) ;  v̂ = v / (1-β2^t)
    w -= lr · m̂ / sqrt(max(v̂ - s², γ'))

γ' (``eps_root``) keeps the denominator positive where the corrected estimate is below the noise floor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["DPAdamBC"]


class DPAdamBC(Optimizer):
    """Bias-corrected DP-Adam (see the module docstring); wrap it in an Opacus ``DPOptimizer``.

    ``noise_std`` is s = σ·C/B, the per-coordinate std of the privacy noise in the gradient this optimizer
    receives. :meth:`attach` keeps it equal to the wrapping ``DPOptimizer``'s current σ·C/B before every real
    step (so noise and clip schedulers are followed); ``dpopt.make_dp_training("dp-adam-bc", ...)`` does that.
    With ``noise_std = 0`` it is torch's Adam with ε inside the square root.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps_root: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        noise_std: float = 0.0,
    ) -> None:
        if not 0 < lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if not 0 < eps_root < math.inf:
            raise ValueError(f"eps_root (γ') must be a finite number > 0, got {eps_root!r}")
        if not 0 <= weight_decay < math.inf:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        if not 0 <= noise_std < math.inf:
            raise ValueError(f"noise_std (σ·C/B) must be a finite number >= 0, got {noise_std!r}")
        defaults = dict(lr=float(lr), betas=(float(betas[0]), float(betas[1])), eps_root=float(eps_root),
                        weight_decay=float(weight_decay), noise_std=float(noise_std))
        super().__init__(params, defaults)

    def attach(self, dp_optimizer: Any) -> None:
        """Before each real step of ``dp_optimizer`` (an Opacus ``DPOptimizer`` wrapping this optimizer), set
        ``noise_std`` to its σ·C / (expected batch size × accumulated passes) ("sum" loss reduction: σ·C)."""
        if getattr(dp_optimizer, "original_optimizer", None) is not self:
            raise ValueError("attach() needs the Opacus DPOptimizer that wraps this DPAdamBC")
        previous = getattr(dp_optimizer, "step_hook", None)

        def hook(opt: Any) -> None:
            std = float(opt.noise_multiplier) * float(opt.max_grad_norm)
            if opt.loss_reduction == "mean":
                std /= float(opt.expected_batch_size) * float(opt.accumulated_iterations)
            for group in self.param_groups:
                group["noise_std"] = std
            if previous is not None:
                previous(opt)

        dp_optimizer.attach_step_hook(hook)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One bias-corrected Adam update on p.grad."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            floor = group["noise_std"] ** 2
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                t = st["step"]
                st["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat = st["exp_avg"] / (1 - b1**t)
                v_hat = st["exp_avg_sq"] / (1 - b2**t)
                denom = (v_hat - floor).clamp_(min=group["eps_root"]).sqrt_()
                p.addcdiv_(m_hat, denom, value=-group["lr"])
        return loss
