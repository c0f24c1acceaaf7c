"""DP² (delayed-preconditioner) optimizers for Opacus, DP baselines (incl. bias-corrected DP-Adam) and privacy
accounting reports.

Public names are imported lazily (Opacus is slow to import), each module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DP2RMSprop": "dpopt.dp2",
    "DP2Adagrad": "dpopt.dp2",
    "DelayedPrecondRMSprop": "dpopt.dp2",
    "DP2Config": "dpopt.dp2",
    "NonFiniteGradientError": "dpopt.dp2",
    "DPAdamBC": "dpopt.adam_bc",
    "PrivacyEngine": "dpopt.engine",
    "privacy_report": "dpopt.accounting",
    "calibrate_noise": "dpopt.accounting",
    "BudgetGuard": "dpopt.guard",
    "BudgetExhaustedError": "dpopt.guard",
    "PrivacyReport": "dpopt.accounting",
    "epsilon_curve": "dpopt.accounting",
    "history_epsilon": "dpopt.accounting",
    "make_dp_training": "dpopt.baselines",
    "make_optimizer": "dpopt.baselines",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dpopt' has no attribute {name!r}")
