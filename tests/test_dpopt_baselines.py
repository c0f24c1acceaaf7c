"""Bias-corrected DP-Adam (DPAdamBC; Tang et al., AAAI 2024; opacus#679) and heterogeneous-history accounting."""

from __future__ import annotations

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpopt import DPAdamBC, history_epsilon, make_dp_training

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook", "ignore:Secure RNG")


def test_adam_bc_update_is_bias_corrected_adam_with_the_noise_variance_removed():
    p = nn.Parameter(torch.tensor([1.0, -1.0, 0.5]))
    s, lr, (b1, b2), gamma = 0.3, 0.01, (0.9, 0.99), 1e-6
    opt = DPAdamBC([p], lr=lr, betas=(b1, b2), eps_root=gamma, noise_std=s)
    grads = [torch.tensor([0.5, -0.2, 0.0]), torch.tensor([0.7, 0.1, 0.05]), torch.tensor([0.6, -0.4, 0.02])]
    w, m, v = p.detach().clone(), torch.zeros(3), torch.zeros(3)
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        w = w - lr * m_hat / torch.clamp(v_hat - s * s, min=gamma).sqrt()
        assert torch.allclose(p.detach(), w, rtol=1e-6, atol=1e-7)


def test_under_pure_noise_adams_second_moment_is_the_noise_floor_and_the_correction_removes_it():
    """Why DP-Adam is 'actually DP-SGD': with ḡ = 0, √v̂ ≈ s = σC/B on every coordinate (an lr/s SGD step);
    v̂ − s² is ≈ 0 instead, so the corrected denominator no longer reflects the noise."""
    g = torch.Generator().manual_seed(0)
    s = 0.05
    p = nn.Parameter(torch.zeros(20_000))
    opt = DPAdamBC([p], lr=1e-3, betas=(0.9, 0.99), noise_std=s)
    for _ in range(400):
        p.grad = s * torch.randn(20_000, generator=g)
        opt.step()
    st = opt.state[p]
    v_hat = st["exp_avg_sq"] / (1 - 0.99 ** st["step"])
    assert v_hat.sqrt().mean().item() == pytest.approx(s, rel=0.02)
    assert abs((v_hat - s * s).mean().item()) < 0.03 * s * s


def test_make_dp_training_adam_bc_follows_the_optimizers_sigma_clip_and_batch():
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=32)
    run = make_dp_training("dp-adam-bc", nn.Linear(6, 2), loader, lr=1e-2, max_grad_norm=0.7, noise_multiplier=1.3)
    inner = run.optimizer.original_optimizer
    assert isinstance(inner, DPAdamBC)
    for i, (xb, yb) in enumerate(run.data_loader):
        run.optimizer.zero_grad()
        nn.functional.cross_entropy(run.module(xb), yb).backward()
        run.optimizer.step()
        if i == 2:
            run.optimizer.noise_multiplier = 2.0  # what a noise scheduler does
    assert inner.param_groups[0]["noise_std"] == pytest.approx(2.0 * 0.7 / 32)
    assert run.engine.accountant.history[0][:2] == (1.3, 1 / 8)  # still accounted by the engine


def test_adam_bc_rejects_bad_hyperparameters():
    p = [nn.Parameter(torch.zeros(2))]
    for kw, name in (({"lr": 0.0}, "lr"), ({"eps_root": 0.0}, "eps_root"), ({"noise_std": -1.0}, "noise_std"),
                     ({"betas": (0.9, 1.0)}, "betas")):
        with pytest.raises(ValueError, match=name):
            DPAdamBC(p, **kw)
    with pytest.raises(ValueError, match="DPOptimizer that wraps"):
        DPAdamBC(p).attach(object())


HISTORY = [(2.0, 0.01, 300), (1.5, 0.01, 200), (1.0, 0.02, 100)]


def test_history_epsilon_of_a_changing_sigma_matches_opacus_accountants():
    rdp, prv = RDPAccountant(), PRVAccountant()
    rdp.history, prv.history = list(HISTORY), list(HISTORY)
    assert history_epsilon(HISTORY, 1e-5, "rdp") == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-4)
    assert history_epsilon(HISTORY, 1e-5, "prv") == pytest.approx(prv.get_epsilon(1e-5), rel=1e-9)
    assert history_epsilon(HISTORY, 1e-5, "pld") <= history_epsilon(HISTORY, 1e-5, "rdp")
    assert history_epsilon([], 1e-5) == 0.0
    # the constant-σ guard's old mistake: planning with the first σ under-states the spend
    assert history_epsilon([(2.0, 0.01, 600)], 1e-5, "rdp") < 0.8 * history_epsilon(HISTORY, 1e-5, "rdp")
