"""Exact expected risk of one-pass SGD on Gaussian linear regression, by its second-moment recursion.

Data x ~ N(0, H) in the eigenbasis of H (eigenvalues mu_i), y = <x, w*> + noise of variance nu, independent of
x. One-pass SGD w <- w + gamma_t (y - <x, w>) x has error e = w - w* with

    e <- (I - gamma x x^T) e + gamma noise x.

With Gaussian x, E[x x^T A x x^T] = 2 H A H + tr(H A) H, so the diagonal c_i = E[e_i^2] obeys a closed recursion
that off-diagonal terms never enter:

    c_i <- (1 - gamma mu_i)^2 c_i + gamma^2 mu_i^2 c_i + gamma^2 mu_i (sum_j mu_j c_j + nu),

and the excess risk is E[e^T H e] = sum_i mu_i c_i. The cost is O(#eigenvalues) per step. `weights` lets one
entry stand for several equal eigenvalues (a binned infinite spectrum).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def geometric_schedule(n: int, gamma0: float) -> list[tuple[float, int]]:
    """The stepsize schedule as (gamma, steps) stages: gamma0 halved every n/log2(n) steps (log2 n stages; the
    last takes the remainder), so the effective sample size is about n/log2 n."""
    stages = max(int(np.log2(n)), 1)
    length = n // stages
    return [(gamma0 / 2**s, length if s < stages - 1 else n - length * (stages - 1)) for s in range(stages)]


def sgd_moments(mu: np.ndarray, c: np.ndarray, noise: float, gamma: float, steps: int, *,
                weights: np.ndarray | None = None) -> np.ndarray:
    """The second moments c_i = E[e_i^2] after `steps` SGD steps of size `gamma` from `c` (the recursion above).

    mu: eigenvalues of H; noise: the label-noise variance nu (for a misspecified problem with Gaussian data,
    nu = sigma^2 + the approximation error: the residual is independent of x)."""
    mu = np.asarray(mu, float)
    wm = mu * (np.ones_like(mu) if weights is None else np.asarray(weights, float))
    c = np.asarray(c, float).copy()
    q = (1 - gamma * mu) ** 2 + (gamma * mu) ** 2
    r = gamma**2 * mu
    for _ in range(steps):
        c = q * c + r * (wm @ c + noise)
    return c


def sgd_excess_risk(mu: np.ndarray, c0: np.ndarray, noise: float, schedule: Sequence[tuple[float, int]], *,
                    weights: np.ndarray | None = None) -> float:
    """E[e_N^T H e_N] after running `schedule` (a list of (gamma, steps) stages) from second moments `c0`."""
    c = np.asarray(c0, float)
    for gamma, steps in schedule:
        c = sgd_moments(mu, c, noise, gamma, steps, weights=weights)
    w = np.ones_like(c) if weights is None else np.asarray(weights, float)
    return float((w * np.asarray(mu, float)) @ c)
