"""The in-process backend: the rounds of the Flower app without Flower or Ray, for sweeps over thousands of clients.

Same planner (cohorts, hash seeds), same client-side functions (`task`: bounded items and tables), same noise
floor, and two ways to form each round's sum:

- ``masking="masked"`` (default; the protocol-cost path): every client's bounded table and its own noise share
  exist, are validated like the ClientApp does, and are summed by `fedsketch.InProcessSecureSum` (pairwise masks,
  exact modular sum, dropouts), which aborts a round below the noise floor before unmasking.
- ``masking="simulated"``: no per-client tables. By linearity the survivors' tables sum to the bounded sum of their
  items (`task.cohort_sum`), and the sum of n independent Skellam shares is one Skellam draw with n times a share's
  variance. Exactly the same noise-free sum as the masked path, the same noise law; no masking cost.

Noise: keyed from the OS CSPRNG (`secrets`) unless `noise_seed` is given, which makes the run reproducible and is
NOT PRIVATE AGAINST THE SERVER (simulation only). The harness keeps each round's noise sum in an `OracleLedger` for
the evaluation oracle; the returned `ServerLog` holds only what the server would.

Skipping: SecAgg+ needs `reconstruction_threshold` live neighbours per client; here a round is also skipped when
fewer clients survive than the noise floor (or the survivors' masking graph splits).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from simulations.flower.exact_sum import secagg_shares
from simulations.flower.settings import (
    DataSpec,
    FaultPlan,
    OracleLedger,
    RoundRecord,
    ServerLog,
    ServerSettings,
)
from simulations.flower.task import check_table, cohort_sum, cohort_tables
from simulations.flower.two_phase import choose_phase2_width

MASKINGS = ("masked", "simulated")


def masked_peak_bytes(settings: ServerSettings) -> int:
    """Estimated peak memory of one masked round: tables, noise shares, ring uploads and one mask per client."""
    return 4 * settings.clients_per_round * settings.depth * max(settings.width, settings.phase1_width) * 8


def memory_limit_bytes() -> int:
    """Half of this machine's physical memory: the most a single simulated round may plan to hold."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


def check_memory(settings: ServerSettings, masking: str = "masked") -> None:
    """ValueError (before anything runs) when a masked round could not fit in memory."""
    if masking not in MASKINGS:
        raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}")
    need, have = masked_peak_bytes(settings), memory_limit_bytes()
    if masking == "masked" and need > have:
        raise ValueError(
            f"width={settings.width}: the masked path would hold {settings.clients_per_round} x {settings.depth} x "
            f"{settings.width} int64 tables (~{need / 2**30:.1f} GiB at peak), more than half this machine's memory "
            f"({have / 2**30:.1f} GiB); lower width or clients_per_round, or use masking=simulated")


def run_inprocess(
    settings: ServerSettings,
    data: DataSpec,
    faults: FaultPlan | None = None,
    *,
    masking: str = "masked",
    noise_seed: int | None = None,
    ledger: OracleLedger | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> ServerLog:
    """Run every round in process; returns the `ServerLog` the Flower app would fill (and fills `ledger`)."""
    from fedsketch.privacy import SkellamNoise
    from fedsketch.secure_sum import InProcessSecureSum, SecureSumAborted, required_modulus_bits

    check_memory(settings, masking)
    faults = faults or FaultPlan()
    plan = settings.planner
    k, floor = settings.clients_per_round, settings.noise_floor
    shares = settings.num_shares or secagg_shares(k)
    secure = InProcessSecureSum(
        modulus_bits=max(32, required_modulus_bits(k, settings.bound)), seed=settings.seed,
        neighbours=max(2, shares - 1), min_survivors=max(floor, settings.reconstruction_count),
    )
    server_log = ServerLog(partitions={p: p for p in range(settings.n_clients)})
    for t in range(1, settings.rounds + 1):
        if settings.two_phase and t == settings.phase1_rounds + 1:
            width, server_log.sizing = choose_phase2_width(settings, server_log.records)
            settings = replace(settings, phase2_width=width)
        t0 = time.perf_counter()
        cohort = plan.cohort(t)
        spec = settings.round_spec(t)
        failing = faults.failing(t)
        alive = np.array([p not in failing for p in cohort.tolist()], dtype=bool)
        rec = RoundRecord(round=t, seed=spec.seed, width=spec.width, sampled=len(cohort))
        rng = None if noise_seed is None else np.random.default_rng([noise_seed, t])
        noise_law = SkellamNoise(spec.noise_var, spec.noise_shares, secure_mode=rng is None) if spec.noise_var else None
        shape = (spec.depth, spec.width)
        if masking == "simulated":
            n_alive = int(alive.sum())
            if n_alive < secure.min_survivors:
                rec.skipped = (f"round {t} not released: {n_alive} survivors, below the noise floor "
                               f"min_survivors={secure.min_survivors}")
            else:
                noise = noise_law.shares_sum(n_alive, shape, rng) if noise_law else np.zeros(shape, np.int64)
                rec.total = cohort_sum(spec, data, cohort[alive]) + noise
                if ledger is not None:
                    ledger.noise[t] = noise
        else:
            tables = cohort_tables(spec, data, cohort)
            noise = noise_law.clients_noise(len(cohort), shape, rng) if noise_law else np.zeros_like(tables)
            tables += noise
            for i in np.flatnonzero(alive):
                try:
                    check_table(tables[i], spec)  # client-side validation: a bad table is a failed client
                except ValueError:
                    alive[i] = False
            try:
                result = secure.sum(tables.reshape(len(cohort), -1), dropped=np.flatnonzero(~alive).tolist(),
                                    bound=spec.bound)
            except SecureSumAborted as err:
                rec.skipped = f"round {t} not released: {err}"
            else:
                rec.total = result.total.reshape(shape)
                if ledger is not None:
                    ledger.noise[t] = noise[alive].sum(axis=0)
            del tables, noise
        rec.failures = int((~alive).sum())
        if rec.released:
            rec.survivors = cohort[alive].tolist()
            rec.survived = len(rec.survivors)
        rec.seconds = time.perf_counter() - t0
        server_log.records.append(rec)
        if on_round is not None:
            on_round(rec)
    server_log.settings = settings
    return server_log
