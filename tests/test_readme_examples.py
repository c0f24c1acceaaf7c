"""Every ```python example in README.md and the docs pages (docs/*.md) runs as written, each in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _examples() -> list[tuple[str, str]]:
    out = []
    for page in DOCS:
        text = page.read_text(encoding="utf-8")
        for i, m in enumerate(_BLOCK.finditer(text)):
            heading = [h for h in re.findall(r"^#+ (.+)$", text[: m.start()], re.M)][-1:] or ["top"]
            slug = re.sub(r"[^a-z0-9]+", "-", heading[0].lower()).strip("-")[:40]
            out.append((f"{page.stem}-{i}-{slug}", m.group(1)))
    return out


def test_docs_have_examples():
    assert len(_examples()) >= 4


@pytest.mark.timeout(600)
@pytest.mark.xdist_group("ray")  # one README example starts a Flower simulation
@pytest.mark.parametrize("name,code", _examples(), ids=[n for n, _ in _examples()])
def test_readme_example_runs(name, code, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", FLWR_TELEMETRY_ENABLED="0", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=540)
    assert proc.returncode == 0, f"README example {name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
