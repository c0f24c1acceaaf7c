"""Benchmark: a Flower round under SecAgg+ vs the same round with plain summation, and the in-process path's rounds/s.

Flower part: for each cohort size n (default 20 and 100) two Ray simulations of the ffe-flower app, n nodes, all n
sampled every round, synthetic Zipf clients (100 items each), a 5 x 1024 sketch, no DP, no dropouts:
  plain    Flower's default fit round: every client uploads its table, the strategy sums them (the floor)
  secagg   SecAgg+ (four message round trips, ~2 log2(n)+1 neighbours) with the exact-sum parameters
The per-round wall time is measured inside the ServerApp (Ray start-up excluded); we report the median over the
rounds (>= 3) of one simulation and the ratio secagg / plain. Goal: <= 3x at 100 clients.

In-process part: `--inprocess-clients` (default 10,000) clients per round through `run_inprocess` (client tables
by one vectorized encode, validation, `InProcessSecureSum`), median seconds per round -> rounds/s, beside the floor
of a plain `np.sum` over the same tables.

    python benchmarks/bench_flower.py [--clients 20 100] [--rounds 5] [--inprocess-clients 10000] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
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


from simulations.flower.server_app import ServerLog, ServerSettings  # noqa: E402

STAGES = ("setup_stage", "share_keys_stage", "collect_masked_vectors_stage", "unmask_stage")
_STAGE_SECONDS: dict[str, list[float]] = {}


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

        setattr(server_app._SkipAwareSecAggPlus, name, timed)


def _settings(n: int, rounds: int, secagg: bool, num_shares: int = 0) -> ServerSettings:
    return ServerSettings(n_clients=n, clients_per_round=n, rounds=rounds, depth=5, width=1024, item_cap=100,
                          dataset="zipf", zipf_items=100, secagg=secagg, num_shares=num_shares, timeout=300.0)


def flower_round_seconds(n: int, rounds: int, secagg: bool, num_shares: int = 0) -> list[float]:
    """Per-round wall seconds of one Flower simulation (Ray start-up excluded)."""
    import ray
    from flwr.simulation import run_simulation

    from simulations.flower.client_app import app as client_app
    from simulations.flower.server_app import make_server_app

    settings = _settings(n, rounds, secagg, num_shares)
    server_log = ServerLog()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            run_simulation(server_app=make_server_app(settings, server_log), client_app=client_app, num_supernodes=n,
                           backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                           "init_args": {"log_to_driver": False, "include_dashboard": False}})
    finally:
        ray.shutdown()
    bad = [r for r in server_log.records if r.total is None or r.survived != n]
    if bad or len(server_log.records) != rounds:
        raise RuntimeError(f"benchmark rounds incomplete: {[r.summary() for r in server_log.records]}")
    return [r.seconds for r in server_log.records]


def inprocess(n: int, rounds: int) -> dict:
    """Median seconds per in-process round at n clients, and the plain-sum floor over the same tables."""
    from simulations.flower.inprocess import run_inprocess
    from simulations.flower.task import cohort_tables

    settings = ServerSettings(n_clients=n, clients_per_round=n, rounds=rounds, depth=5, width=1024, item_cap=100,
                              dataset="zipf", zipf_items=100)
    log = run_inprocess(settings)
    per_round = [r.seconds for r in log.records]
    spec, cohort = settings.round_spec(1), settings.planner.cohort(1)
    t0 = time.perf_counter()
    tables = cohort_tables(spec, cohort)
    t_tables = time.perf_counter() - t0
    floor = []
    for _ in range(5):
        t0 = time.perf_counter()
        tables.sum(axis=0)
        floor.append(time.perf_counter() - t0)
    med = statistics.median(per_round)
    return {"clients": n, "rounds": rounds, "median_round_s": med, "rounds_per_s": 1.0 / med,
            "client_tables_s": t_tables, "plain_sum_floor_s": statistics.median(floor),
            "ratio_to_plain_sum": med / statistics.median(floor), "per_round_s": per_round}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, nargs="+", default=[20, 100])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--inprocess-clients", type=int, default=10_000)
    p.add_argument("--inprocess-rounds", type=int, default=3)
    p.add_argument("--num-shares", type=int, default=0, help="SecAgg+ neighbours (0: ~2 log2(n) + 1, odd)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    _time_stages()
    if args.rounds < 3:
        p.error("--rounds must be >= 3 (median over rounds)")
    out: dict = {"flower": [], "inprocess": None}
    print(f"{'clients':>7} {'plain s/round':>14} {'secagg+ s/round':>16} {'ratio':>6}")
    for n in args.clients:
        from simulations.flower.exact_sum import secagg_shares

        shares = args.num_shares or secagg_shares(n)
        plain = flower_round_seconds(n, args.rounds, secagg=False)
        _STAGE_SECONDS.clear()
        sec = flower_round_seconds(n, args.rounds, secagg=True, num_shares=args.num_shares)
        mp, ms = statistics.median(plain), statistics.median(sec)
        stages = {k: statistics.median(v) for k, v in _STAGE_SECONDS.items()}
        out["flower"].append({"clients": n, "rounds": args.rounds, "num_shares": shares, "plain_median_s": mp,
                              "secagg_median_s": ms, "ratio": ms / mp, "plain_s": plain, "secagg_s": sec,
                              "secagg_stage_median_s": stages})
        print(f"{n:>7} {mp:>14.3f} {ms:>16.3f} {ms / mp:>6.2f}   (num_shares {shares}; stages "
              + ", ".join(f"{k.removesuffix('_stage')} {v:.2f} s" for k, v in stages.items()) + ")")
    if args.inprocess_clients:
        r = inprocess(args.inprocess_clients, args.inprocess_rounds)
        out["inprocess"] = r
        print(f"in-process: {r['clients']} clients/round: {r['median_round_s']:.2f} s/round = "
              f"{r['rounds_per_s']:.3f} rounds/s (client tables {r['client_tables_s']:.2f} s; plain np.sum floor "
              f"{r['plain_sum_floor_s'] * 1e3:.1f} ms, ratio {r['ratio_to_plain_sum']:.0f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
