"""Writing results: the `result.json` record every experiment produces, and its plot."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from simulations.registry import Claim

#: Version of the result.json layout; bump when its top-level keys change (tests check committed records).
RECORD_SCHEMA = 2

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


@dataclasses.dataclass(frozen=True)
class RunContext:
    """How a run was started: set by `simulations.registry.run`, read by `finalize` into the record."""

    command: str
    smoke: bool
    preset: str
    started_at: str
    t0: float


_RUN: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar("simulations_run", default=None)


@contextlib.contextmanager
def run_context(command: str, smoke: bool, preset: str) -> Iterator[RunContext]:
    """Within this block, `finalize` records `command`, `smoke`, `preset`, `started_at` and `wall_s`."""
    ctx = RunContext(command, smoke, preset,
                     datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), time.perf_counter())
    token = _RUN.set(ctx)
    try:
        yield ctx
    finally:
        _RUN.reset(token)


def toolkit_version() -> str | None:
    """The installed toolkit's version (None when it is used from a bare checkout)."""
    try:
        return metadata.version("fedprivacy-toolkit")
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The checkout's commit, with '-dirty' when tracked files differ from it; None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, numpy scalars/arrays and tuples made JSON types. Non-finite floats are kept as floats here
    (claims compare against them); `dump_record` writes them as null with a note."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars, torch tensors
        return to_jsonable(obj.tolist())
    return obj


def _strip_nonfinite(obj: Any, path: list[str | int], notes: list[dict[str, Any]]) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_nonfinite(v, [*path, k], notes) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_strip_nonfinite(v, [*path, i], notes) for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        notes.append({"path": path, "value": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")})
        return None
    return obj


def dump_record(result: dict[str, Any]) -> str:
    """The record as strict JSON: every non-finite number is written as null, and the `nonfinite` note lists
    each one as {"path": [keys and indices], "value": "inf" | "-inf" | "nan"} (`load_record` restores them)."""
    notes: list[dict[str, Any]] = []
    body = _strip_nonfinite({k: v for k, v in result.items() if k != "nonfinite"}, [], notes)
    if notes:
        body["nonfinite"] = notes
    return json.dumps(body, indent=2, allow_nan=False)


def load_record(path: str | Path) -> dict[str, Any]:
    """Read a result.json, restoring the non-finite numbers its `nonfinite` note lists."""
    result = json.loads(Path(path).read_text())
    for note in result.pop("nonfinite", []):
        obj = result
        for key in note["path"][:-1]:
            obj = obj[key]
        obj[note["path"][-1]] = float(note["value"])
    return result


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
    """Assemble the result dict, write `result.json`, return it.

    Keys: experiment, schema, config, environment, provenance (toolkit version, git commit, command, smoke,
    preset, started_at, wall_s — the last five when started through `simulations.registry.run`), metrics, any
    `extra` keys, and claims."""
    ctx = _RUN.get()
    provenance: dict[str, Any] = {"toolkit_version": toolkit_version(), "git_commit": git_commit()}
    if ctx is not None:
        provenance.update(command=ctx.command, smoke=ctx.smoke, preset=ctx.preset, started_at=ctx.started_at,
                          wall_s=round(time.perf_counter() - ctx.t0, 3))
    result: dict[str, Any] = {
        "experiment": experiment,
        "schema": RECORD_SCHEMA,
        "config": to_jsonable(config),
        "environment": environment(seed=seed, device=device),
        "provenance": provenance,
        "metrics": to_jsonable(metrics),
    }
    if extra:
        result.update(to_jsonable(extra))
    result["claims"] = [c.as_dict() for c in claims(result)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(dump_record(result))
    return result


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] | None = None):
    """A `matplotlib.figure.Figure` and its (nrows, ncols) axes array, made with matplotlib's object API: no
    pyplot state and no backend forced on the user (it renders headless through its own Agg canvas)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size or (5.0 * ncols, 3.8 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save_figure(fig, out_dir: str | Path, name: str = "plot.png") -> Path:
    """Save `fig` as a PNG in `out_dir` and return the path (a `Figure` needs no closing)."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
