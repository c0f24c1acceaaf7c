"""DP² experiments: smoke runs with their claims, and the pieces they rest on (closed-form per-example gradients
fed to Opacus/dpopt optimizers, the equal-budget tuning protocol)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from simulations.dp import _dptrain as dt
from simulations.dp._tuning import tune_and_evaluate

warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_logistic_per_example_gradients_match_autograd():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=g), (torch.rand(7, generator=g) > 0.5).float()
    model = dt.LogisticRegression(x, y)
    with torch.no_grad():
        model.w.copy_(torch.randn(5, generator=g))
        model.b.fill_(0.3)
    gw, gb = model.per_example_grads(torch.arange(7))
    for i in range(7):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x[i] @ model.w + model.b, y[i:i + 1])
        aw, ab = torch.autograd.grad(loss, [model.w, model.b])
        assert torch.allclose(gw[i], aw, atol=1e-6) and torch.allclose(gb[i], ab, atol=1e-6)


def test_matrix_factorization_per_example_gradients_match_autograd():
    from simulations.datasets.movielens import MovieLensData

    u, i, r = np.array([0, 2, 1, 2]), np.array([1, 0, 1, 2]), np.array([4.0, 3.5, 1.0, 5.0], np.float32)
    data = MovieLensData(u, i, r, u[:1], i[:1], r[:1], 3, 3)
    model = dt.MatrixFactorization(data, dim=4, init_scale=0.5, seed=0)
    gu, gv = model.per_example_grads(torch.arange(4))
    for k in range(4):
        loss = ((model.U[u[k]] * model.V[i[k]]).sum() - float(r[k])) ** 2
        au, av = torch.autograd.grad(loss, [model.U, model.V])
        assert torch.allclose(gu[k], au, atol=1e-5) and torch.allclose(gv[k], av, atol=1e-5)


def test_dp2_phase_b_through_our_pipeline_is_mean_of_clipped_preconditioned_gradients():
    """σ = 0: a phase-B step moves w by −α2·mean_i clip(g_i/(√v+ε), C2), v from the phase-A gradients."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 6, generator=g) * torch.logspace(0, -2, 6), (torch.rand(40, generator=g) > 0.5).float()
    model = dt.LogisticRegression(x, y)
    hp = {"lr": 0.5, "clip": 1.0, "lr2": 0.1, "clip2": 2.0, "eps": 1e-3, "delay": 2, "beta": 0.9}
    opt = dt.build_optimizer("dp2-rmsprop", model.params, hp, sigma=0.0, batch_size=40, generator=g)
    idx = torch.arange(40)
    mean_a = []
    for _ in range(2):  # phase A: two plain clipped-SGD steps; v is refreshed from their mean at the second
        grads = model.per_example_grads(idx)
        flat = torch.cat([grads[0], grads[1]], 1)
        f = (1.0 / (flat.norm(dim=1) + 1e-6)).clamp(max=1.0)
        mean_a.append((f[:, None] * flat).mean(0))
        for p, gs in zip(model.params, grads):
            p.grad_sample = gs
        opt.step()
        opt.zero_grad()
    v = 0.1 * ((mean_a[0] + mean_a[1]) / 2) ** 2
    d = v.sqrt() + 1e-3
    grads = model.per_example_grads(idx)
    pre = torch.cat([grads[0], grads[1]], 1) / d
    f = (2.0 / (pre.norm(dim=1) + 1e-6)).clamp(max=1.0)
    expected = torch.cat([model.w.detach(), model.b.detach()]) - 0.1 * (f[:, None] * pre).mean(0)
    for p, gs in zip(model.params, grads):
        p.grad_sample = gs
    opt.step()
    assert torch.allclose(torch.cat([model.w.detach(), model.b.detach()]), expected, atol=1e-5)


def test_build_optimizer_rejects_unknown_method():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="method must be one of"):
        dt.build_optimizer("dp-lion", [w], {"lr": 1.0, "clip": 1.0}, sigma=1.0, batch_size=2,
                           generator=torch.Generator())


def test_tuning_gives_every_method_the_same_budget_and_dp2_the_dp_sgd_phase_a_point():
    seen = []

    def fn(job):
        m, hp, seed = job
        seen.append((m, seed))
        score = -abs(hp["lr"] - 2.0) - abs(hp.get("lr2", 0.3) - 0.3)
        return {"final": {"acc": score}}

    res = tune_and_evaluate(fn, {"dp-sgd": [{"lr": a, "clip": 1.0} for a in (1.0, 2.0, 4.0)]},
                            {"dp2-rmsprop": [{"lr2": a} for a in (0.1, 0.3, 1.0)]}, tune_seed=0, seeds=(5, 6),
                            select="acc", mode="max", workers=1)
    assert res["best"]["dp-sgd"] == {"lr": 2.0, "clip": 1.0}
    assert res["best"]["dp2-rmsprop"] == {"lr": 2.0, "clip": 1.0, "lr2": 0.3}
    assert sum(1 for m, s in seen if s == 0 and m == "dp-sgd") == sum(1 for m, s in seen if s == 0 and m != "dp-sgd")
    assert sorted(s for m, s in seen if m == "dp2-rmsprop" and s) == [5, 6]


def test_configs_reject_unequal_budgets_and_bad_sizes():
    from simulations.dp import delay, imdb, movielens, sparse

    with pytest.raises(ValueError, match="equal tuning budget"):
        dataclasses.replace(imdb.Config.smoke(), dp2_lr2s=(0.1, 0.3, 1.0))
    with pytest.raises(ValueError, match="n must be"):
        dataclasses.replace(sparse.Config.smoke(), n=10)
    with pytest.raises(ValueError, match="methods must include 'dp-sgd'"):
        dataclasses.replace(movielens.Config.smoke(), methods=("dp2-rmsprop",))
    with pytest.raises(ValueError, match="delays"):
        dataclasses.replace(delay.Config.smoke(), delays=(5, 1, 20))


def test_steps_to_reach_reads_the_first_evaluation_at_or_below_target():
    from simulations.dp.sparse import steps_to_reach

    curve = {"steps": [0, 10, 20, 30], "train_loss": [0.7, 0.6, 0.5, 0.55]}
    assert steps_to_reach(curve, 0.52) == 20.0 and steps_to_reach(curve, 0.4) is None


def test_dp2_imdb_smoke(smoke):
    r = smoke("dp2-imdb")
    m = r["metrics"]
    assert m["dim"] == 497 and 0.8 < m["nonprivate"]["test_acc"] < 0.86
    acc = m["per_epsilon"]["3.0"]["mean_test_acc"]
    assert set(acc) == {"dp-sgd", "dp-adam", "dp2-rmsprop"} and min(acc.values()) > 0.7


def test_dp2_sparse_smoke(smoke):
    r = smoke("dp2-sparse")
    assert r["metrics"]["optimum_loss"] < r["metrics"]["dp_sgd_best_final_loss"] < 0.69


def test_dp2_movielens_smoke(smoke):
    r = smoke("dp2-movielens")
    m = r["metrics"]
    # DP training learns the rating scale: every method ends far below the all-zero prediction's MSE (~13)
    assert max(m["mean_test_mse"].values()) < 8.0


def test_dp2_delay_smoke(smoke):
    r = smoke("dp2-delay")
    assert set(r["metrics"]["per_variant"]) == {"dp2-rmsprop", "dp2-delayed"}
