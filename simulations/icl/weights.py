"""Trained ICL models saved with their run, so a user can reload and probe them without retraining.

`save_models(out_dir, {"model": (module, kwargs)})` writes one file, `weights.pt`, beside the run's result.json:
for each name, the module's class (which must live in `models.icl`), the keyword arguments that rebuild it, and
its state_dict as CPU tensors. `load_models(path)` rebuilds each module from its class and kwargs and loads the
weights with `torch.load(weights_only=True)`, so loading a file runs no pickled code: only classes of
`models.icl` can be named, and kwargs are plain numbers, strings, booleans, None and tuples of them.

    from simulations.icl.weights import load_models
    model = load_models("docs/results/icl-gpt2/weights.pt")["model"]   # eval mode, on the CPU
    pred = model(x, y)                                                  # probe it on your own prompts
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHTS = "weights.pt"
FORMAT = 1
_PACKAGE = "models.icl"
_PLAIN = (bool, int, float, str, type(None))


def _check_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    def plain(v: Any) -> bool:
        return isinstance(v, _PLAIN) or (isinstance(v, (tuple, list)) and all(plain(u) for u in v))

    bad = [k for k, v in kwargs.items() if not isinstance(k, str) or not plain(v)]
    if bad:
        raise ValueError(f"models[{name!r}]: kwargs must be plain values (numbers, str, bool, None, tuples); "
                         f"not {bad}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def save_models(out_dir: str | Path, models: dict[str, tuple[nn.Module, dict[str, Any]]]) -> Path:
    """Write `models` ({name: (module, constructor kwargs)}) to out_dir/weights.pt and return its path.
    ValueError for a module whose class is not in `models.icl`, or for kwargs that are not plain values."""
    if not models:
        raise ValueError("models must name at least one module")
    entries = {}
    for name, (module, kwargs) in models.items():
        cls = type(module)
        if not cls.__module__.startswith(_PACKAGE):
            raise ValueError(f"models[{name!r}]: only classes of {_PACKAGE} can be saved, got "
                             f"{cls.__module__}.{cls.__qualname__}")
        entries[name] = {
            "module": cls.__module__,
            "class": cls.__qualname__,
            "kwargs": _check_kwargs(name, kwargs),
            "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
        }
    path = Path(out_dir) / WEIGHTS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"format": FORMAT, "models": entries}, tmp)
    tmp.replace(path)  # a crash mid-write leaves no truncated weights.pt
    return path


def load_models(path: str | Path, device: str = "cpu") -> dict[str, nn.Module]:
    """Rebuild every module saved in `path` (a weights.pt, or the run directory holding one), in eval mode on
    `device`. ValueError for a file of another format or one naming a class outside `models.icl`."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path}: not a weights file of format {FORMAT}")
    out: dict[str, nn.Module] = {}
    for name, e in blob["models"].items():
        if not (e["module"] == _PACKAGE or e["module"].startswith(_PACKAGE + ".")):
            raise ValueError(f"{path}: model {name!r} names {e['module']}, outside {_PACKAGE}")
        cls = getattr(importlib.import_module(e["module"]), e["class"])
        module = cls(**e["kwargs"])
        module.load_state_dict(e["state_dict"])
        out[name] = module.to(device).eval()
    return out
