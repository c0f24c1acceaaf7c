"""The app's privacy: calibrating the clients' Skellam noise for (epsilon, delta), and the report of what was spent.

Unit and relation: one client (one user: a Shakespeare role), all its bounded items in a round; add or remove one
client. Bound: ``contribution="distinct"``, at most m distinct items and cells in [-1, 1], so Delta1 = m R and
Delta2 = sqrt(m R) for every input (``"occurrences"``: Delta2 = m sqrt(R)). Adversary: the server, honest but
curious, seeing only each released round's secure sum; the noise shares come from generators keyed from the OS
CSPRNG on each client, so nothing it sends or sees determines them. It may collude with up to
``survivors - min_survivors`` clients of a round (their shares removed, the rest still carry the calibrated
variance). Accounting: RDP of the Skellam mechanism (`fedsketch.privacy`), composed over the *released* rounds
only (disjoint cohorts: in parallel, i.e. the guarantee of one round; otherwise sequentially).
"""

from __future__ import annotations

import math

from simulations.flower.settings import RoundRecord, ServerSettings


def _mechanism(settings: ServerSettings):
    from fedsketch.privacy import sketch_sensitivity

    sens = sketch_sensitivity(settings.depth, settings.item_cap, contribution=settings.contribution)
    composition = "disjoint" if settings.planner.disjoint else "repeated"
    return sens, composition, settings.depth * max(settings.width, settings.phase1_width)


def check_dp_request(epsilon: object, delta: object) -> tuple[float, float]:
    """(epsilon, delta) as floats; ValueError unless epsilon is finite and > 0 and delta in (0, 1).

    DP that was asked for is never silently turned off: epsilon <= 0 or a missing delta is an error."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(f"epsilon must be a finite number > 0 when DP is requested, got {epsilon!r}")
    if delta is None:
        raise ValueError("delta is required when DP is requested (e.g. delta=1e-5)")
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1) when DP is requested, got {delta!r}")
    return float(epsilon), float(delta)


def calibrate_noise(settings: ServerSettings, epsilon: float, delta: float) -> float:
    """The smallest Skellam sum variance per entry giving (epsilon, delta)-DP over all planned rounds, split into
    `settings.noise_floor` shares (the fewest survivors a released round may have)."""
    from fedsketch.privacy import SkellamNoise

    epsilon, delta = check_dp_request(epsilon, delta)
    sens, composition, dim = _mechanism(settings)
    return SkellamNoise.calibrate(epsilon, delta, sens, num_clients=settings.noise_floor, rounds=settings.rounds,
                                  composition=composition, dim=dim).variance


def privacy_report(settings: ServerSettings, records: list[RoundRecord], *, epsilon_target: float | None,
                   delta: float | None, seeded_noise: bool = False) -> dict:
    """What the released rounds cost and against whom (JSON-friendly, with a one-paragraph `statement`)."""
    rel = [r for r in records if r.released]
    if settings.noise_var <= 0:
        return {"dp": False, "rounds_released": len(rel),
                "statement": "No DP noise: the server learns each released round's exact sum of the clients' tables."}
    from fedsketch.privacy import SkellamNoise

    sens, composition, dim = _mechanism(settings)
    noise = SkellamNoise(settings.noise_var, settings.noise_floor)
    eps = 0.0 if not rel else noise.epsilon(delta, sens, rounds=len(rel), composition=composition, dim=dim)
    collude = min((r.survived - settings.noise_floor for r in rel), default=0)
    bound = ("at most m distinct items per client, every table cell clipped to [-1, 1]" if settings.contribution ==
             "distinct" else "at most m item occurrences per client (no cell bound)")
    if seeded_noise:
        generator = ("SEEDED from the simulation's noise seed: NOT PRIVATE AGAINST THE SERVER (whoever knows the "
                     "seed can subtract the noise); for reproducible simulations only")
    else:
        generator = "each client's own Philox generator keyed with 128 bits from the OS CSPRNG (secrets), per round"
    adversary = (f"the server (honest but curious, sees only released secure sums), alone or colluding with at most "
                 f"{max(collude, 0)} clients of a round (survivors - min_survivors)")
    if seeded_noise:
        adversary = "none: NOT PRIVATE AGAINST THE SERVER (seeded noise)"
    report = {
        "dp": True, "private_against_server": not seeded_noise,
        "mechanism": "distributed Skellam (Agarwal, Kairouz, Liu 2021), shares added by the clients before SecAgg+",
        "accountant": "RDP of the Skellam mechanism -> (epsilon, delta) with dp_accounting",
        "unit_of_privacy": "user-level: one client (one speaking role), all its bounded items in a round",
        "neighbouring_relation": "add/remove one client",
        "contribution": settings.contribution, "contribution_bound": bound, "item_cap": settings.item_cap,
        "sensitivity_l1": sens.l1, "sensitivity_l2": sens.l2,
        "sum_variance_per_entry": settings.noise_var, "min_survivors": settings.noise_floor,
        "share_variance_per_entry": settings.noise_var / settings.noise_floor,
        "noise_generator": generator, "adversary": adversary,
        "composition": composition, "rounds_planned": settings.rounds, "rounds_released": len(rel),
        "epsilon": eps, "epsilon_target": epsilon_target, "delta": delta,
    }
    report["statement"] = (
        f"({eps:.3g}, {delta:g})-DP, user-level (add/remove one client; {bound}, m = {settings.item_cap}: "
        f"Delta1 = {sens.l1:g}, Delta2 = {sens.l2:.3g}), over the {len(rel)} released of {settings.rounds} rounds "
        f"({composition} cohorts), against {adversary}. Noise: {generator}; calibrated for "
        f"{settings.noise_floor} survivors, and no round with fewer is released.")
    return report
