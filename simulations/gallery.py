"""The results gallery: one static page, `docs/gallery/index.html`, with a card per registered experiment.

Each card holds the experiment's plot(s) from `docs/results/NAME/`, its claims table (measured, threshold, kind,
holds), the paper, the command that made the record and its provenance, and a clear mark when there is no
full-size record yet. The page is built from the committed records alone (no experiment is imported or run, so
neither torch nor Flower is needed), links the images in place (nothing is copied), and is byte-for-byte the same
for the same records: `python -m simulations gallery`.
"""

from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path
from typing import Any

from simulations import catalog

__all__ = ["build", "render"]

#: the user docs and results page of each area, linked from its cards when the checkout has them
_AREA_DOCS = {"ffe": ("fedsketch.md", "results-ffe.md"), "flower": ("flower.md", "results-flower.md"),
              "dp": ("dpopt.md", "results-dpopt.md"), "icl": ("models.md", "results-icl.md"),
              "lm": ("lm.md", "results-lm.md"), "theory": ("theory.md", "results-theory.md")}

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1500px;
       padding: 1em 1.5em; color: #1d1d1f; background: #fafafa; }
h1 { margin-bottom: .2em; } .lead { color: #444; max-width: 60em; }
nav a { margin-right: .8em; white-space: nowrap; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(620px, 1fr)); gap: 1.2em;
         align-items: start; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 1em 1.2em; }
.card.missing { border: 2px dashed #c77700; background: #fffaf2; }
.card h2 { margin: 0 0 .2em; font-size: 1.25em; } .card h2 a { color: inherit; text-decoration: none; }
.area { font-size: .8em; background: #eef; border-radius: 4px; padding: .1em .5em; margin-left: .5em; }
.mark { display: inline-block; font-weight: 600; border-radius: 4px; padding: .15em .6em; margin: .3em 0; }
.mark.full { background: #e7f6ea; color: #17692b; } .mark.none { background: #ffe8c2; color: #7a4500; }
.mark.old { background: #eee; color: #555; }
.title { margin: .2em 0 .5em; } .summary { color: #444; font-size: .93em; }
figure { margin: .6em 0; } figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .8em; color: #666; }
table { border-collapse: collapse; width: 100%; font-size: .88em; margin: .5em 0; }
th, td { border-bottom: 1px solid #eee; padding: .25em .4em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.yes { color: #17692b; font-weight: 600; } td.NO { color: #b00020; font-weight: 700; }
td.no { color: #7a4500; } .kind-observation { color: #7a4500; } .kind-sanity { color: #555; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .1em .8em; font-size: .85em; margin: .5em 0; }
dt { color: #666; } dd { margin: 0; word-break: break-word; } code { font-size: .95em; }
"""


def _root() -> Path:
    return Path(__file__).resolve().parent.parent


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _inline(text: str) -> str:
    """Escaped text with the docstrings' `code` and **bold** marked up."""
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return ("inf" if x > 0 else "-inf") if math.isinf(x) else ("nan" if math.isnan(x) else f"{x:.4g}")
    return str(x)


def _rel(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path, out_dir)).as_posix()


def _load(path: Path) -> dict[str, Any] | None:
    from simulations.results import load_record

    try:
        return load_record(path)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _claims(record: dict[str, Any]) -> str:
    claims = record.get("claims") or []
    if not claims:
        return "<p>(no claims)</p>"
    rows = []
    for c in claims:
        kind = c.get("kind") or ("claim" if c.get("strict", True) else "observation")
        holds = "yes" if c.get("holds") else ("no" if kind == "observation" else "NO")
        rows.append(f'<tr><td>{_e(c.get("name", ""))}</td><td class="num">{_e(_fmt(c.get("measured")))}</td>'
                    f'<td class="num">{_e(_fmt(c.get("threshold")))}</td><td class="kind-{_e(kind)}">{_e(kind)}</td>'
                    f'<td class="{holds}">{holds}</td></tr>')
    return ('<table class="claims"><thead><tr><th>claim</th><th>measured</th><th>threshold</th><th>kind</th>'
            "<th>holds</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _provenance(record: dict[str, Any], record_href: str) -> str:
    prov = record.get("provenance")
    env = record.get("environment") or {}
    items: list[tuple[str, str]] = []
    if prov:
        if prov.get("command"):
            items.append(("command", f"<code>{_e(prov['command'])}</code>"))
        for key in ("preset", "git_commit", "toolkit_version", "started_at"):
            if prov.get(key) is not None:
                items.append((key.replace("_", " "), _e(prov[key])))
        if prov.get("wall_s") is not None:
            items.append(("wall time", f"{_e(_fmt(float(prov['wall_s'])))} s"))
    else:
        items.append(("provenance", "none: this record predates schema 2 (no command, commit or wall time)"))
    if env:
        pk = env.get("packages") or {}
        versions = ", ".join(f"{k} {v}" for k, v in sorted(pk.items()) if v)
        items.append(("environment", _e(f"Python {env.get('python', '?')}, {env.get('device', '?')}; {versions}")))
    items.append(("record", f'<a href="{_e(record_href)}">{_e(Path(record_href).name)}</a>'))
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _card(entry: catalog.Entry, results_dir: Path, out_dir: Path, docs_dir: Path) -> str:
    folder = results_dir / entry.name
    record_path = folder / "result.json"
    record = _load(record_path) if record_path.is_file() else None
    prov = (record or {}).get("provenance") or {}
    if record is None:
        mark = '<span class="mark none">no full-size record yet</span>'
    elif prov.get("smoke"):
        mark = '<span class="mark none">smoke-size record only (not a full-size result)</span>'
    elif record.get("schema", 1) < 2:
        mark = '<span class="mark old">full-size record (schema 1: made before records carried provenance)</span>'
    else:
        mark = '<span class="mark full">full-size record</span>'
    parts = [f'<article class="card{"" if record is not None else " missing"}" id="{_e(entry.name)}" '
             f'data-experiment="{_e(entry.name)}">',
             f'<h2><a href="#{_e(entry.name)}">{_e(entry.name)}</a><span class="area">{_e(entry.area)}</span></h2>',
             mark, f'<p class="title">{_inline(entry.title)}</p>']
    if entry.summary:
        parts.append(f'<p class="summary">{_inline(entry.summary)}</p>')
    for png in sorted(folder.glob("*.png")) if folder.is_dir() else []:
        parts.append(f'<figure><img src="{_e(_rel(png, out_dir))}" alt="{_e(entry.name)}: {_e(png.name)}">'
                     f"<figcaption>{_e(png.name)}</figcaption></figure>")
    parts.append(f"<p><strong>paper:</strong> {_e(entry.paper or '(not given)')}</p>")
    if record is not None:
        parts += [_claims(record), _provenance(record, _rel(record_path, out_dir))]
        others = sorted(p for p in folder.glob("result*.json") if p.name != "result.json")
        if others:
            parts.append("<p>other records: " + ", ".join(
                f'<a href="{_e(_rel(p, out_dir))}">{_e(p.name)}</a>' for p in others) + "</p>")
    else:
        parts.append(f"<p>Make it: <code>python -m simulations run {_e(entry.name)} --out docs/results/"
                     f"{_e(entry.name)}</code> (then rebuild this page).</p>")
    links = [f'<a href="{_e(_rel(docs_dir / page, out_dir))}">{_e(page)}</a>'
             for page in _AREA_DOCS.get(entry.area, ()) if (docs_dir / page).is_file()]
    if links:
        parts.append("<p>more: " + " · ".join(links) + "</p>")
    parts.append("</article>")
    return "\n".join(parts)


def render(results_dir: Path, out_dir: Path, docs_dir: Path) -> str:
    """The gallery page as HTML text (links relative to `out_dir`)."""
    entries = catalog.entries()
    with_record = sum((results_dir / e.name / "result.json").is_file() for e in entries)
    glossary = docs_dir / "glossary.md"
    nav = " ".join(f'<a href="#{_e(e.name)}">{_e(e.name)}</a>' for e in entries)
    lead = (f"{len(entries)} experiments, {with_record} with a committed full-size record. Each card shows the "
            "plot, the claims the run checked (<em>claim</em>: the paper's claim, fails the run when it does not "
            "hold; <em>sanity</em>: a check with no trained model; <em>observation</em>: reported, never fails), "
            "and how the record was made.")
    if glossary.is_file():
        lead += f' Terms: <a href="{_e(_rel(glossary, out_dir))}">glossary</a>.'
    cards = "\n".join(_card(e, results_dir, out_dir, docs_dir) for e in entries)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>fedprivacy-toolkit: results gallery</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<h1>Results gallery</h1>\n<p class=\"lead\">{lead}</p>\n<nav>{nav}</nav>\n"
            f'<main class="cards">\n{cards}\n</main>\n'
            "<p><small>Built by <code>python -m simulations gallery</code> from <code>docs/results/</code>."
            "</small></p>\n</body>\n</html>\n")


def build(results_dir: str | Path | None = None, out_dir: str | Path | None = None,
          docs_dir: str | Path | None = None) -> Path:
    """Write `index.html` into `out_dir` (default: the checkout's docs/gallery) and return its path."""
    root = _root()
    results = Path(results_dir) if results_dir is not None else root / "docs" / "results"
    out = Path(out_dir) if out_dir is not None else root / "docs" / "gallery"
    docs = Path(docs_dir) if docs_dir is not None else root / "docs"
    if not results.is_dir():
        raise ValueError(f"--results {results}: not a folder of records (docs/results/NAME/result.json)")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text(render(results.resolve(), out.resolve(), docs.resolve()), encoding="utf-8")
    return path

