"""Settings and pure data of the federated-analytics app: what each side is configured with and what goes on the wire.

Three owners, three records, and nothing crosses between them unless it is on this list:
- `ClientSettings`: a client's own node config (``flower-supernode --node-config "partition-id=3 ..."``): where its
  data is, whether it may answer a plain (unmasked) fit, and simulation-only switches. The server never sends it.
- `RoundSpec`: the fit config of one round, the only thing the server tells a client: the round's hash seed and
  sketch shape, the per-entry bound, the item cap and contribution mode, and the noise parameters. Nothing in it
  determines a client's noise or names a client.
- `ServerSettings`: the server's run config (cohorts, sketch, noise calibration, noise floor, SecAgg+).
`RoundPlanner` (the server's cohorts and hash seeds), `RoundRecord` and `ServerLog` (what the server held) and
`OracleLedger` (what a simulation's evaluation oracle was given outside the protocol) are plain data too.
Everything else in `simulations.flower` imports this module; it imports nothing of the app.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any

import numpy as np

from simulations.flower.exact_sum import ExactSumParams, exact_sum_params, secagg_shares

DATASETS = ("shakespeare", "zipf")
CONTRIBUTIONS = ("distinct", "occurrences")
MAX_WIDTH = 1 << 24


def _is_int(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | np.integer)


def _check_int(name: str, v: object, lo: int, hi: int) -> None:
    if not _is_int(v) or not lo <= int(v) <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")


def _check_real(name: str, v: object, lo: float, hi: float, lo_open: bool = False) -> None:
    ok = not isinstance(v, bool) and isinstance(v, int | float | np.integer | np.floating) and math.isfinite(v)
    if not ok or not ((v > lo) if lo_open else (v >= lo)) or v > hi:
        raise ValueError(f"{name} must be a number in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _parse_flat(cls: type, config: dict[str, Any], what: str, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """kebab-case keys -> field names; unknown keys are errors; tuple fields come as comma-separated strings."""
    by_key = {_kebab(f.name): f for f in fields(cls)}
    unknown = sorted(set(config) - set(by_key) - set(ignore))
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known: {sorted(by_key)}")
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in ignore:
            continue
        f = by_key[key]
        if str(f.type).startswith("tuple") and isinstance(value, str):
            value = tuple(int(v) for v in value.split(",") if v.strip())
        out[f.name] = value
    return out


# ---------------------------------------------------------------------------------------------------- client data


@dataclass(frozen=True)
class DataSpec:
    """Where a client's items come from: a Shakespeare speaking role, or a synthetic Zipf(s) client."""

    dataset: str = "shakespeare"
    zipf_s: float = 1.1
    zipf_d: int = 10_000
    zipf_items: int = 100
    data_seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        _check_real("zipf_s", self.zipf_s, 0.0, 10.0, lo_open=True)
        _check_int("zipf_d", self.zipf_d, 2, 1 << 30)
        _check_int("zipf_items", self.zipf_items, 1, 10**7)
        _check_int("data_seed", self.data_seed, 0, 2**63 - 1)

    @property
    def domain(self) -> int:
        """d, the number of item ids."""
        return domain_size(self.dataset, self.zipf_d)

    @property
    def max_clients(self) -> int:
        """How many distinct clients the data holds (unbounded for synthetic data)."""
        return shakespeare().n_clients if self.dataset == "shakespeare" else 2**40


@lru_cache(maxsize=1)
def shakespeare():
    """The Tiny Shakespeare corpus (speaking roles as clients), loaded once per process."""
    from simulations.datasets import load_shakespeare

    return load_shakespeare()


def domain_size(dataset: str, zipf_d: int) -> int:
    """The public item domain d the server decodes over: the vocabulary, or [0, zipf_d)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    return shakespeare().d if dataset == "shakespeare" else int(zipf_d)


@dataclass(frozen=True)
class ClientSettings:
    """One client's own configuration: its node config, kebab-case (``--node-config "partition-id=3"``).

    Only the client's operator sets these; the server's messages cannot change them.
    """

    partition_id: int
    """Which partition of the data this node holds (a Shakespeare role, or a synthetic Zipf client)."""
    dataset: str = "shakespeare"
    zipf_s: float = 1.1
    zipf_d: int = 10_000
    zipf_items: int = 100
    data_seed: int = 0
    allow_plain: bool = False
    """Answer a fit that is not wrapped in SecAgg+ (raw table to the server): only for the benchmark's baseline."""
    seeded_noise_not_private_against_server: bool = False
    """SIMULATION ONLY, NOT PRIVATE AGAINST THE SERVER: draw the noise share from a generator seeded by
    (noise_seed, round, partition) instead of a fresh `secrets` key, so runs can be reproduced."""
    noise_seed: int = 0
    drop_rounds: tuple[int, ...] = ()
    """Fault injection (simulation): fail mid-round, after SecAgg+ key sharing, in these rounds."""
    hang_rounds: tuple[int, ...] = ()
    """Fault injection (simulation): sleep `hang_seconds` before answering the fit in these rounds."""
    hang_seconds: float = 0.0
    answer_oracle: bool = False
    """SIMULATION ONLY: answer the evaluation oracle's query for this node's partition id."""
    oracle_noise_dir: str = ""
    """SIMULATION ONLY: write each noise share under this folder for the evaluation oracle (empty = never)."""

    def __post_init__(self) -> None:
        _check_int("partition_id", self.partition_id, 0, 2**40)
        self.data  # noqa: B018  (validates the data fields)
        _check_int("noise_seed", self.noise_seed, 0, 2**63 - 1)
        for name in ("allow_plain", "seeded_noise_not_private_against_server", "answer_oracle"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        _check_real("hang_seconds", self.hang_seconds, 0.0, 3600.0)
        if any(not _is_int(t) or t < 1 for t in (*self.drop_rounds, *self.hang_rounds)):
            raise ValueError(f"drop_rounds and hang_rounds must hold round numbers >= 1, got "
                             f"{self.drop_rounds}, {self.hang_rounds}")

    @property
    def data(self) -> DataSpec:
        return DataSpec(self.dataset, self.zipf_s, self.zipf_d, self.zipf_items, self.data_seed)

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> ClientSettings:
        """Parse a node config; unknown keys are errors (Flower's own ``num-partitions`` is ignored)."""
        if "partition-id" not in node_config:
            raise ValueError("node config must hold 'partition-id' (flower-supernode --node-config 'partition-id=N')")
        return cls(**_parse_flat(cls, dict(node_config), "node config", ignore=("num-partitions",)))

    def to_node_config(self) -> dict[str, Any]:
        """The node config that gives these settings (tuples as comma-separated strings)."""
        return {_kebab(k): ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ---------------------------------------------------------------------------------------------------- the wire


@dataclass(frozen=True)
class RoundSpec:
    """What the server asks of every client in one round (the fit config, kebab-case keys on the wire)."""

    round: int
    seed: int
    """Hash seed of this round's sketch (fresh per round: the hybrid sketch)."""
    depth: int
    width: int
    bound: int
    """Agreed per-entry bound: a table with |entry| > bound is refused by its own client."""
    item_cap: int
    """m: a client encodes at most m items (distinct items, or occurrences) per round."""
    contribution: str
    """"distinct" (each item at most once, cells in [-1, 1]) or "occurrences" (up to m occurrences)."""
    noise_var: float
    """Variance per entry of the *sum* of noise_shares shares (Skellam; 0 = no DP)."""
    noise_shares: int
    """The share count the noise is split into: the noise floor (fewest survivors a round may have)."""

    def __post_init__(self) -> None:
        _check_int("round", self.round, 1, 10**6)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("depth", self.depth, 1, 64)
        _check_int("width", self.width, 1, MAX_WIDTH)
        _check_int("bound", self.bound, 1, 2**30)
        _check_int("item_cap", self.item_cap, 1, 10**7)
        if self.contribution not in CONTRIBUTIONS:
            raise ValueError(f"contribution must be one of {CONTRIBUTIONS}, got {self.contribution!r}")
        _check_real("noise_var", self.noise_var, 0.0, 1e15)
        _check_int("noise_shares", self.noise_shares, 1, 10**8)

    @property
    def share_variance(self) -> float:
        """One client's noise variance per entry."""
        return self.noise_var / self.noise_shares

    def to_config(self) -> dict[str, Any]:
        """The flat fit config (Flower `ConfigRecord` values: int, float, str)."""
        return {_kebab(k): v for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RoundSpec:
        """Parse a fit config; an unknown or missing key is a ValueError (never silently ignored)."""
        known = {_kebab(f.name) for f in fields(cls)}
        missing = sorted(known - set(config))
        if missing:
            raise ValueError(f"fit config is missing keys {missing}")
        return cls(**_parse_flat(cls, dict(config), "fit config"))


# ---------------------------------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class ServerSettings:
    """What the server runs the protocol with (the deployed ServerApp reads it from the run config)."""

    n_clients: int = 299
    """Nodes the federation has (simulation: how many SuperNodes to start; deployment: how many to wait for)."""
    clients_per_round: int = 59
    rounds: int = 5
    depth: int = 5
    width: int = 256
    item_cap: int = 10
    contribution: str = "distinct"
    noise_var: float = 0.0
    """Skellam variance per entry of the summed noise (0 = no DP); calibrated for a target epsilon upstream."""
    min_survivors: int = 0
    """The noise floor: noise is split into this many shares and a round with fewer survivors is never released
    (0 = ceil((1 - expected_dropout) * clients_per_round), at least the SecAgg+ reconstruction threshold)."""
    expected_dropout: float = 0.2
    """The dropout rate the automatic noise floor allows for."""
    secagg: bool = True
    num_shares: int = 0
    """SecAgg+ neighbours per client (0 = ~2 log2(n) + 1, odd)."""
    reconstruction_threshold: float = 0.6
    """Fraction of the neighbours whose shares are needed to unmask; fewer survivors -> the round is skipped."""
    timeout: float = 120.0
    """Seconds per SecAgg+ stage before unanswered clients count as dropped."""
    dataset: str = "shakespeare"
    """The public item domain: the Shakespeare vocabulary, or [0, zipf_d)."""
    zipf_d: int = 10_000
    seed: int = 0
    """The server's randomness: cohorts and hash seeds (never the clients' noise)."""
    progress: bool = False
    target_error: float = 0.0
    """Two-phase sizing (`fedsketch.TwoPhaseSizer`): the l_inf target on the frequency scale; 0 = off (fixed width)."""
    phase1_rounds: int = 1
    phase1_width: int = 64
    phase2_width: int = 0
    """Set by the server after phase 1 (0 = not chosen yet)."""

    def __post_init__(self) -> None:
        _check_int("n_clients", self.n_clients, 2, 2**40)
        _check_int("clients_per_round", self.clients_per_round, 2, self.n_clients)
        _check_int("rounds", self.rounds, 1, 10**6)
        _check_int("depth", self.depth, 1, 64)
        _check_int("width", self.width, 2, MAX_WIDTH)
        _check_int("item_cap", self.item_cap, 1, 10**7)
        if self.contribution not in CONTRIBUTIONS:
            raise ValueError(f"contribution must be one of {CONTRIBUTIONS}, got {self.contribution!r}")
        _check_real("noise_var", self.noise_var, 0.0, 1e15)
        _check_int("min_survivors", self.min_survivors, 0, self.clients_per_round)
        if self.min_survivors == 1:
            raise ValueError("min_survivors must be 0 (automatic) or >= 2: one survivor's sum is its own table")
        _check_real("expected_dropout", self.expected_dropout, 0.0, 0.99)
        _check_real("reconstruction_threshold", self.reconstruction_threshold, 0.0, 1.0, lo_open=True)
        if self.num_shares and not 3 <= self.num_shares <= self.clients_per_round:
            raise ValueError(f"num_shares must be 0 (auto) or in [3, clients_per_round], got {self.num_shares}")
        if self.num_shares and self.num_shares % 2 == 0 and self.num_shares != self.clients_per_round:
            raise ValueError(f"num_shares must be odd (flwr's client mod fails on even counts), got {self.num_shares}")
        _check_real("timeout", self.timeout, 0.0, 86400.0, lo_open=True)
        domain_size(self.dataset, self.zipf_d)
        _check_int("zipf_d", self.zipf_d, 2, 1 << 30)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_real("target_error", self.target_error, 0.0, 0.999)
        if self.target_error > 0 and not 1 <= self.phase1_rounds < self.rounds:
            raise ValueError(f"phase1_rounds must be in [1, rounds - 1] for two-phase sizing, got {self.phase1_rounds}")
        _check_int("phase1_width", self.phase1_width, 2, MAX_WIDTH)
        _check_int("phase2_width", self.phase2_width, 0, MAX_WIDTH)
        if self.dataset == "shakespeare" and self.n_clients > shakespeare().n_clients:
            raise ValueError(f"n_clients must be <= {shakespeare().n_clients} (Shakespeare's roles), got {self.n_clients}")
        self.exact_params()  # a SecAgg+ sum that could wrap is refused here, before anything runs

    @property
    def planner(self) -> RoundPlanner:
        return RoundPlanner(self.n_clients, self.clients_per_round, self.rounds, self.seed)

    @property
    def domain(self) -> int:
        return domain_size(self.dataset, self.zipf_d)

    @property
    def reconstruction_count(self) -> int:
        """SecAgg+'s threshold for this cohort: live neighbours each client needs (at least 2)."""
        shares = self.num_shares or secagg_shares(self.clients_per_round)
        return max(2, int(round(self.reconstruction_threshold * shares)))

    @property
    def noise_floor(self) -> int:
        """The fewest survivors a released round may have; the noise is split into this many shares."""
        if self.min_survivors:
            return self.min_survivors
        auto = math.ceil((1.0 - self.expected_dropout) * self.clients_per_round - 1e-9)
        return min(self.clients_per_round, max(2, self.reconstruction_count, auto))

    @property
    def bound(self) -> int:
        """The public per-entry bound every client's table must respect."""
        return value_bound(self.contribution, self.item_cap, self.noise_var / self.noise_floor)

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

    def round_spec(self, t: int) -> RoundSpec:
        return RoundSpec(
            round=t, seed=self.planner.hash_seed(t), depth=self.depth, width=self.width_for(t), bound=self.bound,
            item_cap=self.item_cap, contribution=self.contribution, noise_var=float(self.noise_var),
            noise_shares=self.noise_floor,
        )

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> ServerSettings:
        """Settings from a Flower run config (kebab-case keys); unknown keys are errors."""
        return cls(**_parse_flat(cls, dict(run_config), "run config"))


def value_bound(contribution: str, item_cap: int, share_var: float, tail_sigmas: float = 16.0) -> int:
    """The public per-entry bound: the largest sketch cell (1 for distinct items, m for occurrences) plus a noise
    tail allowance of `tail_sigmas` standard deviations of one share (plus 8), so an honest client fails the check
    with negligible probability; a client that does fail is counted as a dropout, never clipped."""
    cell = 1 if contribution == "distinct" else int(item_cap)
    if share_var <= 0:
        return cell
    return int(cell + math.ceil(tail_sigmas * math.sqrt(share_var)) + 8)


@dataclass(frozen=True)
class RoundPlanner:
    """The server's plan: cohorts of `clients_per_round` partitions per round (disjoint while the population allows:
    each client then takes part in one round, and the rounds' releases compose in parallel), and hash seeds."""

    n_clients: int
    clients_per_round: int
    rounds: int
    seed: int = 0

    @property
    def disjoint(self) -> bool:
        """True when every client is sampled at most once over the run."""
        return self.rounds * self.clients_per_round <= self.n_clients

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def cohort(self, t: int) -> np.ndarray:
        """Sorted partition ids sampled in round t (1-based)."""
        self._check_round(t)
        k = self.clients_per_round
        if self.disjoint:
            perm = self._rng(0).permutation(self.n_clients)
            return np.sort(perm[(t - 1) * k : t * k])
        return np.sort(self._rng(1, t).choice(self.n_clients, size=k, replace=False))

    def sample_nodes(self, t: int, nodes: list[int]) -> list[int]:
        """Deployment without a partition map: `clients_per_round` of the connected node ids (all if fewer)."""
        ordered = sorted(nodes)
        if len(ordered) <= self.clients_per_round:
            return ordered
        pick = self._rng(4, t).choice(len(ordered), size=self.clients_per_round, replace=False)
        return sorted(ordered[i] for i in pick)

    def hash_seed(self, t: int) -> int:
        """Round t's fresh hash seed (a 62-bit int derived from the run seed)."""
        self._check_round(t)
        return int(np.random.SeedSequence([self.seed, 3, t]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(2))

    def _check_round(self, t: int) -> None:
        if not 1 <= t <= self.rounds:
            raise ValueError(f"round must be in [1, {self.rounds}], got {t}")


@dataclass(frozen=True)
class FaultPlan:
    """Simulation fault injection: which partitions fail (or hang) in which round. Clients read their own entry from
    their node config; the server never learns it."""

    drops: dict[int, tuple[int, ...]] = field(default_factory=dict)
    """round -> partitions that fail mid-round."""
    hangs: dict[int, tuple[int, ...]] = field(default_factory=dict)
    """round -> partitions that sleep past the SecAgg+ time-out."""
    hang_seconds: float = 0.0

    @classmethod
    def from_rates(cls, planner: RoundPlanner, dropout: float, dropout_counts: tuple[int, ...] = (),
                   seed: int = 0) -> FaultPlan:
        """`dropout` of each cohort (or `dropout_counts[t-1]` clients of round t) fail mid-round."""
        drops = {}
        for t in range(1, planner.rounds + 1):
            cohort = planner.cohort(t)
            n = dropout_counts[t - 1] if dropout_counts else int(round(dropout * len(cohort)))
            drops[t] = tuple(sorted(np.random.default_rng([seed, 2, t]).choice(cohort, size=n, replace=False).tolist()))
        return cls(drops=drops)

    def rounds_of(self, pid: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(drop rounds, hang rounds) of one partition: what its node config carries."""
        return (tuple(t for t, p in sorted(self.drops.items()) if pid in p),
                tuple(t for t, p in sorted(self.hangs.items()) if pid in p))

    def failing(self, t: int) -> set[int]:
        """Partitions that fail or hang in round t."""
        return set(self.drops.get(t, ())) | set(self.hangs.get(t, ()))


# ---------------------------------------------------------------------------------------------------- records


@dataclass
class RoundRecord:
    """What one round produced, as the server saw it."""

    round: int
    seed: int
    width: int
    sampled: int
    survived: int = 0
    """How many clients' tables are in the sum."""
    survivors: list[int] = field(default_factory=list)
    """Their partition ids, known only through the simulation's partition map (empty in a plain deployment)."""
    failures: int = 0
    unreachable: int = 0
    """Sampled partitions without a connected node (counted as dropouts)."""
    total: np.ndarray | None = None
    """The exact int64 sum of the survivors' tables; None when the round was not released."""
    skipped: str = ""
    """Why the round was not released (empty when it was)."""
    received_digests: list[str] = field(default_factory=list)
    """sha256 of every parameter array the strategy received (tests check it is only ever the aggregate)."""
    seconds: float = 0.0

    @property
    def released(self) -> bool:
        return self.total is not None

    def summary(self) -> dict:
        """JSON-friendly view without the table."""
        return {"round": self.round, "seed": self.seed, "width": self.width, "sampled": self.sampled,
                "survived": self.survived, "failures": self.failures, "unreachable": self.unreachable,
                "released": self.released, "skipped": self.skipped, "seconds": round(self.seconds, 4)}


@dataclass
class ServerLog:
    """The rounds the server recorded (shared with the caller of `run_server`)."""

    records: list[RoundRecord] = field(default_factory=list)
    partitions: dict[int, int] = field(default_factory=dict)
    """node id -> partition id: the simulation's partition map (evaluation oracle only; empty when deployed)."""
    settings: ServerSettings | None = None
    """The settings the run ended with (two-phase sizing fills in `phase2_width`)."""
    sizing: dict = field(default_factory=dict)
    """Two-phase sizing: the chosen width and the sizer's prediction."""


@dataclass
class OracleLedger:
    """SIMULATION ONLY: what the evaluation oracle was handed outside the protocol (never seen by the server)."""

    noise: dict[int, np.ndarray] = field(default_factory=dict)
    """round -> the sum of the survivors' noise shares (to check the secure sum to the integer)."""
