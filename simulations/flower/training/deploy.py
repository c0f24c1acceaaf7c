"""The federated-training ServerApp as a loadable component, for ``flwr run`` (local simulation federation or the
deployment engine): ``simulations.flower.training.deploy:app``, with the ClientApp
``simulations.flower.training.apps:client_app``: the Flower app project ``flower-apps/fl-training/``. With
``dp="distributed"`` the server runs the rounds over SecAgg+ and the clients must be
``simulations.flower.training.secagg:secagg_client_app``: the project ``flower-apps/fl-training-secagg/``
(docs/fl-training.md shows how to run both).

The run config is `FLSettings`' keys in kebab-case plus ``out-dir`` (where ``result.json`` goes: the settings, the
per-round history and the privacy report). Everything is checked before the first round: an unknown key, a bad
value or a checkpoint of another model (``ckpt-dir`` with ``ckpt-every``: a restarted ServerApp resumes from its
last checkpoint) is an error, never a silent default. Each SuperNode's ``partition-id`` node config is its client id
(the simulation engine sets it; on a deployment give ``--node-config "partition-id=<i>"``); a client id with no
connected node is a dropout.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

try:
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
except ModuleNotFoundError as _e:  # the Flower apps need the [flower] extra
    raise ModuleNotFoundError(f"{__name__} needs flwr, which is not installed: "
                              "pip install 'fedprivacy-toolkit[flower]'", name="flwr") from _e

from simulations.flower.training.apps import run_rounds
from simulations.flower.training.engine import FederatedRun
from simulations.flower.training.secagg import run_secagg_rounds
from simulations.flower.training.settings import FLSettings

__all__ = ["app", "run_from_config"]

_log = logging.getLogger(__name__)


def run_from_config(run_config: dict[str, Any]) -> tuple[FederatedRun, Path]:
    """(the run, its output folder) from a run config; settings, workload, DP calibration and any checkpoint are
    checked here, before a message is sent."""
    cfg = dict(run_config)
    out = Path(str(cfg.pop("out-dir", "runs/fl-training")))
    settings = FLSettings.from_run_config(cfg)
    run = FederatedRun(settings)
    if settings.ckpt_every and run.resume(Path(settings.ckpt_dir) / "server.ckpt"):
        _log.warning("resumed from %s at round %d", settings.ckpt_dir, run.round)
    return run, out


def _write(run: FederatedRun, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    record = {"settings": run.settings.to_run_config(), "history": run.history, "privacy": run.privacy(),
              "nodes_found": getattr(run, "nodes_found", None)}
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(record, indent=1, default=float))
    tmp.replace(out / "result.json")


app = ServerApp()


@app.main()
def _main(grid: Grid, context: Context) -> None:
    run, out = run_from_config(dict(context.run_config))
    try:
        if run.settings.dp == "distributed":  # the exact SecAgg+ sum: project flower-apps/fl-training-secagg
            run_secagg_rounds(grid, context, run, progress=True)
        else:
            run_rounds(grid, run, progress=True)
    finally:  # the rounds done so far are kept even when a round raises
        _write(run, out)
