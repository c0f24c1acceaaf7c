"""The Message-API app pair for federated training (flwr 1.4x): a `ClientApp` whose ``@app.train()`` trains the
node's client through the shared Trainer (`engine.FederatedRun.client_upload`), and a `ServerApp` whose
``@app.main()`` runs `FederatedRun`'s rounds over the `Grid`.

Per round the server Poisson-samples client ids, sends each sampled node a TRAIN message (the global vector and
the run config with the round), and waits at most ``timeout`` seconds (the first round at least 60 s: the
nodes' workers are still building their copies of the run). A sampled client without a connected node,
a reply carrying an error (the client raised: its exception text is kept in the round's ``failures``), and a
missing reply are all dropouts; the round proceeds when at least ``min_train_nodes`` updates arrived. A node's
client id is its node config's ``partition-id`` (the server learns it with one QUERY message per node).

Distributed DP needs SecAgg+, which flwr 1.4x offers on its legacy path only: its app pair is `secagg` (this
ClientApp refuses a distributed-DP round).
"""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np

try:
    from flwr.app import (
        Array,
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MessageType,
        MetricRecord,
        RecordDict,
    )
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
except ModuleNotFoundError as _e:  # the Flower apps need the [flower] extra
    raise ModuleNotFoundError(f"{__name__} needs flwr, which is not installed: "
                              "pip install 'fedprivacy-toolkit[flower]'", name="flwr") from _e

from simulations.flower.training.engine import FederatedRun
from simulations.flower.training.settings import FLSettings

__all__ = ["client_app", "make_server_app", "discover_clients"]


@lru_cache(maxsize=4)
def client_side(run_config: tuple) -> FederatedRun:
    """The client's copy of the run's public parameters (workload, DP parameters), built once per process."""
    run = FederatedRun(FLSettings.from_run_config(dict(run_config)))
    run.remote = True
    return run


def settings_key(config: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in config.items() if k != "round"))


client_app = ClientApp()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    cfg = dict(msg.content["config"])
    t = int(cfg["round"])
    run = client_side(settings_key(cfg))
    if run.settings.dp == "distributed":
        raise RuntimeError("distributed DP runs only through SecAgg+ (not in this Message-API app)")
    cid = int(context.node_config["partition-id"])
    run.x = msg.content["arrays"]["x"].numpy().astype(np.float64)
    upload, metrics = run.client_upload(cid, t)
    return Message(RecordDict({"arrays": ArrayRecord({"update": Array(np.asarray(upload, dtype=np.float64))}),
                               "metrics": MetricRecord({k: float(v) for k, v in metrics.items()})}), reply_to=msg)


@client_app.query()
def _query(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": int(context.node_config["partition-id"])})}),
                   reply_to=msg)


def discover_clients(grid: Grid, n_nodes: int, timeout: float) -> dict[int, int]:
    """client id -> node id, from one QUERY per node; nodes that do not connect or answer in time are absent."""
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < n_nodes and time.monotonic() < deadline:
        time.sleep(0.2)
        nodes = list(grid.get_node_ids())
    msgs = [Message(RecordDict({"config": ConfigRecord({"ask": "partition-id"})}), dst_node_id=n,
                    message_type=MessageType.QUERY) for n in nodes]
    out: dict[int, int] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if not reply.has_error():
            out[int(reply.content["metrics"]["partition-id"])] = reply.metadata.src_node_id
    return out


def run_rounds(grid: Grid, run: FederatedRun, progress: bool = False) -> FederatedRun:
    """All remaining rounds of `run` over `grid` (see the module docstring)."""
    s = run.settings
    clients = discover_clients(grid, run.population, max(s.timeout, 60.0))
    run.nodes_found = len(clients)
    base = s.to_run_config()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=s.rounds - run.round, desc=f"{s.workload} rounds", unit="round")
    first = run.round + 1
    try:
        for t in range(first, s.rounds + 1):
            # the first round also waits for each node's worker to build its copy of the run (imports, data)
            wait = max(s.timeout, 60.0) if t == first else s.timeout
            cohort = [int(c) for c in run.sampler.cohort(t)]
            failures = [f"client {c}: no connected node" for c in cohort if c not in clients]
            msgs = [Message(RecordDict({"arrays": ArrayRecord({"x": Array(run.x)}),
                                        "config": ConfigRecord({**base, "round": t})}),
                            dst_node_id=clients[c], message_type=MessageType.TRAIN) for c in cohort if c in clients]
            by_node = {clients[c]: c for c in cohort if c in clients}
            uploads, metrics, answered = [], [], set()
            for reply in grid.send_and_receive(msgs, timeout=wait) if msgs else []:
                node = reply.metadata.src_node_id
                answered.add(node)
                if reply.has_error():
                    failures.append(f"client {by_node.get(node)}: {reply.error.reason}")
                    continue
                uploads.append((by_node[node], reply.content["arrays"]["update"].numpy()))
                metrics.append(dict(reply.content["metrics"]))
            failures += [f"client {c}: no reply within {wait} s" for n, c in by_node.items() if n not in answered]
            uploads.sort(key=lambda u: u[0])  # the in-process order: the same float sums
            run.finish_round(t, [u for _, u in uploads], failures, len(cohort), metrics)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return run


def make_server_app(run: FederatedRun, progress: bool = False) -> ServerApp:
    """A ServerApp that runs `run`'s remaining rounds (the simulation entry point; results stay in `run`)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_rounds(grid, run, progress)

    return app
