"""The import rules `make lint` checks (pyproject [tool.importlinter]): they hold on this tree, and each one fails
when a copy of the tree breaks it (an import cycle in simulations.flower, an upward import across its layers, a
library importing simulations, fedsketch/dpopt importing each other, Flower outside simulations)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("fedsketch", "dpopt", "models", "simulations")

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not LINT.exists(), reason="import-linter (lint-imports) is not installed")]


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of the packages' Python files and pyproject.toml."""
    root = tmp_path_factory.mktemp("tree")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, root / pkg,
                        ignore=lambda d, names: [n for n in names if not (n.endswith(".py") or (Path(d) / n).is_dir())
                                                 or n == "__pycache__"])
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_tree_keeps_every_import_contract():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "BROKEN" not in res.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("simulations/flower/settings.py", "import simulations.flower.task", "no import cycles"),
        ("simulations/flower/task.py", "import simulations.flower.inprocess", "imports point down"),
        ("simulations/flower/server_app.py", "import simulations.flower.deployment", "imports point down"),
        ("fedsketch/sketch.py", "import simulations.registry", "no library package imports simulations"),
        ("dpopt/accounting.py", "import fedsketch.privacy", "never import each other"),
        ("fedsketch/hybrid.py", "import flwr", "Flower only under simulations"),
    ],
)
def test_make_lint_fails_on_a_cycle_or_a_forbidden_import(tree, tmp_path, module, line, contract):
    broken = tmp_path / "broken"
    shutil.copytree(tree, broken)
    path = broken / module
    path.write_text(path.read_text() + f"\n\ndef _lint_probe():\n    {line}  # noqa\n")
    res = _lint(broken)
    assert res.returncode != 0
    broken_part = res.stdout[res.stdout.find("Broken contracts"):]
    assert contract in broken_part, res.stdout[-3000:]
