"""DP training through the shared Trainer (models.train): DP-aware accumulation, no second clip, the accountant
and DP² state checkpointed so a resumed run gives the same weights and the same ε. `models` never imports
Opacus or dpopt: the Trainer recognizes a DP optimizer by its protocol."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpopt import BudgetGuard, DP2Config, PrivacyEngine
from dpopt.dp2 import DP2RMSprop
from dpopt.guard import BudgetExhaustedError
from models.data import index_generator
from models.train import TrainConfig, Trainer

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook", "ignore:Secure RNG")

N, D = 64, 5
_g = torch.Generator().manual_seed(0)
X, Y = torch.randn(N, D, generator=_g) * 3, torch.randint(0, 2, (N,), generator=_g)


def _loss(model, batch):
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def _cfg(steps: int, accum: int = 1, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, lr=1.0, grad_accum=accum, grad_clip=0, schedule="constant", progress=False,
                       log_every=0, **kw)


def _update(opt_cls, accum: int, **opt_kw) -> torch.Tensor:
    torch.manual_seed(0)
    model = GradSampleModule(nn.Linear(D, 2))
    opt = opt_cls(torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0, max_grad_norm=0.5,
                  expected_batch_size=16, **opt_kw)
    k = 16 // accum
    batches = lambda i: (X[(i % accum) * k:(i % accum + 1) * k], Y[(i % accum) * k:(i % accum + 1) * k])  # noqa: E731
    before = [p.detach().clone() for p in model.parameters()]
    Trainer(model, batches, _loss, _cfg(1, accum), optimizer=opt).fit()
    return torch.cat([(p.detach() - w).flatten() for p, w in zip(model.parameters(), before)])


@pytest.mark.parametrize("opt_cls,kw", [(DPOptimizer, {}), (DP2RMSprop, {"config": DP2Config(delay=1, clip2=1.0)})])
def test_grad_accumulation_with_a_dp_optimizer_equals_one_logical_batch(opt_cls, kw):
    """The bug: the Trainer divided the loss by grad_accum before per-example clipping and Opacus divided again:
    with grad_accum = 2 the update was 0.49× the single-batch one. Now the micro-batches are pieces of one
    logical batch (BatchMemoryManager's protocol)."""
    one, two, four = _update(opt_cls, 1, **kw), _update(opt_cls, 2, **kw), _update(opt_cls, 4, **kw)
    assert one.abs().sum() > 0
    assert torch.allclose(two, one, atol=1e-6) and torch.allclose(four, one, atol=1e-6)


def test_accumulated_steps_release_noise_and_account_once_per_logical_batch():
    torch.manual_seed(0)
    model = nn.Linear(D, 2)
    engine = PrivacyEngine(accountant="rdp")
    module, opt, _ = engine.make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                         data_loader=DataLoader(TensorDataset(X, Y), batch_size=16),
                                         noise_multiplier=1.0, max_grad_norm=1.0)
    Trainer(module, lambda i: (X[(i % 4) * 4:(i % 4 + 1) * 4], Y[(i % 4) * 4:(i % 4 + 1) * 4]), _loss,
            _cfg(3, accum=4), optimizer=opt).fit()
    assert engine.accountant.history == [(1.0, 0.25, 3)] and opt._step_skip_queue == []


def test_grad_clip_with_a_dp_optimizer_is_refused():
    model = GradSampleModule(nn.Linear(D, 2))
    opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=1.0, max_grad_norm=1.0,
                      expected_batch_size=16)
    with pytest.raises(ValueError, match="grad_clip=1.0 with a DP optimizer"):
        Trainer(model, lambda i: (X, Y), _loss, TrainConfig(steps=1, progress=False), optimizer=opt)


def _poisson(q: float, seed: int = 3):
    """A step-indexed Poisson batch source: batch i holds each example independently with probability q."""
    def batch(i: int):
        keep = torch.rand(N, generator=index_generator(seed, i)) < q
        return X[keep], Y[keep]

    return batch


def _dp_run(tmp_path, steps: int, until: int | None = None, resume: bool = False, guard_eps: float | None = None):
    torch.manual_seed(1)
    model = nn.Linear(D, 2)
    engine = PrivacyEngine(accountant="rdp")
    module, opt, _ = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.2),
        data_loader=DataLoader(TensorDataset(X, Y), batch_size=8), noise_multiplier=1.1, max_grad_norm=1.0,
        dp2=DP2Config(delay=3, clip2=2.0, lr2=0.3))
    if guard_eps is not None:
        BudgetGuard(target_epsilon=guard_eps, delta=1e-5, engine=engine).attach(opt)
    trainer = Trainer(module, _poisson(engine.sample_rate), _loss,
                      _cfg(steps, ckpt_path=str(tmp_path / "ckpt.pt"), seed=0), optimizer=opt,
                      state={"accountant": engine.accountant})
    if resume:
        assert trainer.load_checkpoint(tmp_path / "ckpt.pt")
    trainer.fit(until)
    return trainer, engine, opt


def test_resume_gives_the_same_weights_dp2_state_and_epsilon(tmp_path):
    whole, engine, opt = _dp_run(tmp_path / "a", 20)
    _dp_run(tmp_path / "b", 20, until=11)  # "interrupted" after 11 steps, checkpointed
    resumed, engine2, opt2 = _dp_run(tmp_path / "b", 20, resume=True)
    assert engine2.accountant.history == engine.accountant.history == [(1.1, 1 / 8, 20)]
    assert engine2.get_epsilon(1e-5) == engine.get_epsilon(1e-5)
    assert opt2.dp2_step == opt.dp2_step == 20
    for a, b in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_budget_guard_stops_a_resumed_run_at_the_same_step_and_epsilon(tmp_path):
    with pytest.raises(BudgetExhaustedError) as whole:
        _dp_run(tmp_path / "a", 400, guard_eps=4.0)
    _dp_run(tmp_path / "b", 400, until=8, guard_eps=4.0)
    with pytest.raises(BudgetExhaustedError) as resumed:
        _dp_run(tmp_path / "b", 400, resume=True, guard_eps=4.0)
    assert 8 < resumed.value.steps_taken == whole.value.steps_taken < 400
    assert resumed.value.epsilon_spent == whole.value.epsilon_spent <= 4.0
