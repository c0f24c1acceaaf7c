"""The evaluation oracle (SIMULATION ONLY): it scores the released estimate from outside the protocol.

The oracle re-reads the clients' data (the true counts of the items they contributed, the noise-free round sums,
the shared-hash baseline, an in-process re-sum of the same tables) and is handed each round's noise sum by the
harness (`OracleLedger`), which lets it check the secure sum to the integer. No protocol decision depends on it,
the server never holds what it reads, and a deployed ServerApp runs it only when its run config asks for it.
Errors are reported on the count scale and on the frequency scale (count / total items).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from simulations.flower.decode import decode_rounds, released
from simulations.flower.settings import DataSpec, OracleLedger, RoundRecord, ServerSettings
from simulations.flower.task import cohort_bounded_items, cohort_sum, cohort_tables


def _spec(record: RoundRecord, settings: ServerSettings, seed: int | None = None, width: int | None = None):
    """The round's spec as its clients saw it (or re-hashed with another seed or width)."""
    return replace(settings.round_spec(record.round), seed=record.seed if seed is None else seed,
                   width=record.width if width is None else width)


def oracle_truth(records: list[RoundRecord], settings: ServerSettings, data: DataSpec) -> np.ndarray:
    """True counts of the items the survivors of the released rounds contributed (after contribution bounding)."""
    counts = np.zeros(settings.domain, dtype=np.int64)
    for r in released(records):
        items, _ = cohort_bounded_items(_spec(r, settings), data, np.asarray(r.survivors))
        counts += np.bincount(items, minlength=settings.domain)
    return counts


def oracle_round_sum(record: RoundRecord, settings: ServerSettings, data: DataSpec, *, seed: int | None = None,
                     width: int | None = None, noise: np.ndarray | None = None) -> np.ndarray:
    """The plain sum of the survivors' bounded tables (optionally re-hashed with another seed or width), plus
    `noise` when given."""
    total = cohort_sum(_spec(record, settings, seed, width), data, np.asarray(record.survivors))
    return total if noise is None else total + noise


def oracle_inprocess_sum(record: RoundRecord, settings: ServerSettings, data: DataSpec) -> np.ndarray:
    """The survivors' noise-free tables re-summed by `fedsketch.InProcessSecureSum` (masked, modular)."""
    from fedsketch.secure_sum import InProcessSecureSum, required_modulus_bits

    spec = _spec(record, settings)
    tables = cohort_tables(spec, data, np.asarray(record.survivors))
    n = max(len(record.survivors), 2)
    bits = max(32, required_modulus_bits(n, spec.bound))
    flat = tables.reshape(len(record.survivors), -1)
    if len(record.survivors) < 2:  # InProcessSecureSum never sums one client; nothing to compare then
        return flat.sum(axis=0).reshape(tables.shape[1:])
    res = InProcessSecureSum(modulus_bits=bits, seed=settings.seed + record.round).sum(flat, bound=spec.bound)
    return res.total.reshape(tables.shape[1:])


def noise_of(record: RoundRecord, ledger: OracleLedger) -> np.ndarray | None:
    """The round's noise sum from the ledger (None without DP)."""
    return ledger.noise.get(record.round)


def shared_hash_records(records: list[RoundRecord], settings: ServerSettings, data: DataSpec,
                        ledger: OracleLedger | None) -> list[RoundRecord]:
    """The released rounds as the shared-hash adaptation would have produced them: every round hashed with the first
    released round's seed and the last one's width, same survivors, the same noise sums (`ledger`; None: no noise).
    A round whose noise has another shape (two-phase widths) gets a fresh draw of the same law."""
    done = released(records)
    if not done:
        return []
    seed0, w = done[0].seed, done[-1].width
    out = []
    for r in done:
        noise = None if ledger is None else noise_of(r, ledger)
        if noise is not None and noise.shape[1] != w:
            from fedsketch.privacy import SkellamNoise

            law = SkellamNoise(settings.noise_var, settings.noise_floor)
            noise = law.shares_sum(r.survived, (settings.depth, w), np.random.default_rng([settings.seed, r.round]))
        out.append(replace(r, seed=seed0, width=w,
                           total=oracle_round_sum(r, settings, data, seed=seed0, width=w, noise=noise)))
    return out


def noise_free_records(records: list[RoundRecord], settings: ServerSettings, data: DataSpec) -> list[RoundRecord]:
    """The released rounds' sums without the noise shares (the sketching error alone)."""
    return [replace(r, total=oracle_round_sum(r, settings, data)) if r.released else r for r in records]


def linf(estimate: np.ndarray | None, truth: np.ndarray) -> float | None:
    """l_inf count error (`fedsketch.linf_error`); None for a method that could not decode."""
    from fedsketch import linf_error

    return None if estimate is None else float(linf_error(estimate, truth))


def running_errors(records: list[RoundRecord], shared: list[RoundRecord], settings: ServerSettings,
                   data: DataSpec) -> list[dict]:
    """After each round: l_inf of the running hybrid and shared-hash estimates against the running truth, on the
    count and frequency scales; a round that was not released adds nothing and is marked ``released: False``."""
    out = []
    shared_by_round = {r.round: r for r in shared}
    truth = np.zeros(settings.domain, dtype=np.int64)
    for r in records:
        upto = [x for x in records if x.round <= r.round]
        truth = truth + oracle_truth([r], settings, data)
        row: dict = {"round": r.round, "released": r.released}
        if not released(upto):
            out.append({**row, "hybrid_linf": None, "shared_linf": None, "total_items": 0})
            continue
        sh = [shared_by_round[x.round] for x in upto if x.round in shared_by_round]
        total = max(int(truth.sum()), 1)
        h = linf(decode_rounds(upto, settings, "hybrid"), truth)
        s = linf(decode_rounds(sh, settings, "shared"), truth)
        out.append({**row, "hybrid_linf": h, "shared_linf": s, "total_items": int(truth.sum()),
                    "hybrid_linf_freq": h / total, "shared_linf_freq": None if s is None else s / total})
    return out


def contribution_bias(records: list[RoundRecord], settings: ServerSettings, data: DataSpec) -> dict:
    """The bias of the cell bound on this data: the same released rounds' noise-free hybrid estimates with the
    cells clipped to [-1, 1] (as sent) and without (the plain sketch of the same distinct items)."""
    from fedsketch import CountSketch

    done = released(records)
    if settings.contribution != "distinct" or not done:
        return {}
    clipped, raw, mass_lost, mass = [], [], 0, 0
    for r in done:
        spec = _spec(r, settings)
        items, index = cohort_bounded_items(spec, data, np.asarray(r.survivors))
        sk = CountSketch(spec.depth, spec.width, spec.seed)
        per_client = sk.encode_clients(items, index, len(r.survivors))
        mass += int(np.abs(per_client).sum())
        mass_lost += int((np.abs(per_client) - np.minimum(np.abs(per_client), 1)).sum())
        clipped.append(cohort_sum(spec, data, np.asarray(r.survivors)))
        raw.append(sk.encode(items))
    truth = oracle_truth(records, settings, data)
    est_c = decode_rounds([replace(r, total=t) for r, t in zip(done, clipped)], settings)
    est_r = decode_rounds([replace(r, total=t) for r, t in zip(done, raw)], settings)
    top = np.argsort(-truth, kind="stable")[:20]
    return {
        "cell_mass_clipped_fraction": mass_lost / max(mass, 1),
        "linf_clipped_vs_unclipped": float(np.abs(est_c - est_r).max()),
        "top20_mean_bias_clipped": float(np.mean(est_c[top] - truth[top])),
        "top20_mean_bias_unclipped": float(np.mean(est_r[top] - truth[top])),
        "hybrid_linf_noise_free_clipped": linf(est_c, truth),
        "hybrid_linf_noise_free_unclipped": linf(est_r, truth),
    }


def score(records: list[RoundRecord], settings: ServerSettings, data: DataSpec, ledger: OracleLedger, *,
          compare_inprocess: bool) -> dict:
    """Every oracle metric of a run: released and noise-free errors, exactness of the secure sums, the bias."""
    done = released(records)
    truth = oracle_truth(records, settings, data)
    dp = settings.noise_var > 0
    shared = shared_hash_records(records, settings, data, ledger if dp else None)
    hybrid_est = decode_rounds(records, settings, "hybrid")
    shared_est = decode_rounds(shared, settings, "shared")
    pooled_est = decode_rounds(records, settings, "pooled")

    def minus_noise(r: RoundRecord) -> np.ndarray:
        noise = noise_of(r, ledger)
        return r.total if noise is None else r.total - noise

    diff_plain = max((int(np.abs(minus_noise(r) - oracle_round_sum(r, settings, data)).max()) for r in done),
                     default=None)
    diff_inproc = None
    if compare_inprocess:
        diff_inproc = max((int(np.abs(minus_noise(r) - oracle_inprocess_sum(r, settings, data)).max()) for r in done),
                          default=None)
    running = running_errors(records, shared, settings, data)
    if dp:  # the sketching error alone: the same rounds decoded without the noise shares
        nf = noise_free_records(records, settings, data)
        nf_shared = shared_hash_records(records, settings, data, None)
        sketch_hybrid = linf(decode_rounds(nf, settings, "hybrid"), truth)
        sketch_shared = linf(decode_rounds(nf_shared, settings, "shared"), truth)
        for row, nf_row in zip(running, running_errors(nf, nf_shared, settings, data), strict=True):
            row["hybrid_linf_noise_free"] = nf_row["hybrid_linf"]
            row["shared_linf_noise_free"] = nf_row["shared_linf"]
            row["hybrid_linf_noise_free_freq"] = nf_row.get("hybrid_linf_freq")
            row["shared_linf_noise_free_freq"] = nf_row.get("shared_linf_freq")
    else:
        sketch_hybrid, sketch_shared = linf(hybrid_est, truth), linf(shared_est, truth)
    total = max(int(truth.sum()), 1)
    top = np.argsort(-truth, kind="stable")[:40]
    h, s = linf(hybrid_est, truth), linf(shared_est, truth)
    return {
        "rounds_released": len(done),
        "rounds_skipped": [r.skipped for r in records if not r.released],
        "hybrid_linf": h, "shared_linf": s, "pooled_linf": linf(pooled_est, truth),
        "hybrid_linf_freq": h / total, "shared_linf_freq": None if s is None else s / total,
        "hybrid_linf_noise_free": sketch_hybrid, "shared_linf_noise_free": sketch_shared,
        "items_total": int(truth.sum()), "max_true_count": int(truth.max()) if truth.size else 0,
        "sum_max_abs_diff_vs_plain": diff_plain, "sum_max_abs_diff_vs_inprocess": diff_inproc,
        "running": running,
        "top_items": {"ids": top, "true": truth[top], "hybrid": hybrid_est[top], "shared": shared_est[top]},
        "contribution_bias": contribution_bias(records, settings, data),
    }
