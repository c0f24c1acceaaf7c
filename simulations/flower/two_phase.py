"""Two-phase sketch sizing inside the protocol: phase 1 at a small width, then the width `fedsketch.TwoPhaseSizer`
picks for the user's error target, re-broadcast to the clients for the remaining rounds.

The two-phase rule is our reconstruction of the paper's (its algorithm box was not available to us; see
`fedsketch.sizing`). The server knows only public numbers and phase 1's released sums: the per-round item counts
enter the sizer as their public upper bounds (phase 1: survivors x item cap; later rounds: cohort x item cap), which
overstates the tail mass and so errs towards a larger width. `settings.width` caps W2 (the communication budget).
W2 is a function of phase 1's (noised) sums only: post-processing for DP.
"""

from __future__ import annotations

from simulations.flower.settings import RoundRecord, ServerSettings


def choose_phase2_width(settings: ServerSettings, records: list[RoundRecord]) -> tuple[int, dict]:
    """The phase-2 width and a report of the choice (falls back to `settings.width` when phase 1 released no sum)."""
    from fedsketch import TwoPhaseSizer

    done = [r for r in records if r.round <= settings.phase1_rounds and r.released]
    if not done:
        return settings.width, {"width": settings.width, "note": "phase 1 released no sum; fixed width used"}
    later = range(settings.phase1_rounds + 1, settings.rounds + 1)
    sizes = [r.survived * settings.item_cap for r in done]
    sizes += [settings.clients_per_round * settings.item_cap for _ in later]
    sizer = TwoPhaseSizer(
        target_error=settings.target_error, domain=settings.domain, depth=settings.depth,
        phase1_width=settings.phase1_width, phase1_rounds=len(done), combine="all", seed=settings.seed,
        max_width=max(settings.width, settings.phase1_width),
    )
    chosen = sizer.plan([r.total for r in done], [r.seed for r in done], sizes)
    return int(chosen.width), {
        "width": int(chosen.width), "predicted_error": float(chosen.predicted_error),
        "target_error": settings.target_error, "target_met": bool(chosen.target_met),
        "phase1_width": settings.phase1_width, "phase1_rounds_used": len(done), "round_size_bounds": sizes,
    }
