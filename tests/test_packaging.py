"""Packaging: each extra's import boundary, one version for every package, typing marker, licence, citation, the
console scripts, and dependency ranges that hold for the versions the tests run with."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = ("fedsketch", "dpopt", "models", "simulations")

# Run first in a fresh interpreter: afterwards torch, Opacus and Flower (and what only they pull in) cannot be
# found, exactly as in an environment with only the core dependencies installed.
_HIDE = """
import sys
HIDDEN = {"torch", "opacus", "flwr", "ray", "matplotlib", "tqdm"}
class _Hide:
    def __init__(self, inner): self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN: return None
        return self.inner.find_spec(name, path, target)
    def __getattr__(self, attr): return getattr(self.inner, attr)
sys.meta_path[:] = [_Hide(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
assert not HIDDEN & set(sys.modules)
"""


def _core_only(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _HIDE + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_core_install_runs_fedsketch_and_the_accounting():
    proc = _core_only("""
import numpy as np
import fedsketch, dpopt
from fedsketch import CountSketch, InProcessSecureSum
sk = CountSketch(depth=3, width=64, seed=1, domain=10)
table = sk.encode(np.array([1, 2, 2, 3]))
assert sk.decode(table)[2] == 2
r = dpopt.privacy_report(1.0, 0.01, 100, 1e-5)
assert 0 < r.epsilon["rdp"] < 10 and set(r.epsilon) == {"rdp", "pld"}  # prv is Opacus': not in a core install
try:
    dpopt.privacy_report(1.0, 0.01, 100, 1e-5, accountants=("prv",))
    raise AssertionError("prv without Opacus did not raise")
except ModuleNotFoundError as err:
    assert "fedprivacy-toolkit[dp]" in str(err)
from dpopt.report import main
assert main(["--noise-multiplier", "1", "--sample-rate", "0.01", "--steps", "100", "--delta", "1e-5"]) == 0
print("HEAVY", sorted(m for m in HIDDEN if m in sys.modules))
""")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "HEAVY []" in proc.stdout


@pytest.mark.parametrize("code,extra", [
    ("import dpopt; dpopt.DP2RMSprop", "fedprivacy-toolkit[dp]"),
    ("from dpopt import PrivacyEngine", "fedprivacy-toolkit[dp]"),
    ("import models", "fedprivacy-toolkit[models]"),
    ("from models.train import Trainer", "fedprivacy-toolkit[models]"),
    ("from simulations import registry; registry.get('dp2-imdb')", "fedprivacy-toolkit[sim]"),
    ("import simulations.flower.deployment", "fedprivacy-toolkit[flower]"),
    ("import simulations.flower.client_app", "fedprivacy-toolkit[flower]"),
])
def test_a_missing_extra_says_which_to_install(code, extra):
    proc = _core_only(code)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError") and extra in last, proc.stderr[-2000:]


def test_the_cli_lists_and_exits_cleanly_on_a_missing_extra_without_torch_or_flower():
    proc = _core_only("""
from simulations.__main__ import main
assert main(["list"]) == 0
assert main(["run", "dp2-imdb", "--smoke"]) == 2
""")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ffe-flower" in proc.stdout and "fedprivacy-toolkit[sim]" in proc.stderr


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_has_the_one_version_and_a_typing_marker(package):
    mod = importlib.import_module(package)
    assert mod.__version__ == PYPROJECT["project"]["version"] == metadata.version("fedprivacy-toolkit")
    assert "__version__" in dir(mod)
    assert (ROOT / package / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"][package]


def test_lazy_packages_list_their_public_names():
    import dpopt
    import fedsketch
    import simulations.datasets

    assert "CountSketch" in dir(fedsketch) and "TwoPhaseSizer" in dir(fedsketch)
    assert "DP2RMSprop" in dir(dpopt) and "privacy_report" in dir(dpopt)
    assert "load_shakespeare" in dir(simulations.datasets)


def test_licence_file_and_spdx_field_agree():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text


def test_citation_cites_the_toolkit_and_every_registered_paper():
    yaml = pytest.importorskip("yaml")
    from simulations import catalog

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["version"] == PYPROJECT["project"]["version"] and cff["license"] == "Apache-2.0"
    cited = " ".join(" ".join(a.get("family-names", a.get("name", "")) for a in ref["authors"]) + f" {ref['year']}"
                     for ref in cff["references"])
    for e in catalog.entries():
        for paper in filter(None, (p.strip() for p in e.paper.split(";"))):
            first_author = re.split(r"[ ,&]", paper)[0]
            year = re.findall(r"(?:19|20)\d\d", paper)
            assert first_author in cited, f"{e.name}: {paper!r} is not among CITATION.cff's references"
            assert not year or year[-1] in cited, f"{e.name}: {paper!r}: year {year[-1]} not cited"


@pytest.mark.parametrize("script,args,expect", [
    ("fedprivacy", ["list"], "ffe-single"),
    ("dpopt-report", ["--noise-multiplier", "1", "--sample-rate", "0.01", "--steps", "10", "--delta", "1e-5"],
     "ε"),
])
def test_console_scripts(script, args, expect):
    target = PYPROJECT["project"]["scripts"][script]
    module, func = target.split(":")
    # what the installed script runs: sys.exit(main()) with the arguments
    proc = subprocess.run([sys.executable, "-c", f"import sys; from {module} import {func}; sys.argv[0] = "
                           f"{script!r}; sys.exit({func}())", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expect in proc.stdout
    installed = Path(sys.executable).parent / script
    if installed.exists():  # the environment was installed from this pyproject (`make install`)
        proc = subprocess.run([str(installed), *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and expect in proc.stdout, proc.stderr[-2000:]


def _requirements() -> list[str]:
    reqs = list(PYPROJECT["project"]["dependencies"])
    for extra, items in PYPROJECT["project"]["optional-dependencies"].items():
        if extra != "bench":  # not installed for the tests
            reqs += [r for r in items if not r.startswith("fedprivacy-toolkit")]
    return reqs


@pytest.mark.parametrize("requirement", _requirements())
def test_dependency_ranges_hold_for_the_tested_versions(requirement):
    """Every range in pyproject.toml admits the version this suite runs with."""
    req_mod = pytest.importorskip("packaging.requirements")
    from packaging.version import Version

    req = req_mod.Requirement(requirement)
    try:
        installed = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{req.name} is not installed here")
    assert req.specifier.contains(Version(installed), prereleases=True), f"{req.name} {installed} not in {req}"


def test_plot_helpers_force_no_backend_and_leave_pyplot_alone(tmp_path):
    code = f"""
import sys, matplotlib
matplotlib.use("svg")  # the user's choice, which the helpers must keep
from dpopt.accounting import privacy_report
from dpopt.report import plot_epsilon_curve
from simulations.results import new_figure, save_figure
plot_epsilon_curve(privacy_report(1.0, 0.01, 50, 1e-5, ("rdp",)), {str(tmp_path / 'eps.png')!r})
fig, ax = new_figure(); ax[0, 0].plot([0, 1]); save_figure(fig, {str(tmp_path)!r}, "f.png")
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in dict(os.environ, PYTHONPATH=str(ROOT)).items() if k != "MPLBACKEND"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "eps.png").stat().st_size > 1000 and (tmp_path / "f.png").stat().st_size > 1000
