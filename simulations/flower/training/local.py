"""A client's local training: the global model, its own batches, `local_steps` steps of the shared
`models.train.Trainer` (no private training loop), and the update ``local - global`` it sends back.

With ``example_dp`` the client trains with example-level DP: `dpopt.make_dp_training` wraps the model
(Opacus hooks) and builds DP-SGD or DP²-RMSProp, and the Trainer runs it on Poisson batches of the client's own
training windows (each window in each step with probability q = 1 / ceil(n_windows / batch_size), as
Opacus derives it from a loader). Protected: one training
window of the client's text, against anyone who sees the client's update (the server included, no trust needed);
each round is ``local_steps`` subsampled-Gaussian steps at (q, sigma), which the client reports so the server can
compose each client's epsilon over the rounds it took part in (`engine.FederatedRun.privacy`). The noise and the
batch selection are drawn from a generator keyed from the OS CSPRNG (``secrets``) unless ``simulate_noise_seed``
>= 0 (simulation only: then they repeat, and a server knowing the seed could remove the noise). Limits, as for
Opacus without torchcsprng: the generator itself is torch's, and the noise is floating-point Gaussian.
"""

from __future__ import annotations

import secrets
import warnings

import numpy as np
import torch

from simulations.flower.training.settings import FLSettings
from simulations.flower.training.workloads import Workload, flat_params, set_flat_params

__all__ = ["local_update", "resolve_device"]


def resolve_device(setting: str) -> str:
    """'cuda' when asked for and present ('auto': when present), else 'cpu'; 'cuda' without one is an error."""
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
    cfg = TrainConfig(steps=settings.local_steps, lr=settings.local_lr, schedule="constant",
                      grad_clip=0.0 if settings.example_dp else 1.0, log_every=settings.local_steps,
                      progress=False,
                      device=resolve_device(settings.device), amp=False)
    extra: dict[str, float] = {}
    if settings.example_dp:
        trainer, extra = _dp_trainer(workload, settings, model, cid, server_round, cfg)
    else:
        trainer = Trainer(model, workload.batches(cid, server_round), workload.loss, cfg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus' hooks on int inputs
        out = trainer.fit()
    delta = flat_params(model) - np.asarray(x_global, dtype=np.float64)
    loss = out.get("loss", out.get("train_loss"))
    return delta, {"train_loss": float(loss) if loss is not None else float("nan"),
                   "num-examples": float(settings.local_steps * settings.batch_size), **extra}


def _dp_trainer(workload: Workload, s: FLSettings, model: torch.nn.Module, cid: int, server_round: int, cfg):
    """The Trainer for one round of example-level DP on client `cid`, and what the client reports for accounting."""
    from torch.utils.data import DataLoader, TensorDataset

    from dpopt import DP2Config, make_dp_training
    from models.train import Trainer

    windows = workload.windows(cid)
    n = len(windows)
    if s.simulate_noise_seed >= 0:  # SIMULATION ONLY: reproducible, not private
        key = int(np.random.SeedSequence([s.simulate_noise_seed, 0xE0DB, server_round, cid]).generate_state(1)[0])
    else:
        key = secrets.randbits(63)
    dp2 = None
    if s.example_optimizer == "dp2":
        dp2 = DP2Config(delay=s.example_dp2_delay, clip2=s.example_clip, lr2=s.example_lr2 or s.local_lr)
    # the loader only tells the engine q = 1 / len(loader) and the expected batch size
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=min(s.batch_size, n))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        run = make_dp_training("dp2-rmsprop" if dp2 else "dp-sgd", model, loader, lr=s.local_lr,
                               max_grad_norm=s.example_clip, noise_multiplier=s.example_noise, dp2=dp2,
                               grad_sample_mode="hooks", accountant="rdp",
                               noise_generator=torch.Generator().manual_seed(key))
    q = float(run.engine.sample_rate)
    pick = torch.Generator().manual_seed(key ^ 0x5A5A5A5A)

    def batch(_index: int):  # a fresh Poisson subset of the client's windows every step
        rows = windows[torch.rand(n, generator=pick) < q]
        return rows[:, :-1], rows[:, 1:]

    def loss(module, b):  # the token mean, finite (0) on an empty Poisson batch; Opacus' "mean" per example
        x, y = b
        logits = module(x)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
        return ce / max(y.numel(), 1)

    trainer = Trainer(run.module, batch, loss, cfg, optimizer=run.optimizer)
    return trainer, {"cid": float(cid), "example_q": q, "example_steps": float(s.local_steps),
                     "example_sigma": float(s.example_noise)}
