"""The Flower ClientApp: one node is one client (a Shakespeare role or a synthetic Zipf client).

Per round it reads the `RoundSpec` from the fit config, encodes its (capped) items with `fedsketch.CountSketch`
under the round's hash seed, adds its DP noise share, validates the table *before* masking, and returns it with
weight 1 so that SecAgg+ computes an exact sum (see `simulations.flower.exact_sum`). The SecAgg+ client mod runs
only when the server asks for SecAgg+ (its config record is present), so the same app serves the plain baseline.

Deployment engine: ``flower-supernode ... --node-config "partition-id=3"`` and this app by reference,
``simulations.flower.client_app:app``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from simulations.flower.task import RoundSpec, check_table, client_table


class ClientDropout(RuntimeError):
    """Raised by a client told to fail mid-round (dropout injection): it never uploads its masked table."""


class SketchClient(NumPyClient):
    """A federated-analytics client holding partition `pid`'s items."""

    def __init__(self, pid: int) -> None:
        self.pid = int(pid)

    def get_properties(self, config: dict) -> dict:
        """The public label the server uses to address partitions (no data)."""
        return {"partition-id": self.pid}

    def get_parameters(self, config: dict) -> list[np.ndarray]:
        return [np.zeros(1)]

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        """Return ([table as float64], 1, {"partition-id": pid}); the table is validated before it is masked."""
        spec = RoundSpec.from_config(dict(config))
        if spec.drop:
            raise ClientDropout(f"client {self.pid} dropped out of round {spec.round} (injected)")
        table = check_table(client_table(spec, self.pid), spec)
        # float64 holds every |entry| <= 2^30 exactly; Flower's quantizer maps it back to the same integer
        return [table.astype(np.float64)], 1, {"partition-id": self.pid}


def client_fn(context: Context):
    """Build the client of this node from its node config (`partition-id`)."""
    if "partition-id" not in context.node_config:
        raise ValueError("node_config must hold 'partition-id' (flower-supernode --node-config 'partition-id=N')")
    return SketchClient(int(context.node_config["partition-id"])).to_client()


def secagg_when_requested(msg: Message, ctx: Context, call_next):
    """Run Flower's `secaggplus_mod` on messages that carry SecAgg+ configs; pass every other message through."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctx, call_next)
    return call_next(msg, ctx)


app = ClientApp(client_fn=client_fn, mods=[secagg_when_requested])
"""The ClientApp, loadable as ``simulations.flower.client_app:app``."""
