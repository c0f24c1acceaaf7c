"""The Flower ServerApp: per round, sample a cohort, ship the round spec, receive only the SecAgg+ sum.

SecAgg+ in flwr 1.4x lives on the legacy path, so the app is a Message-API ``@app.main()`` that runs
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` over a legacy strategy (`SketchSumStrategy`). The
workflow hands the strategy the unmasked *mean* (every FitRes carries the same aggregate); the strategy turns it
into the exact sum with ``rint(mean * n)``. The exactness parameters come from `exact_sum_params`.

Noise floor: the noise is split into `settings.noise_floor` shares, so a round with fewer survivors would carry
less noise than calibrated. Such a round is never released: under SecAgg+ the workflow halts *before* the unmask
stage (`FlooredSecAggPlus`), so not even the server process holds its sum; on the plain baseline the strategy
drops it. Dropouts are what a deployment sees: a sampled partition without a connected node, a client that fails,
and a client that misses a stage's time-out are all dropouts, counted per round, never a crash.

Sampling: with the simulation's partition map (the evaluation oracle's query, `discover_partitions`) the server
samples the planned partitions so both backends see the same cohorts; without it (a deployment) it samples
`clients_per_round` of the connected nodes. The deployment entry point is `simulations.flower.deployment`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

try:
    from flwr.app import Context, Message
    from flwr.common import FitIns, GetPropertiesIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.constant import MessageTypeLegacy
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key
except ModuleNotFoundError as _e:  # the Flower apps need the [flower] extra
    raise ModuleNotFoundError(f"{__name__} needs flwr, which is not installed: "
                              "pip install 'fedprivacy-toolkit[flower]'", name="flwr") from _e

from simulations.flower.exact_sum import mean_to_sum, secagg_shares
from simulations.flower.settings import RoundRecord, ServerLog, ServerSettings
from simulations.flower.two_phase import choose_phase2_width

log = logging.getLogger(__name__)


class SketchSumStrategy(FedAvg):
    """Legacy strategy that samples cohorts and turns what it receives into the exact sum of the survivors."""

    def __init__(self, settings: ServerSettings, server_log: ServerLog) -> None:
        super().__init__(
            fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2, min_evaluate_clients=0,
            min_available_clients=2, accept_failures=True, initial_parameters=ndarrays_to_parameters([np.zeros(1)]),
        )
        self.settings = settings
        self.log = server_log
        self._pending: dict[int, RoundRecord] = {}

    def configure_fit(self, server_round, parameters, client_manager):
        """This round's cohort, each with the round's spec; a sampled partition without a node is a dropout."""
        if self.settings.two_phase and server_round == self.settings.phase1_rounds + 1:
            width, self.log.sizing = choose_phase2_width(self.settings, self.log.records)
            self.settings = replace(self.settings, phase2_width=width)
        s = self.settings
        proxies = client_manager.all()  # str(node id) -> proxy, the nodes connected now
        if self.log.partitions:  # simulation: the planned partitions, through the oracle's partition map
            by_pid = {pid: str(node) for node, pid in self.log.partitions.items()}
            planned = s.planner.cohort(server_round).tolist()
            nodes = [by_pid[p] for p in planned if p in by_pid and by_pid[p] in proxies]
            sampled = len(planned)
        else:  # deployment: clients_per_round of the connected nodes
            nodes = [str(n) for n in s.planner.sample_nodes(server_round, [int(k) for k in proxies])]
            sampled = s.clients_per_round
        ins = FitIns(parameters, s.round_spec(server_round).to_config())
        self._pending[server_round] = RoundRecord(
            round=server_round, seed=s.planner.hash_seed(server_round), width=s.width_for(server_round),
            sampled=sampled, unreachable=sampled - len(nodes),
        )
        return [(proxies[n], ins) for n in nodes]

    def aggregate_fit(self, server_round, results, failures):
        """Record the exact sum. Under SecAgg+ every FitRes holds the same aggregate mean; plain: the raw tables."""
        rec = self._pending.pop(server_round)
        arrays = [parameters_to_ndarrays(res.parameters)[0] for _, res in results]
        rec.received_digests = [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in arrays]
        rec.survived = len(results)
        rec.survivors = sorted(self.log.partitions[int(p.node_id)] for p, _ in results
                               if int(p.node_id) in self.log.partitions)
        rec.failures = rec.sampled - rec.survived  # (flwr's SecAgg+ lists a stage-2 failure twice in `failures`)
        if rec.survived < self.settings.noise_floor:
            rec.skipped = (f"round {server_round} not released: {rec.survived} survivors, below the noise floor "
                           f"min_survivors={self.settings.noise_floor}")
        elif self.settings.secagg:
            rec.total = mean_to_sum(arrays[0], len(results)).reshape(self.settings.depth, rec.width)
        else:
            rec.total = np.rint(np.sum(arrays, axis=0)).astype(np.int64).reshape(self.settings.depth, rec.width)
        self.log.records.append(rec)
        return ndarrays_to_parameters([np.zeros(1)]), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def skip(self, server_round: int, reason: str, survived: int | None = None) -> None:
        """Record a round that produced no sum."""
        rec = self._pending.pop(server_round, None)
        if rec is not None:
            rec.skipped = reason
            rec.survived = 0
            rec.failures = rec.sampled if survived is None else rec.sampled - survived
            self.log.records.append(rec)


class FlooredSecAggPlus(SecAggPlusWorkflow):
    """SecAgg+ that refuses to unmask a round with fewer survivors than the noise floor, and remembers its state so
    that a halted round is reported with its survivor count."""

    def __init__(self, *args, noise_floor: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.noise_floor = noise_floor
        self.halt_reason = ""

    def setup_stage(self, grid, context, state):
        self.last_state, self.halt_reason = state, ""
        return super().setup_stage(grid, context, state)

    def unmask_stage(self, grid, context, state):
        if len(state.active_node_ids) < self.noise_floor:  # never unmask: the sum would carry too little noise
            self.halt_reason = (f"{len(state.active_node_ids)} masked uploads, below the noise floor "
                                f"min_survivors={self.noise_floor}; not unmasked")
            return False
        return super().unmask_stage(grid, context, state)


def _round_runner(settings: ServerSettings, strategy: SketchSumStrategy, on_round: Callable[[RoundRecord], None]):
    """The fit workflow: SecAgg+ (exact parameters, noise floor) or Flower's plain fit round, plus timing and skips."""
    from flwr.server.workflow.default_workflows import default_fit_workflow

    if settings.secagg:
        inner = FlooredSecAggPlus(
            num_shares=settings.num_shares or secagg_shares(settings.clients_per_round),
            reconstruction_threshold=settings.reconstruction_threshold, timeout=settings.timeout,
            noise_floor=settings.noise_floor, **settings.exact_params().workflow_kwargs(),
        )
    else:
        inner = default_fit_workflow

    def fit_round(grid: Grid, context: LegacyContext) -> None:
        t = int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        t0 = time.perf_counter()
        inner(grid, context)
        if t in strategy._pending:  # the workflow halted before aggregate_fit
            st = getattr(inner, "last_state", None)
            active = None
            if st is not None and getattr(st, "sampled_node_ids", None):
                active = len(st.active_node_ids)
                why = getattr(inner, "halt_reason", "") or (
                    f"{active} of {len(st.sampled_node_ids)} sampled clients survived, below the SecAgg+ "
                    f"reconstruction threshold {st.threshold}")
                reason = f"round {t} not released: {why}"
            else:
                reason = f"round {t} not released: fewer than 2 clients could be sampled"
            strategy.skip(t, reason, active)
            log.warning(reason)
        rec = strategy.log.records[-1]
        rec.seconds = time.perf_counter() - t0
        on_round(rec)

    return fit_round


def discover_partitions(grid: Grid, n_nodes: int, timeout: float = 120.0) -> dict[int, int]:
    """Wait for the nodes and ask each for its partition id: the analytics app's evaluation oracle (simulation
    only), and the federated-training SecAgg+ app, whose server samples client ids (there a client id is the
    node's public identity, which the server knows anyway; the data stays on the node).

    Only nodes whose node config sets ``answer-oracle=true`` answer; a node that does not answer in time is simply
    not in the map, and its partition counts as a dropout whenever it is sampled."""
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < n_nodes and time.monotonic() < deadline:
        time.sleep(0.2)
        nodes = list(grid.get_node_ids())
    content = compat.getpropertiesins_to_recorddict(GetPropertiesIns(config={}))
    msgs = [Message(content=content, dst_node_id=n, message_type=MessageTypeLegacy.GET_PROPERTIES, group_id="0")
            for n in nodes]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if reply.has_error():
            continue
        props = compat.recorddict_to_getpropertiesres(reply.content).properties
        if "partition-id" in props:
            mapping[reply.metadata.src_node_id] = int(props["partition-id"])
    return mapping


def run_server(grid: Grid, context: Context, settings: ServerSettings, server_log: ServerLog, *,
               partition_map: bool = False) -> ServerLog:
    """Run the whole protocol (all rounds) and fill `server_log`.

    `partition_map=True` (simulation only) first learns the node -> partition map through the oracle's query, so
    the planned cohorts are sampled; otherwise the server samples among the connected nodes."""
    if partition_map:  # generous: the first message to each simulated node waits for its worker to start
        server_log.partitions = discover_partitions(grid, settings.n_clients, max(settings.timeout, 120.0))
    strategy = SketchSumStrategy(settings, server_log)
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.rounds, desc="ffe-flower rounds", unit="round")

    def on_round(rec: RoundRecord) -> None:
        if bar is not None:
            bar.set_postfix_str(f"survived {rec.survived}/{rec.sampled}" + ("" if rec.released else " (skipped)"))
            bar.update(1)

    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=settings.rounds), strategy=strategy)
    try:
        DefaultWorkflow(fit_workflow=_round_runner(settings, strategy, on_round))(grid, legacy)
    finally:
        if bar is not None:
            bar.close()
        server_log.settings = strategy.settings
    return server_log


def make_server_app(settings: ServerSettings, server_log: ServerLog, *, partition_map: bool = True) -> ServerApp:
    """A ServerApp bound to these settings, writing its rounds into `server_log` (the simulation entry point)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, context, settings, server_log, partition_map=partition_map)

    return server_app
