"""The lasso baseline (Garg et al. §5, sparse linear regression) against an independent exact reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models.icl import TaskConfig, TaskSampler  # noqa: E402
from models.icl import baselines as bl  # noqa: E402


def _exact_lasso(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """argmin (1/2n)‖y − Xw‖² + α‖w‖₁ by enumerating sign patterns (no iteration: independent of CD): for each
    pattern σ, w_S = G_SS⁻¹(c_S − ασ_S) is kept if its signs are σ and |c_j − (Gw)_j| ≤ α off S (the KKT
    conditions); the lowest objective among those wins."""
    n, d = x.shape
    if n == 0:
        return np.zeros(d)
    gram, c = x.T @ x / n, x.T @ y / n
    best, best_w = np.inf, None
    for pat in itertools.product((-1, 0, 1), repeat=d):
        s = np.array(pat)
        on = s != 0
        w = np.zeros(d)
        if on.any():
            g_on = gram[np.ix_(on, on)]
            if np.linalg.cond(g_on) > 1e10:
                continue
            w[on] = np.linalg.solve(g_on, c[on] - alpha * s[on])
            if np.any(np.sign(w[on]) != s[on]):
                continue
        if np.any(np.abs((c - gram @ w)[~on]) > alpha * (1 + 1e-9)):
            continue
        obj = 0.5 * np.mean((y - x @ w) ** 2) + alpha * np.abs(w).sum()
        if obj < best:
            best, best_w = obj, w
    return best_w


@pytest.mark.parametrize("alpha", [1.0, 0.1, 0.01, 0.001])
def test_lasso_matches_the_exact_solution_below_and_above_n_equal_d(alpha):
    p = TaskSampler(TaskConfig(d=5, n=12, kind="sparse", sparsity=2)).sample(12, generator=torch.Generator().manual_seed(0))
    for n in (0, 2, 4, 5, 8, 12):
        x, y = p.x[:, :n].double(), p.y[:, :n].double()
        w = bl.lasso_w(x, y, alpha).numpy()
        ref = np.stack([_exact_lasso(x[i].numpy(), y[i].numpy(), alpha) for i in range(12)])
        assert np.abs(w - ref).max() <= 1e-5, (n, alpha, np.abs(w - ref).max())


def test_lasso_per_position_is_the_prefix_loop_in_one_solve():
    p = TaskSampler(TaskConfig(d=6, n=14, kind="sparse", sparsity=2)).sample(64, generator=torch.Generator().manual_seed(1))
    fast = bl.per_position(bl.lasso, p.x, p.y, alpha=0.01)
    loop = torch.stack([bl.lasso(p.x[:, :k], p.y[:, :k], p.x[:, k], alpha=0.01) for k in range(15)], 1)
    assert torch.allclose(fast, loop, atol=1e-5)
    assert torch.equal(fast[:, 0], torch.zeros(64))  # no context: predict 0


def test_lasso_recovers_a_sparse_task_where_least_squares_cannot():
    p = TaskSampler(TaskConfig(d=10, n=6, kind="sparse", sparsity=1)).sample(256, generator=torch.Generator().manual_seed(2))
    x, y, xq, yq = p.x[:, :-1], p.y[:, :-1], p.x[:, -1], p.y[:, -1]
    lasso = (bl.lasso(x, y, xq, alpha=0.01) - yq).pow(2).mean()
    ls = (bl.least_squares(x, y, xq) - yq).pow(2).mean()
    assert lasso < 0.2 * ls  # 6 points, 10 dims, 1 nonzero coordinate


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf"), True])
def test_lasso_rejects_a_bad_alpha(alpha):
    x, y = torch.randn(2, 4, 3), torch.randn(2, 4)
    with pytest.raises(ValueError, match="alpha"):
        bl.lasso(x, y, torch.randn(2, 3), alpha)
    with pytest.raises(ValueError, match="alpha"):
        bl.per_position(bl.lasso, x, y, alpha=alpha)


def test_lasso_rejects_bad_tol_and_max_iter():
    x, y = torch.randn(2, 4, 3), torch.randn(2, 4)
    with pytest.raises(ValueError, match="tol"):
        bl.lasso_w(x, y, 0.1, tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        bl.lasso_w(x, y, 0.1, max_iter=0)


def test_sparse_support_lies_in_the_active_dims_under_the_curriculum():
    sampler = TaskSampler(TaskConfig(d=8, n=4, kind="sparse", sparsity=2))
    p = sampler.sample(200, generator=torch.Generator().manual_seed(3), d_active=3)
    assert torch.all(p.w[:, 3:] == 0) and torch.all((p.w != 0).sum(-1) == 2)


def test_function_classes_smoke_scores_every_baseline_with_intervals_and_saves_both_models(smoke, tmp_path):
    torch.set_num_threads(1)
    result = smoke("icl-function-classes")
    m, cfg = result["metrics"], result["config"]
    assert set(m["error"]["sparse"]) == {"model", "Lasso", "least squares", "3-NN", "averaging"}
    assert set(m["error"]["relu2nn"]) == {"model", "least squares", "3-NN", "averaging"}
    for kind, n_points in (("sparse", cfg["sparse_points"]), ("relu2nn", cfg["relu_points"])):
        for name, mean in m["error"][kind].items():
            ci = m["error_ci"][kind][name]
            assert len(mean) == n_points and all(lo <= e <= hi for e, (lo, hi) in zip(mean, ci))
    assert len(m["lasso_alpha"]) == cfg["sparse_points"] and set(m["lasso_alpha"]) <= set(cfg["lasso_alphas"])
    # least squares interpolates a noiseless sparse task once k >= d; Lasso beats it well below d (the sanity)
    assert max(m["error"]["sparse"]["least squares"][cfg["d"] + 1:]) < 1e-3
    kinds = {c["name"]: c["kind"] for c in result["claims"]}
    assert [k for k in kinds.values()].count("sanity") == 1
    from simulations.icl.weights import load_models

    models = load_models(tmp_path / "icl-function-classes")
    assert set(models) == {"sparse", "relu2nn"} and models["relu2nn"].n_points == cfg["relu_points"]


def test_function_classes_config_rejects_bad_sizes():
    from simulations.icl.function_classes import Config

    with pytest.raises(ValueError, match="sparsity"):
        Config(d=4, sparsity=5)
    with pytest.raises(ValueError, match="sparse_points"):
        Config(d=10, sparse_points=10)
    with pytest.raises(ValueError, match="lasso_alphas"):
        Config(lasso_alphas=(0.1, 0.0))
