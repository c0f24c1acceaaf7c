"""Writing results: the `result.json` record every experiment produces, and its plot."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from simulations.registry import Claim

_PACKAGES = ("numpy", "scipy", "torch", "opacus", "flwr", "dp-accounting", "matplotlib")


def environment(seed: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Versions, device and seed: enough to say what produced a result."""
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "device": device,
        "seed": seed,
    }


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, numpy scalars/arrays, tuples and non-finite floats made JSON-safe."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars, torch tensors
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def finalize(
    out_dir: str | Path,
    experiment: str,
    config: Any,
    metrics: dict[str, Any],
    claims: Callable[[dict], list[Claim]],
    *,
    seed: int | None = None,
    device: str = "cpu",
    extra: dict[str, Any] | None = None,
) -> dict:
    """Assemble the result dict (experiment, config, environment, metrics, claims), write `result.json`, return it."""
    result: dict[str, Any] = {
        "experiment": experiment,
        "config": to_jsonable(config),
        "environment": environment(seed=seed, device=device),
        "metrics": to_jsonable(metrics),
    }
    if extra:
        result.update(to_jsonable(extra))
    result["claims"] = [c.as_dict() for c in claims(result)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2, sort_keys=False))
    return result


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] | None = None):
    """A matplotlib figure on the non-interactive Agg backend (safe on headless machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=size or (5.0 * ncols, 3.8 * nrows), squeeze=False)
    return fig, axes


def save_figure(fig, out_dir: str | Path, name: str = "plot.png") -> Path:
    """Save `fig` as a PNG in `out_dir`, close it, return the path."""
    import matplotlib.pyplot as plt

    path = Path(out_dir) / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
