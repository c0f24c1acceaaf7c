"""The shared model/training core: building blocks, the Trainer, ICL transformers, the GPT language model.

`from models.train import Trainer, TrainConfig` (the one training loop: resume-exact batch sources from
`models.data`, step hooks that may replace the model, a teacher slot, DDP under torchrun via
`models.distributed`, MFU against `models.perf`'s peak table), `models.nn` (attention, MLP, norms, block),
`from models.icl import GPT2ICL, LinearAttention, LoopedTransformer, LTB, KQVFreeTransformer, MLPICL` (plus the
prompt sampler `TaskConfig`/`TaskSampler` and `models.icl.baselines`), `from models.lm import GPT, GPTConfig`.
Depends on torch (and numpy) only.
"""

from __future__ import annotations

import importlib.util
from typing import Any

if importlib.util.find_spec("torch") is None:
    raise ModuleNotFoundError(
        "models needs PyTorch, which is not installed: pip install 'fedprivacy-toolkit[models]' "
        "(install the PyTorch build you want first, CPU or CUDA: see the README)", name="torch")


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
