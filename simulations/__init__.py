"""Runnable experiments: the registry, the CLI (`python -m simulations`), datasets and the Flower apps.

The only package that composes `fedsketch`, `dpopt` and `models`.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "__version__":  # pyproject.toml's `version` (the one source), read on first use
        from importlib import metadata

        try:
            return metadata.version("fedprivacy-toolkit")
        except metadata.PackageNotFoundError:  # a source checkout on sys.path that was never installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "__version__"})
