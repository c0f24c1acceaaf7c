"""Benchmark: a Flower round under SecAgg+ vs plain summation, and the in-process paths' rounds/s at 10,000 clients.

Flower part: for each cohort size n (default 20 and 100) two Ray simulations of the ffe-flower app, n nodes, all n
sampled every round, synthetic Zipf clients (100 items each, at most 100 distinct), a 5 x 1024 sketch, no DP, no
dropouts:
  plain    Flower's default fit round: every client uploads its table, the strategy sums them (the floor); the
           clients' node config allows plain sums (``allow-plain=true``), which they refuse by default
  secagg   SecAgg+ (four message round trips, ~2 log2(n)+1 neighbours) with the exact-sum parameters
The per-round wall time is measured inside the ServerApp (Ray start-up excluded); we report the median over the
complete rounds (>= 3) of one simulation and the ratio secagg / plain. On a loaded machine Ray nodes connect late:
a round in which a node was unreachable is a dropout round (its time measures the timeout, not the protocol), so it
is counted and left out of the median; the first `--warmup` rounds (default 1) are always left out.

In-process part: `--inprocess-clients` (default 10,000) clients per round with Skellam DP (eps = 4) through
`run_inprocess`, median seconds per round -> rounds/s, on both paths:
  masked     every client's bounded table and noise share, validated, summed by `InProcessSecureSum`; floor: a
             plain `np.sum` over the same (n, 5, 1024) tables
  simulated  the sum by linearity without per-client tables, one Skellam draw for the noise (goal >= 1 round/s);
             floor: one `CountSketch.encode` of all the round's items (the linear sketch, no contribution bound)

    python benchmarks/bench_flower.py [--clients 20 100] [--rounds 5] [--inprocess-clients 10000] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


from simulations.flower.settings import ClientSettings, DataSpec, ServerLog, ServerSettings  # noqa: E402

STAGES = ("setup_stage", "share_keys_stage", "collect_masked_vectors_stage", "unmask_stage")
_STAGE_SECONDS: dict[str, list[float]] = {}
DATA = DataSpec("zipf", zipf_items=100)


def _time_stages() -> None:
    """Time each SecAgg+ stage (setup, share keys, collect masked vectors, unmask) of our workflow subclass."""
    from simulations.flower import server_app

    for name in STAGES:
        orig = getattr(server_app.SecAggPlusWorkflow, name)

        def timed(self, *args, _orig=orig, _name=name):
            t0 = time.perf_counter()
            try:
                return _orig(self, *args)
            finally:
                _STAGE_SECONDS.setdefault(_name, []).append(time.perf_counter() - t0)

        setattr(server_app.FlooredSecAggPlus, name, timed)


def _settings(n: int, rounds: int, secagg: bool = True, num_shares: int = 0) -> ServerSettings:
    return ServerSettings(n_clients=n, clients_per_round=n, rounds=rounds, depth=5, width=1024, item_cap=100,
                          dataset="zipf", secagg=secagg, num_shares=num_shares, timeout=300.0)


def flower_round_seconds(n: int, rounds: int, secagg: bool, num_shares: int = 0,
                         warmup: int = 1) -> tuple[list[float], int]:
    """Per-round wall seconds of the complete rounds of one Flower simulation (Ray start-up and the first `warmup`
    rounds excluded), and how many measured rounds were dropout rounds (a node unreachable, or not released)."""
    import ray
    from flwr.simulation import run_simulation

    from simulations.flower.client_app import make_client_app
    from simulations.flower.server_app import make_server_app

    settings = _settings(n, rounds + warmup, secagg, num_shares)
    server_log = ServerLog()

    def node_config(pid: int) -> dict:
        return ClientSettings(partition_id=pid, dataset="zipf", zipf_items=100, allow_plain=True).to_node_config()

    logging.getLogger("flwr").setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            run_simulation(server_app=make_server_app(settings, server_log, partition_map=False),
                           client_app=make_client_app(node_config), num_supernodes=n,
                           backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                           "init_args": {"log_to_driver": False, "include_dashboard": False}})
    finally:
        ray.shutdown()
    measured = server_log.records[warmup:]
    complete = [r.seconds for r in measured if r.released and r.survived == n]
    if len(complete) < 3:
        raise RuntimeError(f"fewer than 3 complete rounds to time: {[r.summary() for r in server_log.records]}")
    return complete, len(measured) - len(complete)


def _median_s(fn, repeats: int = 5) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def inprocess(n: int, rounds: int, masking: str) -> dict:
    """Median seconds per in-process round at n clients with DP, and the floor of that path."""
    from fedsketch import CountSketch
    from simulations.flower.inprocess import run_inprocess
    from simulations.flower.privacy import calibrate_noise
    from simulations.flower.task import cohort_items, cohort_tables

    settings = _settings(n, rounds)
    settings = dataclasses.replace(settings, noise_var=calibrate_noise(settings, 4.0, 1e-5))
    log = run_inprocess(settings, DATA, masking=masking)
    per_round = [r.seconds for r in log.records]
    spec, cohort = settings.round_spec(1), settings.planner.cohort(1)
    if masking == "masked":
        tables = cohort_tables(spec, DATA, cohort)
        floor, floor_name = _median_s(lambda: tables.sum(axis=0)), "plain np.sum over the client tables"
    else:
        items, _ = cohort_items(DATA, cohort)
        sketch = CountSketch(spec.depth, spec.width, spec.seed)
        floor, floor_name = _median_s(lambda: sketch.encode(items)), "one CountSketch.encode of all items"
    med = statistics.median(per_round)
    return {"clients": n, "rounds": rounds, "masking": masking, "median_round_s": med, "rounds_per_s": 1.0 / med,
            "floor": floor_name, "floor_s": floor, "ratio_to_floor": med / floor, "per_round_s": per_round}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="*", default=[20, 100])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="Flower rounds run first and not timed")
    p.add_argument("--inprocess-clients", type=int, default=10_000)
    p.add_argument("--inprocess-rounds", type=int, default=3)
    p.add_argument("--num-shares", type=int, default=0, help="SecAgg+ neighbours (0: ~2 log2(n) + 1, odd)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    _time_stages()
    if args.rounds < 3 or args.inprocess_rounds < 1 or args.warmup < 0:
        p.error("--rounds must be >= 3 (median over rounds), --inprocess-rounds >= 1 and --warmup >= 0")
    out: dict = {"flower": [], "inprocess": []}
    if args.clients:
        print(f"{'clients':>7} {'plain s/round':>14} {'secagg+ s/round':>16} {'ratio':>6}")
    for n in args.clients:
        from simulations.flower.exact_sum import secagg_shares

        shares = args.num_shares or secagg_shares(n)
        plain, plain_drop = flower_round_seconds(n, args.rounds, secagg=False, warmup=args.warmup)
        _STAGE_SECONDS.clear()
        sec, sec_drop = flower_round_seconds(n, args.rounds, secagg=True, num_shares=args.num_shares,
                                             warmup=args.warmup)
        mp, ms = statistics.median(plain), statistics.median(sec)
        stages = {k: statistics.median(v) for k, v in _STAGE_SECONDS.items()}
        out["flower"].append({"clients": n, "rounds": args.rounds, "num_shares": shares, "plain_median_s": mp,
                              "secagg_median_s": ms, "ratio": ms / mp, "plain_s": plain, "secagg_s": sec,
                              "dropout_rounds": {"plain": plain_drop, "secagg": sec_drop},
                              "secagg_stage_median_s": stages})
        print(f"{n:>7} {mp:>14.3f} {ms:>16.3f} {ms / mp:>6.2f}   (num_shares {shares}; dropout rounds "
              f"{plain_drop}/{sec_drop}; stages "
              + ", ".join(f"{k.removesuffix('_stage')} {v:.2f} s" for k, v in stages.items()) + ")")
    if args.inprocess_clients:
        for masking in ("simulated", "masked"):
            r = inprocess(args.inprocess_clients, args.inprocess_rounds, masking)
            out["inprocess"].append(r)
            print(f"in-process {masking:>9}: {r['clients']} clients/round, DP: {r['median_round_s']:.3f} s/round = "
                  f"{r['rounds_per_s']:.3f} rounds/s (floor, {r['floor']}: {r['floor_s'] * 1e3:.1f} ms; ratio "
                  f"{r['ratio_to_floor']:.1f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
