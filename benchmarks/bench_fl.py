"""Federated training: Flower's overhead per round against the in-process engine doing the same client training
and aggregation (same seeds, same math), at 10 and 50 clients per round; Ray start-up reported apart; the
distributed-DP round (SecAgg+ through Flower, and in-process) against the central-DP round.

    python benchmarks/bench_fl.py --json out.json [--local-steps 200] [--rounds 3] [--num-cpus N]

Every client's local training is `local_steps` Trainer steps of the Shakespeare GPT. Measured on the 2-core box,
100 steps take about 0.3 s and 200 about 0.7 s, so the default (200) is the regime of the goal (a client trains
>= 0.5 s). Core for core (the default): each Flower client asks for all the machine's CPUs (``num_cpus`` =
os.cpu_count()), so Ray runs one client at a time with the cores the sequential in-process loop has, and the ratio
flower / in-process per round is Flower's overhead. ``--num-cpus 1`` lets Ray run clients in parallel instead
(then the ratio mixes overhead with parallelism).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def _round_times(run, t0: float) -> tuple[list[float], float]:
    stamps = [h["time"] for h in run.history]
    per = [b - a for a, b in zip(stamps, stamps[1:])]
    return per, stamps[0] - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="")
    ap.add_argument("--local-steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cohorts", default="10,50")
    ap.add_argument("--num-cpus", type=float, default=float(os.cpu_count() or 1))
    ap.add_argument("--gpu-clients", default="4,8",
                    help="with CUDA: clients sharing one GPU (num_gpus = 1/k each), against the same round on CPU")
    args = ap.parse_args()
    from simulations.flower.training.engine import FederatedRun
    from simulations.flower.training.settings import FLSettings
    from simulations.flower.training.simulate import run_flower

    out: dict = {"local_steps": args.local_steps, "rounds": args.rounds, "cpus": os.cpu_count(),
                 "client_num_cpus": args.num_cpus, "cohorts": {}}
    for k in (int(c) for c in args.cohorts.split(",")):
        s = FLSettings(workload="lm-shakespeare", population=k, cohort=float(k), sampling="fixed",
                       rounds=args.rounds + 1, local_steps=args.local_steps, eval_every=0, dp="central",
                       noise_multiplier=1.0)
        t0 = time.perf_counter()
        local = FederatedRun(s)
        local.run_inprocess()
        per_local, first_local = _round_times(local, t0)
        t0 = time.perf_counter()
        fl = run_flower(s, num_cpus=args.num_cpus, total_timeout=3600)
        per_fl, first_fl = _round_times(fl, t0)
        row = {"inprocess_s_per_round": statistics.median(per_local),
               "flower_s_per_round": statistics.median(per_fl),
               "flower_startup_and_first_round_s": first_fl, "inprocess_first_round_s": first_local,
               "client_train_s": statistics.median(per_local) / k}
        row["ratio_flower_over_inprocess"] = row["flower_s_per_round"] / row["inprocess_s_per_round"]
        row["flower_clients_per_s"] = k / row["flower_s_per_round"]
        row["flower_startup_s"] = max(0.0, first_fl - row["flower_s_per_round"])
        out["cohorts"][k] = row
        print(k, json.dumps(row, indent=None), flush=True)
    # distributed (SecAgg+ through Flower; and in-process) vs central DP, 10 clients per round
    rows = {}
    for dp in ("central", "distributed"):
        s = FLSettings(workload="lm-shakespeare", population=10, cohort=10.0, sampling="fixed",
                       rounds=args.rounds + 1, local_steps=args.local_steps, eval_every=0, dp=dp, min_survivors=0.5)
        t0 = time.perf_counter()
        r = FederatedRun(s)
        r.run_inprocess()
        rows[f"{dp}_inprocess"] = statistics.median(_round_times(r, t0)[0])
        t0 = time.perf_counter()
        rows[f"{dp}_flower"] = statistics.median(_round_times(run_flower(s, num_cpus=args.num_cpus,
                                                                         total_timeout=3600), t0)[0])
    out["dp_round_s"] = rows
    out["distributed_over_central_flower"] = rows["distributed_flower"] / rows["central_flower"]
    out["distributed_over_central_inprocess"] = rows["distributed_inprocess"] / rows["central_inprocess"]
    print(json.dumps({k: v for k, v in out.items() if k.startswith(("dp_", "distributed"))}))
    import torch

    if torch.cuda.is_available():  # k clients per round sharing one GPU vs the same clients on CPU
        gpu: dict = {}
        for k in (int(c) for c in args.gpu_clients.split(",")):
            row = {}
            for dev, share in (("cuda", 1.0 / k), ("cpu", 0.0)):
                s = FLSettings(workload="lm-shakespeare", population=k, cohort=float(k), sampling="fixed",
                               rounds=args.rounds + 1, local_steps=args.local_steps, eval_every=0, device=dev)
                t0 = time.perf_counter()
                r = run_flower(s, num_cpus=1.0, num_gpus=share, total_timeout=3600)
                row[f"{dev}_s_per_round"] = statistics.median(_round_times(r, t0)[0])
            row["cpu_over_gpu"] = row["cpu_s_per_round"] / row["cuda_s_per_round"]
            gpu[k] = row
            print("gpu", k, json.dumps(row), flush=True)
        out["gpu_shared"] = gpu
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
