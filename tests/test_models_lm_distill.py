"""SALT's pieces: the KD mixture reduces to CE at ω = 0 and to KL at ω = 1, the switch happens at kd_steps,
SALT_DS keeps its band, and bad input says what to change."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from models.lm import GPT, GPTConfig  # noqa: E402
from models.lm.distill import (  # noqa: E402
    DistillLoss,
    KDSchedule,
    PhasedBatches,
    WindowSet,
    kd_loss,
    select_band,
    sequence_scores,
)
from models.train import TrainConfig, Trainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _logits(seed: int, shape=(3, 5, 11)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


def test_kd_loss_is_cross_entropy_at_omega_0_and_kl_at_omega_1():
    s, t = _logits(0), _logits(1)
    y = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(2))
    ce = F.cross_entropy(s.reshape(-1, 11), y.reshape(-1))
    kl = F.kl_div(F.log_softmax(s, -1).reshape(-1, 11), F.log_softmax(t, -1).reshape(-1, 11), log_target=True,
                  reduction="batchmean")
    loss0, parts = kd_loss(s, t, y, omega=0.0)
    loss1, _ = kd_loss(s, t, y, omega=1.0)
    assert loss0.item() == pytest.approx(ce.item(), rel=1e-6)
    assert loss1.item() == pytest.approx(kl.item(), rel=1e-5)
    mid, _ = kd_loss(s, t, y, omega=0.25)
    assert mid.item() == pytest.approx(0.75 * ce.item() + 0.25 * kl.item(), rel=1e-5)
    assert parts["kl"].item() == pytest.approx(kl.item(), rel=1e-5)


def test_kl_is_zero_when_student_equals_teacher_at_any_temperature():
    s = _logits(3)
    y = torch.zeros(3, 5, dtype=torch.long)
    for tau in (0.5, 1.0, 4.0):
        _, parts = kd_loss(s, s.clone(), y, omega=1.0, tau=tau)
        assert abs(parts["kl"].item()) < 1e-6


def test_temperature_softens_both_and_scales_by_tau_squared():
    s, t = _logits(4), _logits(5)
    y = torch.zeros(3, 5, dtype=torch.long)
    tau = 2.0
    _, parts = kd_loss(s, t, y, omega=1.0, tau=tau)
    ref = F.kl_div(F.log_softmax(s / tau, -1).reshape(-1, 11), F.log_softmax(t / tau, -1).reshape(-1, 11),
                   log_target=True, reduction="batchmean") * tau**2
    assert parts["kl"].item() == pytest.approx(ref.item(), rel=1e-5)


def test_ignored_targets_leave_both_terms():
    s, t = _logits(6), _logits(7)
    y = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(8))
    y_ign = y.clone()
    y_ign[:, -2:] = -1
    _, parts = kd_loss(s, t, y_ign, omega=0.5)
    _, ref = kd_loss(s[:, :-2], t[:, :-2], y[:, :-2], omega=0.5)
    assert parts["ce"].item() == pytest.approx(ref["ce"].item(), rel=1e-6)
    assert parts["kl"].item() == pytest.approx(ref["kl"].item(), rel=1e-6)


def test_schedule_switches_hard_at_kd_steps_or_ramps_linearly():
    hard = KDSchedule(omega=0.6, kd_steps=10)
    assert [hard(s) for s in (0, 9, 10, 11)] == [0.6, 0.6, 0.0, 0.0]
    ramp = KDSchedule(omega=0.6, kd_steps=10, decay_steps=4)
    assert ramp(5) == 0.6 and ramp(6) == pytest.approx(0.6) and ramp(8) == pytest.approx(0.3)
    assert ramp(9) == pytest.approx(0.15) and ramp(10) == 0.0
    assert all(ramp(s) >= ramp(s + 1) for s in range(12))
    assert KDSchedule(omega=1.0, kd_steps=0)(0) == 0.0


@pytest.mark.parametrize("omega", [-0.1, 1.5, float("nan")])
def test_omega_outside_0_1_is_refused(omega):
    with pytest.raises(ValueError, match="omega"):
        KDSchedule(omega=omega, kd_steps=5)
    with pytest.raises(ValueError, match="omega"):
        kd_loss(_logits(0), _logits(1), torch.zeros(3, 5, dtype=torch.long), omega=omega)


def test_bad_schedule_and_temperature_are_refused():
    with pytest.raises(ValueError, match="decay_steps"):
        KDSchedule(omega=0.5, kd_steps=5, decay_steps=6)
    with pytest.raises(ValueError, match="kd_steps"):
        KDSchedule(omega=0.5, kd_steps=-1)
    with pytest.raises(ValueError, match="tau"):
        DistillLoss(KDSchedule(kd_steps=3), tau=0.0)
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(_logits(0), _logits(1, (3, 5, 12)), torch.zeros(3, 5, dtype=torch.long), omega=0.5)


def _tiny(seed: int, layers: int = 1) -> GPT:
    return GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=layers, n_head=2, n_embd=16, bias=False), seed=seed)


def test_the_trainer_distills_until_kd_steps_and_then_trains_on_ce_without_the_teacher():
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append(1)
            return self.inner(x)

    tokens = np.arange(400) % 13
    src = WindowSet(tokens, np.arange(300), 8, 4, seed=0)
    loss = DistillLoss(KDSchedule(omega=0.5, kd_steps=3))
    cfg = TrainConfig(steps=6, lr=1e-3, log_every=1, progress=False)
    tr = Trainer(_tiny(0, 2), src, loss, cfg, teacher=Counting(_tiny(1)))
    tr.fit()
    omegas = [r["omega"] for r in tr.history if "omega" in r]
    assert omegas == [0.5, 0.5, 0.5, 0.0, 0.0, 0.0]
    assert len(calls) == 3  # the teacher runs in the distillation phase only
    assert all("kl" in r for r in tr.history[:3]) and not any("kl" in r for r in tr.history[3:])


def test_distilling_without_a_teacher_says_so():
    loss = DistillLoss(KDSchedule(omega=0.5, kd_steps=2))
    x = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="teacher"):
        loss(_tiny(0), (x, x), step=0, teacher=None)


def test_phased_batches_read_the_selection_first_then_the_corpus():
    first, then = (lambda i: ("first", i)), (lambda i: ("then", i))
    src = PhasedBatches(first, then, switch_index=4)
    assert [src(i)[0] for i in range(6)] == ["first"] * 4 + ["then"] * 2
    with pytest.raises(ValueError, match="switch_index"):
        PhasedBatches(first, then, -1)


def test_window_set_draws_only_the_selected_windows_and_refuses_a_batch_it_cannot_fill():
    tokens = np.arange(1000) % 251
    starts = np.array([10, 500, 700])
    src = WindowSet(tokens, starts, 16, 3, seed=3)
    x, y = src(5)
    assert x.shape == (3, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert set(x[:, 0].tolist()) <= {int(tokens[s]) for s in starts}
    assert torch.equal(src(5)[0], x)  # step-indexed: the same index gives the same batch
    with pytest.raises(ValueError, match="cannot be filled"):
        WindowSet(tokens, np.array([1, 2]), 16, 3)
    with pytest.raises(ValueError, match="window starts"):
        WindowSet(tokens, np.array([990]), 16, 1)


def test_select_band_keeps_exactly_the_quantile_band():
    scores = np.random.default_rng(0).permutation(np.arange(100.0))
    keep = select_band(scores, 0.5, 0.9)
    assert np.all(np.diff(keep) > 0)
    kept = np.sort(scores[keep])
    assert kept[0] == pytest.approx(np.quantile(scores, 0.5)) or kept[0] >= np.quantile(scores, 0.5)
    assert kept.max() <= np.quantile(scores, 0.9) and kept.min() >= np.quantile(scores, 0.5)
    assert len(keep) == 40  # 50th..90th percentile of 0..99: 50..89
    assert len(select_band(scores, 0.0, 1.0)) == 100
    with pytest.raises(ValueError, match="lo_quantile < hi_quantile"):
        select_band(scores, 0.9, 0.5)
    with pytest.raises(ValueError, match="finite"):
        select_band(np.array([1.0, math.nan]), 0.1, 0.9)


def test_sequence_scores_are_the_teachers_median_per_token_loss():
    teacher = _tiny(0)
    tokens = np.random.default_rng(1).integers(0, 13, 200)
    starts = np.array([0, 17, 100])
    med = sequence_scores(teacher, tokens, starts, 8, "median", batch_size=2)
    mean = sequence_scores(teacher, tokens, starts, 8, "mean")
    rows = torch.from_numpy(tokens[starts[:, None] + np.arange(9)].astype(np.int64))
    with torch.no_grad():
        nll = F.cross_entropy(teacher(rows[:, :-1]).transpose(1, 2), rows[:, 1:], reduction="none")
    assert np.allclose(med, nll.median(1).values.numpy(), atol=1e-6)
    assert np.allclose(mean, nll.mean(1).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="aggregate"):
        sequence_scores(teacher, tokens, starts, 8, "max")


def test_a_resumed_salt_ds_run_continues_the_same_trajectory(tmp_path):
    """PhasedBatches over WindowSet and RandomWindows are step-indexed: a run stopped in the KD phase and resumed
    from its checkpoint ends where an uninterrupted one does."""
    from models.lm import RandomWindows

    tokens = np.random.default_rng(0).integers(0, 13, 600)
    teacher = _tiny(1)

    def make():
        src = PhasedBatches(WindowSet(tokens, np.arange(0, 500, 7), 8, 4, seed=2), RandomWindows(tokens, 8, 4, 3),
                            switch_index=3)
        cfg = TrainConfig(steps=6, lr=3e-3, log_every=0, progress=False, ckpt_path=str(tmp_path / "c.pt"))
        return Trainer(_tiny(0, 2), src, DistillLoss(KDSchedule(omega=0.5, kd_steps=3)), cfg, teacher=teacher)

    full = make()
    full.fit()
    part = make()
    part.fit(until=2)
    resumed = make()
    assert resumed.load_checkpoint(tmp_path / "c.pt") and resumed.step == 2
    resumed.fit()
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
