"""The Flower ServerApp: per round, sample a cohort, ship the hash seed, receive only the SecAgg+ sum.

SecAgg+ in flwr 1.41 lives on the legacy path, so the app is a Message-API ``@app.main()`` that runs
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` over a legacy strategy (`SketchSumStrategy`). The
workflow hands the strategy the unmasked *mean* (every FitRes carries the same aggregate); the strategy turns it
into the exact sum with ``rint(mean * n)`` and records it with the survivors' public partition ids. The exactness
parameters come from `exact_sum_params` and are checked before any client runs. With ``secagg=False`` the same
strategy sums the clients' plain tables (the baseline the benchmark compares against).

Deployment engine: ``simulations.flower.server_app:app`` reads its settings from the run config (kebab-case keys
of `ServerSettings`, e.g. ``flwr run . --run-config "clients-per-round=20 rounds=3"``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.common import FitIns, GetPropertiesIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key

from simulations.flower.exact_sum import ExactSumParams, exact_sum_params, mean_to_sum, secagg_shares
from simulations.flower.rounds import RoundPlanner, RoundRecord
from simulations.flower.task import DataSpec, RoundSpec, value_bound

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    """What the server needs to run the protocol (the experiment's Config maps onto it)."""

    n_clients: int = 299
    clients_per_round: int = 59
    rounds: int = 5
    depth: int = 5
    width: int = 1024
    item_cap: int = 200
    noise_var: float = 0.0
    """Skellam variance per entry of the summed noise (0 = no DP); the experiment calibrates it for a target eps."""
    noise_clients: int = 0
    """Shares the noise is split into = the fewest survivors it is calibrated for (0 = cohort minus planned drops)."""
    dropout: float = 0.0
    dropout_counts: tuple[int, ...] = ()
    secagg: bool = True
    num_shares: int = 0
    """SecAgg+ neighbours per client (0 = ~2 log2(n) + 1, odd)."""
    reconstruction_threshold: float = 0.6
    """Fraction of the neighbours whose shares are needed to unmask; fewer survivors -> the round is skipped."""
    timeout: float = 120.0
    """Seconds per SecAgg+ stage before unanswered clients count as dropped."""
    dataset: str = "shakespeare"
    zipf_s: float = 1.1
    zipf_d: int = 10_000
    zipf_items: int = 100
    seed: int = 0
    progress: bool = False
    target_error: float = 0.0
    """Two-phase sizing (`fedsketch.TwoPhaseSizer`): the l_inf target on the frequency scale; 0 = off (fixed width)."""
    phase1_rounds: int = 1
    phase1_width: int = 256
    phase2_width: int = 0
    """Set by the server after phase 1 (0 = not chosen yet)."""

    def __post_init__(self) -> None:
        DataSpec(self.dataset, self.zipf_s, self.zipf_d, self.zipf_items, self.seed)  # validates the data fields
        self.planner  # validates the sampling fields  # noqa: B018
        if not 0 < self.reconstruction_threshold <= 1:
            raise ValueError(f"reconstruction_threshold must be in (0, 1], got {self.reconstruction_threshold}")
        if self.num_shares not in (0,) and not (3 <= self.num_shares <= self.clients_per_round):
            raise ValueError(f"num_shares must be 0 (auto) or in [3, clients_per_round], got {self.num_shares}")
        if self.num_shares and self.num_shares % 2 == 0 and self.num_shares != self.clients_per_round:
            raise ValueError(f"num_shares must be odd (flwr 1.41's client mod fails on even counts), got {self.num_shares}")
        if self.item_cap < 1:
            raise ValueError(f"item_cap must be >= 1, got {self.item_cap}")
        if self.noise_var < 0:
            raise ValueError(f"noise_var must be >= 0, got {self.noise_var}")
        if not 0.0 <= self.target_error < 1.0:
            raise ValueError(f"target_error must be in [0, 1) (frequency scale; 0 = fixed width), got {self.target_error}")
        if self.target_error > 0 and not 1 <= self.phase1_rounds < self.rounds:
            raise ValueError(f"phase1_rounds must be in [1, rounds - 1] for two-phase sizing, got {self.phase1_rounds}")
        if self.phase1_width < 1 or self.phase2_width < 0:
            raise ValueError(f"phase1_width must be >= 1 and phase2_width >= 0, got {self.phase1_width}, {self.phase2_width}")
        if not 0 <= self.noise_clients <= self.clients_per_round:
            raise ValueError(f"noise_clients must be in [0, clients_per_round], got {self.noise_clients}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if self.n_clients > DataSpec(self.dataset, self.zipf_s, self.zipf_d, self.zipf_items).max_clients:
            raise ValueError(f"n_clients must be <= the data's {self.dataset!r} client count, got {self.n_clients}")

    @property
    def planner(self) -> RoundPlanner:
        return RoundPlanner(
            self.n_clients, self.clients_per_round, self.rounds, self.dropout, tuple(self.dropout_counts), self.seed
        )

    @property
    def share_clients(self) -> int:
        """How many noise shares make up the calibrated noise (the fewest survivors planned for)."""
        if self.noise_clients:
            return self.noise_clients
        plan = self.planner
        return max(1, self.clients_per_round - max(len(plan.dropped(t)) for t in range(1, self.rounds + 1)))

    @property
    def bound(self) -> int:
        """The public per-entry bound every client's table must respect."""
        return value_bound(self.item_cap, self.noise_var / self.share_clients if self.noise_var > 0 else 0.0)

    def exact_params(self) -> ExactSumParams:
        """SecAgg+ settings for an exact sum; ValueError when this configuration's sum could wrap."""
        return exact_sum_params(self.bound, self.clients_per_round)

    @property
    def two_phase(self) -> bool:
        return self.target_error > 0

    def width_for(self, t: int) -> int:
        """Round t's sketch width: fixed, or phase1_width then the width phase 1 chose (two-phase sizing)."""
        if not self.two_phase:
            return self.width
        if t <= self.phase1_rounds:
            return self.phase1_width
        if not self.phase2_width:
            raise RuntimeError(f"round {t}: the phase-2 width has not been chosen yet")
        return self.phase2_width

    def round_spec(self, t: int, drop: bool = False) -> RoundSpec:
        return RoundSpec(
            round=t, seed=self.planner.hash_seed(t), depth=self.depth, width=self.width_for(t), bound=self.bound,
            item_cap=self.item_cap, noise_var=float(self.noise_var), noise_clients=self.share_clients,
            noise_seed=self.seed + 7919,
            dataset=self.dataset, zipf_s=float(self.zipf_s), zipf_d=self.zipf_d, zipf_items=self.zipf_items,
            data_seed=self.seed, drop=drop,
        )

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> ServerSettings:
        """Settings from a Flower run config (kebab-case keys); unknown keys are errors."""
        by_key = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(by_key))
        if unknown:
            raise ValueError(f"unknown run config keys {unknown}; known: {sorted(by_key)}")
        out: dict[str, Any] = {}
        for key, value in run_config.items():
            f = by_key[key]
            if f.name == "dropout_counts":
                out[f.name] = tuple(int(v) for v in str(value).split(",") if v.strip())
            else:
                out[f.name] = value
        return cls(**out)


@dataclass
class ServerLog:
    """The rounds the server recorded (shared with the caller of `run_server`)."""

    records: list[RoundRecord] = field(default_factory=list)
    partitions: dict[int, int] = field(default_factory=dict)
    """partition id -> Flower node id, learned once from the nodes' public properties."""
    settings: ServerSettings | None = None
    """The settings the run ended with (two-phase sizing fills in `phase2_width`)."""
    sizing: dict = field(default_factory=dict)
    """Two-phase sizing: the chosen width and the sizer's prediction."""


class SketchSumStrategy(FedAvg):
    """Legacy strategy that samples planned cohorts and turns what it receives into the exact sum of the survivors."""

    def __init__(self, settings: ServerSettings, server_log: ServerLog) -> None:
        super().__init__(
            fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2, min_evaluate_clients=0,
            min_available_clients=settings.n_clients, accept_failures=True,
            initial_parameters=ndarrays_to_parameters([np.zeros(1)]),
        )
        self.settings = settings
        self.log = server_log
        self._pending: dict[int, RoundRecord] = {}

    def configure_fit(self, server_round, parameters, client_manager):
        """The planned cohort of this round, each with the round's spec (and its dropout flag)."""
        if self.settings.two_phase and server_round == self.settings.phase1_rounds + 1:
            from simulations.flower.two_phase import choose_phase2_width

            width, self.log.sizing = choose_phase2_width(self.settings, self.log.records)
            self.settings = replace(self.settings, phase2_width=width)
        s = self.settings
        plan = s.planner
        cohort, dropped = plan.cohort(server_round), set(plan.dropped(server_round).tolist())
        proxies = client_manager.all()
        out = []
        for pid in cohort.tolist():
            node = self.log.partitions.get(pid)
            if node is None or str(node) not in proxies:
                raise RuntimeError(f"partition {pid} has no connected node; connected partitions: {len(proxies)}")
            spec = s.round_spec(server_round, drop=pid in dropped)
            out.append((proxies[str(node)], FitIns(parameters, spec.to_config())))
        self._pending[server_round] = RoundRecord(
            round=server_round, seed=plan.hash_seed(server_round), width=s.width_for(server_round), sampled=len(cohort),
            told_to_drop=len(dropped),
        )
        return out

    def aggregate_fit(self, server_round, results, failures):
        """Record the exact sum. Under SecAgg+ every FitRes holds the same aggregate mean; plain: the raw tables."""
        rec = self._pending.pop(server_round)
        arrays = [parameters_to_ndarrays(res.parameters)[0] for _, res in results]
        rec.received_digests = [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in arrays]
        rec.survivors = sorted(int(res.metrics["partition-id"]) for _, res in results)
        rec.failures = rec.sampled - rec.survived  # (flwr 1.41's SecAgg+ lists a stage-2 failure twice in `failures`)
        if not results:
            rec.skipped = "no client survived"
        elif self.settings.secagg:
            rec.total = mean_to_sum(arrays[0], len(results)).reshape(self.settings.depth, rec.width)
        else:
            rec.total = np.rint(np.sum(arrays, axis=0)).astype(np.int64).reshape(self.settings.depth, rec.width)
        self.log.records.append(rec)
        return ndarrays_to_parameters([np.zeros(1)]), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def skip(self, server_round: int, reason: str, failures: int | None = None) -> None:
        """Record a round that produced no sum (`failures`: sampled clients known to have failed)."""
        rec = self._pending.pop(server_round, None)
        if rec is not None:
            rec.skipped = reason
            rec.failures = rec.sampled if failures is None else failures
            self.log.records.append(rec)


class _SkipAwareSecAggPlus(SecAggPlusWorkflow):
    """SecAgg+ that remembers the protocol state, so a halted round is reported with its survivor count."""

    def setup_stage(self, grid, context, state):
        self.last_state = state
        return super().setup_stage(grid, context, state)


def _round_runner(settings: ServerSettings, strategy: SketchSumStrategy, on_round: Callable[[RoundRecord], None]):
    """The fit workflow: SecAgg+ (exact parameters) or Flower's plain fit round, plus timing and skip reports."""
    from flwr.server.workflow.default_workflows import default_fit_workflow

    if settings.secagg:
        params = settings.exact_params()
        shares = settings.num_shares or secagg_shares(settings.clients_per_round)
        inner = _SkipAwareSecAggPlus(
            num_shares=shares, reconstruction_threshold=settings.reconstruction_threshold,
            timeout=settings.timeout, **params.workflow_kwargs(),
        )
    else:
        inner = default_fit_workflow

    def fit_round(grid: Grid, context: LegacyContext) -> None:
        t = int(context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
        t0 = time.perf_counter()
        inner(grid, context)
        if t in strategy._pending:  # the workflow halted before aggregate_fit
            st = getattr(inner, "last_state", None)
            failures = None
            if st is not None and getattr(st, "sampled_node_ids", None):
                failures = len(st.sampled_node_ids) - len(st.active_node_ids)
                reason = (f"round {t} skipped: {len(st.active_node_ids)} of {len(st.sampled_node_ids)} sampled clients "
                          f"survived, below the SecAgg+ reconstruction threshold {st.threshold}")
            else:
                reason = f"round {t} skipped: the aggregation halted"
            strategy.skip(t, reason, failures)
            log.warning(reason)
        rec = strategy.log.records[-1]
        rec.seconds = time.perf_counter() - t0
        on_round(rec)

    return fit_round


def discover_partitions(grid: Grid, n_nodes: int, timeout: float = 120.0) -> dict[int, int]:
    """Wait until `n_nodes` nodes are connected and learn each one's public partition id (one message each)."""
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < n_nodes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {n_nodes} nodes connected within {timeout} s")
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
        mapping[int(props["partition-id"])] = reply.metadata.src_node_id
    return mapping


def run_server(grid: Grid, context: Context, settings: ServerSettings, server_log: ServerLog) -> ServerLog:
    """Run the whole protocol (all rounds) and fill `server_log`. Refuses an inexact SecAgg+ setup first."""
    if settings.secagg:
        settings.exact_params()  # raises before any client is contacted
    server_log.partitions = discover_partitions(grid, settings.n_clients, settings.timeout)
    strategy = SketchSumStrategy(settings, server_log)
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.rounds, desc="ffe-flower rounds", unit="round")

    def on_round(rec: RoundRecord) -> None:
        if bar is not None:
            bar.set_postfix_str(f"survived {rec.survived}/{rec.sampled}" + (" (skipped)" if rec.skipped else ""))
            bar.update(1)

    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=settings.rounds), strategy=strategy)
    try:
        DefaultWorkflow(fit_workflow=_round_runner(settings, strategy, on_round))(grid, legacy)
    finally:
        if bar is not None:
            bar.close()
        server_log.settings = strategy.settings
    return server_log


def make_server_app(settings: ServerSettings, server_log: ServerLog) -> ServerApp:
    """A ServerApp bound to these settings, writing its rounds into `server_log` (the simulation entry point)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, context, settings, server_log)

    return server_app


app = ServerApp()
"""The ServerApp for the deployment engine, loadable as ``simulations.flower.server_app:app``."""


@app.main()
def _deployed_main(grid: Grid, context: Context) -> None:
    """Settings from the run config; writes the experiment's result.json and plot under `out-dir` (default runs/).

    Besides the `ServerSettings` keys, the run config may hold `out-dir`, and `epsilon` (> 0 turns on Skellam DP,
    calibrated here for (epsilon, delta) unless `noise-var` is given) with `delta` (default 1e-5).
    """
    from simulations.flower.ffe_flower import calibrate_privacy, report_deployed

    run_config = dict(context.run_config)
    out_dir = str(run_config.pop("out-dir", "runs/ffe-flower-deployed"))
    epsilon = float(run_config.pop("epsilon", 0.0))
    delta = float(run_config.pop("delta", 1e-5))
    settings = replace(ServerSettings.from_run_config(run_config), progress=True)
    privacy: dict = {"dp": settings.noise_var > 0}
    if epsilon > 0 and settings.noise_var == 0:
        noise_var, privacy = calibrate_privacy(settings, epsilon, delta)
        settings = replace(settings, noise_var=noise_var)
    server_log = run_server(grid, context, settings, ServerLog())
    report_deployed(settings, server_log, out_dir, privacy)
