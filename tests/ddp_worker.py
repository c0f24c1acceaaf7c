"""Worker for tests/test_ddp.py: one training run, single-process or one rank under torchrun.

python tests/ddp_worker.py OUT SOURCE ACCUM [RESUME_AT]   (run plain, or under `torchrun --nproc_per_node N`)
Writes {"loss": [...], "params": [...], "lines": n} from rank 0 to OUT (JSON).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from models import distributed
from models.data import ShuffledBatches, index_generator
from models.train import TrainConfig, Trainer

W = torch.arange(1.0, 5.0)


def _indexed(i: int):
    x = torch.randn(8, 4, generator=index_generator(3, i))
    return x, torch.tanh(x @ W).unsqueeze(-1)


def _source(kind: str):
    if kind == "indexed":
        return _indexed
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    return ShuffledBatches(x, torch.tanh(x @ W).unsqueeze(-1), batch_size=8, seed=1)


def _loss(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def _trainer(out: Path, kind: str, accum: int) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
    cfg = TrainConfig(steps=8, lr=2e-2, warmup_steps=2, grad_accum=accum, log_every=1, progress=False,
                      metrics_path=str(out) + ".jsonl", ckpt_path=str(out) + ".pt", seed=0, weight_decay=0.1)
    return Trainer(model, _source(kind), _loss, cfg, tokens_per_batch=8, flops_per_token=100.0)


def main() -> None:
    out, kind, accum = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    resume_at = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    tr = _trainer(out, kind, accum)
    if resume_at:
        tr.fit(until=resume_at)  # saves a checkpoint at the interruption
        tr = _trainer(out, kind, accum)
        torch.manual_seed(1234)  # a restarted process has other RNG state
        assert tr.load_checkpoint(str(out) + ".pt")
    tr.fit()
    if tr.dist.is_main:
        losses = [r["loss"] for r in tr.history if "loss" in r]
        params = torch.cat([p.detach().flatten() for p in tr.model.parameters()]).tolist()
        lines = len(Path(str(out) + ".jsonl").read_text().splitlines())
        out.write_text(json.dumps({"loss": losses, "params": params, "lines": lines, "world": tr.dist.world,
                                   "tokens_per_s": tr.history[-1]["tokens_per_s"]}))
    distributed.cleanup()


if __name__ == "__main__":
    main()
