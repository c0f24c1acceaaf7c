"""What the theory experiments share: log-log slope fits (with a seed bootstrap) and theory guide lines on plots."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x (the exponent p of y ~ x^p); NaN when fewer than 2 usable
    points (non-positive or non-finite values are dropped)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def bootstrap_slope(x: Sequence[float], samples: Sequence[np.ndarray], *, reps: int, seed: int,
                    level: float = 0.95) -> dict[str, float]:
    """Slope of log(mean of samples[k]) against log x[k], with a percentile bootstrap interval.

    samples[k] holds the per-seed measurements at x[k]; each bootstrap replicate resamples the seeds of every
    x[k] with replacement and refits. Returns {"slope", "lo", "hi", "median_slope"} (the last fits the per-x
    medians instead of the means: a check against heavy tails)."""
    rng = np.random.default_rng(seed)
    means = [float(np.mean(s)) for s in samples]
    boot = np.empty(reps)
    for r in range(reps):
        boot[r] = loglog_slope(x, [np.mean(s[rng.integers(0, len(s), len(s))]) for s in samples])
    tail = (1 - level) / 2
    return {"slope": loglog_slope(x, means), "lo": float(np.quantile(boot, tail)),
            "hi": float(np.quantile(boot, 1 - tail)),
            "median_slope": loglog_slope(x, [float(np.median(s)) for s in samples])}


def guide(ax, x: Sequence[float], slope: float, through: tuple[float, float], label: str, **kw) -> None:
    """Draw the theory line y = c·x^slope through the point `through` on log-log axes (dashed grey default)."""
    x = np.asarray(x, float)
    x0, y0 = through
    kw = {"ls": "--", "color": "0.3", "lw": 1.0} | kw
    ax.plot(x, y0 * (x / x0) ** slope, label=label, **kw)
