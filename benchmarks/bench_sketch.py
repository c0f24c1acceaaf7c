"""Count-sketch throughput: encode, decode and per-client encode, each against a floor measured in the same run.

    python benchmarks/bench_sketch.py [--items 10000000] [--repeats 5] [--markdown FILE]

- encode: 10^7 Zipf(1.1) item ids over d = 10^6 into R = 5, W = 2^16. Floor: R weighted `np.bincount` calls over
  precomputed bucket indices and signs of all 10^7 items (the sketch update with hashing for free). "cold" is a new
  CountSketch per run (hashes every distinct id), "warm" reuses one with `domain=d` (cached (R, d) hashes), and
  "huge ids" spreads the same items over [0, 2^62) (np.unique path).
- decode: all d = 10^6 ids, median over rows; floor: the gather + sign + row median over precomputed hashes
  (the row median is our sorting network; np.median(axis=0) is shown beside it).
- encode_clients: 10^3 clients x 100 items in one call vs a Python loop of per-client `encode` calls (goal: >= 20x);
  the "output floor" row allocates and fills the n x R x W int64 result alone, which no implementation can avoid.
Every figure is the median of `--repeats` runs; the ratio is to the floor measured in the same process.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np

from fedsketch import CountSketch
from fedsketch.instances import rank_probabilities
from fedsketch.sketch import combine_rows


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _zipf_items(n: int, d: int, seed: int = 0) -> np.ndarray:
    cdf = np.cumsum(rank_probabilities("zipf", d, zipf_s=1.1))
    rng = np.random.default_rng(seed)
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), d - 1).astype(np.int64)


def run(n_items: int, repeats: int) -> list[tuple[str, float, float, str]]:
    """Rows (name, seconds, ratio to floor, note)."""
    d, depth, width = 10**6, 5, 1 << 16
    items = _zipf_items(n_items, d)
    rows: list[tuple[str, float, float, str]] = []

    # ---- encode
    ref = CountSketch(depth, width, seed=123)
    b, s = ref.hash(items[: min(n_items, 10**6)])
    idx = np.resize(b[0], n_items)  # one precomputed index row, reused for each of the R calls (same cost)
    w = np.resize(s[0].astype(np.float64), n_items)
    floor = _median_time(lambda: [np.bincount(idx, weights=w, minlength=width) for _ in range(depth)], repeats)
    rows.append(("encode floor: R weighted bincounts", floor, 1.0, f"{n_items / floor:.3g} items/s"))
    seeds = iter(range(10**6))
    cold = _median_time(lambda: CountSketch(depth, width, seed=next(seeds)).encode(items), repeats)
    rows.append(("encode cold (new sketch each run)", cold, cold / floor, f"{n_items / cold:.3g} items/s"))
    warm_cs = CountSketch(depth, width, seed=7, domain=d)
    warm_cs.decode(np.zeros((depth, width), dtype=np.int64))  # builds the (R, d) hash cache
    warm = _median_time(lambda: warm_cs.encode(items), repeats)
    rows.append(("encode warm (domain hash cache)", warm, warm / floor, f"{n_items / warm:.3g} items/s"))
    huge = items * np.int64(1 << 40) + np.int64(987_654_321)
    big = _median_time(lambda: CountSketch(depth, width, seed=next(seeds)).encode(huge), repeats)
    rows.append(("encode huge ids (np.unique path)", big, big / floor, f"{n_items / big:.3g} items/s"))

    # ---- decode all d ids
    table = warm_cs.encode(items)
    buckets, signs = warm_cs._hash(np.arange(d), full_domain=True)
    tf = table.astype(np.float64)
    dfloor = _median_time(lambda: combine_rows(np.take_along_axis(tf, buckets, axis=1) * signs), repeats)
    rows.append(("decode floor: gather + sign + median (d=10^6)", dfloor, 1.0, f"{d / dfloor:.3g} ids/s"))
    npmed = _median_time(lambda: np.median(np.take_along_axis(tf, buckets, axis=1) * signs, axis=0), repeats)
    rows.append(("  same with np.median(axis=0)", npmed, npmed / dfloor, f"{d / npmed:.3g} ids/s"))
    dcold = _median_time(lambda: CountSketch(depth, width, seed=next(seeds), domain=d).decode(table), repeats)
    rows.append(("decode cold (hash all d ids)", dcold, dcold / dfloor, f"{d / dcold:.3g} ids/s"))
    dwarm = _median_time(lambda: warm_cs.decode(table), repeats)
    rows.append(("decode warm (cached hashes)", dwarm, dwarm / dfloor, f"{d / dwarm:.3g} ids/s"))

    # ---- encode_clients vs a Python loop
    n_clients, per = 1000, 100
    citems = _zipf_items(n_clients * per, d, seed=1)
    client = np.repeat(np.arange(n_clients), per)
    for cw in (1024, 4096):
        cs = CountSketch(depth, cw, seed=3)
        loop = _median_time(
            lambda cs=cs: [cs.encode(citems[c * per : (c + 1) * per]) for c in range(n_clients)], repeats
        )
        batch = _median_time(lambda cs=cs: cs.encode_clients(citems, client, n_clients), repeats)
        # the output alone: allocate the n x R x W int64 tables and touch every page (the kernel zero-fills them)
        out_floor = _median_time(lambda cw=cw: np.zeros(n_clients * depth * cw, dtype=np.int64).fill(1), repeats)
        rows.append((f"per-client loop, 10^3 x 100 items, W={cw}", loop, 1.0, "baseline"))
        rows.append(
            (f"encode_clients, 10^3 x 100 items, W={cw}", batch, batch / loop, f"{loop / batch:.1f}x faster than loop")
        )
        rows.append(
            (f"  output floor: allocate + fill {n_clients}x{depth}x{cw} int64", out_floor, out_floor / loop,
             f"encode_clients = {batch / out_floor:.2f}x this; loop / floor = {loop / out_floor:.1f}")
        )
    return rows


def reference_errors(seeds: int = 5) -> str:
    """The multi-round reference simulation: d = 20,000, R = 5, W = 256, 2,000 items per round, mean l_inf count error
    over `seeds` seeds, for every estimator, homogeneous and heterogeneous Zipf(1.1)."""
    from fedsketch import linf_error, multiround_estimate, round_sketch, synthetic_instance

    d, depth, width, n = 20_000, 5, 256, 2000
    methods = ("hybrid", "shared", "pooled", "shared_buckets", "hybrid/mean")
    lines = ["| instance | M | " + " | ".join(methods) + " |", "| --- | ---: |" + " ---: |" * len(methods)]
    for het, ms in ((False, (1, 4, 16, 64)), (True, (4, 16))):
        for m in ms:
            errs: dict[str, list[float]] = {k: [] for k in methods}
            for s in range(seeds):
                inst = synthetic_instance("zipf", d, m, n, zipf_s=1.1, heterogeneous=het, seed=s)
                round_seeds = [10_000 * s + t for t in range(m)]
                for name in methods:
                    method, _, dec = name.partition("/")
                    tables = [round_sketch(method, t, round_seeds, depth, width).encode(inst.items[t]) for t in range(m)]
                    est = multiround_estimate(
                        tables, round_seeds, depth, width, method=method, decode=dec or "median", domain=d
                    )
                    errs[name].append(linf_error(est, inst.counts))
            row = " | ".join(f"{np.mean(errs[k]):.0f}" for k in methods)
            lines.append(f"| {'heterogeneous' if het else 'homogeneous'} Zipf(1.1) | {m} | {row} |")
    return "\n".join(lines)


def _table(rows: list[tuple[str, float, float, str]]) -> str:
    lines = ["| benchmark | median s | ratio to floor | throughput / note |", "| --- | ---: | ---: | --- |"]
    lines += [f"| {n} | {t:.4f} | {r:.2f} | {note} |" for n, t, r, note in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10**7)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--reference", action="store_true", help="also print the multi-round reference error table")
    ap.add_argument("--markdown", default=None, help="append the table (with the command and machine) to this file")
    args = ap.parse_args()
    if args.items < 10**6 or args.repeats < 1:
        raise SystemExit("--items must be >= 10^6 and --repeats >= 1")
    rows = run(args.items, args.repeats)
    table = _table(rows)
    if args.reference:
        table += "\n\nMean l_inf count error (d=20,000, R=5, W=256, 2,000 items/round, 5 seeds):\n\n"
        table += reference_errors()
    print(table)
    if args.markdown:
        header = (
            f"\n### bench_sketch ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
            f"`python benchmarks/bench_sketch.py {' '.join(sys.argv[1:])}` on "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}; "
            f"median of {args.repeats} runs.\n\n"
        )
        with open(args.markdown, "a", encoding="utf-8") as fh:
            fh.write(header + table + "\n")


if __name__ == "__main__":
    main()
