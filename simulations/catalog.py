"""What is registered, read from source without importing any experiment: names, areas, descriptions, papers.

`python -m simulations list` and `gallery` use this, so they need neither torch nor Flower: each experiment
module's docstring and its `register(..., paper="...")` call are read with `ast`. Running or showing an experiment
imports it (`simulations.registry.get`).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from simulations import registry
from simulations.registry import AREAS, did_you_mean

__all__ = ["Entry", "entries", "entry"]


@dataclass(frozen=True)
class Entry:
    """One experiment as its source describes it."""

    name: str
    area: str
    module: str
    title: str
    """The docstring's first line without the leading "NAME: " (what `list` prints)."""
    summary: str
    """The docstring's first paragraph after the title line, joined into one line."""
    paper: str
    """The `paper=` given to `register` when it is a string literal (else "")."""
    path: Path | None


def _areas() -> dict[str, dict[str, str]]:
    """area -> {name: module path}, from each area package's EXPERIMENTS mapping (small __init__ files)."""
    out = {}
    for area in AREAS:
        try:
            pkg = importlib.import_module(f"simulations.{area}")
        except ModuleNotFoundError:
            continue
        out[area] = dict(getattr(pkg, "EXPERIMENTS", {}))
    return out


def _read(name: str, area: str, module: str) -> Entry:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # e.g. a module made at run time (tests)
        spec = None
    path = Path(spec.origin) if spec is not None and spec.origin else None
    tree = ast.parse(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else ast.Module([], [])
    doc = (ast.get_docstring(tree) or "").strip()
    paper = _paper(tree)
    loaded = registry._REGISTRY.get(name)  # already imported: what it registered is authoritative
    if loaded is not None:
        doc, paper = (loaded.description or doc).strip(), loaded.paper or paper
    lines = doc.splitlines()
    title = lines[0].strip() if lines else ""
    for prefix in (f"{name}:", f"{name} -", f"{name} —"):
        if title.startswith(prefix):
            title = title[len(prefix):].strip()
    paragraphs = [p for p in "\n".join(lines[1:]).split("\n\n") if p.strip()]
    summary = " ".join(paragraphs[0].split()) if paragraphs else ""
    return Entry(name, area, module, title, summary, paper, path)


def _paper(tree: ast.Module) -> str:
    """The literal `paper=` of the module's `register(...)` call (a module-level string constant is followed)."""
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
              and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
              for t in n.targets if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        if func != "register":
            continue
        args = {kw.arg: kw.value for kw in node.keywords}
        if "paper" not in args and len(node.args) >= 6:
            args["paper"] = node.args[5]
        value = args.get("paper")
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value.value
        if isinstance(value, ast.Name):
            return consts.get(value.id, "")
    return ""


def _all() -> dict[str, tuple[str, str]]:
    """name -> (area, module), for every name the registry's catalogue lists."""
    area_of = {name: area for area, exps in _areas().items() for name in exps}
    return {name: (area_of.get(name, module.split(".")[1] if module.count(".") >= 2 else "-"), module)
            for name, module in registry._catalogue().items()}


def entries() -> list[Entry]:
    """Every registered experiment, sorted by name."""
    return [_read(name, area, module) for name, (area, module) in sorted(_all().items())]


def entry(name: str) -> Entry:
    """The experiment `name`; KeyError with the closest name when it is unknown."""
    known = _all()
    if name not in known:
        raise KeyError(f"unknown experiment {name!r}{did_you_mean(name, known)}; "
                       "`python -m simulations list` shows them all")
    return _read(name, *known[name])
