"""The shared Trainer: schedules, resume-equals-uninterrupted, accumulation, Opacus, logging, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from models.train import TrainConfig, Trainer, lr_factor


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def _batches_global_rng():
    """An endless iterator that draws from the global RNG (which checkpoints restore)."""
    w = torch.arange(1.0, 5.0)
    while True:
        x = torch.randn(8, 4)
        yield x, (x @ w).unsqueeze(-1)


def _batch_of_step(step: int):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, 4, generator=g)
    return x, (x @ torch.arange(1.0, 5.0)).unsqueeze(-1)


def _mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    f = [lr_factor(s, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    const = TrainConfig(steps=100, schedule="constant", warmup_steps=5)
    assert [lr_factor(s, const) for s in (4, 50, 99)] == [1.0, 1.0, 1.0]


def test_training_reduces_loss_and_writes_jsonl(tmp_path):
    cfg = TrainConfig(steps=60, lr=5e-2, log_every=20, progress=False, metrics_path=str(tmp_path / "m.jsonl"))
    tr = Trainer(_model(), _batch_of_step, _mse, cfg, tokens_per_batch=8, flops_per_token=100.0)
    first = tr.train_step()["loss"].item()
    tr.fit()
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40, 60]
    assert rows[-1]["loss"] < 0.3 * first
    assert {"lr", "grad_norm", "steps_per_s", "tokens_per_s"} <= rows[-1].keys()
    assert "mfu" not in rows[-1]  # no MFU on CPU


@pytest.mark.parametrize("batches", ["callable", "global_rng"])
def test_resume_continues_the_same_trajectory(tmp_path, batches):
    def make(ckpt: str, seed: int) -> Trainer:
        cfg = TrainConfig(steps=12, lr=3e-2, warmup_steps=3, schedule="cosine", grad_accum=2, log_every=0,
                          progress=False, ckpt_path=ckpt, ckpt_every=5, weight_decay=0.1)
        src = _batch_of_step if batches == "callable" else _batches_global_rng()
        return Trainer(_model(seed), src, _mse, cfg)

    torch.manual_seed(7)
    full = make(str(tmp_path / "a.pt"), 0)
    full.fit()
    torch.manual_seed(7)
    part = make(str(tmp_path / "b.pt"), 0)
    part.fit(until=7)  # "interrupted" at step 7; the last checkpoint is step 5
    torch.manual_seed(123)  # the restarted process has other RNG state and another init
    resumed = make(str(tmp_path / "b.pt"), seed=99)
    assert resumed.load_checkpoint(tmp_path / "b.pt") and resumed.step == 7
    resumed.fit()
    torch.testing.assert_close(_flat(resumed.model), _flat(full.model), rtol=0, atol=1e-6)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(full.optimizer.param_groups[0]["lr"])


def test_grad_accumulation_equals_one_big_batch():
    def big(step: int):
        x1, y1 = _batch_of_step(2 * step)
        x2, y2 = _batch_of_step(2 * step + 1)
        return torch.cat([x1, x2]), torch.cat([y1, y2])

    base = dict(steps=4, lr=1e-2, log_every=0, progress=False)
    a = Trainer(_model(), _batch_of_step, _mse, TrainConfig(grad_accum=2, **base))
    b = Trainer(_model(), big, _mse, TrainConfig(grad_accum=1, **base))
    a.fit()
    b.fit()
    torch.testing.assert_close(_flat(a.model), _flat(b.model), rtol=1e-5, atol=1e-6)


def test_eval_callbacks_run_periodically_and_at_the_end():
    calls = []

    def ev(model: nn.Module) -> dict[str, float]:
        calls.append(model.training)
        return {"mse": 1.0}

    cfg = TrainConfig(steps=10, eval_every=4, log_every=0, progress=False)
    out = Trainer(_model(), _batch_of_step, _mse, cfg, eval_fns=[ev]).fit()
    assert len(calls) == 3 and not any(calls)  # steps 4, 8, 10, in eval mode
    assert out["eval/mse"] == 1.0


def test_opacus_dp_optimizer_runs_unchanged_and_resumes():
    pytest.importorskip("opacus")
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    def make(seed: int) -> Trainer:
        model = GradSampleModule(_model(seed))
        opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), noise_multiplier=1.0,
                          max_grad_norm=1.0, expected_batch_size=8)
        cfg = TrainConfig(steps=6, lr=0.05, grad_clip=0, log_every=0, progress=False, schedule="constant")
        return Trainer(model, _batch_of_step, _mse, cfg, optimizer=opt)

    torch.manual_seed(3)
    full = make(0)
    before = _flat(full.model).clone()
    full.fit()
    assert not torch.equal(before, _flat(full.model))
    torch.manual_seed(3)
    part = make(0)
    part.fit(until=3)
    state = part.state_dict()
    torch.manual_seed(50)
    resumed = make(1)
    resumed.load_state_dict(state)
    resumed.fit()
    torch.testing.assert_close(_flat(resumed.model), _flat(full.model), rtol=0, atol=1e-6)


def test_loss_fn_may_return_extra_metrics():
    def loss(model, batch):
        v = _mse(model, batch)
        return v, {"half": v.detach() / 2}

    cfg = TrainConfig(steps=2, log_every=1, progress=True)  # also exercises the tqdm bar
    rec = Trainer(_model(), _batch_of_step, loss, cfg).fit()
    assert rec["half"] == pytest.approx(rec["loss"] / 2)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"steps": 0}, "steps"), ({"steps": 5, "lr": 0}, "lr"), ({"steps": 5, "warmup_steps": 6}, "warmup_steps"),
     ({"steps": 5, "schedule": "linear"}, "schedule"), ({"steps": 5, "grad_accum": 0}, "grad_accum"),
     ({"steps": 5, "ckpt_every": 2}, "ckpt_path"), ({"steps": 5, "betas": (0.9, 1.0)}, "betas")],
)
def test_bad_config_raises_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


def test_bad_trainer_input_raises_value_error():
    with pytest.raises(ValueError, match="model"):
        Trainer("not a model", _batch_of_step, _mse, TrainConfig(steps=1))  # type: ignore[arg-type]
    tr = Trainer(_model(), _batch_of_step, _mse, TrainConfig(steps=3, progress=False))
    with pytest.raises(ValueError, match="until"):
        tr.fit(until=4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_compile_step_reports_mfu():
    cfg = TrainConfig(steps=4, lr=1e-2, device="cuda", compile=True, log_every=2, progress=False)
    tr = Trainer(_model(), _batch_of_step, _mse, cfg, tokens_per_batch=8, flops_per_token=1e3)
    rec = tr.fit()
    assert rec["loss"] > 0 and next(tr.model.parameters()).is_cuda
    if tr.peak_flops:
        assert 0 < rec["mfu"] < 1
