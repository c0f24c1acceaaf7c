"""Error of frequency estimates: l_inf and l_2, on the count scale or the normalized-frequency scale.

`scale="count"` (default) compares count vectors directly: |c_hat - c|. `scale="frequency"` divides both by
N = sum(c), the total number of items, giving |f_hat - f| with f = c / N (the paper's normalized metric).
`top_k` restricts the error to the k items with the largest true counts (ties broken by the smaller id).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

SCALES = ("count", "frequency")


def _errors(estimate: ArrayLike, truth: ArrayLike, scale: str, top_k: int | None) -> np.ndarray:
    est = np.asarray(estimate, dtype=np.float64)
    true = np.asarray(truth, dtype=np.float64)
    if est.ndim != 1 or est.shape != true.shape:
        raise ValueError(f"estimate and truth must be 1-d arrays of equal shape, got {est.shape} and {true.shape}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    diff = est - true
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or not 1 <= top_k <= true.size:
            raise ValueError(f"top_k must be an integer in [1, {true.size}], got {top_k!r}")
        order = np.argsort(-true, kind="stable")[: int(top_k)]
        diff = diff[order]
    if scale == "frequency":
        total = true.sum()
        if total <= 0:
            raise ValueError(f"truth must have a positive sum for scale='frequency', got {total}")
        diff = diff / total
    return diff


def linf_error(
    estimate: ArrayLike, truth: ArrayLike, *, scale: str = "count", top_k: int | None = None
) -> float:
    """max_j |estimate_j - truth_j| (over the top-k true items if `top_k`), on the count or frequency scale."""
    diff = _errors(estimate, truth, scale, top_k)
    return float(np.max(np.abs(diff))) if diff.size else 0.0


def l2_error(estimate: ArrayLike, truth: ArrayLike, *, scale: str = "count", top_k: int | None = None) -> float:
    """||estimate - truth||_2 (over the top-k true items if `top_k`), on the count or frequency scale."""
    diff = _errors(estimate, truth, scale, top_k)
    return float(np.sqrt(np.dot(diff, diff)))


def tail_norm(counts: ArrayLike, k: int) -> float:
    """||tail_k(c)||_2: the l2 norm of c without its k largest-|.| entries (the count sketch's error scale)."""
    c = np.abs(np.asarray(counts, dtype=np.float64))
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    if k >= c.size:
        return 0.0
    if k == 0:
        return float(np.sqrt(np.dot(c, c)))
    rest = np.partition(c, c.size - k)[: c.size - k]
    return float(np.sqrt(np.dot(rest, rest)))
