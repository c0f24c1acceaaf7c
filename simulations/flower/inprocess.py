"""The in-process backend: the same rounds as the Flower app, summed by `fedsketch.InProcessSecureSum`, no Ray.

Same `RoundPlanner` (cohorts, dropouts, hash seeds), same client tables (`task.cohort_tables` equals the ClientApp's
`client_table` client by client), same client-side validation, and an exact masked modular sum — so for a given seed
it produces the sums the Flower app produces, at a fraction of the cost, for sweeps over thousands of clients.

Skipping: SecAgg+ needs `reconstruction_threshold` live neighbours per client; here a round is skipped when fewer
than that many clients survive in total (or the survivors' masking graph splits), the nearest single-number analogue.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from simulations.flower.exact_sum import secagg_shares
from simulations.flower.rounds import RoundRecord
from simulations.flower.server_app import ServerLog, ServerSettings
from simulations.flower.task import check_table, cohort_tables
from simulations.flower.two_phase import choose_phase2_width


def reconstruction_count(settings: ServerSettings) -> int:
    """The survivor count below which a round is skipped (SecAgg+'s threshold rule for this cohort size)."""
    shares = settings.num_shares or secagg_shares(settings.clients_per_round)
    return max(2, int(round(settings.reconstruction_threshold * shares)))


def run_inprocess(
    settings: ServerSettings, on_round: Callable[[RoundRecord], None] | None = None
) -> ServerLog:
    """Run every round with the in-process secure sum; returns the same `ServerLog` the Flower app fills."""
    from fedsketch.secure_sum import InProcessSecureSum, SecureSumAborted, required_modulus_bits

    plan = settings.planner
    k = settings.clients_per_round
    shares = settings.num_shares or secagg_shares(k)
    bits = max(32, required_modulus_bits(k, settings.bound))
    secure = InProcessSecureSum(
        modulus_bits=bits, seed=settings.seed, neighbours=max(2, shares - 1), min_survivors=reconstruction_count(settings)
    )
    server_log = ServerLog(partitions={p: p for p in range(settings.n_clients)})
    for t in range(1, settings.rounds + 1):
        if settings.two_phase and t == settings.phase1_rounds + 1:
            width, server_log.sizing = choose_phase2_width(settings, server_log.records)
            settings = replace(settings, phase2_width=width)
        t0 = time.perf_counter()
        cohort, told = plan.cohort(t), set(plan.dropped(t).tolist())
        spec = settings.round_spec(t)
        tables = cohort_tables(spec, cohort)
        failed = [i for i, p in enumerate(cohort.tolist()) if p in told]
        for i in range(len(cohort)):
            if i not in failed:
                try:
                    check_table(tables[i], spec)  # client-side validation: a bad table is a failed client
                except ValueError:
                    failed.append(i)
        rec = RoundRecord(round=t, seed=spec.seed, width=spec.width, sampled=len(cohort), told_to_drop=len(told))
        alive = np.setdiff1d(np.arange(len(cohort)), failed)
        rec.failures = len(failed)
        try:
            result = secure.sum(tables.reshape(len(cohort), -1), dropped=sorted(failed), bound=settings.bound)
        except SecureSumAborted as err:
            rec.skipped = f"round {t} skipped: {err}"
        else:
            rec.total = result.total.reshape(settings.depth, spec.width)
            rec.survivors = cohort[alive].tolist()
        rec.seconds = time.perf_counter() - t0
        server_log.records.append(rec)
        if on_round is not None:
            on_round(rec)
    server_log.settings = settings
    return server_log
