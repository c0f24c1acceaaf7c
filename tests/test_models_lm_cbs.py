"""The critical-batch-size measure: EWA, steps-to-target, the a + b/B fit and the B* solver."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.lm.cbs import EWA, critical_batch_size, fit_steps, steps_to_target  # noqa: E402
from models.train import TrainConfig, Trainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ewa_is_a_running_mean_first_then_an_exponential_average():
    model = torch.nn.Linear(2, 1, bias=False)
    ewa = EWA(model, decay=0.75)
    seen = []
    for t in range(1, 8):
        with torch.no_grad():
            model.weight.fill_(float(t))
        seen.append(float(t))
        ewa.update(model)
        avg = ewa.model.weight[0, 0].item()
        if t <= 4:  # beta_t = 1 - 1/t <= 0.75: the plain mean of 1..t
            assert avg == pytest.approx(np.mean(seen))
    # from t = 5 on: avg_t = 0.75 avg_{t-1} + 0.25 t
    ref = np.mean([1, 2, 3, 4])
    for t in (5, 6, 7):
        ref = 0.75 * ref + 0.25 * t
    assert ewa.model.weight[0, 0].item() == pytest.approx(ref)
    assert not ewa.model.weight.requires_grad and ewa.updates == 7


def test_ewa_hook_averages_every_trainer_step_exactly_once():
    model = torch.nn.Linear(3, 1)
    ewa = EWA(model, decay=0.0)  # decay 0: the average is the latest weights

    def loss(m, batch):
        return m(batch).pow(2).mean()

    cfg = TrainConfig(steps=5, lr=0.1, schedule="constant", progress=False, log_every=0)
    tr = Trainer(model, lambda i: torch.ones(4, 3) * (i + 1), loss, cfg, hooks=[ewa.hook])
    tr.fit(until=3)
    ewa.sync(tr)
    assert ewa.updates == 3 and torch.equal(ewa.model.weight, model.weight)
    tr.fit()  # the hook's first call sees step 3 == updates: no double count
    ewa.sync(tr)
    assert ewa.updates == 5 and torch.equal(ewa.model.weight, model.weight)
    state = ewa.state_dict()
    other = EWA(torch.nn.Linear(3, 1), decay=0.5)
    other.load_state_dict(state)
    assert other.updates == 5 and other.decay == 0.0 and torch.equal(other.model.weight, model.weight)


def test_ewa_decay_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="decay"):
        EWA(torch.nn.Linear(1, 1), 1.0)


def test_steps_to_target_interpolates_the_first_crossing():
    steps, losses = [10, 20, 30, 40], [3.0, 2.5, 1.5, 1.0]
    assert steps_to_target(steps, losses, 2.0) == pytest.approx(25.0)
    assert steps_to_target(steps, losses, 3.5) == 10.0  # already below at the first evaluation
    assert steps_to_target(steps, losses, 1.5) == 30.0
    assert steps_to_target(steps, losses, 0.5) == math.inf
    # a curve that dips, comes back up and crosses again: the first crossing counts
    assert steps_to_target([1, 2, 3, 4], [2.0, 0.9, 1.2, 0.8], 1.0) == pytest.approx(1 + 1 / 1.1)
    with pytest.raises(ValueError, match="increase"):
        steps_to_target([1, 1], [1.0, 0.5], 0.7)


def test_fit_recovers_a_and_b_from_noise_free_and_noisy_steps():
    B = np.array([8, 16, 32, 64, 128, 256, 512], dtype=float)
    a, b = 150.0, 40_000.0
    fa, fb = fit_steps(B, a + b / B)
    assert fa == pytest.approx(a, rel=1e-6) and fb == pytest.approx(b, rel=1e-6)
    noisy = (a + b / B) * np.exp(np.random.default_rng(0).normal(0, 0.03, B.size))
    na, nb = fit_steps(B, noisy)
    assert na == pytest.approx(a, rel=0.25) and nb == pytest.approx(b, rel=0.1)
    # the authors' 1.2B sweep (plots/chinchilla.ipynb: their fit a = 3897, b = 4.338e7)
    Bp = np.array([2**i for i in range(6, 15)], dtype=float)
    Sp = np.array([642000, 331000, 176000, 94000, 46500, 25000, 15360, 8900, 6500], dtype=float)
    pa, pb = fit_steps(Bp, Sp)
    assert pa == pytest.approx(3897, rel=0.02) and pb == pytest.approx(4.338e7, rel=0.02)


def test_fit_skips_unreached_targets_and_keeps_a_nonnegative():
    B = np.array([8, 16, 32, 64])
    a, b = fit_steps(B, [1000.0, 500.0, math.inf, 125.0])
    assert a == pytest.approx(0.0, abs=1e-6) and b == pytest.approx(8000.0, rel=1e-6)
    # steps that fall faster than 1/B would need a < 0: clipped to 0
    a, _ = fit_steps(B, 8000.0 / B**1.3)
    assert a == 0.0
    with pytest.raises(ValueError, match=">= 2 distinct"):
        fit_steps([8, 16], [100.0, math.inf])


def test_critical_batch_size_is_where_steps_are_20_percent_above_linear_scaling():
    a, b = 100.0, 64_000.0
    steps = lambda B: a + b / B
    bstar = critical_batch_size(a, b)  # against the fit's asymptote b/B
    assert bstar == pytest.approx(0.2 * b / a)
    assert steps(bstar) == pytest.approx(1.2 * b / bstar)
    ref = 8.0
    bref = critical_batch_size(a, b, reference=ref)
    assert steps(bref) == pytest.approx(1.2 * steps(ref) * ref / bref)
    assert bref == pytest.approx(1.2 * ref + 0.2 * b / a)
    # the authors' notebook: B* = 1.2*256 + b/(5a) for the 1.2B model
    assert critical_batch_size(3897, 4.338e7, reference=256) == pytest.approx(1.2 * 256 + 4.338e7 / (5 * 3897))
    assert critical_batch_size(0.0, b) == math.inf
    with pytest.raises(ValueError, match="overhead"):
        critical_batch_size(a, b, overhead=0.0)


def test_ewa_is_checkpointed_with_the_run_and_resumes_exactly(tmp_path):
    def loss(m, batch):
        return (m(batch) - 1).pow(2).mean()

    def make():
        model = torch.nn.Linear(3, 1, bias=False)
        torch.nn.init.constant_(model.weight, 0.5)
        ewa = EWA(model, decay=0.6)
        cfg = TrainConfig(steps=8, lr=0.05, schedule="constant", progress=False, log_every=0,
                          ckpt_path=str(tmp_path / "c.pt"))
        batches = lambda i: torch.full((4, 3), float(i % 3 + 1))
        return Trainer(model, batches, loss, cfg, hooks=[ewa.hook], state={"ewa": ewa}), ewa

    full, ewa_full = make()
    full.fit()
    ewa_full.sync(full)
    part, _ = make()
    part.fit(until=5)
    resumed, ewa = make()
    resumed.load_checkpoint(tmp_path / "c.pt")
    assert ewa.updates == 4  # the hook had averaged steps 1..4 when step 5 ran; sync catches up with step 5
    resumed.fit()
    ewa.sync(resumed)
    assert ewa.updates == 8 and torch.allclose(ewa.model.weight, ewa_full.model.weight, atol=1e-7)
