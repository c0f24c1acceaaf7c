"""``dpopt.PrivacyEngine``: Opacus' engine, extended so ``make_private`` can build a DP² optimizer.

Opacus has no argument for a custom ``DPOptimizer`` class; its own research optimizers subclass
``PrivacyEngine`` and override ``_prepare_optimizer``. We do the same, and add the checks DP² needs:
flat clipping, a non-distributed model, a grad-sample mode that materializes per-sample gradients
("hooks", "functorch", "ew", or "no_op" when the caller sets ``p.grad_sample`` itself), and Poisson sampling
under a DP claim. With ``grad_sample_mode="no_op"`` (the caller sets ``p.grad_sample``) per-sample gradients
may be row-sparse COO tensors (embedding tables, sparse features), clipped without densifying. The default
accountant is Opacus' (PRV), so swapping ``opacus.PrivacyEngine`` for this one
does not change σ or ε.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import torch
from opacus import PrivacyEngine as _OpacusPrivacyEngine
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from opacus.validators.errors import UnsupportedModuleError
from torch import nn
from torch.utils.data import DataLoader

from dpopt._clip import SparseAwareDPOptimizer
from dpopt.dp2 import DP2Adagrad, DP2Config, DP2RMSprop

__all__ = ["PrivacyEngine", "DP2_GRAD_SAMPLE_MODES"]

DP2_GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew", "no_op")
_DP2_CLASSES = {"rmsprop": DP2RMSprop, "adagrad": DP2Adagrad}


class PrivacyEngine(_OpacusPrivacyEngine):
    """Opacus ``PrivacyEngine`` whose ``make_private``/``make_private_with_epsilon`` take ``dp2=DP2Config(...)``.

    With ``dp2=None`` it behaves like Opacus' engine (any stock optimizer, e.g. DP-Adam or
    :class:`~dpopt.delayed.DelayedPrecondRMSprop`, every grad-sample mode; the same default accountant, PRV),
    except that it refuses ``poisson_sampling=False`` unless ``allow_non_poisson=True`` is given. After
    ``make_private`` the engine records the loader's ``sample_rate`` (q = 1/len(data_loader)), which
    :class:`~dpopt.guard.BudgetGuard` reads.
    With a ``DP2Config`` the wrapped optimizer must be ``torch.optim.SGD(params, lr=alpha1)`` and
    ``max_grad_norm`` is C1; the returned optimizer is a :class:`~dpopt.dp2.DP2RMSprop` or
    :class:`~dpopt.dp2.DP2Adagrad` (``config.method``).

    Example::

        engine = PrivacyEngine()
        model, opt, loader = engine.make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
            noise_multiplier=1.0, max_grad_norm=0.5, dp2=DP2Config(delay=195, clip2=5.0, lr2=3.0, eps=1e-7))
    """

    def __init__(self, *, accountant: str = "prv", secure_mode: bool = False) -> None:
        if accountant not in ("prv", "rdp", "gdp"):
            raise ValueError(f"accountant must be 'rdp', 'prv' or 'gdp', got {accountant!r}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            super().__init__(accountant=accountant, secure_mode=secure_mode)
        self._dp2: DP2Config | None = None
        self._steps_per_epoch: int | None = None
        self.poisson_sampling = True
        self.sample_rate: float | None = None

    def _prepare_optimizer(
        self,
        *,
        optimizer: torch.optim.Optimizer,
        noise_multiplier: float,
        max_grad_norm: float | list[float],
        expected_batch_size: int,
        loss_reduction: str = "mean",
        distributed: bool = False,
        clipping: str = "flat",
        noise_generator: torch.Generator | None = None,
        grad_sample_mode: str = "hooks",
        **kwargs: Any,
    ) -> DPOptimizer:
        """Build the stock Opacus optimizer, or a DP² one when ``make_private`` was given a ``DP2Config``."""
        if self._dp2 is None and grad_sample_mode == "no_op" and clipping == "flat" and not distributed:
            if isinstance(optimizer, DPOptimizer):
                optimizer = optimizer.original_optimizer
            return SparseAwareDPOptimizer(
                optimizer,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                expected_batch_size=expected_batch_size,
                loss_reduction=loss_reduction,
                generator=self.secure_rng if self.secure_mode else noise_generator,
                secure_mode=self.secure_mode,
                **kwargs,
            )
        if self._dp2 is None:
            return super()._prepare_optimizer(
                optimizer=optimizer,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                expected_batch_size=expected_batch_size,
                loss_reduction=loss_reduction,
                distributed=distributed,
                clipping=clipping,
                noise_generator=noise_generator,
                grad_sample_mode=grad_sample_mode,
                **kwargs,
            )
        if isinstance(optimizer, DPOptimizer):
            optimizer = optimizer.original_optimizer
        if distributed:
            raise ValueError("DP² supports non-distributed training only; unwrap the DDP/FSDP model")
        generator = self.secure_rng if self.secure_mode else noise_generator
        cls = _DP2_CLASSES[self._dp2.method]
        kwargs.setdefault("steps_per_epoch", self._steps_per_epoch)
        return cls(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            config=self._dp2,
            loss_reduction=loss_reduction,
            generator=generator,
            secure_mode=self.secure_mode,
            **kwargs,
        )

    def make_private(
        self,
        *,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: DataLoader,
        noise_multiplier: float,
        max_grad_norm: float | list[float],
        dp2: DP2Config | None = None,
        poisson_sampling: bool = True,
        allow_non_poisson: bool = False,
        clipping: str = "flat",
        grad_sample_mode: str = "hooks",
        **kwargs: Any,
    ) -> tuple:
        """Opacus ``make_private`` plus ``dp2`` (a :class:`DP2Config` selects DP² proper).

        Returns ``(module, optimizer, data_loader)``, or with ``grad_sample_mode="ghost"`` (stock optimizers
        only) ``(module, optimizer, criterion, data_loader)`` as in Opacus. Other keyword arguments
        (``criterion``, ``loss_reduction``, ``noise_generator``, ``batch_first``, ...) go to Opacus.
        """
        _check_sigma(noise_multiplier)
        if dp2 is not None:
            if not isinstance(dp2, DP2Config):
                raise ValueError(f"dp2 must be a dpopt.DP2Config or None, got {type(dp2).__name__}")
            if grad_sample_mode not in DP2_GRAD_SAMPLE_MODES:
                raise ValueError(
                    f"DP² preconditions each example's gradient before clipping, which needs materialized "
                    f"per-sample gradients: grad_sample_mode must be one of {DP2_GRAD_SAMPLE_MODES}, got "
                    f"{grad_sample_mode!r}. For ghost clipping use dpopt.DelayedPrecondRMSprop as the optimizer "
                    "(noise-then-precondition, works with every mode) and dp2=None"
                )
            if clipping != "flat":
                raise ValueError(f"DP² uses flat clipping (one C1/C2 over the whole model), got clipping={clipping!r}")
        if not poisson_sampling:
            if not allow_non_poisson:
                raise ValueError(
                    "poisson_sampling=False: the accountant's ε assumes Poisson-subsampled batches, so it would "
                    "not be a guarantee for this loader. Use poisson_sampling=True (default), or pass "
                    "allow_non_poisson=True to train anyway and report the shuffled-order ε from "
                    "dpopt.privacy_report(...).epsilon_shuffled"
                )
            warnings.warn(
                "poisson_sampling=False: engine.get_epsilon() reports the Poisson-sampling ε, which is not a "
                "guarantee for shuffled batches; use dpopt.privacy_report(...).epsilon_shuffled",
                UserWarning,
                stacklevel=2,
            )
        if poisson_sampling and grad_sample_mode == "ew":
            _warn_empty_batches(data_loader)
        self.poisson_sampling = poisson_sampling
        self._steps_per_epoch = len(data_loader)
        self._dp2 = None if dp2 is None else dp2.resolve(self._steps_per_epoch)
        self.sample_rate = 1 / len(data_loader)
        try:
            return super().make_private(
                module=module,
                optimizer=optimizer,
                data_loader=data_loader,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                poisson_sampling=poisson_sampling,
                clipping=clipping,
                grad_sample_mode=grad_sample_mode,
                **kwargs,
            )
        except UnsupportedModuleError as err:
            raise ValueError(
                f"Opacus cannot compute per-sample gradients for this model: {err}. Replace the layer "
                "(opacus.validators.ModuleValidator.fix(model) swaps BatchNorm for GroupNorm) or use "
                "grad_sample_mode='functorch' for layers without a registered grad sampler"
            ) from err
        finally:
            self._dp2 = None
            self._steps_per_epoch = None

    def make_private_with_epsilon(
        self,
        *,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: DataLoader,
        target_epsilon: float,
        target_delta: float,
        epochs: int,
        max_grad_norm: float | list[float],
        dp2: DP2Config | None = None,
        epsilon_tolerance: float = 0.01,
        **kwargs: Any,
    ) -> tuple:
        """``make_private`` with σ calibrated (by this engine's accountant) so that ``epochs`` epochs of
        Poisson sampling at q = 1/len(data_loader) spend at most ``target_epsilon`` at ``target_delta``."""
        if not target_epsilon > 0:
            raise ValueError(f"target_epsilon must be > 0, got {target_epsilon!r}")
        if not 0 < target_delta < 1:
            raise ValueError(f"target_delta must be in (0, 1), got {target_delta!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
            raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
        epochs = int(epochs)
        if dp2 is not None and isinstance(dp2, DP2Config):
            dp2 = dp2.resolve(len(data_loader))
            if dp2.delay >= epochs * len(data_loader):
                warnings.warn(
                    f"DP² delay s = {dp2.delay} steps >= the whole run ({epochs} epochs × {len(data_loader)} steps): "
                    "training never leaves phase A, i.e. it is plain DP-SGD. Use a smaller delay or delay_epochs",
                    UserWarning,
                    stacklevel=2,
                )
        if len(self.accountant) > 0:
            warnings.warn(
                "make_private_with_epsilon with budget already spent: σ is calibrated from zero, so the "
                "total ε will exceed target_epsilon",
                UserWarning,
                stacklevel=2,
            )
        try:
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=target_delta,
                sample_rate=1 / len(data_loader),
                epochs=epochs,
                accountant=self.accountant.mechanism(),
                epsilon_tolerance=epsilon_tolerance,
            )
        except Exception as err:  # Opacus/PRV root finding: "budget is too low", brentq brackets, ...
            raise ValueError(
                f"cannot calibrate σ for target_epsilon={target_epsilon:g} at target_delta={target_delta:g} over "
                f"{epochs} epochs of q = 1/{len(data_loader)} with the {self.accountant.mechanism()} accountant "
                f"({type(err).__name__}: {err}). A target this small needs more noise than is practical and a "
                "large one less than can be calibrated: change target_epsilon, epochs or the batch size"
            ) from err
        return self.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=data_loader,
            noise_multiplier=sigma,
            max_grad_norm=max_grad_norm,
            dp2=dp2,
            **kwargs,
        )


def _warn_empty_batches(data_loader: DataLoader) -> None:
    """ExpandedWeights ("ew") raises on an empty batch; Poisson sampling draws one with probability (1-q)^N."""
    try:
        n = len(data_loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return
    q = 1 / len(data_loader)
    per_epoch = len(data_loader) * (1 - q) ** n
    if per_epoch > 1e-3:
        warnings.warn(
            f"grad_sample_mode='ew' fails on an empty Poisson batch (RuntimeError 'Batch size must be positive'), "
            f"and this loader draws one with probability {(1 - q) ** n:.2g} per step ({per_epoch:.2g} per epoch). "
            "Use grad_sample_mode='hooks' or 'functorch' (an empty batch then takes a noise-only step), a larger "
            "batch, or rand_on_empty=True",
            UserWarning,
            stacklevel=3,
        )


def _check_sigma(noise_multiplier: float) -> None:
    if not (noise_multiplier >= 0 and noise_multiplier < float("inf")):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
