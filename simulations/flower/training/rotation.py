"""A shared random rotation: the randomized Walsh–Hadamard transform ``x -> H D x / sqrt(n)``.

Distributed DP rounds a client's update to integers coordinate by coordinate. Rotating first spreads the update's
energy evenly over the coordinates (Kairouz, Liu, Steinke 2021, Sec. 4; Agarwal, Kairouz, Liu 2021), so that
the rounding error and the per-entry bound are set by ``||x|| / sqrt(n)`` and not by the largest coordinate.
``D`` is a diagonal of random signs drawn from a *public* per-round seed: the server needs it to un-rotate, and
it protects nothing (the privacy comes from the noise). The transform is orthonormal, so norms are kept exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["padded_dim", "rotate", "unrotate", "fwht"]


def padded_dim(d: int) -> int:
    """The smallest power of two >= d (the Hadamard transform's length)."""
    if isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 1:
        raise ValueError(f"d must be an integer >= 1, got {d!r}")
    return 1 << (int(d) - 1).bit_length()


def fwht(x: np.ndarray) -> np.ndarray:
    """The orthonormal fast Walsh–Hadamard transform of a length-2^k float vector (its own inverse)."""
    a = np.array(x, dtype=np.float64)
    n = a.shape[0]
    if n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    h = 1
    while h < n:
        v = a.reshape(-1, 2, h)
        top, bot = v[:, 0, :].copy(), v[:, 1, :]
        v[:, 0, :] += bot
        v[:, 1, :] = top - bot
        h *= 2
    return a / np.sqrt(n)


def _signs(seed: int, n: int) -> np.ndarray:
    return np.where(np.random.default_rng(seed).random(n) < 0.5, -1.0, 1.0)


def rotate(x: np.ndarray, seed: int) -> np.ndarray:
    """Pad ``x`` (1-d) with zeros to a power of two and apply ``H D`` with D's signs from ``seed``."""
    x = np.asarray(x, dtype=np.float64).ravel()
    n = padded_dim(x.size)
    y = np.zeros(n)
    y[: x.size] = x
    return fwht(y * _signs(seed, n))


def unrotate(y: np.ndarray, seed: int, d: int) -> np.ndarray:
    """The inverse of `rotate`: ``D H y``, truncated to the original length ``d``."""
    y = np.asarray(y, dtype=np.float64).ravel()
    if y.size != padded_dim(d):
        raise ValueError(f"y must have length padded_dim(d) = {padded_dim(d)}, got {y.size}")
    return (fwht(y) * _signs(seed, y.size))[:d]
