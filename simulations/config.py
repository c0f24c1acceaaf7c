"""Experiment configuration stated once: each field's meaning and allowed values live in its dataclass metadata.

An experiment's `Config` is a frozen dataclass that subclasses `ExperimentConfig` and declares each field with
`param(default, help, bounds=..., choices=...)`. The same declaration serves three readers:

- **validation** — `ExperimentConfig.__post_init__` checks every field against its type hint and constraint and
  raises `ValueError("steps must be an integer in [1, 10000000], got 0")`; cross-field rules go in `check()`;
- **`--set` parsing** — the CLI parses `key=value` against the field's type (`simulations.registry`);
- **`python -m simulations show NAME`** — prints every field with its type, default, smoke value and meaning.

    @dataclass(frozen=True)
    class Config(ExperimentConfig):
        d: int = param(100_000, "domain size (distinct items)", bounds="[16, 1e7]")
        zipf_s: float = param(1.1, "Zipf exponent of the item distribution", bounds="[0, 10]")
        depths: tuple[int, ...] = param((5, 15), "sketch depths R to sweep", bounds="[1, 64]", nonempty=True)
        kind: str = param("zipf", "instance", choices=("zipf", "shakespeare"))

        def check(self) -> None:          # rules that relate fields
            if min(self.depths) > self.d: ...

        @classmethod
        def smoke(cls) -> "Config":
            return cls(d=20_000)

Bounds are interval strings: `"[a, b]"`, `"(a, b]"`, `"(0, inf)"`; for a tuple field they apply to each element.
A field typed `X | None` also accepts None. NumPy scalars are accepted where a Python int/float/bool is declared
and stored as the Python value. Larger presets (a GPU scale) are named in `presets()`; `--set scale=NAME` picks one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ExperimentConfig", "FieldInfo", "Interval", "param", "fields_info", "check_device"]

_META_KEY = "simulations.param"


@dataclass(frozen=True)
class Interval:
    """A closed, open or half-open interval of the real line, parsed from `"[lo, hi]"`-style text."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    @classmethod
    def parse(cls, text: str) -> Interval:
        s = text.strip()
        if len(s) < 5 or s[0] not in "[(" or s[-1] not in "])" or "," not in s:
            raise ValueError(f"bounds must look like '[lo, hi]' or '(lo, hi]', got {text!r}")
        lo_s, hi_s = (p.strip() for p in s[1:-1].split(",", 1))
        lo, hi = float(lo_s), float(hi_s)
        if lo > hi:
            raise ValueError(f"bounds {text!r}: lo > hi")
        return cls(lo, hi, s[0] == "(", s[-1] == ")")

    def __contains__(self, x: float) -> bool:
        if isinstance(x, float) and math.isnan(x):
            return False
        above = x > self.lo if self.lo_open else x >= self.lo
        below = x < self.hi if self.hi_open else x <= self.hi
        return above and below

    def __str__(self) -> str:
        return f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"


def _num(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if float(x).is_integer() and abs(x) < 1e16:
        return str(int(x))
    return f"{x:g}"


@dataclass(frozen=True)
class _Spec:
    help: str
    bounds: Interval | None
    choices: tuple[Any, ...] | None
    nonempty: bool
    length: int | None


def param(
    default: Any,
    help: str,
    *,
    bounds: str | None = None,
    choices: Sequence[Any] | None = None,
    nonempty: bool = False,
    length: int | None = None,
) -> Any:
    """A config field: its default, what it means (one line, shown by `show`), and the values it allows.

    bounds: an interval (`"[1, 64]"`, `"(0, inf)"`) every number (or every element of a tuple) must lie in.
    choices: the allowed values (or, for a tuple, the allowed elements). nonempty / length: for tuples.
    A mutable default (list, dict) is refused: configs are frozen; use a tuple.
    """
    if not isinstance(help, str) or not help.strip():
        raise ValueError("param(...) needs a one-line help text saying what the field means")
    if isinstance(default, list | dict | set):
        raise ValueError(f"param default must be immutable (use a tuple), got {type(default).__name__}")
    spec = _Spec(
        help=help.strip(),
        bounds=Interval.parse(bounds) if bounds is not None else None,
        choices=tuple(choices) if choices is not None else None,
        nonempty=nonempty,
        length=length,
    )
    return dataclasses.field(default=default, metadata={_META_KEY: spec})


@dataclass(frozen=True)
class FieldInfo:
    """What `show` prints for one field."""

    name: str
    type: str
    default: Any
    help: str
    allowed: str


def _spec(f: dataclasses.Field) -> _Spec | None:
    return f.metadata.get(_META_KEY)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_name(tp: Any) -> str:
    """A short readable name for a type hint: `int`, `tuple[float, ...]`, `str | None`."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _allowed(spec: _Spec | None) -> str:
    if spec is None:
        return ""
    parts = []
    if spec.bounds is not None:
        parts.append(f"in {spec.bounds}")
    if spec.choices is not None:
        parts.append("one of " + ", ".join(repr(c) for c in spec.choices))
    if spec.nonempty:
        parts.append("non-empty")
    if spec.length is not None:
        parts.append(f"{spec.length} values")
    return "; ".join(parts)


def fields_info(config_cls: type) -> list[FieldInfo]:
    """Every field of a config class with its type, default, meaning and allowed values."""
    hints = _hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        spec = _spec(f)
        default = f.default if f.default is not dataclasses.MISSING else None
        out.append(FieldInfo(f.name, type_name(hints.get(f.name, Any)), default, spec.help if spec else "",
                             _allowed(spec)))
    return out


# ------------------------------------------------------------------------------------------------ validation


def _coerce(name: str, value: Any, tp: Any, spec: _Spec | None) -> Any:
    """The validated value (numpy scalars made Python, tuples rebuilt); ValueError naming `name` otherwise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a, spec)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if len(errors) == 1 else f"{name}: " + "; or ".join(errors))
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{name} must be one of {list(args)}, got {value!r}")
        return value
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"{name} must be a tuple, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            elems = [args[0]] * len(value)
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ValueError(f"{name} must have {len(args)} values, got {value!r}")
            elems = list(args)
        else:
            elems = [args[0] if args else Any] * len(value)
        if spec is not None and spec.nonempty and not value:
            raise ValueError(f"{name} must be non-empty, got {value!r}")
        if spec is not None and spec.length is not None and len(value) != spec.length:
            raise ValueError(f"{name} must have {spec.length} values, got {value!r}")
        return tuple(_coerce_scalar(f"{name}[{i}]", v, t, spec, whole=name, whole_value=value)
                     for i, (v, t) in enumerate(zip(value, elems)))
    return _coerce_scalar(name, value, tp, spec)


def _coerce_scalar(name: str, value: Any, tp: Any, spec: _Spec | None, *, whole: str | None = None,
                   whole_value: Any = None) -> Any:
    label, shown = (whole, whole_value) if whole is not None else (name, value)
    what = "every element of " + label if whole is not None else label
    if tp is bool:
        if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):
            return bool(value)
        raise ValueError(f"{what} must be a boolean (True/False), got {shown!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{what} must be an integer{_in(spec)}, got {shown!r}")
        value = int(value)
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{what} must be a number{_in(spec)}, got {shown!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{what} must be a string, got {shown!r}")
    if spec is not None and spec.bounds is not None and isinstance(value, int | float):
        if value not in spec.bounds:
            kind = "an integer" if tp is int else "a number"
            raise ValueError(f"{what} must be {kind} in {spec.bounds}, got {shown!r}")
    if spec is not None and spec.choices is not None and value not in spec.choices:
        raise ValueError(f"{what} must be one of {list(spec.choices)}, got {shown!r}")
    return value


def _in(spec: _Spec | None) -> str:
    return f" in {spec.bounds}" if spec is not None and spec.bounds is not None else ""


@dataclass(frozen=True)
class ExperimentConfig:
    """Base of every experiment's `Config`: validates each `param` field on construction, then `check()`.

    Subclasses are frozen dataclasses with full-size defaults, a `smoke()` preset, and optionally `presets()`
    (larger named scales, e.g. a GPU preset) and `check()` (rules that relate several fields).
    """

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            fixed = _coerce(f.name, value, hints.get(f.name, Any), _spec(f))
            if fixed is not value:
                object.__setattr__(self, f.name, fixed)
        self.check()

    def check(self) -> None:
        """Cross-field rules; raise ValueError naming the fields. The default has none."""

    @classmethod
    def smoke(cls) -> ExperimentConfig:
        """The small preset the tests run (≤ about a minute on 2 CPU cores)."""
        raise NotImplementedError(f"{cls.__qualname__} must define smoke()")

    @classmethod
    def presets(cls) -> dict[str, Callable[[], ExperimentConfig]]:
        """Named scales: `full` (the defaults) and `smoke`, plus any larger preset a subclass adds."""
        return {"full": cls, "smoke": cls.smoke}


def check_device(device: str) -> None:
    """ValueError unless `device` is 'cpu' or a CUDA device that exists (imports torch only for 'cuda')."""
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:i]', got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available; use device='cpu'")
