"""The deployment entry point: the ServerApp that Flower's deployment engine runs (``flwr run``).

Loadable as ``simulations.flower.deployment:app`` (the ClientApp is ``simulations.flower.client_app:app``). It reads
its settings from the run config: every `ServerSettings` key in kebab-case, plus

- ``dp`` (default true), ``epsilon`` and ``delta``: with DP requested, epsilon must be > 0 and delta must be given
  (an error otherwise, never "DP off"); the server calibrates the clients' Skellam noise for them;
- ``out-dir``: where result.json, rounds.json, round_sums.npz (and with the oracle, the plot) go;
- ``oracle`` (default false) — SIMULATION ONLY, for a federation whose nodes hold known test data: learn the
  node -> partition map from nodes configured with ``answer-oracle=true``, sample the planned partitions, and score
  the released estimate against the data (``zipf-s``, ``zipf-items``, ``data-seed`` describe synthetic clients;
  ``oracle-noise-dir`` is where the nodes wrote their noise shares, to check the sums to the integer).

Without the oracle the server samples among the connected nodes, holds only the released sums, and reports the
decoded top items and the privacy statement.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

try:
    from flwr.app import Context
    from flwr.server import Grid, ServerApp
except ModuleNotFoundError as _e:  # the Flower apps need the [flower] extra
    raise ModuleNotFoundError(f"{__name__} needs flwr, which is not installed: "
                              "pip install 'fedprivacy-toolkit[flower]'", name="flwr") from _e

from simulations.flower.decode import decode_rounds, top_estimates
from simulations.flower.privacy import calibrate_noise, check_dp_request, privacy_report
from simulations.flower.server_app import run_server
from simulations.flower.settings import DataSpec, OracleLedger, ServerLog, ServerSettings

ORACLE_KEYS = ("zipf-s", "zipf-items", "data-seed", "oracle-noise-dir")


def _flag(run_config: dict[str, Any], key: str, default: bool) -> bool:
    value = run_config.pop(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"run config {key!r} must be true or false, got {value!r}")
    return value


def settings_from_run_config(run_config: dict[str, Any]) -> tuple[ServerSettings, dict[str, Any]]:
    """(the calibrated ServerSettings, the other options) from a run config; every check runs before any round."""
    cfg = dict(run_config)
    opts: dict[str, Any] = {"out_dir": str(cfg.pop("out-dir", "runs/ffe-flower-deployed"))}
    opts["dp"] = _flag(cfg, "dp", True)
    opts["oracle"] = _flag(cfg, "oracle", False)
    opts["epsilon"], opts["delta"] = cfg.pop("epsilon", None), cfg.pop("delta", None)
    oracle_opts = {k: cfg.pop(k) for k in ORACLE_KEYS if k in cfg}
    if oracle_opts and not opts["oracle"]:
        raise ValueError(f"run config keys {sorted(oracle_opts)} belong to the evaluation oracle: set oracle=true")
    opts.update(oracle_opts)
    if "noise-var" in cfg:
        raise ValueError("noise-var is calibrated by the server from epsilon and delta; give those instead")
    settings = replace(ServerSettings.from_run_config(cfg), progress=True)
    if opts["dp"]:
        eps, delta = check_dp_request(opts["epsilon"], opts["delta"])
        settings = replace(settings, noise_var=calibrate_noise(settings, eps, delta))
    elif opts["epsilon"] is not None:
        raise ValueError("epsilon given with dp=false: remove it, or set dp=true")
    return settings, opts


def report(settings: ServerSettings, server_log: ServerLog, opts: dict[str, Any]) -> dict:
    """Write what the server released (and, with the oracle, the evaluation) under `opts["out_dir"]`."""
    from simulations.flower.ffe_flower import (
        NAME,
        claims,
        plot_run,
        print_report,
        read_noise_ledger,
        report_metrics,
        save_rounds,
    )
    from simulations.results import finalize

    out = Path(opts["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    final = server_log.settings or settings
    privacy = privacy_report(final, server_log.records, epsilon_target=opts["epsilon"] if opts["dp"] else None,
                             delta=opts["delta"] if opts["dp"] else None)
    save_rounds(server_log, out)
    if not opts["oracle"]:
        metrics = {"rounds": [r.summary() for r in server_log.records], "privacy": privacy,
                   "top_estimates": top_estimates(decode_rounds(server_log.records, final)),
                   "evaluation": "none (deployed: the server holds only the released sums)"}
        print("privacy: " + privacy["statement"])
        return finalize(out, NAME + "-deployed", final, metrics, lambda _: [], seed=final.seed,
                        extra={"privacy_report": privacy})
    data = DataSpec(final.dataset, float(opts.get("zipf-s", 1.1)), final.zipf_d, int(opts.get("zipf-items", 100)),
                    int(opts.get("data-seed", final.seed)))
    noise_dir = opts.get("oracle-noise-dir", "")
    ledger = read_noise_ledger(server_log, noise_dir) if noise_dir else OracleLedger()
    metrics = report_metrics(final, data, server_log, ledger, backend="flower-secagg+" if final.secagg else "flower-plain")
    metrics.update(privacy=privacy, noise_floor=final.noise_floor, bound=final.bound,
                   evaluation="SIMULATION ONLY: evaluation oracle (run config oracle=true)")
    print_report(metrics, privacy, plot_run(metrics, out, None))
    return finalize(out, NAME, final, metrics, claims, seed=final.seed, extra={"privacy_report": privacy})


app = ServerApp()
"""The deployed ServerApp, loadable as ``simulations.flower.deployment:app``."""


@app.main()
def _main(grid: Grid, context: Context) -> None:
    settings, opts = settings_from_run_config(dict(context.run_config))
    server_log = run_server(grid, context, settings, ServerLog(), partition_map=opts["oracle"])
    report(settings, server_log, opts)
