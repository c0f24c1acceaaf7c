"""The Flower ClientApp: one node is one client (a Shakespeare role or a synthetic Zipf client).

A client knows its data from its own node config (`ClientSettings`), never from the server's message. Per round it
parses the `RoundSpec` (unknown keys are errors), encodes its bounded items with `fedsketch.CountSketch`, adds a
Skellam noise share drawn from a generator keyed from the OS CSPRNG, validates the table *before* masking, and
returns it with weight 1 so that SecAgg+ computes an exact sum (`simulations.flower.exact_sum`).

Fail closed: a fit is answered only through SecAgg+ (`secagg_only`); a plain fit request, which would hand the
server the raw table, is refused unless the node config sets ``allow-plain=true`` (the benchmark's baseline). The
fit metrics are empty: no partition id travels in clear. Only a simulation node with ``answer-oracle=true``
answers the evaluation oracle's query for its partition id.

Deployment: ``flower-supernode ... --node-config "partition-id=3"`` with ``simulations.flower.client_app:app``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:
    from flwr.app import Context, Message
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import MessageType
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
except ModuleNotFoundError as _e:  # the Flower apps need the [flower] extra
    raise ModuleNotFoundError(f"{__name__} needs flwr, which is not installed: "
                              "pip install 'fedprivacy-toolkit[flower]'", name="flwr") from _e

from simulations.flower.settings import ClientSettings, RoundSpec
from simulations.flower.task import check_table, client_table, noise_share


class ClientDropout(RuntimeError):
    """Raised by a client told (by its own node config) to fail mid-round: it never uploads its masked table."""


class PlainFitRefused(RuntimeError):
    """A fit request without SecAgg+ reached a client whose node config does not allow plain sums."""


class SketchClient(NumPyClient):
    """A federated-analytics client holding the partition its node config names."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings

    def get_properties(self, config: dict) -> dict:
        """The partition id, for a simulation's evaluation oracle only (``answer-oracle=true``); otherwise nothing."""
        return {"partition-id": self.settings.partition_id} if self.settings.answer_oracle else {}

    def get_parameters(self, config: dict) -> list[np.ndarray]:
        return [np.zeros(1)]

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        """Return ([noisy table as float64], 1, {}); the table is validated before it is masked."""
        s = self.settings
        spec = RoundSpec.from_config(dict(config))
        if spec.round in s.drop_rounds:
            raise ClientDropout(f"client {s.partition_id} dropped out of round {spec.round} (injected)")
        if spec.round in s.hang_rounds:
            time.sleep(s.hang_seconds)  # past the SecAgg+ stage time-out: the server must go on without it
        table = client_table(spec, s.data, s.partition_id)
        from fedsketch.contribution import check_contribution

        check_contribution(table, cap=spec.item_cap, contribution=spec.contribution)
        seed = (s.noise_seed, spec.round, s.partition_id) if s.seeded_noise_not_private_against_server else None
        noise = noise_share(spec, seed=seed)
        if noise is not None:
            if s.oracle_noise_dir:  # simulation only: the evaluation oracle checks the secure sum to the integer
                np.save(Path(s.oracle_noise_dir) / f"round{spec.round}_partition{s.partition_id}.npy", noise)
            table = table + noise
        table = check_table(table, spec)
        # float64 holds every |entry| <= 2^30 exactly; Flower's quantizer maps it back to the same integer
        return [table.astype(np.float64)], 1, {}


def _settings(context: Context, base: dict[str, Any]) -> ClientSettings:
    return ClientSettings.from_node_config({**base, **dict(context.node_config)})


def secagg_only(base: dict[str, Any] | Callable[[int], dict[str, Any]] | None = None):
    """The client mod: SecAgg+ messages go through Flower's `secaggplus_mod`; a plain fit is refused unless the
    node config allows it; other messages (the oracle's property query) pass through."""

    def mod(msg: Message, ctx: Context, call_next):
        if msg.metadata.message_type == MessageType.TRAIN:
            if RECORD_KEY_CONFIGS in msg.content.config_records:
                return secaggplus_mod(msg, ctx, call_next)
            if not _settings(ctx, _base_for(base, ctx)).allow_plain:
                raise PlainFitRefused("this client answers a fit only through SecAgg+ (node config allow-plain=false)")
        return call_next(msg, ctx)

    return mod


def _base_for(base: dict[str, Any] | Callable[[int], dict[str, Any]] | None, ctx: Context) -> dict[str, Any]:
    if base is None:
        return {}
    if callable(base):
        return base(int(ctx.node_config["partition-id"]))
    return base


def make_client_app(node_config: dict[str, Any] | Callable[[int], dict[str, Any]] | None = None) -> ClientApp:
    """A ClientApp whose nodes read `node_config` (a dict, or partition id -> dict) under their own node config.

    This is how a simulation gives each virtual node the node config a real SuperNode gets from its operator
    (``run_simulation`` only sets ``partition-id``)."""

    def client_fn(context: Context):
        return SketchClient(_settings(context, _base_for(node_config, context))).to_client()

    return ClientApp(client_fn=client_fn, mods=[secagg_only(node_config)])


app = make_client_app()
"""The deployed ClientApp, loadable as ``simulations.flower.client_app:app`` (settings from the node config only)."""
