"""The shared task of the federated frequency-estimation app: what a round asks of a client, and what it returns.

Both sides import this module (as in Flower's ``task.py`` examples): the server turns a `RoundSpec` into the
fit config it ships, the client parses it back (unknown keys are errors), loads its own items, encodes them with
`fedsketch.CountSketch`, adds its share of distributed DP noise, and checks the table against the agreed bound
*before* masking. The in-process backend and the evaluation oracle call the very same functions, so the three
paths cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np

DATASETS = ("shakespeare", "zipf")


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
        if not self.zipf_s > 0:
            raise ValueError(f"zipf_s must be > 0, got {self.zipf_s}")
        if not 2 <= self.zipf_d <= 2**30:
            raise ValueError(f"zipf_d must be in [2, 2^30], got {self.zipf_d}")
        if not 1 <= self.zipf_items <= 10**7:
            raise ValueError(f"zipf_items must be in [1, 10^7], got {self.zipf_items}")

    @property
    def domain(self) -> int:
        """d, the number of item ids."""
        return _shakespeare().d if self.dataset == "shakespeare" else self.zipf_d

    @property
    def max_clients(self) -> int:
        """How many distinct clients the data holds (unbounded for synthetic data)."""
        return _shakespeare().n_clients if self.dataset == "shakespeare" else 2**40


@dataclass(frozen=True)
class RoundSpec:
    """Everything a client needs for one round, shipped in the fit config (kebab-case keys on the wire)."""

    round: int
    seed: int
    """Hash seed of this round's sketch (fresh per round: the hybrid sketch)."""
    depth: int
    width: int
    bound: int
    """Agreed per-entry bound: a table with |entry| > bound is refused by its own client."""
    item_cap: int
    """Per-client item cap: a client contributes at most this many items per round (its first ones)."""
    noise_var: float
    """Variance per entry of the *sum* of the noise shares (Skellam; 0 = no DP)."""
    noise_clients: int
    """The share count the noise is split into (the fewest survivors it is calibrated for)."""
    noise_seed: int
    dataset: str
    zipf_s: float
    zipf_d: int
    zipf_items: int
    data_seed: int
    drop: bool = False
    """Dropout injection: this client fails mid-round (after SecAgg+ key sharing), as a crashed device would."""

    def to_config(self) -> dict[str, Any]:
        """The flat fit config (Flower `ConfigRecord` values: int, float, str, bool)."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RoundSpec:
        """Parse a fit config; an unknown or missing key is a ValueError (never silently ignored)."""
        known = {f.name.replace("_", "-"): f.name for f in fields(cls)}
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ValueError(f"unknown fit config keys {unknown}; known: {sorted(known)}")
        required = {k for k, name in known.items() if name != "drop"}
        missing = sorted(required - set(config))
        if missing:
            raise ValueError(f"fit config is missing keys {missing}")
        return cls(**{known[k]: v for k, v in config.items()})

    @property
    def data(self) -> DataSpec:
        return DataSpec(self.dataset, self.zipf_s, self.zipf_d, self.zipf_items, self.data_seed)


@lru_cache(maxsize=1)
def _shakespeare():
    from simulations.datasets import load_shakespeare

    return load_shakespeare()


@lru_cache(maxsize=8)
def _zipf_p(s: float, d: int) -> np.ndarray:
    p = 1.0 / np.arange(1, d + 1, dtype=np.float64) ** s
    return p / p.sum()


def client_items(data: DataSpec, pid: int) -> np.ndarray:
    """All int64 item ids client `pid` holds (a role's words, or i.i.d. Zipf draws seeded by (data_seed, pid))."""
    if not 0 <= pid < data.max_clients:
        raise ValueError(f"partition id must be in [0, {data.max_clients}) for dataset {data.dataset!r}, got {pid}")
    if data.dataset == "shakespeare":
        return _shakespeare().client_items[pid]
    rng = np.random.default_rng([data.data_seed, pid])
    return rng.choice(data.zipf_d, size=data.zipf_items, p=_zipf_p(data.zipf_s, data.zipf_d)).astype(np.int64)


def capped_items(spec: RoundSpec, pid: int) -> np.ndarray:
    """The items client `pid` contributes this round: at most `item_cap`, a seeded subsample by `fedsketch`'s cap."""
    items = client_items(spec.data, pid)
    if len(items) <= spec.item_cap:
        return items
    from fedsketch.privacy import cap_items

    return cap_items(items, cap=spec.item_cap, seed=np.random.default_rng([spec.data_seed, spec.round, pid, 1])).items


def noise_share(spec: RoundSpec, pid: int) -> np.ndarray | None:
    """This client's Skellam noise share (depth, width), seeded by (noise_seed, round, pid); None without DP."""
    if spec.noise_var <= 0:
        return None
    from fedsketch.privacy import SkellamNoise

    rng = np.random.default_rng([spec.noise_seed, spec.round, pid])
    return SkellamNoise(spec.noise_var, spec.noise_clients).client_noise((spec.depth, spec.width), rng)


def client_table(spec: RoundSpec, pid: int) -> np.ndarray:
    """The int64 (depth, width) table client `pid` uploads in this round: sketch of its capped items + noise share."""
    from fedsketch import CountSketch

    table = CountSketch(spec.depth, spec.width, spec.seed).encode(capped_items(spec, pid))
    noise = noise_share(spec, pid)
    return table if noise is None else table + noise


def cohort_tables(spec: RoundSpec, pids: np.ndarray, *, noise: bool = True) -> np.ndarray:
    """`client_table` for many clients at once, shape (n, depth, width): one vectorized `encode_clients` call.

    Equal, client by client, to `client_table` (same caps, same noise seeds); used by the in-process backend and
    the evaluation oracle. `noise=False` leaves the noise shares out (the oracle's noise-free view).
    """
    from fedsketch import CountSketch

    pids = np.asarray(pids, dtype=np.int64)
    parts = [capped_items(spec, int(p)) for p in pids]
    items = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    index = np.repeat(np.arange(len(pids)), [len(p) for p in parts])
    tables = CountSketch(spec.depth, spec.width, spec.seed).encode_clients(items, index, len(pids))
    if noise and spec.noise_var > 0:
        for i, p in enumerate(pids.tolist()):
            tables[i] += noise_share(spec, p)
    return tables


def check_table(table: Any, spec: RoundSpec) -> np.ndarray:
    """Client-side validation before masking: shape (depth, width), an integer dtype, every |entry| <= bound.

    SecAgg+ would silently clip an out-of-range entry into the sum, and the server cannot see one table, so the
    client refuses to upload instead (ValueError; the round goes on without it).
    """
    arr = np.asarray(table)
    if arr.shape != (spec.depth, spec.width):
        raise ValueError(f"table must have shape (depth, width) = {(spec.depth, spec.width)}, got {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"table must have an integer dtype, got {arr.dtype}")
    peak = int(np.abs(arr).max()) if arr.size else 0
    if peak > spec.bound:
        raise ValueError(f"table entries must lie in [-bound, bound] = [-{spec.bound}, {spec.bound}], got |entry| = {peak}")
    return arr.astype(np.int64, copy=False)


def value_bound(item_cap: int, share_var: float, tail_sigmas: float = 16.0) -> int:
    """The public per-entry bound: item_cap (all of a client's items in one bucket) + a noise tail allowance.

    `share_var` is one client's noise variance per entry. The allowance is `tail_sigmas` standard deviations of it
    (plus 8 for small variances), so an honest client fails the check with negligible probability; a client that
    does fail is counted, never clipped.
    """
    if share_var <= 0:
        return int(item_cap)
    return int(item_cap + np.ceil(tail_sigmas * np.sqrt(share_var)) + 8)
