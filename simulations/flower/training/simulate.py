"""Run federated training under Flower's simulation engine (Ray), guarded: a time-out, Ray always shut down,
client exceptions surfaced (Flower issue #4476: `run_simulation` can hang on client errors)."""

from __future__ import annotations

import _thread
import logging
import threading
import time

from simulations.flower.training.engine import FederatedRun
from simulations.flower.training.settings import FLSettings

__all__ = ["run_flower", "FederatedTimeout"]


class FederatedTimeout(TimeoutError):
    """The simulation ran past its time-out; the message carries the rounds done and the clients' errors."""


def run_flower(settings: FLSettings, *, num_cpus: float = 1.0, num_gpus: float = 0.0, total_timeout: float = 3600.0,
               run: FederatedRun | None = None, progress: bool = False) -> FederatedRun:
    """Train under `flwr.simulation.run_simulation` with one virtual SuperNode per client.

    Everything that can be checked is checked before Ray starts (settings, workload, DP calibration, the resume
    checkpoint). ``num_gpus`` is each client's (fractional) GPU share: 0.25 lets four clients share one GPU."""
    import ray
    from flwr.simulation import run_simulation

    run = run or FederatedRun(settings)
    if settings.dp == "distributed":  # the exact SecAgg+ sum (legacy path): the server never sees one update
        from simulations.flower.training.secagg import make_secagg_server_app as make_server_app
        from simulations.flower.training.secagg import secagg_client_app as client_app
    else:
        from simulations.flower.training.apps import client_app, make_server_app

    fired = threading.Event()

    def _watchdog() -> None:
        if not done.wait(total_timeout):
            fired.set()
            _thread.interrupt_main()

    done = threading.Event()
    threading.Thread(target=_watchdog, daemon=True).start()
    flwr_log = logging.getLogger("flwr")
    old = flwr_log.level
    flwr_log.setLevel(logging.WARNING)
    t0 = time.perf_counter()
    try:
        run_simulation(server_app=make_server_app(run, progress), client_app=client_app,
                       num_supernodes=run.population,
                       backend_config={"client_resources": {"num_cpus": num_cpus, "num_gpus": num_gpus},
                                       "init_args": {"log_to_driver": False, "include_dashboard": False}})
    except KeyboardInterrupt:
        if not fired.is_set():
            raise
        errors = [f for h in run.history for f in h["failures"]][-5:]
        raise FederatedTimeout(f"federated run timed out after {total_timeout} s at round {run.round}; "
                               f"last client errors: {errors}") from None
    finally:
        done.set()
        ray.shutdown()
        flwr_log.setLevel(old)
    run.wall_s = time.perf_counter() - t0
    if run.round < settings.rounds:
        errors = [f for h in run.history for f in h["failures"]][-5:]
        raise RuntimeError(f"the simulation stopped at round {run.round} of {settings.rounds}; "
                           f"client errors: {errors}")
    return run
