"""Federated frequency estimation with count sketches under secure summation and distributed DP.

Public names are imported lazily, so `import fedsketch` stays cheap and each module loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CountSketch": "fedsketch.sketch",
    "multiround_estimate": "fedsketch.hybrid",
    "round_sketch": "fedsketch.hybrid",
    "TwoPhaseSizer": "fedsketch.sizing",
    "SecureSum": "fedsketch.secure_sum",
    "InProcessSecureSum": "fedsketch.secure_sum",
    "SkellamNoise": "fedsketch.privacy",
    "DiscreteGaussianNoise": "fedsketch.privacy",
    "linf_error": "fedsketch.metrics",
    "l2_error": "fedsketch.metrics",
    "tail_norm": "fedsketch.metrics",
    "synthetic_instance": "fedsketch.instances",
    "FFEInstance": "fedsketch.instances",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedsketch' has no attribute {name!r}")


def _version() -> str:
    """The installed distribution's version (pyproject.toml's `version`, the one source), read on first use."""
    from importlib import metadata

    try:
        return metadata.version("fedprivacy-toolkit")
    except metadata.PackageNotFoundError:  # a source checkout on sys.path that was never installed
        return "0+unknown"


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, "__version__"})
