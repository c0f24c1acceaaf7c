"""One federated-training run's settings, parsed from a Flower run config (kebab-case keys) and validated before
Ray starts: an unknown key, a cohort larger than the population, q outside (0, 1], a clip norm <= 0 are errors.

`FLSettings` is pure data, shared by the ServerApp, the ClientApps, the in-process engine and the experiments.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["FLSettings", "WORKLOADS", "DP_MODES", "MODEL_FIELDS"]

WORKLOADS = ("lm-shakespeare", "icl")
DP_MODES = ("none", "central", "distributed")
_SAMPLING = ("poisson", "fixed")
_DEVICES = ("cpu", "cuda", "auto")
MODEL_FIELDS = ("workload", "n_layer", "n_head", "n_embd", "block_size", "bias", "min_chars", "icl_d", "icl_n",
                "icl_kappa", "icl_layers", "seed")
"""The fields that fix the model and the data: a checkpoint made under other values refuses to resume."""


@dataclass(frozen=True)
class FLSettings:
    """What a federated training run does (every field is a run-config key, `_` written as `-`)."""

    workload: str = "lm-shakespeare"
    rounds: int = 20
    population: int = 0
    """Clients in the population (0: every client the workload has)."""
    cohort: float = 10.0
    """Expected clients per round; the sampling rate is q = cohort / population."""
    sampling: str = "poisson"
    server_opt: str = "fedavg"
    server_lr: float = 1.0
    server_lr2: float = 0.0
    """DP² server optimizer: the preconditioned phase's lr (0: the same as server_lr)."""
    dp2_delay: int = 5
    dp2_beta: float = 0.9
    dp2_eps: float = 1e-3
    adam_tau: float = 1e-3
    local_steps: int = 10
    local_lr: float = 3e-3
    batch_size: int = 16
    dp: str = "none"
    """Client-level DP: 'none', 'central' (clip on the client, Gaussian noise on the server) or 'distributed'
    (clip, rotate, round, Skellam shares, exact SecAgg+ sum)."""
    clip: float = 1.0
    target_epsilon: float = 8.0
    delta: float = 1e-5
    noise_multiplier: float = 0.0
    """Central DP's sigma (0: calibrated to target_epsilon with Poisson amplification)."""
    ddp_scale: float = 1024.0
    """Distributed DP: s * clip, the rounded update's norm in integer units (the precision)."""
    min_survivors: float = 0.5
    """Distributed DP's noise floor as a fraction of the expected cohort (a round with fewer is not unmasked)."""
    example_dp: bool = False
    """Example-level DP on every client (lm-shakespeare): DP-SGD or DP² through dpopt.PrivacyEngine inside the
    Trainer, on Poisson batches of the client's own training windows; needs bias=true (Opacus' LayerNorm)."""
    example_noise: float = 1.0
    """Example-level DP's noise multiplier sigma (std sigma * example_clip on the summed clipped gradients)."""
    example_clip: float = 1.0
    example_optimizer: str = "dpsgd"
    """'dpsgd' (Opacus' DP-SGD) or 'dp2' (dpopt's DP²-RMSProp within each round's local steps)."""
    example_dp2_delay: int = 5
    """DP² on clients: local steps of DP-SGD before the preconditioner is switched on (the delay s)."""
    example_lr2: float = 0.0
    """DP² on clients: the preconditioned phase's lr (0: local_lr)."""
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 16
    block_size: int = 32
    bias: bool = False
    """lm-shakespeare: biases in the GPT's linear layers and LayerNorms (example-level DP needs them)."""
    min_chars: int = 1000
    icl_d: int = 5
    icl_n: int = 20
    icl_kappa: float = 10.0
    icl_layers: int = 1
    device: str = "cpu"
    seed: int = 0
    eval_every: int = 5
    min_train_nodes: int = 2
    timeout: float = 120.0
    ckpt_every: int = 0
    ckpt_dir: str = ""
    simulate_noise_seed: int = -1
    """SIMULATION ONLY, NOT PRIVATE: >= 0 seeds the clients' distributed-DP noise so runs repeat (a server knowing
    the seed can remove the noise). -1 (default): every share is drawn from the OS CSPRNG."""
    fail_clients: str = ""
    """Fault injection for tests: 'pid:round,pid:round' makes that client raise in that round."""
    hang_clients: str = ""
    """Fault injection for tests: 'pid:round,...' makes that client stall past `timeout` in that round (under
    Flower it sleeps timeout + 5 s, so the server stops waiting; in process it raises TimeoutError at once)."""

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(self.workload in WORKLOADS, f"workload must be one of {WORKLOADS}, got {self.workload!r}")
        need(self.dp in DP_MODES, f"dp must be one of {DP_MODES}, got {self.dp!r}")
        need(self.sampling in _SAMPLING, f"sampling must be one of {_SAMPLING}, got {self.sampling!r}")
        need(self.server_opt in ("fedavg", "fedadam", "dp2"),
             f"server_opt must be one of ('fedavg', 'fedadam', 'dp2'), got {self.server_opt!r}")
        need(self.device in _DEVICES, f"device must be one of {_DEVICES}, got {self.device!r}")
        need(self.example_optimizer in ("dpsgd", "dp2"),
             f"example_optimizer must be 'dpsgd' or 'dp2', got {self.example_optimizer!r}")
        if self.example_dp:
            need(self.workload == "lm-shakespeare",
                 f"example_dp supports workload 'lm-shakespeare' only (the ICL model keeps bare parameters, which "
                 f"Opacus has no per-sample gradients for), got {self.workload!r}")
            need(self.bias, "example_dp needs bias=true: Opacus' LayerNorm grad sampler requires LayerNorm biases")
        need(self.example_lr2 >= 0, f"example_lr2 must be >= 0 (0: local_lr), got {self.example_lr2}")
        for name in ("rounds", "local_steps", "batch_size", "dp2_delay", "example_dp2_delay", "n_layer", "n_head", "n_embd",
                     "block_size", "icl_d", "icl_n", "icl_layers", "min_train_nodes", "min_chars"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.population >= 0, f"population must be >= 0 (0: all clients), got {self.population}")
        need(self.cohort > 0, f"cohort must be > 0, got {self.cohort}")
        if self.population:
            need(self.cohort <= self.population,
                 f"cohort must be <= population={self.population} (q = cohort/population in (0, 1]), got {self.cohort}")
        for name in ("server_lr", "local_lr", "clip", "target_epsilon", "ddp_scale", "example_noise",
                     "example_clip", "adam_tau", "dp2_eps", "timeout"):
            v = getattr(self, name)
            need(math.isfinite(v) and v > 0, f"{name} must be a finite number > 0, got {v}")
        need(0 < self.delta < 1, f"delta must be in (0, 1), got {self.delta}")
        need(0 <= self.dp2_beta < 1, f"dp2_beta must be in [0, 1), got {self.dp2_beta}")
        need(self.noise_multiplier >= 0, f"noise_multiplier must be >= 0 (0: calibrate), got {self.noise_multiplier}")
        need(self.server_lr2 >= 0, f"server_lr2 must be >= 0, got {self.server_lr2}")
        need(0 < self.min_survivors <= 1, f"min_survivors must be in (0, 1], got {self.min_survivors}")
        need(self.n_embd % self.n_head == 0, f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        need(self.icl_kappa >= 1, f"icl_kappa must be >= 1, got {self.icl_kappa}")
        need(self.eval_every >= 0 and self.ckpt_every >= 0, "eval_every and ckpt_every must be >= 0")
        need(not self.ckpt_every or bool(self.ckpt_dir), "ckpt_every > 0 needs ckpt_dir")
        self.failures(), self.hangs()  # parse checks

    # ------------------------------------------------------------------------------------------ derived
    def q(self, population: int) -> float:
        """The Poisson sampling rate cohort / population (ValueError if not in (0, 1])."""
        q = self.cohort / population
        if not 0 < q <= 1:
            raise ValueError(f"cohort={self.cohort} > population={population}: q = {q:.3g} is not in (0, 1]")
        return q

    def failures(self) -> set[tuple[int, int]]:
        """The (client, round) pairs `fail_clients` names."""
        return _pairs("fail_clients", self.fail_clients)

    def hangs(self) -> set[tuple[int, int]]:
        """The (client, round) pairs `hang_clients` names."""
        return _pairs("hang_clients", self.hang_clients)

    def model_key(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in MODEL_FIELDS}

    def replace(self, **kw: Any) -> FLSettings:
        return dataclasses.replace(self, **kw)

    # ------------------------------------------------------------------------------------------ run config
    def to_run_config(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_run_config(cls, config: dict[str, Any]) -> FLSettings:
        """Parse a Flower run config; unknown keys are a ValueError that lists the known ones."""
        known = {f.name: f for f in fields(cls)}
        kw: dict[str, Any] = {}
        unknown = []
        for key, value in dict(config).items():
            name = str(key).replace("-", "_")
            if name not in known:
                unknown.append(key)
                continue
            default = known[name].default
            try:
                if isinstance(default, bool):
                    value = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
                elif isinstance(default, int):
                    value = int(value)
                elif isinstance(default, float):
                    value = float(value)
                else:
                    value = str(value)
            except (TypeError, ValueError):
                raise ValueError(f"run config {key!r} must be a {type(default).__name__}, got {value!r}") from None
            kw[name] = value
        if unknown:
            raise ValueError(f"unknown run-config keys {sorted(unknown)}; known: "
                             f"{sorted(k.replace('_', '-') for k in known)}")
        return cls(**kw)


def _pairs(name: str, text: str) -> set[tuple[int, int]]:
    out = set()
    for item in filter(None, (t.strip() for t in text.split(","))):
        try:
            pid, rnd = (int(v) for v in item.split(":"))
        except ValueError:
            raise ValueError(f"{name} must look like 'pid:round,pid:round', got {text!r}") from None
        out.add((pid, rnd))
    return out
