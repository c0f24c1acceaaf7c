"""The shared Trainer: schedules, resume-equals-uninterrupted, accumulation, Opacus, logging, bad input."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from models.data import ShuffledBatches, index_generator
from models.train import TrainConfig, Trainer, checkpoint_configs, lr_factor


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


class _Replay:
    """A deterministic plain iterable (no state_dict): the same batches every time it is iterated."""

    def __iter__(self):
        return (_batch_of_step(i) for i in range(10**6))


def _source(kind: str):
    """(batches, Trainer kwargs) for each kind of batch source."""
    if kind == "callable":
        return _batch_of_step, {}
    if kind == "index_generator":
        def draw(i: int):
            x = torch.randn(8, 4, generator=index_generator(5, i))
            return x, (x @ torch.arange(1.0, 5.0)).unsqueeze(-1)
        return draw, {}
    if kind == "shuffled":
        x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
        return ShuffledBatches(x, (x @ torch.arange(1.0, 5.0)).unsqueeze(-1), batch_size=8, seed=3), {}
    if kind == "global_rng":
        return _batches_global_rng(), {"resume_iterable": "restart"}
    if kind == "replay":
        return _Replay(), {"resume_iterable": "skip"}
    if kind == "private_generator":  # the ICL experiments' pattern, made exact by checkpointing the generator
        gen = torch.Generator().manual_seed(11)
        def draw_g(i: int):
            x = torch.randn(8, 4, generator=gen)
            return x, (x @ torch.arange(1.0, 5.0)).unsqueeze(-1)
        return draw_g, {"state": {"data_gen": gen}}
    raise AssertionError(kind)


def _make(kind: str, ckpt: str, seed: int, **extra) -> Trainer:
    cfg = TrainConfig(steps=12, lr=3e-2, warmup_steps=3, schedule="cosine", grad_accum=2, log_every=0,
                      progress=False, ckpt_path=ckpt, ckpt_every=5, weight_decay=0.1)
    src, kwargs = _source(kind)
    return Trainer(_model(seed), src, _mse, cfg, **kwargs, **extra)


@pytest.mark.parametrize("kind", ["callable", "index_generator", "shuffled", "global_rng", "replay",
                                  "private_generator"])
def test_resume_continues_the_same_trajectory_for_every_batch_source(tmp_path, kind):
    torch.manual_seed(7)
    full = _make(kind, str(tmp_path / "a.pt"), 0)
    full.fit()
    torch.manual_seed(7)
    part = _make(kind, str(tmp_path / "b.pt"), 0)
    part.fit(until=7)  # "interrupted" at step 7; the last checkpoint is step 5
    torch.manual_seed(123)  # the restarted process has other RNG state and another init
    resumed = _make(kind, str(tmp_path / "b.pt"), seed=99)
    assert resumed.load_checkpoint(tmp_path / "b.pt") and resumed.step == 7
    resumed.fit()
    torch.testing.assert_close(_flat(resumed.model), _flat(full.model), rtol=0, atol=1e-6)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(full.optimizer.param_groups[0]["lr"])


def test_a_plain_iterable_refuses_to_resume_silently_from_its_start(tmp_path):
    cfg = TrainConfig(steps=6, log_every=0, progress=False, ckpt_path=str(tmp_path / "c.pt"))
    Trainer(_model(), _Replay(), _mse, cfg).fit(until=3)
    again = Trainer(_model(), _Replay(), _mse, cfg)
    with pytest.raises(ValueError, match="plain iterable"):
        again.load_checkpoint(tmp_path / "c.pt")


def test_private_generator_without_checkpointing_it_is_not_exact(tmp_path):
    """Why the generator goes into `state`: without it, the resumed run draws other batches."""
    torch.manual_seed(7)
    full = _make("private_generator", str(tmp_path / "a.pt"), 0)
    full.fit()
    part = _make("private_generator", str(tmp_path / "b.pt"), 0)
    part.fit(until=7)
    src, _ = _source("private_generator")
    cfg = full.config.__class__(**{**full.config.__dict__, "ckpt_path": str(tmp_path / "b.pt")})
    resumed = Trainer(_model(0), src, _mse, cfg)
    state = torch.load(tmp_path / "b.pt", weights_only=False)
    state["extra"] = {}
    resumed.load_state_dict(state)
    resumed.fit()
    assert (_flat(resumed.model) - _flat(full.model)).abs().max() > 1e-4


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


# ------------------------------------------------------------------------------------------- seams for LM work


def _cfg(**kw) -> TrainConfig:
    base = dict(steps=10, lr=3e-2, warmup_steps=2, log_every=0, progress=False, weight_decay=0.1)
    return TrainConfig(**{**base, **kw})


def test_replacing_the_model_by_itself_changes_nothing():
    """A hook that swaps in the same parameters keeps every Adam moment and the one LR schedule."""
    ref = Trainer(_model(), _batch_of_step, _mse, _cfg())
    ref.fit()

    def same(tr: Trainer) -> None:
        if tr.step == 5:
            counts = tr.replace_model(tr.model)
            assert counts == {"kept": 4, "copied": 0, "fresh": 0}

    tr = Trainer(_model(), _batch_of_step, _mse, _cfg(), hooks=[same])
    tr.fit()
    torch.testing.assert_close(_flat(tr.model), _flat(ref.model), rtol=0, atol=1e-7)
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(ref.optimizer.param_groups[0]["lr"])


class _Deep(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


@pytest.mark.parametrize("carry", [True, False])
def test_replace_model_carries_or_resets_the_moments_of_copied_layers(carry):
    import copy

    model = _Deep([nn.Linear(4, 4), nn.Linear(4, 1)])
    lrs = []

    def grow(tr: Trainer) -> None:
        lrs.append(tr.optimizer.param_groups[0]["lr"])
        if tr.step == 4:
            old = tr.model
            new = _Deep([old.layers[0], copy.deepcopy(old.layers[0]), old.layers[1]])
            counts = tr.replace_model(new, moments_from={"layers.1.weight": "layers.0.weight",
                                                         "layers.1.bias": "layers.0.bias"}, carry_moments=carry)
            assert counts == ({"kept": 4, "copied": 2, "fresh": 0} if carry else {"kept": 4, "copied": 0, "fresh": 2})
            src, dst = tr.optimizer.state.get(old.layers[0].weight), tr.optimizer.state.get(new.layers[1].weight)
            if carry:
                torch.testing.assert_close(dst["exp_avg"], src["exp_avg"])
                assert dst["exp_avg"] is not src["exp_avg"]
            else:
                assert dst is None

    tr = Trainer(model, _batch_of_step, _mse, _cfg(), hooks=[grow])
    tr.fit()
    assert len(tr.model.layers) == 3 and tr.step == 10
    expected = [_cfg().lr * lr_factor(s, _cfg()) for s in range(10)]
    assert lrs == pytest.approx(expected)  # one schedule, never restarted at the growth step


def test_loss_fn_gets_the_step_and_the_teacher_in_eval_mode_without_grad():
    teacher = _model(5).train()
    seen = []

    def loss(model, batch, step, teacher):
        x, y = batch
        t = teacher(x)
        seen.append((step, teacher.training, t.requires_grad))
        return _mse(model, (x, t))

    Trainer(_model(), _batch_of_step, loss, _cfg(steps=3, grad_accum=2), teacher=teacher).fit()
    assert seen == [(s, False, False) for s in (0, 0, 1, 1, 2, 2)]
    assert not any(p.requires_grad for p in teacher.parameters())


@dataclass(frozen=True)
class _ModelCfg:
    width: int = 16
    act: str = "tanh"


@pytest.mark.parametrize("change, field", [({"lr": 1e-2}, "lr"), ({"steps": 20}, "steps"),
                                           ({"grad_accum": 2}, "grad_accum")])
def test_resume_with_another_train_config_refuses_naming_the_field(tmp_path, change, field):
    path = str(tmp_path / "c.pt")
    Trainer(_model(), _batch_of_step, _mse, _cfg(ckpt_path=path)).fit(until=4)
    other = Trainer(_model(), _batch_of_step, _mse, _cfg(ckpt_path=path, **change))
    with pytest.raises(ValueError, match=f"train config differs.*{field}"):
        other.load_checkpoint(path)
    # how the run is watched may change
    ok = Trainer(_model(), _batch_of_step, _mse, _cfg(ckpt_path=path, log_every=3, progress=False))
    assert ok.load_checkpoint(path) and ok.step == 4


def test_resume_with_another_model_config_refuses_naming_the_field(tmp_path):
    path = str(tmp_path / "c.pt")
    Trainer(_model(), _batch_of_step, _mse, _cfg(ckpt_path=path), model_config=_ModelCfg()).fit(until=4)
    assert checkpoint_configs(path)[1] == {"width": 16, "act": "tanh"}
    other = Trainer(_model(), _batch_of_step, _mse, _cfg(ckpt_path=path), model_config=_ModelCfg(act="relu"))
    with pytest.raises(ValueError, match="model config differs.*act: checkpoint 'tanh', now 'relu'"):
        other.load_checkpoint(path)


class _Counter:
    """A stand-in for a privacy accountant: state_dict/load_state_dict and nothing else."""

    def __init__(self) -> None:
        self.n = 0

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_extra_stateful_objects_are_checkpointed(tmp_path):
    path = str(tmp_path / "c.pt")
    acc = _Counter()

    def count(tr: Trainer) -> None:
        acc.n += 1

    Trainer(_model(), _batch_of_step, _mse, _cfg(ckpt_path=path), hooks=[count], state={"accountant": acc}).fit(until=4)
    fresh = _Counter()
    tr = Trainer(_model(), _batch_of_step, _mse, _cfg(ckpt_path=path), state={"accountant": fresh})
    assert tr.load_checkpoint(path) and fresh.n == 4
    with pytest.raises(ValueError, match="state_dict"):
        Trainer(_model(), _batch_of_step, _mse, _cfg(), state={"x": object()})


def test_throughput_excludes_evaluation_and_checkpoint_time(tmp_path):
    import time

    def slow_eval(model):
        time.sleep(0.1)
        return {"x": 0.0}

    cfg = _cfg(steps=10, log_every=10, eval_every=1, ckpt_every=1, ckpt_path=str(tmp_path / "c.pt"))
    tr = Trainer(_model(), _batch_of_step, _mse, cfg, eval_fns=[slow_eval], tokens_per_batch=8,
                 flops_per_token=10.0)
    rec = tr.fit()
    train_rec = [r for r in tr.history if "steps_per_s" in r][-1]
    assert train_rec["steps_per_s"] > 20  # 9 evaluations of 0.1 s would cap it below 10 steps/s
    assert train_rec["flops"] == pytest.approx(10 * 8 * 10.0)
    assert rec["eval/x"] == 0.0


def test_peak_flops_match_device_variant_and_dtype():
    from models.perf import peak_flops_for

    assert peak_flops_for("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert peak_flops_for("NVIDIA H100 PCIe", "bf16") == pytest.approx(756e12)
    assert peak_flops_for("NVIDIA H100 NVL", "bf16") == pytest.approx(835.5e12)
    assert peak_flops_for("NVIDIA H100 80GB HBM3", "fp32") == pytest.approx(67e12)
    assert peak_flops_for("NVIDIA H100 80GB HBM3", "tf32") == pytest.approx(494.7e12)
    assert peak_flops_for("NVIDIA A100-SXM4-80GB", "bf16") == pytest.approx(312e12)
    assert peak_flops_for("NVIDIA A10G", "bf16") is None  # not the A10, not the A100
    assert peak_flops_for("NVIDIA H100", "bf16") is None  # which H100? don't guess
    assert peak_flops_for("Tesla V100-SXM2-16GB", "bf16") is None
    assert peak_flops_for("NVIDIA H200", "bf16") == pytest.approx(989.4e12)


def test_scaled_init_touches_residual_output_projections_only():
    from models.nn import Block, init_gpt_weights

    class LlamaMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up_proj = nn.Linear(256, 256, bias=False)
            self.down_proj = nn.Linear(256, 256, bias=False)

        def residual_projections(self):
            return [self.down_proj.weight]

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block(256, 4)
            self.llama = LlamaMLP()

    torch.manual_seed(0)
    net = Net()
    init_gpt_weights(net, n_layer=8)
    std = {n: p.std().item() for n, p in net.named_parameters() if p.ndim == 2}
    scaled = 0.02 / 4
    for name, s in std.items():
        want = scaled if name in ("block.attn.proj.weight", "block.mlp.proj.weight", "llama.down_proj.weight") else 0.02
        assert s == pytest.approx(want, rel=0.05), name


def test_tensorboard_is_optional(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name == "tensorboard":
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    cfg = _cfg(steps=2, log_every=1, tensorboard_dir=str(tmp_path / "tb"), metrics_path=str(tmp_path / "m.jsonl"))
    with pytest.warns(UserWarning, match="tensorboard"):
        tr = Trainer(_model(), _batch_of_step, _mse, cfg)
    tr.fit()
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2


def test_tensorboard_scalars_are_written_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = _cfg(steps=2, log_every=1, tensorboard_dir=str(tmp_path / "tb"))
    Trainer(_model(), _batch_of_step, _mse, cfg).fit()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
