"""dpopt.PrivacyEngine: DP² through make_private, grad-sample modes, BatchMemoryManager, accounting, refusals."""

from __future__ import annotations

import pytest
import torch
from opacus.schedulers import ExponentialNoise
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpopt import BudgetGuard, DP2Config, PrivacyEngine, history_epsilon, make_dp_training
from dpopt.adam_bc import DPAdamBC
from dpopt.dp2 import DP2RMSprop
from dpopt.guard import BudgetExhaustedError

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook")

N, D_IN = 256, 10


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D_IN, generator=g)
    return TensorDataset(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long())


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D_IN, 8), nn.ReLU(), nn.Linear(8, 2))


def _private(mode: str = "hooks", dp2: DP2Config | None = None, sigma: float = 1.0, batch: int = 32,
             accountant: str = "prv", **kw):
    model = _model()
    engine = PrivacyEngine(accountant=accountant)
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


def _train_until_stopped(module, opt, loader, scheduler=None, epochs: int = 200) -> BudgetExhaustedError:
    with pytest.raises(BudgetExhaustedError) as info:
        for _ in range(epochs):
            _epoch(module, opt, loader)
            if scheduler is not None:
                scheduler.step()
    return info.value


def test_budget_guard_follows_a_noise_schedule_through_the_engine_history():
    """The bug: under ExponentialNoise(γ=0.9) a guard planned with the initial σ stopped at ε = 2.99 while the
    engine said 9.5. Now it composes the engine's own history and stops where the engine's ε would pass 3."""
    torch.manual_seed(4)
    engine, module, opt, loader = _private(dp2=DP2Config(delay=2, clip2=1.0), sigma=2.0, accountant="rdp")
    sched = ExponentialNoise(opt, gamma=0.9)
    guard = BudgetGuard(target_epsilon=3.0, delta=1e-5, engine=engine)
    assert guard.accountant == "rdp" and guard.sample_rate is None and engine.sample_rate == 32 / N
    guard.attach(opt)
    err = _train_until_stopped(module, opt, loader, sched)
    spent = engine.get_epsilon(1e-5)
    assert len({h[0] for h in engine.accountant.history}) > 3  # σ really changed several times
    assert spent <= 3.0 and err.epsilon_spent == pytest.approx(spent, rel=1e-4)
    assert err.steps_taken == sum(h[2] for h in engine.accountant.history) == opt.dp2_step
    nxt = list(engine.accountant.history) + [(opt.noise_multiplier, 32 / N, 1)]
    assert history_epsilon(nxt, 1e-5, "rdp") > 3.0  # one more step would have overspent


def test_budget_guard_resumes_from_the_checkpointed_accountant_with_the_same_epsilon():
    """Stop, checkpoint the engine's accountant, rebuild everything, restore it: the resumed guard stops at the
    same step and ε as an uninterrupted run."""
    def build():
        torch.manual_seed(4)
        engine, module, opt, loader = _private(sigma=1.5, accountant="rdp")
        guard = BudgetGuard(target_epsilon=6.0, delta=1e-5, engine=engine)
        guard.attach(opt)
        return engine, module, opt, loader

    engine, module, opt, loader = build()
    whole = _train_until_stopped(module, opt, loader)
    engine2, module2, opt2, loader2 = build()
    _epoch(module2, opt2, loader2)
    _epoch(module2, opt2, loader2)
    saved = engine2.accountant.state_dict()
    engine3, module3, opt3, loader3 = build()
    engine3.accountant.load_state_dict(saved)
    resumed = _train_until_stopped(module3, opt3, loader3)
    assert resumed.steps_taken == whole.steps_taken == sum(h[2] for h in engine3.accountant.history)
    assert resumed.epsilon_spent == pytest.approx(whole.epsilon_spent, rel=1e-12)
    assert engine3.get_epsilon(1e-5) == pytest.approx(engine.get_epsilon(1e-5), rel=1e-12)


def test_budget_guard_with_the_default_prv_engine_agrees_with_the_engine():
    torch.manual_seed(5)
    engine, module, opt, loader = _private(sigma=1.5, batch=32)
    guard = BudgetGuard(target_epsilon=3.0, delta=1e-5, engine=engine)
    assert guard.accountant == "prv" == engine.accountant.mechanism()
    guard.attach(opt)
    err = _train_until_stopped(module, opt, loader)
    assert err.steps_taken > 8 and err.epsilon_spent <= 3.0
    assert err.epsilon_spent == pytest.approx(engine.get_epsilon(1e-5), rel=1e-9)


def test_standalone_budget_guard_checkpoints_its_own_history_across_sigma_changes():
    guard = BudgetGuard(target_epsilon=2.0, delta=1e-5, noise_multiplier=1.5, sample_rate=0.05, accountant="rdp")
    for sigma in (1.5, 1.5, 1.2, 1.0, 1.0):
        guard.step(noise_multiplier=sigma)
    assert guard.history == [(1.5, 0.05, 2), (1.2, 0.05, 1), (1.0, 0.05, 2)]
    assert guard.epsilon_spent() == pytest.approx(history_epsilon(guard.history, 1e-5, "rdp"))
    resumed = BudgetGuard(target_epsilon=2.0, delta=1e-5, noise_multiplier=1.5, sample_rate=0.05, accountant="rdp")
    resumed.load_state_dict(guard.state_dict())
    assert resumed.history == guard.history and resumed.remaining_at(1.0) == guard.remaining_at(1.0) > 0
    with pytest.raises(ValueError, match="target_epsilon"):
        BudgetGuard(target_epsilon=3.0, delta=1e-5, accountant="rdp").load_state_dict(guard.state_dict())


def test_engine_defaults_to_opacus_accountant_so_swapping_the_import_keeps_sigma():
    """dpopt.PrivacyEngine used to default to RDP where Opacus defaults to PRV (≈ 8% more noise for one ε)."""
    from opacus import PrivacyEngine as OpacusEngine

    assert PrivacyEngine().accountant.mechanism() == OpacusEngine().accountant.mechanism() == "prv"
    sigmas = []
    for cls in (PrivacyEngine, OpacusEngine):
        model = _model()
        _, opt, _ = cls().make_private_with_epsilon(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(_data(), batch_size=32), target_epsilon=3.0, target_delta=1e-5, epochs=5,
            max_grad_norm=1.0)
        sigmas.append(opt.noise_multiplier)
    assert sigmas[0] == sigmas[1]
    rdp = PrivacyEngine(accountant="rdp")
    model = _model()
    _, opt, _ = rdp.make_private_with_epsilon(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(_data(), batch_size=32), target_epsilon=3.0, target_delta=1e-5, epochs=5,
        max_grad_norm=1.0)
    assert opt.noise_multiplier > 1.03 * sigmas[0]  # RDP is looser: more noise for the same target


def test_unreachable_calibration_target_is_a_clear_value_error():
    model = _model()
    with pytest.raises(ValueError, match="cannot calibrate σ for target_epsilon=1e-06"):
        PrivacyEngine().make_private_with_epsilon(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(_data(), batch_size=32), target_epsilon=1e-6, target_delta=1e-5, epochs=5,
            max_grad_norm=1.0)


def test_delay_in_epochs_is_resolved_against_the_loader_and_the_default_delay_warns():
    _, _, opt, _ = _private(dp2=DP2Config(delay_epochs=0.5, clip2=1.0))
    assert opt.config.delay == 4 and opt.config.delay_epochs is None  # 8 steps per epoch
    with pytest.warns(UserWarning, match=r"s = 100 steps per phase \(= 12.5 epochs"):
        _, _, opt, _ = _private(dp2=DP2Config(clip2=1.0))
    assert opt.config.delay == 100
    model = _model()
    with pytest.warns(UserWarning, match="never leaves phase A"):
        PrivacyEngine().make_private_with_epsilon(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(_data(), batch_size=32), target_epsilon=3.0, target_delta=1e-5, epochs=2,
            max_grad_norm=0.5, dp2=DP2Config(delay=16, clip2=2.0))


def test_ew_mode_warns_when_empty_poisson_batches_are_likely():
    """torch's ExpandedWeights fails on an empty batch ("Batch size must be positive"); hooks and functorch
    take a noise-only step instead. With q = 1/256 over 256 examples an empty batch has probability 0.37."""
    with pytest.warns(UserWarning, match="empty Poisson batch"):
        _private("ew", batch=1)


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_empty_poisson_batches_take_a_noise_only_accounted_step(mode):
    torch.manual_seed(0)
    engine, module, opt, loader = _private(mode, DP2Config(delay=2, clip2=1.0), batch=1, accountant="rdp")
    empty = steps = 0
    for x, y in loader:
        empty += len(x) == 0
        _epoch(module, opt, [(x, y)])
        steps += 1
    assert empty > 50 and opt.dp2_step == steps == engine.accountant.history[0][2]
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())


@pytest.mark.parametrize(
    "name,cls",
    [("dp-sgd", torch.optim.SGD), ("dp-adam", torch.optim.Adam), ("dp-rmsprop", torch.optim.RMSprop),
     ("dp-adagrad", torch.optim.Adagrad), ("dp-adam-bc", DPAdamBC)],
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
