"""The experiment registry: every experiment module registers a name, a `Config`, `run` and `claims`.

Area subpackages (`simulations.ffe`, `simulations.dp`, ...) list their experiments in a module-level
``EXPERIMENTS = {"name": "module.path"}`` mapping, so `python -m simulations list` needs no heavy imports;
the experiment module itself is imported only when it is run.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AREAS: tuple[str, ...] = ("ffe", "flower", "dp", "icl", "lm", "theory")


@dataclass(frozen=True)
class Claim:
    """A paper's claim as a check: `holds` compares `measured` against `threshold`.

    Three kinds:
    - a **claim** (`strict=True`): the paper's claim at the size that was run; a failing one fails the run;
    - an **observation** (`strict=False`): reported, never failing a run (the experiment's docstring says why our
      scale may not show it);
    - a **sanity check** (`sanity=True`): a check that involves no trained model (a baseline against a closed form,
      an identity of the setup). It still fails the run when broken, but it is not counted as a paper's claim.
    """

    name: str
    measured: float
    threshold: float
    holds: bool
    strict: bool = True
    sanity: bool = False

    def __post_init__(self) -> None:
        if self.sanity and not self.strict:
            raise ValueError(f"claim {self.name!r}: a sanity check is always strict (it fails the run when broken)")

    @property
    def kind(self) -> str:
        """'claim', 'observation' or 'sanity'."""
        return "sanity" if self.sanity else ("claim" if self.strict else "observation")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": _jsonable(self.measured),
            "threshold": _jsonable(self.threshold),
            "holds": bool(self.holds),
            "strict": bool(self.strict),
            "kind": self.kind,
        }


@dataclass(frozen=True)
class Experiment:
    """One registered experiment."""

    name: str
    config: type
    run: Callable[[Any, Path], dict]
    claims: Callable[[dict], list[Claim]]
    description: str = ""
    paper: str = ""


_REGISTRY: dict[str, Experiment] = {}


def register(
    name: str,
    config: type,
    run: Callable[[Any, Path], dict],
    claims: Callable[[dict], list[Claim]],
    description: str = "",
    paper: str = "",
) -> Experiment:
    """Register an experiment under `name` (called at import time of the experiment's module).

    description: the module docstring (its first line is the one-line summary `list` shows);
    paper: the work it reproduces, as a short citation ("Wu, Zhu, Kairouz, Braverman, NeurIPS 2023").
    """
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config for {name!r} must be a dataclass, got {config!r}")
    if not hasattr(config, "smoke"):
        raise TypeError(f"config for {name!r} must define a smoke() preset")
    exp = Experiment(name=name, config=config, run=run, claims=claims, description=description, paper=paper)
    _REGISTRY[name] = exp
    return exp


def _catalogue() -> dict[str, str]:
    """name -> module path, from every area's EXPERIMENTS mapping (cheap: area __init__ files only)."""
    out: dict[str, str] = {}
    for area in AREAS:
        try:
            pkg = importlib.import_module(f"simulations.{area}")
        except ModuleNotFoundError:
            continue
        out.update(getattr(pkg, "EXPERIMENTS", {}))
    return out


def names() -> list[str]:
    """Every registered experiment name, sorted."""
    return sorted(_catalogue())


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest of `choices`, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: The extra that installs what the experiments import beyond the core dependencies.
_SIM_EXTRA_MODULES = ("torch", "opacus", "flwr", "ray", "matplotlib", "tqdm")


def get(name: str) -> Experiment:
    """The experiment registered under `name` (imports its module on first use).

    KeyError (naming the closest experiment) for an unknown name; ModuleNotFoundError naming the extra to install
    when the module needs a package the core install lacks."""
    if name not in _REGISTRY:
        cat = _catalogue()
        if name not in cat:
            raise KeyError(f"unknown experiment {name!r}{did_you_mean(name, cat)}; "
                           "`python -m simulations list` shows them all")
        try:
            importlib.import_module(cat[name])
        except ModuleNotFoundError as e:
            missing = (e.name or "").split(".")[0]
            if missing not in _SIM_EXTRA_MODULES:
                raise
            raise ModuleNotFoundError(
                f"experiment {name!r} needs {missing}, which is not installed: "
                "pip install 'fedprivacy-toolkit[sim]' (install the PyTorch build you want first, see the README)",
                name=e.name) from e
        if name not in _REGISTRY:
            raise KeyError(f"module {cat[name]} did not register experiment {name!r}")
    return _REGISTRY[name]


# ----------------------------------------------------------------------------------------------------------
# Config overrides: `--set key=value`, parsed against the dataclass field types.


def _parse_value(text: str, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _parse_value(text, a, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"--set {key}: cannot parse {text!r} as {tp}")
    if origin is typing.Literal:
        for a in args:
            if str(a) == text:
                return a
        raise ValueError(f"--set {key}: must be one of {list(args)}, got {text!r}")
    if origin in (tuple, list):
        parts = [p for p in text.strip("()[]").split(",") if p.strip()]
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            elem = [args[0]] * len(parts)
        elif origin is tuple and args:
            if len(args) != len(parts):
                raise ValueError(f"--set {key}: expected {len(args)} comma-separated values, got {text!r}")
            elem = list(args)
        else:
            elem = [args[0] if args else str] * len(parts)
        vals = [_parse_value(p.strip(), t, key) for p, t in zip(parts, elem)]
        return tuple(vals) if origin is tuple else vals
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}: expected a boolean (true/false), got {text!r}")
    if tp is int:
        try:
            f = float(text)
        except ValueError:
            raise ValueError(f"--set {key}: expected an integer, got {text!r}") from None
        if not f.is_integer():
            raise ValueError(f"--set {key}: expected an integer, got {text!r}")
        return int(f)
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--set {key}: expected a number, got {text!r}") from None
    if tp is str or tp is Any:
        return text
    raise ValueError(f"--set {key}: fields of type {tp} cannot be set from the command line")


def apply_overrides(config: Any, overrides: Mapping[str, str]) -> Any:
    """A copy of `config` with `key=value` strings parsed against the field types (validated by the dataclass)."""
    hints = typing.get_type_hints(type(config))
    fields = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for key, text in overrides.items():
        if key not in fields:
            raise ValueError(f"--set {key}: unknown config key for {type(config).__module__}"
                             f"{did_you_mean(key, fields)}; known: {', '.join(sorted(fields))}")
        changes[key] = _parse_value(text, hints[key], key)
    return dataclasses.replace(config, **changes)


def parse_set_args(items: list[str]) -> dict[str, str]:
    """['a=1', 'b=x'] -> {'a': '1', 'b': 'x'}, with a clear error on a malformed item."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def run(
    name: str,
    *,
    smoke: bool = False,
    overrides: Mapping[str, str] | None = None,
    out_dir: str | Path | None = None,
    device: str | None = None,
    config: Any = None,
    command: str | None = None,
) -> dict:
    """Build the config (full, smoke or a named `scale` preset, plus overrides), run the experiment, and return
    its result dict. `command` is recorded as how the run was made (default: the equivalent CLI line)."""
    exp = get(name)
    overrides = dict(overrides or {})
    scale = overrides.pop("scale", None)
    if config is None:
        config = _preset(exp, scale) if scale is not None else (exp.config.smoke() if smoke else exp.config())
        if scale is not None and smoke:
            raise ValueError("--smoke and --set scale=... both pick a preset; give one")
    if overrides:
        config = apply_overrides(config, overrides)
    if device is not None:
        if "device" in {f.name for f in dataclasses.fields(config)}:
            config = dataclasses.replace(config, device=device)
        elif device != "cpu":
            raise ValueError(f"--device {device}: experiment {name!r} runs on the CPU only")
    out = Path(out_dir) if out_dir is not None else Path("runs") / name
    out.mkdir(parents=True, exist_ok=True)
    from simulations.results import run_context

    preset = scale if scale is not None else ("smoke" if smoke else "full")
    with run_context(command or _command_line(name, smoke, scale, overrides, device), smoke=preset == "smoke",
                     preset=preset):
        return exp.run(config, out)


def _command_line(name: str, smoke: bool, scale: str | None, overrides: Mapping[str, str],
                  device: str | None) -> str:
    """The CLI command that reproduces a run made from Python."""
    parts = ["python -m simulations run", name] + (["--smoke"] if smoke else [])
    parts += [f"--set scale={scale}"] if scale is not None else []
    parts += [f"--set {k}={v}" for k, v in overrides.items()]
    parts += [f"--device {device}"] if device is not None else []
    return " ".join(parts)


def _preset(exp: Experiment, scale: str) -> Any:
    """The config of the named preset (`--set scale=NAME`): `full`, `smoke`, or one the Config adds."""
    presets = exp.config.presets() if hasattr(exp.config, "presets") else {"full": exp.config,
                                                                           "smoke": exp.config.smoke}
    if scale not in presets:
        raise ValueError(f"--set scale: {exp.name!r} has presets {sorted(presets)}, got {scale!r}")
    return presets[scale]()


def failed_strict(result: dict) -> list[dict]:
    """The strict claims in a result dict that do not hold."""
    return [c for c in result.get("claims", []) if c["strict"] and not c["holds"]]


def _jsonable(x: Any) -> Any:
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
    except ImportError:  # pragma: no cover
        pass
    return x
