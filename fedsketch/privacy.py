"""Distributed differential privacy for summed count sketches: integer noise shares, sensitivity, accounting.

Threat model and guarantee (what every number in this module means):
- **Protected unit:** one client's whole contribution to a round, i.e. its (bounded) items; this is user-level
  privacy when one client is one user.  Neighbouring datasets differ by adding or removing one client
  (``neighbouring="replace"`` doubles the sensitivity, by the triangle inequality).
- **Adversary:** an honest-but-curious server that sees only the output of secure summation, i.e. the sum of
  the clients' sketches plus the sum of their noise shares.  Clients follow the protocol.  A server colluding
  with c clients can subtract their shares: with n survivors and shares sized for ``num_clients`` = n_min the
  guarantee still holds while n - c >= n_min; beyond that it sees less noise than claimed.  The shares must be
  secret from the server: draw them with ``secure_mode=True`` (a seeded generator whose seed the server knows or
  chose lets it subtract the noise).
- **Mechanism:** each of ``num_clients`` clients adds an integer noise share to every entry so the *sum*
  of shares has the target law, Skellam (Agarwal, Kairouz, Liu, NeurIPS 2021) or a sum of discrete Gaussians
  (Kairouz, Liu, Steinke, ICML 2021).  Shares are sized for ``num_clients`` = the minimum number of survivors:
  more survivors only add independent noise, which is post-processing and keeps the guarantee; fewer would
  leave too little noise, so pair it with ``InProcessSecureSum(min_survivors=num_clients)``.
- **Accounting:** Renyi DP curves of the mechanisms (formulas and sources in ``skellam_rdp`` and
  ``discrete_gaussian_rdp``) on a grid of integer orders, converted to (eps, delta) with
  ``dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon``.  Rounds with disjoint cohorts compose in
  parallel (the guarantee of one round); clients that take part in every round compose sequentially (RDP
  adds over rounds).

Sensitivity of one client's sketch (``sketch_sensitivity``), for a cap of m items and R rows:
- ``contribution="distinct"`` (frequency estimation counts a user at most once per item, as TFF's heavy hitters do
  without ``multi_contribution``): the client encodes at most m *distinct* items and its table is bounded cell by
  cell to [-1, 1] (``fedsketch.contribution``).  Each row then has at most m nonzero cells of size 1, so
  ``Delta1 <= m R`` and ``Delta2 <= sqrt(m R)`` for *every* input, by construction.
- ``contribution="occurrences"``: the client encodes up to m occurrences (``cap_items``) and the table is not
  bounded further; m copies of one item reach ``Delta1 = m R`` and ``Delta2 = m sqrt(R)`` (the worst case).
"""

from __future__ import annotations

import math
import secrets
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

#: Integer RDP orders.  Both source formulas are evaluated at integer orders (the reference code casts
#: them with ``int``), so the grid is integers only.
ORDERS: tuple[int, ...] = (*range(2, 65), 72, 80, 96, 112, 128, 160, 192, 256, 320, 384, 512, 768, 1024)

#: Largest sum variance a mechanism accepts: numpy's Poisson sampler needs lam < ~9e18 and the int64 sums of
#: shares must not overflow; 1e15 is a standard deviation of ~3e7 per entry, far beyond any useful calibration.
MAX_VARIANCE = 1e15

Composition = Literal["disjoint", "repeated"]
RngLike = np.random.Generator | int | None


# ---- validation ---------------------------------------------------------------------------------------


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a finite number in (0, inf), got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number in (0, inf), got {value}")
    return float(value)


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, int | float | np.integer | np.floating) or not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    return float(delta)


def _check_int(name: str, value: int, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_composition(composition: str) -> str:
    if composition not in ("disjoint", "repeated"):
        raise ValueError(f"composition must be 'disjoint' or 'repeated', got {composition!r}")
    return composition


# ---- sensitivity and the item cap ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sensitivity:
    """L1 and L2 sensitivity of one client's integer contribution (add/remove one client)."""

    l1: float
    l2: float

    def __post_init__(self) -> None:
        _check_positive("l1", self.l1)
        _check_positive("l2", self.l2)
        if self.l2 > self.l1 + 1e-12:
            raise ValueError(f"l2 must be <= l1 for integer vectors, got l1={self.l1}, l2={self.l2}")


CONTRIBUTIONS = ("distinct", "occurrences")


def sketch_sensitivity(
    depth: int,
    item_cap: int = 1,
    neighbouring: Literal["add_remove", "replace"] = "add_remove",
    contribution: Literal["distinct", "occurrences"] = "occurrences",
) -> Sensitivity:
    """Sensitivity of a client's count sketch with ``depth`` rows and at most ``item_cap`` items.

    ``contribution="occurrences"`` (the default: it holds for any table of at most m item occurrences): each item
    adds +-1 to one entry per row, so m items give ``Delta1 = m R`` and, for m copies of one item,
    ``Delta2 = m sqrt(R)``.  ``"distinct"``: the table of at most m distinct items bounded to cells in [-1, 1]
    (``fedsketch.contribution.bound_cells``) has at most m unit cells per row: ``Delta1 = m R``,
    ``Delta2 = sqrt(m R)``.  ``replace`` (one client swapped for another) doubles both by the triangle inequality.
    """
    r = _check_int("depth", depth)
    m = _check_int("item_cap", item_cap)
    if neighbouring not in ("add_remove", "replace"):
        raise ValueError(f"neighbouring must be 'add_remove' or 'replace', got {neighbouring!r}")
    if contribution not in CONTRIBUTIONS:
        raise ValueError(f"contribution must be one of {CONTRIBUTIONS}, got {contribution!r}")
    factor = 2 if neighbouring == "replace" else 1
    l2 = math.sqrt(m * r) if contribution == "distinct" else m * math.sqrt(r)
    return Sensitivity(l1=float(factor * m * r), l2=float(factor * l2))


@dataclass(frozen=True)
class CappedItems:
    """Items kept after the per-client cap, and how many were dropped (reported, never silent)."""

    items: np.ndarray
    client_index: np.ndarray
    n_dropped: int
    n_clients_capped: int


def cap_items(
    items: np.ndarray,
    client_index: np.ndarray | None = None,
    *,
    cap: int,
    seed: int | np.random.Generator,
    keys: np.ndarray | None = None,
) -> CappedItems:
    """Keep at most ``cap`` items (occurrences) per client, a seeded uniform subsample, in the input order.

    ``client_index[i]`` is the client of ``items[i]`` (``None``: all items belong to one client).  This
    enforces the item cap that the sensitivity of ``sketch_sensitivity(depth, item_cap=cap)`` assumes.
    ``keys`` (one float per item) replaces the seeded uniforms: each client keeps its ``cap`` items with the
    smallest keys, so a caller with per-client random keys gets the same subsample client by client.
    """
    cap = _check_int("cap", cap)
    it = np.asarray(items)
    if it.ndim != 1:
        raise ValueError(f"items must be 1-D, got shape {it.shape}")
    ci = np.zeros(len(it), dtype=np.int64) if client_index is None else np.asarray(client_index)
    if ci.shape != it.shape:
        raise ValueError(f"client_index must have the shape of items {it.shape}, got {ci.shape}")
    n = len(it)
    if n == 0:
        return CappedItems(it, ci, 0, 0)
    if keys is None:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        keys = rng.random(n)
    else:
        keys = np.asarray(keys, dtype=np.float64)
        if keys.shape != it.shape:
            raise ValueError(f"keys must have the shape of items {it.shape}, got {keys.shape}")
    order = np.lexsort((keys, ci))  # group by client, random order inside each client
    grouped = ci[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    sizes = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, sizes)
    keep = np.zeros(n, dtype=bool)
    keep[order[rank < cap]] = True
    return CappedItems(it[keep], ci[keep], int(n - keep.sum()), int((sizes > cap).sum()))


# ---- RDP curves and conversion ------------------------------------------------------------------------


def skellam_rdp(orders: np.ndarray | tuple[int, ...], variance: float, sensitivity: Sensitivity) -> np.ndarray:
    """RDP of the multidimensional Skellam mechanism with sum variance ``mu`` (integer data, scale 1).

    ``eps(a) = a D2^2 / (2 mu) + min( ((2a - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu) )``

    Source: Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated Learning",
    NeurIPS 2021 (arXiv 2110.04995), Corollary 4.1 / Theorem 3.5; as coded in google-research/federated
    ``distributed_dp/accounting_utils.py::_skellam_rdp`` with ``scale = 1``.  Valid for integer a > 1.
    """
    mu = _check_positive("variance", variance)
    a = np.asarray(orders, dtype=np.float64)
    d1, d2 = sensitivity.l1, sensitivity.l2
    extra = np.minimum(((2 * a - 1) * d2**2 + 6 * d1) / (4 * mu**2), 3 * d1 / (2 * mu))
    return a * d2**2 / (2 * mu) + extra


def discrete_gaussian_rdp(
    orders: np.ndarray | tuple[int, ...], variance: float, sensitivity: Sensitivity, num_clients: int, dim: int
) -> np.ndarray:
    """RDP of the sum of ``num_clients`` independent discrete Gaussians N_Z(0, variance / num_clients).

    With ``sigma^2 = variance / n`` (per client), ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1))``,
    ``a1 = D1 / sqrt(n sigma^2)``, ``a2 = D2 / sqrt(n sigma^2)`` and ``D = dim``:

    ``eps(a) = min( a/2 a2^2 + tau D,  a/2 (a2^2 + 2 a1 tau + tau^2 D),  a/2 (a2 + sqrt(D) tau)^2 )``

    Source: Kairouz, Liu, Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
    Secure Aggregation", ICML 2021 (arXiv 2102.06387), Proposition 14; as coded in google-research/federated
    ``distributed_dp/accounting_utils.py::compute_rdp_dgaussian`` (scale 1).  tau is negligible once the
    per-client sigma is about 1 or more; for tiny per-client noise the bound degrades sharply.
    """
    var = _check_positive("variance", variance)
    n = _check_int("num_clients", num_clients)
    d = _check_int("dim", dim)
    sigma2 = var / n
    k = np.arange(1, n, dtype=np.float64)
    tau = 10.0 * float(np.sum(np.exp(-2.0 * math.pi**2 * sigma2 * k / (k + 1)))) if n > 1 else 0.0
    a1 = sensitivity.l1 / math.sqrt(var)
    a2 = sensitivity.l2 / math.sqrt(var)
    a = np.asarray(orders, dtype=np.float64)
    t1 = a / 2 * a2**2 + tau * d
    t2 = a / 2 * (a2**2 + 2 * a1 * tau + tau**2 * d)
    t3 = a / 2 * (a2 + math.sqrt(d) * tau) ** 2
    return np.minimum(np.minimum(t1, t2), t3)


def rdp_to_epsilon(orders: np.ndarray | tuple[int, ...], rdp: np.ndarray, delta: float) -> float:
    """(eps, delta) from an RDP curve, by dp_accounting's conversion (Canonne-Kamath-Steinke 2020, Prop. 12)."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    o = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    if o.ndim != 1 or r.shape != o.shape or o.size == 0:
        raise ValueError(f"rdp must be a 1-d curve with one value per order ({o.shape}), got shape {r.shape}")
    if not (np.all(np.isfinite(o)) and np.all(o > 1)):
        raise ValueError(f"orders must be finite numbers > 1, got {o.tolist()}")
    if np.any(np.isnan(r)) or np.any(r < 0):
        raise ValueError("rdp must hold non-negative numbers (inf allowed, NaN not), got " + str(r[:8].tolist()))
    eps, _ = compute_epsilon(list(o), list(r), _check_delta(delta))
    return float(eps)


# ---- the noise mechanisms -----------------------------------------------------------------------------


def _generator(rng: RngLike, secure_mode: bool) -> np.random.Generator:
    if secure_mode:
        if rng is not None:
            raise ValueError("rng must be None when secure_mode=True (the generator is keyed from os.urandom)")
        # Fresh 128-bit key from the OS CSPRNG on every call; see the class docstring for the limits.
        return np.random.Generator(np.random.Philox(key=secrets.randbits(128)))
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        raise ValueError("rng must be a np.random.Generator or an int seed (or use secure_mode=True)")
    return np.random.default_rng(rng)


@dataclass(frozen=True)
class DistributedNoise(ABC):
    """Integer noise split across ``num_clients`` clients so the *sum* of shares has total ``variance``.

    ``secure_mode=False``: shares come from the caller's seeded ``np.random.Generator`` (reproducible;
    for simulation only).  ``secure_mode=True``: every call draws a fresh 128-bit key from ``secrets``
    (the OS CSPRNG) for a Philox-4x64-10 generator.  Limits, as for Opacus' secure_mode: Philox is a
    counter-based generator built from a weakened block cipher, *not* a proven CSPRNG, and numpy's Poisson
    sampler and our discrete-Gaussian rejection step use floating point, so the sampled law matches the
    analysed one only up to float rounding.  The key is not stored, so noise cannot be reproduced or
    predicted from a seed.
    """

    variance: float
    num_clients: int = 1
    secure_mode: bool = False
    name: ClassVar[str] = "noise"

    def __post_init__(self) -> None:
        _check_positive("variance", self.variance)
        if self.variance > MAX_VARIANCE:
            raise ValueError(f"variance must be in (0, {MAX_VARIANCE:.0e}] (int64 noise draws), got {self.variance!r}")
        _check_int("num_clients", self.num_clients)
        if not isinstance(self.secure_mode, bool):
            raise ValueError(f"secure_mode must be a bool, got {self.secure_mode!r}")

    @abstractmethod
    def rdp(self, sensitivity: Sensitivity, dim: int | None = None, orders: tuple[int, ...] = ORDERS) -> np.ndarray:
        """RDP of one round at ``orders`` for a client of the given sensitivity.

        ``dim`` is the summed vector's length (depth * width); the discrete Gaussian's bound needs it,
        Skellam's does not."""

    @abstractmethod
    def _draw(self, gen: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """One client's share per entry of ``shape`` (int64)."""

    def client_noise(self, shape: int | tuple[int, ...], rng: RngLike = None) -> np.ndarray:
        """One client's integer noise share, e.g. ``shape=(depth, width)``; add it to the client's sketch."""
        return self._draw(_generator(rng, self.secure_mode), _shape(shape))

    def clients_noise(self, n: int, shape: int | tuple[int, ...], rng: RngLike = None) -> np.ndarray:
        """Shares of ``n`` clients at once, shape ``(n, *shape)`` (one vectorized draw)."""
        return self._draw(_generator(rng, self.secure_mode), (_check_int("n", n), *_shape(shape)))

    def epsilon(
        self,
        delta: float,
        sensitivity: Sensitivity,
        *,
        rounds: int = 1,
        composition: Composition = "disjoint",
        dim: int | None = None,
        orders: tuple[int, ...] = ORDERS,
    ) -> float:
        """(eps, delta)-DP of ``rounds`` rounds against the server seeing only each round's secure sum.

        ``composition="disjoint"``: each client takes part in one round (cohorts are disjoint), so parallel
        composition gives the per-round guarantee.  ``"repeated"``: a client may take part in every round;
        RDP adds over rounds.
        """
        _check_delta(delta)
        rounds = _check_int("rounds", rounds)
        factor = rounds if _check_composition(composition) == "repeated" else 1
        return rdp_to_epsilon(orders, factor * self.rdp(sensitivity, dim, orders), delta)

    @classmethod
    def calibrate(
        cls,
        target_epsilon: float,
        delta: float,
        sensitivity: Sensitivity,
        *,
        num_clients: int = 1,
        rounds: int = 1,
        composition: Composition = "disjoint",
        dim: int | None = None,
        secure_mode: bool = False,
    ) -> DistributedNoise:
        """The mechanism with the smallest sum variance (to 1e-6 relative) that is (target_epsilon, delta)-DP."""
        var = calibrate(
            target_epsilon, delta, sensitivity, mechanism=cls.name, num_clients=num_clients,
            rounds=rounds, composition=composition, dim=dim,
        )
        return cls(variance=var, num_clients=num_clients, secure_mode=secure_mode)


def _shape(shape: int | tuple[int, ...]) -> tuple[int, ...]:
    s = (shape,) if isinstance(shape, int | np.integer) else tuple(shape)
    if any(int(v) < 0 for v in s):
        raise ValueError(f"shape must have non-negative sizes, got {shape}")
    return tuple(int(v) for v in s)


@dataclass(frozen=True)
class SkellamNoise(DistributedNoise):
    """Distributed Skellam: each client adds ``Poisson(mu/(2n)) - Poisson(mu/(2n))`` per entry, so the sum
    of n shares is exactly Skellam with variance ``mu = variance`` (Agarwal, Kairouz, Liu 2021)."""

    name: ClassVar[str] = "skellam"

    def rdp(self, sensitivity: Sensitivity, dim: int | None = None, orders: tuple[int, ...] = ORDERS) -> np.ndarray:
        return skellam_rdp(orders, self.variance, sensitivity)

    def _draw(self, gen: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        lam = self.variance / (2 * self.num_clients)
        return gen.poisson(lam, shape).astype(np.int64) - gen.poisson(lam, shape).astype(np.int64)

    def sum_noise(self, shape: int | tuple[int, ...], rng: RngLike = None) -> np.ndarray:
        """The sum of ``num_clients`` shares drawn directly (same law: Skellam(variance)), for fast simulation."""
        return self.shares_sum(self.num_clients, shape, rng)

    def shares_sum(self, n: int, shape: int | tuple[int, ...], rng: RngLike = None) -> np.ndarray:
        """The sum of ``n`` clients' shares in one draw: Skellam with ``n`` times a share's variance.

        A sum of independent Skellams is Skellam with the summed variance, so this has exactly the law of
        ``clients_noise(n, shape).sum(0)`` (``n`` survivors of shares sized for ``num_clients``)."""
        n = _check_int("n", n)
        gen = _generator(rng, self.secure_mode)
        s = _shape(shape)
        lam = n * self.variance / (2 * self.num_clients)
        return gen.poisson(lam, s).astype(np.int64) - gen.poisson(lam, s).astype(np.int64)


@dataclass(frozen=True)
class DiscreteGaussianNoise(DistributedNoise):
    """Distributed discrete Gaussian: each client adds N_Z(0, variance / n) per entry (Kairouz, Liu, Steinke
    2021).  ``variance`` is the sum of the per-client parameters sigma^2 (a discrete Gaussian's true variance
    is slightly below its parameter; equal to 1e-6 relative once sigma >= 1).  The sum of shares is not
    itself a discrete Gaussian; ``discrete_gaussian_rdp`` accounts for that (the tau term)."""

    name: ClassVar[str] = "discrete_gaussian"

    def rdp(self, sensitivity: Sensitivity, dim: int | None = None, orders: tuple[int, ...] = ORDERS) -> np.ndarray:
        if dim is None:
            raise ValueError("dim is required for the discrete Gaussian: the summed vector's length (depth * width)")
        return discrete_gaussian_rdp(orders, self.variance, sensitivity, self.num_clients, dim)

    def _draw(self, gen: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return sample_discrete_gaussian(gen, self.variance / self.num_clients, shape)


def sample_discrete_gaussian(gen: np.random.Generator, sigma2: float, shape: tuple[int, ...]) -> np.ndarray:
    """Vectorized N_Z(0, sigma2) by rejection from a discrete Laplace (Canonne, Kamath, Steinke 2020, Alg. 3).

    Proposal ``Y = G1 - G2`` with ``G ~ Geometric(1 - exp(-1/t))``, ``t = floor(sigma) + 1``, accepted with
    probability ``exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))``; the acceptance test is in floating point.
    """
    sigma2 = _check_positive("sigma2", sigma2)
    size = int(np.prod(shape, dtype=np.int64))
    out = np.empty(size, dtype=np.int64)
    t = math.floor(math.sqrt(sigma2)) + 1
    p = -math.expm1(-1.0 / t)
    filled = 0
    while filled < size:
        m = max(64, int(1.5 * (size - filled)) + 16)
        y = gen.geometric(p, m) - gen.geometric(p, m)  # both shifted by 1 on {1,2,..}: the shift cancels
        acc = gen.random(m) < np.exp(-((np.abs(y) - sigma2 / t) ** 2) / (2 * sigma2))
        y = y[acc][: size - filled]
        out[filled : filled + len(y)] = y
        filled += len(y)
    return out.reshape(shape)


# ---- calibration --------------------------------------------------------------------------------------

_MECHANISMS: dict[str, type[DistributedNoise]] = {"skellam": SkellamNoise, "discrete_gaussian": DiscreteGaussianNoise}


def calibrate(
    target_epsilon: float,
    delta: float,
    sensitivity: Sensitivity,
    *,
    mechanism: str = "skellam",
    num_clients: int = 1,
    rounds: int = 1,
    composition: Composition = "disjoint",
    dim: int | None = None,
    rtol: float = 1e-6,
) -> float:
    """Smallest sum variance whose mechanism is (target_epsilon, delta)-DP, by bisection on log-variance.

    eps is decreasing in the variance for both mechanisms, so the bisection keeps ``eps(hi) <= target``
    and returns ``hi``: the guarantee holds at the returned variance.
    """
    target = _check_positive("target_epsilon", target_epsilon)
    _check_delta(delta)
    if mechanism not in _MECHANISMS:
        raise ValueError(f"mechanism must be one of {sorted(_MECHANISMS)}, got {mechanism!r}")
    cls = _MECHANISMS[mechanism]

    def eps(var: float) -> float:
        return cls(var, num_clients).epsilon(delta, sensitivity, rounds=rounds, composition=composition, dim=dim)

    lo, hi = 1e-6, 1.0
    while eps(hi) > target:
        if hi >= MAX_VARIANCE:
            raise ValueError(f"target_epsilon={target} is not reachable with variance <= {MAX_VARIANCE:.0e}")
        lo, hi = hi, min(hi * 16, MAX_VARIANCE)
    if eps(lo) <= target:
        return lo
    while hi / lo > 1 + rtol:
        mid = math.sqrt(lo * hi)
        if eps(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi
