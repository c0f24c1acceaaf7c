"""dpopt.PrivacyEngine: DP² through make_private, grad-sample modes, BatchMemoryManager, accounting, refusals."""

from __future__ import annotations

import pytest
import torch
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpopt import BudgetGuard, DP2Config, PrivacyEngine, make_dp_training
from dpopt.accounting import BudgetExhaustedError
from dpopt.dp2 import DP2RMSprop

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook")

N, D_IN = 256, 10


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D_IN, generator=g)
    return TensorDataset(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D_IN, 8), nn.ReLU(), nn.Linear(8, 2))


def _private(mode: str = "hooks", dp2: DP2Config | None = None, sigma: float = 1.0, batch: int = 32, **kw):
    model = _model()
    engine = PrivacyEngine()
    out = engine.make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(_data(), batch_size=batch), noise_multiplier=sigma, max_grad_norm=0.5,
        dp2=dp2, grad_sample_mode=mode, **kw,
    )
    return engine, *out


def _epoch(module, opt, loader, max_steps: int | None = None) -> int:
    steps = 0
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(module(x), y).backward()
        opt.step()
        steps += 1
        if max_steps is not None and steps >= max_steps:
            break
    return steps


def test_every_allowed_grad_sample_mode_gives_the_same_dp2_update():
    """hooks, functorch and ew on one model, σ = 0, fixed batches across phase A and B (s = 1): same weights."""
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(16, D_IN, generator=g), torch.randint(0, 2, (16,), generator=g)) for _ in range(4)]
    finals = {}
    for mode in ("hooks", "functorch", "ew"):
        _, module, opt, _ = _private(mode, DP2Config(delay=1, clip2=2.0, lr2=0.3, eps=1e-3), sigma=0.0)
        assert isinstance(opt, DP2RMSprop)
        for x, y in batches:
            opt.zero_grad()
            nn.functional.cross_entropy(module(x), y).backward()
            opt.step()
        assert opt.dp2_step == 4
        finals[mode] = torch.cat([p.detach().flatten() for p in module.parameters()])
    assert not torch.allclose(finals["hooks"], torch.cat([p.flatten() for p in _model().parameters()]))
    for mode in ("functorch", "ew"):
        assert torch.allclose(finals[mode], finals["hooks"], atol=1e-5, rtol=0)


def test_dp2_accountant_history_is_dp_sgd_s():
    """T real steps of DP² record the same (σ, q, T) history as DP-SGD on the same loader."""
    histories = []
    for dp2 in (None, DP2Config(delay=2, clip2=3.0, lr2=0.5)):
        torch.manual_seed(1)
        engine, module, opt, loader = _private(dp2=dp2, sigma=1.3)
        steps = _epoch(module, opt, loader) + _epoch(module, opt, loader)
        histories.append((engine.accountant.history, steps))
    (h_sgd, t_sgd), (h_dp2, t_dp2) = histories
    assert t_sgd == t_dp2 == 16
    assert h_sgd == h_dp2 == [(1.3, 32 / N, 16)]


def test_batch_memory_manager_virtual_steps_do_not_advance_the_phase():
    torch.manual_seed(2)
    engine, module, opt, loader = _private(dp2=DP2Config(delay=2, clip2=3.0), batch=64)
    physical = 0
    with BatchMemoryManager(data_loader=loader, max_physical_batch_size=16, optimizer=opt) as mem_loader:
        physical = _epoch(module, opt, mem_loader)
    logical = len(loader)
    assert physical > logical  # batches were split
    assert opt.dp2_step == logical
    assert engine.accountant.history[0][2] == logical


def test_ghost_mode_with_dp2_is_refused_pointing_to_delayed_precond_rmsprop():
    with pytest.raises(ValueError, match="DelayedPrecondRMSprop"):
        _private("ghost", DP2Config(delay=2, clip2=1.0))
    with pytest.raises(ValueError, match="flat clipping"):
        _private("hooks", DP2Config(delay=2, clip2=1.0), clipping="per_layer")


def test_noise_then_precondition_variant_trains_under_ghost_clipping():
    torch.manual_seed(0)
    run = make_dp_training(
        "dp2-noise-then-precond", _model(), DataLoader(_data(), batch_size=32), lr=0.2, max_grad_norm=1.0,
        noise_multiplier=0.5, dp2=DP2Config(delay=2, lr2=0.05, eps=1e-3), grad_sample_mode="ghost",
    )
    assert run.criterion is not None
    before = [p.detach().clone() for p in run.module.parameters()]
    for x, y in run.data_loader:
        run.optimizer.zero_grad()
        run.criterion(run.module(x), y).backward()
        run.optimizer.step()
    assert run.optimizer.original_optimizer.param_groups[0]["dp2_step"] == len(run.data_loader)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, run.module.parameters()))


def test_non_poisson_loader_is_refused_under_a_dp_claim_unless_acknowledged():
    with pytest.raises(ValueError, match="poisson_sampling=True"):
        _private(dp2=DP2Config(delay=2, clip2=1.0), poisson_sampling=False)
    with pytest.warns(UserWarning, match="epsilon_shuffled"):
        _private(dp2=DP2Config(delay=2, clip2=1.0), poisson_sampling=False, allow_non_poisson=True)


def test_layer_without_per_sample_gradients_is_a_clear_error():
    model = nn.Sequential(nn.Linear(D_IN, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="ModuleValidator.fix"):
        PrivacyEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(_data(), batch_size=32), noise_multiplier=1.0, max_grad_norm=1.0,
            dp2=DP2Config(delay=2, clip2=1.0),
        )


def test_bad_engine_arguments_are_rejected():
    with pytest.raises(ValueError, match="noise_multiplier"):
        _private(dp2=DP2Config(), sigma=-1.0)
    with pytest.raises(ValueError, match="dp2"):
        _private(dp2={"delay": 2})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="accountant"):
        PrivacyEngine(accountant="moments")


def test_make_private_with_epsilon_calibrates_sigma_and_builds_dp2():
    model = _model()
    engine = PrivacyEngine()
    module, opt, loader = engine.make_private_with_epsilon(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(_data(), batch_size=32), target_epsilon=3.0, target_delta=1e-5, epochs=2,
        max_grad_norm=0.5, dp2=DP2Config(delay=2, clip2=2.0),
    )
    assert isinstance(opt, DP2RMSprop) and opt.noise_multiplier > 0.3
    _epoch(module, opt, loader)
    _epoch(module, opt, loader)
    assert engine.get_epsilon(1e-5) <= 3.0 + 1e-6


def test_budget_guard_stops_training_before_the_target_is_exceeded():
    torch.manual_seed(4)
    engine, module, opt, loader = _private(dp2=DP2Config(delay=2, clip2=1.0), sigma=1.5, batch=32)
    guard = BudgetGuard(target_epsilon=3.0, delta=1e-5, noise_multiplier=1.5, sample_rate=32 / N)
    assert guard.max_steps == 33  # 4 epochs and one step: the guard must stop mid-epoch
    guard.attach(opt)
    with pytest.raises(BudgetExhaustedError, match="ε=") as info:
        for _ in range(50):
            _epoch(module, opt, loader)
    steps = engine.accountant.history[0][2]
    assert steps == guard.max_steps == info.value.steps_taken
    assert engine.get_epsilon(1e-5) <= 3.0
    # dp_accounting and Opacus sum the fractional-order RDP series differently (~1e-5 relative at q = 1/8)
    assert info.value.epsilon_spent == pytest.approx(engine.get_epsilon(1e-5), rel=1e-4)
    assert info.value.epsilon_spent <= 3.0


@pytest.mark.parametrize(
    "name,cls",
    [("dp-sgd", torch.optim.SGD), ("dp-adam", torch.optim.Adam), ("dp-rmsprop", torch.optim.RMSprop),
     ("dp-adagrad", torch.optim.Adagrad)],
)
def test_baselines_are_opacus_dp_optimizers_around_stock_torch_optimizers(name, cls):
    torch.manual_seed(0)
    run = make_dp_training(name, _model(), DataLoader(_data(), batch_size=32), lr=0.01, max_grad_norm=1.0,
                           noise_multiplier=1.0)
    assert type(run.optimizer.original_optimizer) is cls and run.criterion is None
    before = [p.detach().clone() for p in run.module.parameters()]
    _epoch(run.module, run.optimizer, run.data_loader, max_steps=3)
    assert run.engine.accountant.history == [(1.0, 32 / N, 3)]
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, run.module.parameters()))
    with pytest.raises(ValueError, match="name must be one of"):
        make_dp_training("dp-lamb", _model(), DataLoader(_data(), batch_size=32), lr=0.01, max_grad_norm=1.0,
                         noise_multiplier=1.0)
