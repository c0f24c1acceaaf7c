"""A client's local training: the global model, its own batches, `local_steps` steps of the shared
`models.train.Trainer` (no private training loop), and the update ``local - global`` it sends back."""

from __future__ import annotations

import numpy as np

from simulations.flower.training.settings import FLSettings
from simulations.flower.training.workloads import Workload, flat_params, set_flat_params

__all__ = ["local_update", "resolve_device"]


def resolve_device(setting: str) -> str:
    """'cuda' when asked for and present ('auto': when present), else 'cpu'; 'cuda' without one is an error."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but this node has no CUDA device; use device='auto' or 'cpu'")
    return setting


def local_update(workload: Workload, settings: FLSettings, x_global: np.ndarray, cid: int,
                 server_round: int) -> tuple[np.ndarray, dict[str, float]]:
    """Train client `cid` from `x_global` for one round; returns (update as float64, metrics)."""
    from models.train import TrainConfig, Trainer

    workload.check_client(cid)
    model = workload.make_model()
    set_flat_params(model, x_global)
    cfg = TrainConfig(steps=settings.local_steps, lr=settings.local_lr, schedule="constant", grad_clip=1.0,
                      log_every=0, progress=False, device=resolve_device(settings.device), amp=False)
    trainer = Trainer(model, workload.batches(cid, server_round), workload.loss, cfg)
    out = trainer.fit()
    delta = flat_params(trainer.model) - np.asarray(x_global, dtype=np.float64)
    loss = out.get("loss", out.get("train_loss"))
    return delta, {"train_loss": float(loss) if loss is not None else float("nan"),
                   "num-examples": float(settings.local_steps * settings.batch_size)}
