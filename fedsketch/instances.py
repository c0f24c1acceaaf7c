"""Synthetic multi-round federated frequency-estimation instances: Zipf, near-sparse and uniform item laws.

Round t has `clients_per_round` clients with `items_per_client` items each, drawn i.i.d. from the round's law over
the domain [0, d). Laws are given over item *ranks*: Zipf(s) puts mass proportional to (rank+1)^-s on rank `rank`;
near-sparse puts 1 - tail_mass evenly on `support` heavy ranks and tail_mass evenly on all d ranks; uniform is flat.
Homogeneous instances map rank k to item id k in every round. Heterogeneous ones draw a fresh random permutation of
the ids per round, so the heavy items change between rounds (the regime where the hybrid sketch beats the simple
adaptations most). Everything is seeded; items are int64 arrays, clients are indices within their round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = ("zipf", "near_sparse", "uniform")


def rank_probabilities(
    kind: str, domain: int, *, zipf_s: float = 1.1, support: int = 64, tail_mass: float = 0.01
) -> np.ndarray:
    """The law over ranks 0..d-1 (float64, sums to 1) for `kind` in ("zipf", "near_sparse", "uniform")."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(domain, bool) or not isinstance(domain, int | np.integer) or not 1 <= domain <= 1 << 31:
        raise ValueError(f"domain must be an integer in [1, 2^31], got {domain!r}")
    if kind == "zipf":
        if not 0.0 <= zipf_s <= 10.0:
            raise ValueError(f"zipf_s must be in [0, 10], got {zipf_s}")
        p = np.arange(1, domain + 1, dtype=np.float64) ** -float(zipf_s)
    elif kind == "near_sparse":
        if not 1 <= support <= domain:
            raise ValueError(f"support must be in [1, {domain}], got {support}")
        if not 0.0 <= tail_mass <= 1.0:
            raise ValueError(f"tail_mass must be in [0, 1], got {tail_mass}")
        p = np.full(domain, tail_mass / domain)
        p[:support] += (1.0 - tail_mass) / support
    else:
        p = np.ones(domain)
    return p / p.sum()


@dataclass(frozen=True)
class FFEInstance:
    """Per-round item arrays (int64 ids in [0, domain)) and the client index of each item within its round."""

    domain: int
    items: list[np.ndarray]
    clients: list[np.ndarray]
    clients_per_round: int
    kind: str = "zipf"
    heterogeneous: bool = False
    _truth: np.ndarray = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    @property
    def n_rounds(self) -> int:
        return len(self.items)

    @property
    def n_items(self) -> int:
        return int(sum(x.size for x in self.items))

    def client_items(self, t: int) -> list[np.ndarray]:
        """Round t's items split per client: entry c holds client c's int64 items."""
        order = np.argsort(self.clients[t], kind="stable")
        bounds = np.searchsorted(self.clients[t][order], np.arange(1, self.clients_per_round))
        return np.split(self.items[t][order], bounds)

    def round_counts(self, t: int) -> np.ndarray:
        """c_t: the int64 count vector of round t."""
        return np.bincount(self.items[t], minlength=self.domain)

    @property
    def counts(self) -> np.ndarray:
        """c = sum_t c_t: the global int64 count vector (the estimation target)."""
        if self._truth is None:
            total = np.zeros(self.domain, dtype=np.int64)
            for x in self.items:
                total += np.bincount(x, minlength=self.domain)
            object.__setattr__(self, "_truth", total)
        return self._truth


def synthetic_instance(
    kind: str,
    domain: int,
    n_rounds: int,
    clients_per_round: int,
    items_per_client: int = 1,
    *,
    heterogeneous: bool = False,
    zipf_s: float = 1.1,
    support: int = 64,
    tail_mass: float = 0.01,
    seed: int = 0,
) -> FFEInstance:
    """Draw an M-round instance; see the module docstring for the laws and the heterogeneous option."""
    for name, value, hi in (
        ("n_rounds", n_rounds, 1 << 20),
        ("clients_per_round", clients_per_round, 1 << 30),
        ("items_per_client", items_per_client, 1 << 30),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= hi:
            raise ValueError(f"{name} must be an integer in [1, {hi}], got {value!r}")
    p = rank_probabilities(kind, domain, zipf_s=zipf_s, support=support, tail_mass=tail_mass)
    cdf = np.cumsum(p)
    cdf[-1] = 1.0
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xF5E]))
    n = clients_per_round * items_per_client
    client_of = np.repeat(np.arange(clients_per_round, dtype=np.int64), items_per_client)
    items, clients = [], []
    for _ in range(n_rounds):
        ranks = np.searchsorted(cdf, rng.random(n), side="right").astype(np.int64)
        np.minimum(ranks, domain - 1, out=ranks)
        ids = rng.permutation(domain).astype(np.int64)[ranks] if heterogeneous else ranks
        items.append(ids)
        clients.append(client_of.copy())
    return FFEInstance(domain, items, clients, clients_per_round, kind, heterogeneous)
