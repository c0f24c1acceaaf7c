"""Client-level distributed DP for model updates: clip, rotate, scale, round, add a Skellam share, sum exactly.

What Flower does not have (Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated
Learning", NeurIPS 2021; their federated EMNIST runs are the reference). Per round, each sampled client

1. clips its update to ``||x||_2 <= C``;
2. rotates it with the round's shared randomized Hadamard transform (`rotation`), norm unchanged;
3. scales by ``s`` and rounds every coordinate stochastically, *conditionally*: it re-draws until the rounded
   norm is within ``rounded_l2_bound`` (Kairouz, Liu, Steinke 2021, Sec. 4.1; ``beta`` bounds a retry's chance);
4. adds its share ``Poisson(mu/2n) - Poisson(mu/2n)`` per coordinate from a generator keyed by the OS CSPRNG
   (`fedsketch.privacy.SkellamNoise(secure_mode=True)`): the server cannot reproduce it;
5. checks every entry against the public per-entry bound and uploads through SecAgg+ with the exact-sum settings
   (`simulations.flower.exact_sum`), so the server learns only the exact integer sum.

The server divides the sum by ``s``, un-rotates and truncates. With at least ``n = min_survivors`` surviving
shares the sum carries Skellam noise of variance >= mu on every coordinate.

Guarantee. Protected: one client's whole update in a round (user-level when a client is a user), add/remove one
client. Against the server (honest but curious, sees every round's sum and chooses the cohort, so no sampling
amplification): the Skellam RDP curve (`fedsketch.privacy.skellam_rdp`) at the rounded sensitivity, composed over
rounds. Against whoever sees only the released models (the sampling is hidden from them): the same curve through
the Poisson-subsampled RDP bound (`subsampled_rdp`). Colluding with c clients, the server removes their shares: the
guarantee holds while survivors - c >= min_survivors.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

from fedsketch.privacy import ORDERS, Sensitivity, SkellamNoise, rdp_to_epsilon, skellam_rdp
from simulations.flower.exact_sum import ExactSumParams, exact_sum_params
from simulations.flower.training.rotation import padded_dim, rotate, unrotate

__all__ = ["DDPParams", "rounded_l2_bound", "subsampled_rdp", "clip_update", "encode", "decode_sum",
           "calibrate_ddp", "conditional_round"]

TAIL_SIGMAS = 16.0
"""Per-entry bound allowance: this many standard deviations of one client's noise share."""


def rounded_l2_bound(scaled_norm: float, dim: int, beta: float) -> float:
    """The l2 norm bound of a conditionally rounded vector (Kairouz, Liu, Steinke, ICML 2021, Sec. 4.1, conditional randomized rounding; as in
    google-research/federated ``distributed_dp``): ``min(c + sqrt(d), sqrt(c^2 + d/4 + sqrt(2 log(1/beta))
    (c + sqrt(d)/2)))`` for a vector of norm ``c`` in ``d`` coordinates. ``beta = 0`` means unconditional rounding."""
    if not scaled_norm > 0:
        raise ValueError(f"scaled_norm must be > 0, got {scaled_norm}")
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    worst = scaled_norm + math.sqrt(dim)
    if beta == 0:
        return worst
    cond = math.sqrt(scaled_norm**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (scaled_norm + math.sqrt(dim) / 2))
    return min(worst, cond)


def subsampled_rdp(orders: tuple[int, ...], rdp: np.ndarray, q: float) -> np.ndarray:
    """RDP of a mechanism with curve ``rdp`` (at integer ``orders`` >= 2) under Poisson sampling with rate ``q``.

    The general upper bound of Zhu & Wang, "Poisson Subsampled Rényi Differential Privacy", ICML 2019, Theorem 6:
    ``(a-1) eps'(a) <= log[(1-q)^(a-1) (1 + (a-1) q) + C(a,2) q^2 (1-q)^(a-2) e^eps(2)
    + 3 sum_{l=3}^a C(a,l) q^l (1-q)^(a-l) e^((l-1) eps(l))]``. It needs eps at every integer order up to a, so
    orders must be the consecutive integers 2..A (the grid is extended by the caller). Evaluated in log space."""
    o = [int(a) for a in orders]
    if o != list(range(2, 2 + len(o))):
        raise ValueError("orders must be the consecutive integers 2, 3, ..., A")
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    r = np.asarray(rdp, dtype=np.float64)
    if q == 1:
        return r.copy()
    eps = {a: float(v) for a, v in zip(o, r)}
    lq, l1q = math.log(q), math.log1p(-q)
    out = []
    for a in o:
        terms = [(a - 1) * l1q + math.log1p((a - 1) * q),
                 math.log(math.comb(a, 2)) + 2 * lq + (a - 2) * l1q + eps[2]]
        terms += [math.log(3 * math.comb(a, j)) + j * lq + (a - j) * l1q + (j - 1) * eps[j] for j in range(3, a + 1)]
        m = max(terms)
        out.append((m + math.log(sum(math.exp(t - m) for t in terms))) / (a - 1))
    return np.minimum(np.asarray(out), r)  # subsampling never hurts


def _grid(max_order: int = 256) -> tuple[int, ...]:
    return tuple(range(2, max_order + 1))


@dataclass(frozen=True)
class DDPParams:
    """One run's public distributed-DP parameters (the same for every client and round)."""

    dim: int
    """The model update's length d (before padding)."""
    clip: float
    """C: every client's update is clipped to l2 norm <= C."""
    scale: float
    """s: the rotated update is multiplied by s before rounding (the precision)."""
    variance: float
    """mu: the Skellam variance of the *sum* of min_survivors shares, per coordinate, in integer units."""
    min_survivors: int
    """n: shares are sized so n of them carry mu; a round with fewer survivors is not unmasked."""
    max_clients: int
    """The largest cohort the exact SecAgg+ sum must hold (sets the modulus check)."""
    beta: float = math.exp(-0.5)
    """Conditional rounding's retry bound (the reference value e^-0.5)."""

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        for name in ("clip", "scale", "variance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 1 <= self.min_survivors <= self.max_clients:
            raise ValueError(f"min_survivors must be in [1, max_clients={self.max_clients}], got {self.min_survivors}")
        self.exact()  # the modulus check, before any client runs

    @property
    def padded(self) -> int:
        return padded_dim(self.dim)

    @property
    def l2_bound(self) -> float:
        """The rounded vector's l2 bound (the sensitivity the accounting uses)."""
        return rounded_l2_bound(self.scale * self.clip, self.padded, self.beta)

    def sensitivity(self) -> Sensitivity:
        """Delta2 = the rounded bound; Delta1 = min(Delta2^2, sqrt(d) Delta2), which holds for integer vectors."""
        l2 = self.l2_bound
        return Sensitivity(l1=min(l2 * l2, math.sqrt(self.padded) * l2), l2=l2)

    def noise(self, secure: bool = True) -> SkellamNoise:
        return SkellamNoise(variance=self.variance, num_clients=self.min_survivors, secure_mode=secure)

    @property
    def entry_bound(self) -> int:
        """Public per-entry bound of an upload: |rounded entry| <= l2 bound, plus the share's tail allowance."""
        share_sd = math.sqrt(self.variance / self.min_survivors)
        return int(math.ceil(self.l2_bound + TAIL_SIGMAS * share_sd) + 8)

    def exact(self) -> ExactSumParams:
        """SecAgg+ settings under which the sum of max_clients uploads is exact (ValueError if it could wrap)."""
        return exact_sum_params(self.entry_bound, self.max_clients)

    @property
    def noise_std(self) -> float:
        """The per-coordinate noise std of the decoded sum, in model units: sqrt(mu) / s."""
        return math.sqrt(self.variance) / self.scale

    def rdp(self, orders: tuple[int, ...]) -> np.ndarray:
        return skellam_rdp(orders, self.variance, self.sensitivity())

    def epsilon(self, rounds: int, delta: float, q: float | None = None) -> float:
        """(eps, delta) over ``rounds`` rounds: q None = against the server (no amplification: it picks the
        cohort); q = the Poisson rate = against observers of the released models only."""
        if q is None:
            return rdp_to_epsilon(ORDERS, rounds * self.rdp(ORDERS), delta)
        grid = _grid()
        return rdp_to_epsilon(grid, rounds * subsampled_rdp(grid, self.rdp(grid), q), delta)


def calibrate_ddp(target_epsilon: float, delta: float, rounds: int, q: float | None, *, dim: int, clip: float,
                  scale: float, min_survivors: int, max_clients: int) -> DDPParams:
    """The smallest Skellam variance (to 0.1 % relative) whose run is (target_epsilon, delta)-DP in the sense of
    `DDPParams.epsilon` (q None: against the server; else released models under Poisson rate q)."""
    if not target_epsilon > 0:
        raise ValueError(f"target_epsilon must be > 0, got {target_epsilon}")

    def make(var: float) -> DDPParams:
        return DDPParams(dim=dim, clip=clip, scale=scale, variance=var, min_survivors=min_survivors,
                         max_clients=max_clients)

    l2 = rounded_l2_bound(scale * clip, padded_dim(dim), math.exp(-0.5))
    lo, hi = (0.01 * l2) ** 2, (1000.0 * l2) ** 2
    if make(hi).epsilon(rounds, delta, q) > target_epsilon:
        raise ValueError(f"target_epsilon={target_epsilon} needs more noise than 1000x the sensitivity: raise it")
    if make(lo).epsilon(rounds, delta, q) <= target_epsilon:
        return make(lo)
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if make(mid).epsilon(rounds, delta, q) <= target_epsilon else (mid, hi)
    return make(hi)


def clip_update(x: np.ndarray, clip: float) -> tuple[np.ndarray, float]:
    """``x * min(1, C / ||x||)`` and the norm before clipping."""
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    x = np.asarray(x, dtype=np.float64)
    norm = float(np.linalg.norm(x))
    return (x * (clip / norm) if norm > clip else x.copy()), norm


def conditional_round(y: np.ndarray, bound: float, rng: np.random.Generator, max_tries: int = 1000) -> np.ndarray:
    """Stochastic rounding of ``y`` re-drawn until ``||round|| <= bound`` (unbiased up to the conditioning)."""
    floor = np.floor(y)
    frac = y - floor
    for _ in range(max_tries):
        z = floor + (rng.random(y.shape) < frac)
        if float(np.linalg.norm(z)) <= bound:
            return z.astype(np.int64)
    raise RuntimeError(f"conditional rounding failed {max_tries} times (bound {bound}); the bound is too tight")


def encode(update: np.ndarray, params: DDPParams, rotation_seed: int, *,
           noise_rng: np.random.Generator | int | None = None) -> np.ndarray:
    """One client's upload: clip, rotate, scale, round, add its Skellam share, check the per-entry bound.

    ``noise_rng=None`` (the private default) draws the share and the rounding from generators keyed by the OS
    CSPRNG. A seed or generator reproduces them: SIMULATION ONLY, not private against a server that knows it."""
    x = np.asarray(update, dtype=np.float64).ravel()
    if x.size != params.dim:
        raise ValueError(f"update must have length dim={params.dim}, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError("update has non-finite entries; the client refuses to upload")
    x, _ = clip_update(x, params.clip)
    y = rotate(x, rotation_seed) * params.scale
    secure = noise_rng is None
    rng = np.random.default_rng(secrets.randbits(128)) if secure else np.random.default_rng(noise_rng)
    z = conditional_round(y, params.l2_bound, rng)
    share = params.noise(secure=secure).client_noise(z.size, rng=None if secure else rng)
    out = z + share
    peak = int(np.abs(out).max())
    if peak > params.entry_bound:  # SecAgg+ would clip it silently: refuse instead (the round counts a dropout)
        raise ValueError(f"upload entry |{peak}| exceeds the public bound {params.entry_bound}; not uploaded")
    return out


def decode_sum(total: np.ndarray, params: DDPParams, rotation_seed: int) -> np.ndarray:
    """The server's view: the exact integer sum -> un-scaled, un-rotated float sum of the clients' updates."""
    t = np.asarray(total)
    if t.shape != (params.padded,):
        raise ValueError(f"sum must have shape ({params.padded},), got {t.shape}")
    return unrotate(t.astype(np.float64) / params.scale, rotation_seed, params.dim)
