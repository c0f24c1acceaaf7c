"""What `python -m simulations show NAME` and `run NAME --help` print: an experiment explained from its own parts.

The summary and the paper come from the module (`simulations.catalog`), every config field's type, default, smoke
value, allowed values and meaning from `simulations.config.fields_info`, and the claims from the committed
full-size record under `docs/results/NAME/` when the checkout has one (else from the claims function's docstring).
"""

from __future__ import annotations

import dataclasses
import inspect
import textwrap
from pathlib import Path
from typing import Any

from simulations import catalog, registry
from simulations.config import fields_info

__all__ = ["show", "config_help", "claims_table", "record_path", "KIND_LEGEND"]

#: Where committed full-size records live, relative to the checkout's root.
RESULTS_DIR = Path("docs") / "results"

KIND_LEGEND = ("kind: claim = the paper's claim, checked (fails the run when it does not hold); "
               "sanity = a check of the setup with no trained model (fails the run too); "
               "observation = reported, never fails (our scale may not show it)")


def _root() -> Path:
    return Path(__file__).resolve().parent.parent


def record_path(name: str, root: Path | None = None) -> Path:
    """`docs/results/NAME/result.json` in the checkout (it may not exist, e.g. in an installed wheel)."""
    return (root or _root()) / RESULTS_DIR / name / "result.json"


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, tuple | list):
        return "(" + ", ".join(_fmt(v) for v in x) + ("," if len(x) == 1 else "") + ")"
    if isinstance(x, str):
        return repr(x)
    return str(x)


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns; the last column is not padded."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    out = []
    for r in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def _kind(c: dict) -> str:
    return c.get("kind") or ("claim" if c.get("strict", True) else "observation")


def claims_table(claims: list[dict]) -> str:
    """The claims as a table: measured, threshold, holds, kind (a failing observation reads 'no', not 'NO')."""
    if not claims:
        return "(no claims)"
    rows = []
    for c in claims:
        kind = _kind(c)
        holds = "yes" if c["holds"] else ("no" if kind == "observation" else "NO")
        rows.append([c["name"], _fmt(c["measured"]), _fmt(c["threshold"]), holds, kind])
    w = [max(len(r[i]) for r in rows + [["claim", "measured", "threshold", "holds", "kind"]]) for i in range(4)]
    lines = [f"{'claim':<{w[0]}}  {'measured':>{w[1]}}  {'threshold':>{w[2]}}  {'holds':>{w[3]}}  kind"]
    lines += [f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}  {r[4]}" for r in rows]
    return "\n".join(lines)


def _fields_table(config_cls: type) -> list[str]:
    try:
        smoke = config_cls.smoke()
    except Exception as e:  # noqa: BLE001 - show what we can
        smoke, smoke_error = None, e
    rows = []
    for f in fields_info(config_cls):
        smoke_value = _fmt(getattr(smoke, f.name)) if smoke is not None else "?"
        rows.append([f.name, f.type, _fmt(f.default), smoke_value, f.allowed or "-", f.help or "(no description)"])
    lines = _table(["field", "type", "default", "smoke", "allowed", "meaning"], rows)
    if smoke is None:
        lines.append(f"  (the smoke preset cannot be built: {smoke_error})")
    return lines


def _presets(config_cls: type) -> list[str]:
    presets = config_cls.presets() if hasattr(config_cls, "presets") else {"full": config_cls,
                                                                           "smoke": config_cls.smoke}
    lines = [f"presets (--set scale=NAME): {', '.join(presets)}  (full = the defaults; smoke = --smoke)"]
    full = config_cls()
    for name, make in presets.items():
        if name in ("full", "smoke"):
            continue
        try:
            cfg = make()
        except Exception as e:  # noqa: BLE001 - e.g. a GPU preset that checks for CUDA
            lines.append(f"  {name}: (cannot be built here: {e})")
            continue
        diff = [f"{f.name}={_fmt(getattr(cfg, f.name))}" for f in dataclasses.fields(cfg)
                if getattr(cfg, f.name) != getattr(full, f.name)]
        lines.append(f"  {name}: " + (", ".join(diff) or "(same as full)"))
    return lines


def config_help(name: str) -> str:
    """What `run NAME --help` prints: how to run it, every field, the presets."""
    exp = registry.get(name)
    lines = [f"usage: python -m simulations run {name} [--smoke] [--set KEY=VALUE ...] [--out DIR] "
             "[--device cpu|cuda]", "",
             f"{name}'s config fields (--set KEY=VALUE; tuples as comma lists, e.g. --set widths=64,128):"]
    lines += _fields_table(exp.config)
    lines += ["", *_presets(exp.config), "", f"`python -m simulations show {name}` also shows its claims."]
    return "\n".join(lines)


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, width=110, initial_indent=indent, subsequent_indent=indent) or [indent]


def _claims_section(exp: registry.Experiment, root: Path | None) -> list[str]:
    from simulations.results import load_record

    path = record_path(exp.name, root)
    if not path.is_file():
        doc = inspect.getdoc(exp.claims) or "(the claims function has no docstring)"
        return ["claims: no committed full-size record (docs/results/"
                f"{exp.name}/result.json); what the claims function checks:", *[f"  {ln}" for ln in doc.splitlines()]]
    record = load_record(path)
    prov = record.get("provenance") or {}
    made = (f"made by `{prov['command']}`" if prov.get("command") else "") + \
           (f" at commit {str(prov['git_commit'])[:12]}" if prov.get("git_commit") else "") + \
           (f" on {prov['started_at']}" if prov.get("started_at") else "")
    lines = [f"claims, as measured in the committed full-size record {RESULTS_DIR / exp.name / 'result.json'} "
             f"(schema {record.get('schema', 1)}{'; ' + made.strip() if made.strip() else ''}):"]
    lines += ["  " + ln for ln in claims_table(record.get("claims", [])).splitlines()]
    fields = {f.name for f in dataclasses.fields(exp.config)}
    recorded = set(record.get("config", {}))
    if recorded != fields:
        missing, extra = sorted(fields - recorded), sorted(recorded - fields)
        lines.append("  note: the record predates the current Config (" + "; ".join(
            p for p in (f"not in the record: {', '.join(missing)}" if missing else "",
                        f"no longer fields: {', '.join(extra)}" if extra else "") if p) + ")")
    return lines


def show(name: str, root: Path | None = None) -> str:
    """The whole explanation of experiment `name` (imports its module)."""
    exp = registry.get(name)
    entry = catalog.entry(name)
    lines = [f"{name}: {entry.title}", f"area: {entry.area}    module: {entry.module}", ""]
    if entry.summary:
        lines += [*_wrap(entry.summary), ""]
    lines += [f"paper: {exp.paper or entry.paper or '(not given)'}", ""]
    lines += ["config (--set KEY=VALUE; --smoke takes the smoke column):", *_fields_table(exp.config), ""]
    lines += [*_presets(exp.config), ""]
    lines += [*_claims_section(exp, root), "", *_wrap(KIND_LEGEND), ""]
    lines += [f"run it: python -m simulations run {name} --smoke      (full size: drop --smoke; "
              f"the record and plot go to runs/{name}/)"]
    return "\n".join(lines)
