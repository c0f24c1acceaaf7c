"""DP² optimizers: the phase-B math, the preconditioner schedule, skipped steps, checkpoints, bad input."""

from __future__ import annotations

import io

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from dpopt.delayed import DelayedPrecondRMSprop
from dpopt.dp2 import DP2Adagrad, DP2Config, DP2RMSprop, NonFiniteGradientError

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook")

B, D_IN = 8, 6


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, 5), nn.Tanh(), nn.Linear(5, 3))


def _batches(n: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, D_IN, generator=g) * 3, torch.randint(0, 3, (B,), generator=g)) for _ in range(n)]


def _dp2(model: nn.Module, cfg: DP2Config, sigma: float = 0.0, c1: float = 0.3, lr: float = 0.05, gen=None):
    gsm = GradSampleModule(model)
    opt = DP2RMSprop(
        torch.optim.SGD(gsm.parameters(), lr=lr), noise_multiplier=sigma, max_grad_norm=c1,
        expected_batch_size=B, config=cfg, generator=gen,
    )
    return gsm, opt


def _train_step(gsm: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad()
    nn.functional.cross_entropy(gsm(x), y).backward()
    opt.step()


def _per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[list[torch.Tensor]]:
    """Reference per-example gradients by a plain loop (d/dw of the per-example loss; Opacus' mean-loss
    convention multiplies by B, which the test undoes)."""
    out = []
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        out.append([p.grad.detach().clone() for p in model.parameters()])
    return out


def test_phase_b_gradient_is_mean_of_clipped_preconditioned_per_sample_gradients_at_sigma_0():
    cfg = DP2Config(delay=2, clip2=0.7, lr2=0.5, beta=0.9, eps=1e-3)
    gsm, opt = _dp2(_model(), cfg)
    batches = _batches(3)
    for x, y in batches[:2]:  # phase A: 2 steps, v refreshed at the second
        _train_step(gsm, opt, x, y)
    assert opt.in_adaptive_phase and opt.max_grad_norm == pytest.approx(0.3)
    x, y = batches[2]
    ref_model = _model()
    ref_model.load_state_dict(gsm._module.state_dict())  # a hook-free copy for the reference gradients
    params = list(gsm.parameters())
    d = [opt.preconditioner(p) for p in params]
    w_before = [p.detach().clone() for p in params]
    pre = [[g / dd for g, dd in zip(gs, d)] for gs in _per_sample_grads(ref_model, x, y)]
    norms = torch.stack([torch.sqrt(sum((g**2).sum() for g in gs)) for gs in pre])
    assert (norms > 0.7).sum() >= 2, "the check must exercise clipping"
    factors = (0.7 / (norms + 1e-6)).clamp(max=1.0)  # Opacus' clip factor (1e-6 guards a zero norm)
    expected = [sum(factors[i] * pre[i][j] for i in range(B)) / B for j in range(len(params))]
    _train_step(gsm, opt, x, y)  # clipped at C2 = 0.7 (the expected gradient above), then C1 is restored
    assert opt.max_grad_norm == pytest.approx(0.3)
    for p, e, w0 in zip(params, expected, w_before):
        assert torch.allclose(p.grad, e, rtol=1e-5, atol=1e-8)
        assert torch.allclose(p.detach(), w0 - 0.5 * e, rtol=1e-5, atol=1e-7)  # lr switched to α2


@pytest.mark.parametrize("cls,method", [(DP2RMSprop, "rmsprop"), (DP2Adagrad, "adagrad")])
def test_v_changes_only_at_the_last_step_of_phase_a_from_the_mean_noisy_gradient(cls, method):
    s, beta = 3, 0.8
    gsm = GradSampleModule(_model())
    opt = cls(
        torch.optim.SGD(gsm.parameters(), lr=0.05), noise_multiplier=1.0, max_grad_norm=0.3,
        expected_batch_size=B, config=DP2Config(delay=s, clip2=1.0, beta=beta, method=method),
        generator=torch.Generator().manual_seed(0),
    )
    p0 = next(iter(gsm.parameters()))
    v_expected = torch.zeros_like(p0)
    noisy = []
    changed = []
    for t, (x, y) in enumerate(_batches(4 * s)):
        v_before = opt.state[p0]["dp2_v"].clone()
        _train_step(gsm, opt, x, y)
        if t % (2 * s) < s:
            noisy.append(p0.grad.clone())
        if not torch.equal(opt.state[p0]["dp2_v"], v_before):
            changed.append(t)
            mean = torch.stack(noisy[-s:]).mean(0)
            v_expected = beta * v_expected + (1 - beta) * mean**2 if method == "rmsprop" else v_expected + mean**2
            assert torch.allclose(opt.state[p0]["dp2_v"], v_expected, rtol=1e-5, atol=1e-10)
    assert changed == [s - 1, 3 * s - 1]


def test_skipped_virtual_steps_do_not_advance_the_phase_or_touch_v():
    gsm, opt = _dp2(_model(), DP2Config(delay=1, clip2=1.0))
    (x, y), (x2, y2) = _batches(2)
    opt.signal_skip_step(do_skip=True)  # what BatchMemoryManager does for a non-final physical batch
    opt.zero_grad()
    nn.functional.cross_entropy(gsm(x), y).backward()
    opt.step()
    assert opt.dp2_step == 0 and not opt.in_adaptive_phase
    assert all(float(opt.state[p]["dp2_v"].abs().sum()) == 0 for p in gsm.parameters())
    opt.zero_grad()
    nn.functional.cross_entropy(gsm(x2), y2).backward()
    opt.step()  # the real step of the logical batch: phase A of s = 1 ends, v is refreshed
    assert opt.dp2_step == 1 and opt.in_adaptive_phase
    assert all(float(opt.state[p]["dp2_v"].abs().sum()) > 0 for p in gsm.parameters())


def _run(gsm, opt, gen, batches):
    for x, y in batches:
        _train_step(gsm, opt, x, y)
    return [p.detach().clone() for p in gsm.parameters()]


def test_state_dict_round_trip_resumes_to_the_identical_trajectory():
    cfg = DP2Config(delay=3, clip2=2.0, lr2=0.2)
    batches = _batches(13)
    gen = torch.Generator().manual_seed(7)
    gsm, opt = _dp2(_model(), cfg, sigma=0.8, gen=gen)
    _run(gsm, opt, gen, batches[:5])
    buf = io.BytesIO()
    torch.save({"model": gsm._module.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()}, buf)
    uninterrupted = _run(gsm, opt, gen, batches[5:])

    buf.seek(0)
    ckpt = torch.load(buf)
    model = _model(seed=123)  # different init, overwritten by the checkpoint
    model.load_state_dict(ckpt["model"])
    gen2 = torch.Generator()
    gen2.set_state(ckpt["gen"])
    gsm2, opt2 = _dp2(model, cfg, sigma=0.8, gen=gen2)
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.dp2_step == 5
    resumed = _run(gsm2, opt2, gen2, batches[5:])
    for a, b in zip(uninterrupted, resumed):
        assert torch.equal(a, b)


def test_nan_gradient_stops_the_step_without_poisoning_v_or_weights():
    gsm, opt = _dp2(_model(), DP2Config(delay=1, clip2=1.0))
    x, y = _batches(1)[0]
    x = x.clone()
    x[3, 0] = float("nan")
    before = [p.detach().clone() for p in gsm.parameters()]
    opt.zero_grad()
    nn.functional.cross_entropy(gsm(x), y).backward()
    with pytest.raises(NonFiniteGradientError, match="NaN/inf"):
        opt.step()
    assert opt.dp2_step == 0
    for p, b in zip(gsm.parameters(), before):
        assert torch.equal(p.detach(), b)
        assert float(opt.state[p]["dp2_v"].abs().sum()) == 0 and float(opt.state[p]["dp2_G"].abs().sum()) == 0


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"delay": 0}, "delay"),
        ({"delay": 2.5}, "delay"),
        ({"clip2": 0.0}, "clip2"),
        ({"clip2": -1.0}, "clip2"),
        ({"lr2": 0.0}, "lr2"),
        ({"beta": 1.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"eps": 0.0}, "eps"),
        ({"method": "adam"}, "method"),
    ],
)
def test_bad_dp2_hyperparameters_are_rejected_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DP2Config(**kwargs)


def test_dp2_needs_momentum_free_sgd_and_a_positive_clip_norm():
    m = _model()
    with pytest.raises(ValueError, match="torch.optim.SGD"):
        DP2RMSprop(torch.optim.Adam(m.parameters()), noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=B)
    with pytest.raises(ValueError, match="momentum"):
        DP2RMSprop(
            torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), noise_multiplier=1.0, max_grad_norm=1.0,
            expected_batch_size=B,
        )
    with pytest.raises(ValueError, match="max_grad_norm"):
        DP2RMSprop(torch.optim.SGD(m.parameters(), lr=0.1), noise_multiplier=1.0, max_grad_norm=0.0, expected_batch_size=B)
    with pytest.raises(ValueError, match="method='adagrad'"):
        DP2Adagrad(
            torch.optim.SGD(m.parameters(), lr=0.1), noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=B,
            config=DP2Config(method="rmsprop"),
        )


def test_delayed_precond_rmsprop_applies_the_delayed_preconditioner_after_noise():
    p = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = DelayedPrecondRMSprop([p], lr=0.1, lr2=0.5, delay=2, beta=0.5, eps=1e-2)
    grads = [torch.tensor([0.2, -0.4]), torch.tensor([0.6, 0.0]), torch.tensor([1.0, 1.0])]
    w = p.detach().clone()
    for g in grads[:2]:  # phase A: plain SGD steps
        p.grad = g.clone()
        opt.step()
        w = w - 0.1 * g
    assert torch.allclose(p.detach(), w)
    v = 0.5 * ((grads[0] + grads[1]) / 2) ** 2
    assert torch.allclose(opt.state[p]["v"], v)
    p.grad = grads[2].clone()
    opt.step()  # phase B: preconditioned by the frozen v
    assert torch.allclose(p.detach(), w - 0.5 * grads[2] / (v.sqrt() + 1e-2))
    assert torch.allclose(opt.state[p]["v"], v)
    with pytest.raises(ValueError, match="delay"):
        DelayedPrecondRMSprop([p], lr=0.1, delay=0)


# --------------------------------------------------------------------------------------------------------------
# safety fixes (issue 12, Part 3): each test reproduces the bug it guards against


def _clipped_mean(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor, c: float, n: int) -> list[torch.Tensor]:
    """Σ_i clip(g_i, c) / n over the examples (xs, ys): DP-SGD's σ = 0 gradient with expected batch n."""
    grads = _per_sample_grads(model, xs, ys)
    norms = torch.stack([torch.sqrt(sum((g**2).sum() for g in gs)) for gs in grads])
    f = (c / (norms + 1e-6)).clamp(max=1.0)
    return [sum(f[i] * grads[i][j] for i in range(len(xs))) / n for j in range(len(grads[0]))]


def test_nan_under_batch_memory_manager_drops_the_whole_logical_batch_and_keeps_skip_signals_aligned():
    """The bug: the error was raised before the skip signal was taken off the queue, so a caller who caught it
    got shifted signals and one noisy release mixed two Poisson batches. Now the logical batch is dropped."""
    gsm, opt = _dp2(_model(), DP2Config(delay=5, clip2=1.0), c1=0.3)
    ref = _model()
    ref.load_state_dict(gsm._module.state_dict())
    a, b, c, d = _batches(4)
    a = (a[0].clone(), a[1])
    a[0][2, 1] = float("nan")
    errors = 0
    # two logical batches of two physical batches each, signalled as BatchMemoryManager does
    for x, y, skip in ((*a, True), (*b, False), (*c, True), (*d, False)):
        opt.signal_skip_step(do_skip=skip)
        opt.zero_grad()
        nn.functional.cross_entropy(gsm(x), y).backward()
        try:
            opt.step()
        except NonFiniteGradientError:
            errors += 1
    assert errors == 1 and opt.dp2_step == 1 and opt._step_skip_queue == []
    # the one real step is the clipped mean of c ∪ d only (σ = 0), nothing of a or b
    expected = _clipped_mean(ref, torch.cat([c[0], d[0]]), torch.cat([c[1], d[1]]), 0.3, B)
    for p, e in zip(gsm.parameters(), expected):
        assert torch.allclose(p.grad, e, rtol=1e-5, atol=1e-7)


def test_nan_in_the_last_physical_batch_drops_its_logical_batch_too():
    gsm, opt = _dp2(_model(), DP2Config(delay=5, clip2=1.0))
    a, b = _batches(2)
    b = (b[0].clone(), b[1])
    b[0][0, 0] = float("inf")
    before = [p.detach().clone() for p in gsm.parameters()]
    for (x, y), skip in ((a, True), (b, False)):
        opt.signal_skip_step(do_skip=skip)
        opt.zero_grad()
        nn.functional.cross_entropy(gsm(x), y).backward()
        if skip:
            opt.step()
        else:
            with pytest.raises(NonFiniteGradientError, match="logical batch was dropped"):
                opt.step()
    assert opt.dp2_step == 0 and opt._step_skip_queue == [] and not opt._discarding
    assert all(p.summed_grad is None for p in gsm.parameters())
    assert all(torch.equal(p.detach(), w) for p, w in zip(gsm.parameters(), before))


def test_delayed_precond_rmsprop_nan_changes_no_parameter_or_counter():
    """The bug: the finiteness check ran per parameter inside the update loop, so parameters before the bad one
    were already updated (and G accumulated) when it raised."""
    p1, p2 = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    opt = DelayedPrecondRMSprop([p1, p2], lr=0.1, delay=2)
    p1.grad, p2.grad = torch.ones(3), torch.tensor([1.0, float("nan")])
    with pytest.raises(NonFiniteGradientError, match="unchanged"):
        opt.step()
    assert torch.equal(p1.detach(), torch.ones(3)) and opt.param_groups[0]["dp2_step"] == 0 and not opt.state


def test_lr_and_clip_schedulers_are_honoured_in_both_phases():
    """The bug: DP² rewrote lr and max_grad_norm before every step, so StepLR and Opacus' clip schedulers did
    nothing. Now a schedule scales α1 and α2 together, and C1 and C2 together."""
    from opacus.schedulers import StepGradClip

    gsm, opt = _dp2(_model(), DP2Config(delay=1, clip2=2.0, lr2=0.5), c1=0.3, lr=0.1)
    seen = []
    opt.attach_step_hook(lambda o: seen.append((o.max_grad_norm, o.param_groups[0]["lr"])))
    lr_sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    clip_sched = StepGradClip(opt, step_size=1, gamma=0.5)
    for x, y in _batches(4):  # phases A, B, A, B; both schedules halve after every step
        _train_step(gsm, opt, x, y)
        lr_sched.step()
        clip_sched.step()
    assert seen == [pytest.approx(v) for v in [(0.3, 0.1), (1.0, 0.25), (0.075, 0.025), (0.25, 0.0625)]]
    assert opt.max_grad_norm == pytest.approx(0.3 / 16) and opt.param_groups[0]["lr"] == pytest.approx(0.1 / 16)


def test_delayed_precond_rmsprop_scales_lr2_with_the_lr_schedule():
    p = nn.Parameter(torch.zeros(2))
    opt = DelayedPrecondRMSprop([p], lr=0.1, lr2=1.0, delay=1, eps=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    p.grad = torch.ones(2)
    opt.step()  # phase A at lr 0.1: v = 0.1·1²
    sched.step()
    w = p.detach().clone()
    opt.step()  # phase B at lr2 · 0.5
    assert torch.allclose(p.detach(), w - 0.5 * 1.0 / (0.1**0.5 + 1.0))


def test_loading_another_optimizers_checkpoint_is_a_clear_error():
    """The bug: a DP-SGD checkpoint loaded into DP² failed later with a bare KeyError('dp2_step')."""
    from opacus.optimizers import DPOptimizer

    model = _model()
    sgd = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=1.0, max_grad_norm=1.0,
                      expected_batch_size=B)
    _, dp2 = _dp2(_model(), DP2Config(delay=2, clip2=1.0))
    with pytest.raises(ValueError, match="not saved by a DP² optimizer"):
        dp2.load_state_dict(sgd.state_dict())
    _, ada = _dp2(_model(), DP2Config(delay=2, clip2=1.0))
    ada_opt = DP2Adagrad(torch.optim.SGD(_model().parameters(), lr=0.1), noise_multiplier=1.0,
                         max_grad_norm=1.0, expected_batch_size=B, config=DP2Config(delay=2, method="adagrad"))
    with pytest.raises(ValueError, match="DP²-adagrad"):
        ada.load_state_dict(ada_opt.state_dict())
    ntp = DelayedPrecondRMSprop(_model().parameters(), lr=0.1, delay=2)
    with pytest.raises(ValueError, match="not saved by DelayedPrecondRMSprop"):
        ntp.load_state_dict(dp2.state_dict())
    with pytest.raises(ValueError, match="not saved by a DP² optimizer"):
        dp2.load_state_dict(ntp.state_dict())


def test_numpy_integers_are_accepted_where_ints_are():
    np = pytest.importorskip("numpy")
    cfg = DP2Config(delay=np.int64(3), clip2=np.float32(2.0), beta=np.float64(0.8))
    assert cfg.delay == 3 and type(cfg.delay) is int and type(cfg.clip2) is float
    opt = DelayedPrecondRMSprop([nn.Parameter(torch.zeros(2))], lr=np.float64(0.1), delay=np.int32(2))
    assert opt.param_groups[0]["delay"] == 2


def test_default_delay_warns_and_delay_in_epochs_needs_the_loader_length():
    with pytest.warns(UserWarning, match="never leaves phase A"):
        _, opt = _dp2(_model(), DP2Config(clip2=1.0))
    assert opt.config.delay == 100
    with pytest.raises(ValueError, match="steps per epoch"):
        _dp2(_model(), DP2Config(delay_epochs=0.5))
    gsm = GradSampleModule(_model())
    opt = DP2RMSprop(torch.optim.SGD(gsm.parameters(), lr=0.1), noise_multiplier=1.0, max_grad_norm=1.0,
                     expected_batch_size=B, config=DP2Config(delay_epochs=0.5), steps_per_epoch=390)
    assert opt.config.delay == 195  # the paper's IMDB s: half an epoch at B = 64
    with pytest.raises(ValueError, match="not both"):
        DP2Config(delay=3, delay_epochs=1.0)


def test_what_a_nan_does_in_each_optimizer_as_documented():
    """docs/dpopt.md: DP² raises before noise and accounting; DelayedPrecondRMSprop raises after the (accounted)
    release with the model untouched; Opacus' stock DPOptimizer (DP-SGD, DP-Adam, ...) writes NaN weights."""
    from opacus.optimizers import DPOptimizer

    x, y = _batches(1)[0]
    x = x.clone()
    x[1, 2] = float("nan")
    released = []
    for kind in ("dp-sgd", "ntp"):
        gsm = GradSampleModule(_model())
        inner = torch.optim.SGD(gsm.parameters(), lr=0.1) if kind == "dp-sgd" else DelayedPrecondRMSprop(
            gsm.parameters(), lr=0.1, delay=2)
        opt = DPOptimizer(inner, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=B)
        opt.attach_step_hook(lambda o, k=kind: released.append(k))
        opt.zero_grad()
        nn.functional.cross_entropy(gsm(x), y).backward()
        if kind == "dp-sgd":
            opt.step()
            assert all(bool(torch.isnan(p).any()) for p in gsm.parameters())
        else:
            before = [p.detach().clone() for p in gsm.parameters()]
            with pytest.raises(NonFiniteGradientError):
                opt.step()
            assert all(torch.equal(p.detach(), b) for p, b in zip(gsm.parameters(), before))
    assert released == ["dp-sgd", "ntp"]  # both releases reached the accountant's hook
