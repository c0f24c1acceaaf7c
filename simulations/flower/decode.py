"""Server-side decoding: what the server computes from the released round sums and the public seeds, and nothing more.

`decode_rounds` estimates every item's count with `fedsketch.multiround_estimate` (the hybrid estimator by default:
per-round count-median, summed over rounds; our reconstruction of the paper's hybrid sketch, see `fedsketch.hybrid`).
Rounds that were not released (below the noise floor, or halted by SecAgg+) are not in the estimate.
"""

from __future__ import annotations

import numpy as np

from simulations.flower.settings import RoundRecord, ServerSettings


def released(records: list[RoundRecord]) -> list[RoundRecord]:
    """The rounds whose sums were released."""
    return [r for r in records if r.released]


def decode_rounds(records: list[RoundRecord], settings: ServerSettings, method: str = "hybrid") -> np.ndarray | None:
    """Count estimates for all d items from the released rounds' sums.

    Rounds of different widths (two-phase sizing) are decoded as the hybrid sum of the per-round median estimates;
    the other methods need one width and give None then. No released round: all zeros.
    """
    from fedsketch import CountSketch, multiround_estimate

    done = released(records)
    d = settings.domain
    if not done:
        return np.zeros(d)
    widths = {r.width for r in done}
    if len(widths) > 1:
        if method != "hybrid":
            return None
        return sum(CountSketch(settings.depth, r.width, r.seed, domain=d).decode(r.total) for r in done)
    return multiround_estimate(
        [r.total for r in done], [r.seed for r in done], depth=settings.depth, width=widths.pop(),
        method=method, domain=d,
    )


def top_estimates(estimate: np.ndarray, k: int = 20) -> dict[str, list]:
    """The k items with the largest estimated counts (what a deployed server reports without any oracle)."""
    top = np.argsort(-estimate, kind="stable")[:k]
    return {"ids": top.tolist(), "estimate": [float(x) for x in estimate[top]]}
