"""In-context learning of regression: prompt sampler, closed-form baselines and the transformers that learn it.

Public names are imported lazily so `import models.icl` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GPT2ICL": "models.icl.gpt2",
    "LinearAttention": "models.icl.linear",
    "LTB": "models.icl.linear",
    "LoopedTransformer": "models.icl.looped",
    "KQVFreeTransformer": "models.icl.kqv_free",
    "KernelSmoother": "models.icl.kqv_free",
    "MLPICL": "models.icl.mlp",
    "TaskConfig": "models.icl.tasks",
    "TaskSampler": "models.icl.tasks",
    "Prompts": "models.icl.tasks",
    "interleave": "models.icl.tasks",
    "stack_columns": "models.icl.tasks",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'models.icl' has no attribute {name!r}")
