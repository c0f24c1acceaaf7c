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
    "DelayedPrecondRMSprop": "dpopt.delayed",
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
    if name == "__version__":
        return _version()
    if name in _EXPORTS:
        try:
            module = importlib.import_module(_EXPORTS[name])
        except ModuleNotFoundError as e:  # the accounting needs only the core; the optimizers need the [dp] extra
            missing = (e.name or "").split(".")[0]
            if missing in ("torch", "opacus"):
                raise ModuleNotFoundError(
                    f"dpopt.{name} needs {missing}, which is not installed: pip install 'fedprivacy-toolkit[dp]' "
                    "(install the PyTorch build you want first, see the README)", name=e.name) from e
            raise
        return getattr(module, name)
    raise AttributeError(f"module 'dpopt' has no attribute {name!r}")


def _version() -> str:
    """The installed distribution's version (pyproject.toml's `version`, the one source), read on first use."""
    from importlib import metadata

    try:
        return metadata.version("fedprivacy-toolkit")
    except metadata.PackageNotFoundError:  # a source checkout on sys.path that was never installed
        return "0+unknown"


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, "__version__"})
