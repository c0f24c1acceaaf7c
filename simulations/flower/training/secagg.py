"""Distributed client-level DP through Flower: the clients' encoded updates reach the server only as the exact
SecAgg+ integer sum.

SecAgg+ in flwr 1.4x lives on the legacy path, so this app pair is legacy-shaped, as the analytics app's
(`simulations.flower.server_app`): the ServerApp's ``@main`` runs ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow)``
over a legacy strategy (`DDPStrategy`) and the ClientApp is a `NumPyClient` behind Flower's ``secaggplus_mod``.

Per round the strategy Poisson-samples client ids (`FederatedRun.sampler`), sends each sampled node the global
vector and the run config; the client trains through the shared Trainer and encodes its update (`ddp.encode`:
clip, rotate, scale, round within the rounded-norm bound, its own CSPRNG Skellam share, the public per-entry bound
checked before masking). SecAgg+ runs with the exact-sum parameters (`DDPParams.exact`: weight 1, quantizer step
1, no modulus wrap), so the unmasked mean times the survivor count is the exact integer sum, which the engine
decodes (`FederatedRun.finish_round`). A round with fewer masked uploads than the noise floor is never unmasked
(`FlooredSecAggPlus`); a sampled client with no node, one that fails, and one that misses a stage's time-out are
dropouts. Fail closed: the client answers a fit only through SecAgg+. A node's client id is its ``partition-id``
node config, which the server learns with one GET_PROPERTIES query per node.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

try:
    from flwr.app import Context, Message
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import FitIns, MessageType, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
    from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key
except ModuleNotFoundError as _e:  # the Flower apps need the [flower] extra
    raise ModuleNotFoundError(f"{__name__} needs flwr, which is not installed: "
                              "pip install 'fedprivacy-toolkit[flower]'", name="flwr") from _e

from simulations.flower.exact_sum import mean_to_sum
from simulations.flower.server_app import FlooredSecAggPlus, discover_partitions
from simulations.flower.training.apps import client_side, settings_key
from simulations.flower.training.engine import FederatedRun

__all__ = ["DDPStrategy", "PlainFitRefused", "secagg_client_app", "make_secagg_server_app", "run_secagg_rounds"]


class PlainFitRefused(RuntimeError):
    """A fit request without SecAgg+ reached a distributed-DP client: answering it would hand over the update."""


class _DDPClient(NumPyClient):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def get_properties(self, config: dict) -> dict:
        return {"partition-id": self.cid}

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        cfg = dict(config)
        t = int(cfg.pop("round"))
        run = client_side(settings_key(cfg))
        if run.settings.dp != "distributed":
            raise ValueError(f"this ClientApp runs dp='distributed' only, got dp={run.settings.dp!r}")
        run.x = np.asarray(parameters[0], dtype=np.float64)
        upload, _ = run.client_upload(self.cid, t)
        # float64 holds every |entry| <= 2^30 exactly; SecAgg+'s step-1 quantizer maps it back to the integer
        return [upload.astype(np.float64)], 1, {}


def _secagg_only(msg: Message, ctx: Context, call_next):
    if msg.metadata.message_type == MessageType.TRAIN:
        if RECORD_KEY_CONFIGS not in msg.content.config_records:
            raise PlainFitRefused("a distributed-DP client answers a fit only through SecAgg+")
        return secaggplus_mod(msg, ctx, call_next)
    return call_next(msg, ctx)


secagg_client_app = ClientApp(client_fn=lambda context: _DDPClient(int(context.node_config["partition-id"]))
                              .to_client(), mods=[_secagg_only])
"""The distributed-DP ClientApp (``simulations.flower.training.secagg:secagg_client_app``)."""


class DDPStrategy(FedAvg):
    """Legacy strategy: the engine's Poisson cohorts out, the exact SecAgg+ sum in, the engine's round step."""

    def __init__(self, run: FederatedRun, clients: dict[int, int]) -> None:
        super().__init__(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2, min_evaluate_clients=0,
                         min_available_clients=2, accept_failures=True)
        self.run, self.clients, self.offset = run, clients, run.round
        self.base = run.settings.to_run_config()
        self.pending: dict[int, dict[str, Any]] = {}

    def initialize_parameters(self, client_manager):
        return ndarrays_to_parameters([self.run.x])

    def configure_fit(self, server_round, parameters, client_manager):
        t = self.offset + server_round
        proxies = client_manager.all()
        cohort = [int(c) for c in self.run.sampler.cohort(t)]
        nodes = {str(self.clients[c]): c for c in cohort if c in self.clients and str(self.clients[c]) in proxies}
        self.pending[t] = {"sampled": len(cohort), "nodes": nodes,
                           "missing": [f"client {c}: no connected node" for c in cohort
                                       if c not in self.clients or str(self.clients[c]) not in proxies]}
        ins = FitIns(ndarrays_to_parameters([self.run.x]), {**self.base, "round": t})
        return [(proxies[n], ins) for n in nodes]

    def aggregate_fit(self, server_round, results, failures):
        t = self.offset + server_round
        p = self.pending.pop(t)
        got = {str(proxy.node_id) for proxy, _ in results}
        lost = p["missing"] + [f"client {c}: dropped out of SecAgg+" for n, c in p["nodes"].items() if n not in got]
        total = mean_to_sum(parameters_to_ndarrays(results[0][1].parameters)[0], len(results)) if results else None
        self.run.finish_round(t, [total] if total is not None else [], lost, p["sampled"], [])
        return ndarrays_to_parameters([self.run.x]), {}

    def skip(self, t: int, reason: str, active: set[str]) -> None:
        """A round the workflow halted before unmasking: recorded with its `active` (masked-upload) nodes and
        accounted, the model unchanged."""
        p = self.pending.pop(t, None)
        if p is not None:
            lost = p["missing"] + [f"client {c}: dropped out of SecAgg+" for n, c in p["nodes"].items()
                                   if n not in active]
            self.run.finish_round(t, [], lost, p["sampled"], [], survived=len(active & set(p["nodes"])),
                                  skipped=f"round {t} not released: {reason}")

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def evaluate(self, server_round, parameters):
        return None


def run_secagg_rounds(grid: Grid, context: Context, run: FederatedRun, progress: bool = False) -> FederatedRun:
    """All remaining rounds of a ``dp='distributed'`` run over SecAgg+ (see the module docstring)."""
    s = run.settings
    if s.dp != "distributed" or run.ddp is None:
        raise ValueError(f"the SecAgg+ app runs dp='distributed' only, got dp={s.dp!r}")
    clients = {pid: node for node, pid in discover_partitions(grid, run.population, max(s.timeout, 60.0)).items()}
    run.nodes_found = len(clients)
    strategy = DDPStrategy(run, clients)
    inner = FlooredSecAggPlus(num_shares=1.0, reconstruction_threshold=0.6, timeout=s.timeout,
                              noise_floor=run.ddp.min_survivors, **run.ddp.exact().workflow_kwargs())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=s.rounds - run.round, desc=f"{s.workload} SecAgg+ rounds", unit="round")

    def fit_round(grid: Grid, ctx: LegacyContext) -> None:
        t = strategy.offset + int(ctx.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        inner(grid, ctx)
        if t in strategy.pending:  # halted before aggregate_fit (noise floor, threshold, < 2 sampled)
            st = getattr(inner, "last_state", None)
            active = {str(n) for n in getattr(st, "active_node_ids", ())} if st is not None else set()
            strategy.skip(t, getattr(inner, "halt_reason", "") or "too few masked uploads for SecAgg+'s "
                          "reconstruction threshold", active)
        if bar is not None:
            bar.update(1)

    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=s.rounds - run.round), strategy=strategy)
    t0 = time.perf_counter()
    try:
        DefaultWorkflow(fit_workflow=fit_round)(grid, legacy)
    finally:
        if bar is not None:
            bar.close()
    run.wall_s = time.perf_counter() - t0
    return run


def make_secagg_server_app(run: FederatedRun, progress: bool = False) -> ServerApp:
    """A ServerApp that runs `run`'s remaining rounds over SecAgg+ (results stay in `run`)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_secagg_rounds(grid, context, run, progress)

    return app
