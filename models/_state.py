"""What a checkpoint holds beside model and optimizer: RNG states, configs (and how two of them differ), and the
state of extra objects (anything with state_dict/load_state_dict, or a torch.Generator)."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

# TrainConfig fields that say how a run is watched or where it writes, not what it computes: a resumed run may
# change them freely.
RUN_ONLY_FIELDS = frozenset({
    "device", "compile", "compile_mode", "log_every", "eval_every", "ckpt_every", "ckpt_path", "metrics_path",
    "tensorboard_dir", "progress", "peak_flops",
})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - user code may draw from the legacy global RNG
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}  # noqa: NPY002
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def as_plain(config: Any) -> dict[str, Any] | None:
    """A config (dataclass, mapping or None) as JSON-plain data, so a saved and a live config compare equal."""
    if config is None:
        return None
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise ValueError(f"a config must be a dataclass or a mapping, got {type(config).__name__}")
    return json.loads(json.dumps(dict(config), default=str))


def config_diff(saved: Mapping[str, Any] | None, now: Mapping[str, Any] | None,
                ignore: frozenset[str] = frozenset()) -> list[str]:
    """'field: checkpoint X, now Y' for every field that differs (missing fields count as different)."""
    if saved is None or now is None:
        return [] if saved is None and now is None else [f"(whole config): checkpoint {saved}, now {now}"]
    out = []
    for key in sorted(set(saved) | set(now)):
        if key in ignore:
            continue
        a, b = saved.get(key, "<absent>"), now.get(key, "<absent>")
        if a != b:
            out.append(f"{key}: checkpoint {a!r}, now {b!r}")
    return out


def object_state(obj: Any) -> Any:
    """The state of a stateful object (state_dict) or a torch.Generator (get_state)."""
    if isinstance(obj, torch.Generator):
        return {"generator_state": obj.get_state()}
    if callable(getattr(obj, "state_dict", None)):
        return obj.state_dict()
    raise ValueError(f"{type(obj).__name__} has no state_dict()/load_state_dict() (nor is it a torch.Generator)")


def load_object_state(obj: Any, state: Any) -> None:
    if isinstance(obj, torch.Generator):
        obj.set_state(state["generator_state"].cpu())
    else:
        obj.load_state_dict(state)


def check_stateful(name: str, obj: Any) -> None:
    if isinstance(obj, torch.Generator):
        return
    if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
        raise ValueError(f"state[{name!r}] must have state_dict() and load_state_dict() (or be a torch.Generator), "
                         f"got {type(obj).__name__}")


def check_resumable(state: Mapping[str, Any], train_config: Mapping[str, Any], model_config: Any,
                    extra_names: set[str], world: int) -> None:
    """ValueError naming what differs if a checkpoint `state` cannot continue this run: the train config (other
    than RUN_ONLY_FIELDS), the model config, the extra state objects, or the number of ranks."""
    diff = config_diff(as_plain(state["config"]), as_plain(train_config), RUN_ONLY_FIELDS)
    if diff:
        raise ValueError("cannot resume: the train config differs from the checkpoint's: " + "; ".join(diff))
    diff = config_diff(state.get("model_config"), as_plain(model_config))
    if diff:
        raise ValueError("cannot resume: the model config differs from the checkpoint's: " + "; ".join(diff))
    missing = sorted(set(state.get("extra", {})) ^ extra_names)
    if missing:
        raise ValueError(f"cannot resume: extra state objects differ from the checkpoint's: {missing}")
    ranks = len(state.get("ranks") or [None])
    if ranks != world:
        raise ValueError(f"cannot resume: the checkpoint was made by {ranks} ranks, this run has {world}")
