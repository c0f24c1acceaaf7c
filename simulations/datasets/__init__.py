"""Real data sets, embedded under `simulations/data/` with their source and licence recorded beside them.

The libraries stay data-agnostic; these loaders turn files into the arrays they take. Imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_shakespeare": "simulations.datasets.shakespeare",
    "ShakespeareCorpus": "simulations.datasets.shakespeare",
    "load_imdb": "simulations.datasets.imdb",
    "load_shakespeare_char": "simulations.datasets.lm_corpora",
    "load_wikitext2": "simulations.datasets.lm_corpora",
    "load_text_dir": "simulations.datasets.lm_corpora",
    "load_movielens": "simulations.datasets.movielens",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'simulations.datasets' has no attribute {name!r}")
