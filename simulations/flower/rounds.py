"""The round plan (who is sampled, who fails, which hash seed) and the record of what each round produced.

One `RoundPlanner` drives both backends (Flower SecAgg+ and the in-process secure sum), so for the same seed
they sample the same clients, inject the same dropouts and ship the same hash seeds, and their sums must agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RoundPlanner:
    """Cohorts of `clients_per_round` partition ids per round, disjoint across rounds while the population allows.

    Disjoint cohorts make the rounds' DP releases compose in parallel (each client is in one round). `dropout` is
    the fraction of each cohort told to fail mid-round; `dropout_counts`, when given, fixes the number per round.
    """

    n_clients: int
    clients_per_round: int
    rounds: int
    dropout: float = 0.0
    dropout_counts: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_clients < 2:
            raise ValueError(f"n_clients must be >= 2, got {self.n_clients}")
        if not 2 <= self.clients_per_round <= self.n_clients:
            raise ValueError(f"clients_per_round must be in [2, n_clients={self.n_clients}], got {self.clients_per_round}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dropout_counts and len(self.dropout_counts) != self.rounds:
            raise ValueError(f"dropout_counts must hold one count per round ({self.rounds}), got {len(self.dropout_counts)}")
        if any(not 0 <= c <= self.clients_per_round for c in self.dropout_counts):
            raise ValueError(f"dropout_counts must lie in [0, clients_per_round], got {self.dropout_counts}")

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

    def dropped(self, t: int) -> np.ndarray:
        """Sorted partition ids of round t's cohort that are told to fail mid-round."""
        cohort = self.cohort(t)
        n_drop = self.dropout_counts[t - 1] if self.dropout_counts else int(round(self.dropout * len(cohort)))
        return np.sort(self._rng(2, t).choice(cohort, size=n_drop, replace=False))

    def hash_seed(self, t: int) -> int:
        """Round t's fresh hash seed (a 62-bit int derived from the run seed)."""
        self._check_round(t)
        return int(np.random.SeedSequence([self.seed, 3, t]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(2))

    def _check_round(self, t: int) -> None:
        if not 1 <= t <= self.rounds:
            raise ValueError(f"round must be in [1, {self.rounds}], got {t}")


@dataclass
class RoundRecord:
    """What one round produced, as the server saw it (plus the plan it followed)."""

    round: int
    seed: int
    width: int
    sampled: int
    survivors: list[int] = field(default_factory=list)
    """Partition ids whose tables are in the sum (public labels, reported in the clear by each client)."""
    failures: int = 0
    told_to_drop: int = 0
    total: np.ndarray | None = None
    """The exact int64 sum of the survivors' tables; None when the round was skipped."""
    skipped: str = ""
    """Why the round produced no sum (empty when it did)."""
    received_digests: list[str] = field(default_factory=list)
    """sha256 of every parameter array the strategy received (tests check it is only ever the aggregate)."""
    seconds: float = 0.0

    @property
    def survived(self) -> int:
        return len(self.survivors)

    def summary(self) -> dict:
        """JSON-friendly view without the table."""
        return {
            "round": self.round,
            "seed": self.seed,
            "width": self.width,
            "sampled": self.sampled,
            "survived": self.survived,
            "failures": self.failures,
            "told_to_drop": self.told_to_drop,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 4),
        }
