"""Client sampling: Poisson (each client joins a round independently with probability q) or a fixed-size cohort.

Poisson sampling is what the amplification-by-sampling accounting assumes (`dpopt.accounting` is the subsampled
Gaussian of Mironov et al. / Abadi et al.): the cohort size is random, Binomial(N, q), and may even be empty. The
draws come from the server's own generator (seeded per round from the run seed), so a resumed run samples the same
cohorts. The sample is hidden from whoever sees only the released models, not from the server.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ClientSampler"]

_KINDS = ("poisson", "fixed")


class ClientSampler:
    """``cohort(t)``: the sorted client ids sampled in round t (1-based) out of ``population``."""

    def __init__(self, population: int, q: float, seed: int, kind: str = "poisson") -> None:
        if isinstance(population, bool) or not isinstance(population, int) or population < 1:
            raise ValueError(f"population must be an integer >= 1, got {population!r}")
        if not 0 < q <= 1:
            raise ValueError(f"q (the sampling rate) must be in (0, 1], got {q}")
        if kind not in _KINDS:
            raise ValueError(f"sampling must be one of {_KINDS}, got {kind!r}")
        self.population, self.q, self.seed, self.kind = population, float(q), int(seed), kind

    @property
    def expected_cohort(self) -> float:
        return self.q * self.population

    def cohort(self, t: int) -> np.ndarray:
        if t < 1:
            raise ValueError(f"round must be >= 1, got {t}")
        rng = np.random.default_rng([self.seed, 0x5A11, t])
        if self.kind == "poisson":
            return np.flatnonzero(rng.random(self.population) < self.q)
        k = max(1, int(round(self.expected_cohort)))
        return np.sort(rng.choice(self.population, size=k, replace=False))
