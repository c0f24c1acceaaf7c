"""``python -m dpopt.report``: the statement, --json keys, --plot, calibration, invalid input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dpopt.report import main


def test_report_prints_the_statement_and_writes_json(tmp_path, capsys):
    out_json = tmp_path / "r.json"
    rc = main(
        ["--noise-multiplier", "1.0", "--batch-size", "64", "--dataset-size", "25000", "--steps", "39000",
         "--delta", "1e-5", "--max-examples-per-user", "2", "--json", str(out_json)]
    )
    assert rc == 0
    text = capsys.readouterr().out
    for phrase in ("add-or-remove-one adjacency", "Poisson sampling", "once per epoch", "User-level",
                   "hyperparameter tuning", "dp-accounting", "3.0305"):
        assert phrase in text
    data = json.loads(out_json.read_text())
    assert set(data["epsilon"]) == {"rdp", "pld", "prv"}  # PRV: Opacus' default accountant, stated beside RDP/PLD
    assert data["epsilon"]["rdp"] == pytest.approx(3.0305, abs=1e-3)
    assert data["epsilon"]["prv"] == pytest.approx(data["epsilon"]["pld"], abs=0.03)
    assert "PRV accountant (Opacus' and dpopt.PrivacyEngine's default)" in text
    assert data["noise_multiplier"] == 1.0 and data["steps"] == 39000 and data["delta"] == 1e-5
    assert data["sample_rate"] == pytest.approx(64 / 25000)
    assert data["protected"] == "example-level, add/remove adjacency"


def test_plot_writes_an_epsilon_vs_epochs_png(tmp_path):
    out_png = tmp_path / "r.png"
    main(["--noise-multiplier", "1.0", "--sample-rate", "0.01", "--steps", "300", "--delta", "1e-5",
          "--accountants", "rdp", "--plot", str(out_png)])
    assert out_png.read_bytes()[:4] == b"\x89PNG" and out_png.stat().st_size > 10_000


def test_target_epsilon_calibrates_sigma_and_epochs_give_steps(tmp_path):
    out_json = tmp_path / "r.json"
    main(["--target-epsilon", "2", "--sample-rate", "0.01", "--epochs", "5", "--delta", "1e-5",
          "--accountants", "rdp", "--json", str(out_json)])
    data = json.loads(out_json.read_text())
    assert data["steps"] == 500 and set(data["epsilon"]) == {"rdp"}
    assert data["epsilon"]["rdp"] <= 2.0 and data["epsilon"]["rdp"] == pytest.approx(2.0, abs=0.01)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--noise-multiplier", "1", "--sample-rate", "1.5", "--steps", "10", "--delta", "1e-5"], "sample-rate"),
        (["--noise-multiplier", "1", "--sample-rate", "0", "--steps", "10", "--delta", "1e-5"], "sample-rate"),
        (["--noise-multiplier", "0", "--sample-rate", "0.1", "--steps", "10", "--delta", "1e-5"], "noise-multiplier"),
        (["--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "10", "--delta", "1"], "delta"),
        (["--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "0", "--delta", "1e-5"], "steps"),
        (["--noise-multiplier", "1", "--sample-rate", "0.1", "--delta", "1e-5"], "--steps or --epochs"),
        (["--noise-multiplier", "1", "--batch-size", "64", "--steps", "3", "--delta", "1e-5"], "dataset-size"),
        # calibration failures used to surface dp_accounting's NoBracketIntervalFoundError as a traceback
        (["--target-epsilon", "10000", "--sample-rate", "1", "--steps", "1", "--delta", "1e-5"], "every σ >="),
        (["--target-epsilon", "1e-9", "--sample-rate", "1", "--steps", "100000", "--delta", "1e-5"],
         "out of reach"),
        (["--target-epsilon", "500", "--sample-rate", "0.01", "--steps", "10", "--delta", "1e-5",
          "--calibration-accountant", "pld"], "use accountant='rdp'"),
    ],
)
def test_invalid_input_is_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_runs_as_a_module():
    proc = subprocess.run(
        [sys.executable, "-m", "dpopt.report", "--noise-multiplier", "2", "--sample-rate", "0.01", "--steps",
         "100", "--delta", "1e-5", "--accountants", "rdp"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ε, Poisson sampling, RDP accountant" in proc.stdout
