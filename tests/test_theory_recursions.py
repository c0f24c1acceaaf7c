"""The exact recursions and samplers behind the theory experiments, each against a brute-force reference at one
small point: Monte Carlo for the risk recursions, dense matrices for the Gaussian-conditioning sampler, torch for
Adam, finite differences for the two-layer gradient."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import zeta


def _within(mc_mean: float, mc_se: float, exact: float, rel: float) -> bool:
    """The Monte Carlo mean agrees with the exact value: within `rel` and within 4 standard errors."""
    return abs(mc_mean - exact) <= max(4 * mc_se, 0.0) and abs(mc_mean / exact - 1) <= rel


def test_sketched_sgd_recursion_matches_monte_carlo_at_M8_d32_N64():
    from simulations.theory._linreg import geometric_schedule, sgd_excess_risk
    from simulations.theory.scaling_law import monte_carlo_sgd, sketched_problem

    rng = np.random.default_rng(3)
    prob = sketched_problem(1.5, 8, 32, rng, tail=False)
    sched = geometric_schedule(64, 0.2)
    exact = prob["approx"] + sgd_excess_risk(prob["mu"], prob["c0"], 1.0 + prob["approx"], sched)
    sims = monte_carlo_sgd(prob, 1.0, sched, 6000, rng)
    assert _within(sims.mean(), sims.std() / np.sqrt(len(sims)), exact, 0.05)


def test_sketched_approximation_error_is_the_projection_residual():
    from simulations.theory.scaling_law import sketched_problem

    rng = np.random.default_rng(0)
    prob = sketched_problem(2.0, 6, 20, rng, tail=False)
    s, h = prob["S"], prob["h"]
    # E||w* - S^T v*||_H^2 with v* the best sketched predictor, averaged over w* ~ N(0, I) in closed form
    hs = s @ np.diag(h) @ s.T
    proj = np.diag(h) @ s.T @ np.linalg.solve(hs, s @ np.diag(h))
    assert prob["approx"] == pytest.approx(np.trace(np.diag(h) - proj), rel=1e-10)
    assert prob["mu"] @ prob["c0"] == pytest.approx(np.trace(proj), rel=1e-10)


def test_power_law_bins_keep_the_first_two_moments_of_the_spectrum():
    from simulations.theory.scaling_law import power_law_bins

    for a in (1.5, 2.0):
        lam, w = power_law_bins(a, 100, 50)
        assert (w * lam).sum() == pytest.approx(zeta(a, 1), rel=1e-10)
        assert (w * lam**2).sum() == pytest.approx(zeta(2 * a, 1), rel=1e-10)


def test_binned_infinite_spectrum_gives_the_same_sgd_risk_as_the_unbinned_one():
    from simulations.theory._linreg import geometric_schedule, sgd_excess_risk
    from simulations.theory.scaling_law import power_law_bins

    a, sched = 2.0, geometric_schedule(512, 0.1)
    lam, w = power_law_bins(a, 50, 200, top=2e5)
    binned = sgd_excess_risk(lam, np.ones_like(lam), 1.0, sched, weights=w)
    full = np.arange(1, 200_001, dtype=float) ** -a  # the same spectrum truncated where the bins stop mattering
    exact = sgd_excess_risk(full, np.ones_like(full), 1.0, sched)
    assert binned == pytest.approx(exact, rel=2e-3)


def test_asgd_and_sgd_recursions_match_monte_carlo_at_d20_N60():
    from simulations.theory.asgd_vs_sgd import Config, asgd_matrices, asgd_risk, monte_carlo, sgd_risk

    cfg = Config(dim=20, kappa=100.0, xi=4.0, sigma2=0.1, head=3, steps=60, mc_runs=8000, mc_steps=(60,))
    lam = np.arange(1, 21, dtype=float) ** -2.0
    delta = 0.25 / lam.sum()
    a, b = asgd_matrices(delta, cfg.kappa, cfg.xi, cfg.c)
    e0 = (np.arange(1, 21) > 3).astype(float)
    exact = {"ASGD": asgd_risk(lam, np.stack([e0, e0, e0], 1), 0.1, a, b, 60, {60})[60].sum(),
             "SGD": sgd_risk(lam, e0, 0.1, delta, 60, {60})[60].sum()}
    mc = monte_carlo(lam, e0, 0.1, delta, cfg, {60}, np.random.default_rng(5))
    for name in ("ASGD", "SGD"):
        mean, se = mc[name][60]
        assert _within(mean, se, exact[name], 0.05), (name, mean, se, exact[name])


def test_mup_conditional_sampler_matches_dense_networks_at_L4_n32():
    from simulations.theory.mup_depth import update_size, update_size_dense

    rng = np.random.default_rng(0)
    cond = update_size(4, 32, 16, 6000, rng)
    dense = np.array([update_size_dense(4, 32, 16, rng) for _ in range(3000)])
    se = np.hypot(cond.std() / np.sqrt(len(cond)), dense.std() / np.sqrt(len(dense)))
    assert abs(cond.mean() - dense.mean()) <= 4 * se
    assert np.median(cond) == pytest.approx(np.median(dense), rel=0.1)


def test_mup_first_order_change_matches_an_actual_small_gradient_step():
    """The forward-mode recursion is the derivative of the one-step change: compare with a real GD step."""
    n, d, depth, eta = 24, 8, 3, 1e-6
    rng = np.random.default_rng(1)
    x = rng.standard_normal(d)
    ws = [rng.standard_normal((n, d)) * np.sqrt(2 / d)] + [rng.standard_normal((n, n)) * np.sqrt(2 / n)
                                                           for _ in range(depth - 1)]
    v = rng.standard_normal(n)

    def forward(weights):
        zs, h = [], x
        for w in weights:
            zs.append(w @ h)
            h = np.maximum(zs[-1], 0)
        return zs, float(v @ h / n)

    zs, _ = forward(ws)
    hs = [x] + [np.maximum(z, 0) for z in zs]
    g = [None] * depth
    g[-1] = (zs[-1] > 0) * v / n
    for layer in range(depth - 1, 0, -1):
        g[layer - 1] = (zs[layer - 1] > 0) * (ws[layer].T @ g[layer])
    lrs = [eta * n / d] + [eta] * (depth - 1)
    stepped = [w - lr * np.outer(gl, h) for w, lr, gl, h in zip(ws, lrs, g, hs)]
    actual = forward(stepped)[0][-1] - zs[-1]
    dz = -(n / d) * (x @ x) * g[0]
    for layer in range(1, depth):
        dz = ws[layer] @ ((zs[layer - 1] > 0) * dz) - g[layer] * (hs[layer] @ hs[layer])
    np.testing.assert_allclose(actual, eta * dz, rtol=1e-4, atol=1e-12)


def test_adam_and_rmsprop_match_torch():
    torch = pytest.importorskip("torch")
    from simulations.theory.beta2_stability import adaptive_logistic

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((1, 30, 4)), (rng.random((1, 30)) < 0.5).astype(float)
    order = rng.integers(0, 30, (1, 25, 5))
    for beta1 in (0.9, 0.0):
        ours = adaptive_logistic(x, y, order, np.array([0]), np.array([beta1]), np.array([0.99]), lr=0.05,
                                 eps=1e-8)[0]
        w = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([w], lr=0.05, betas=(beta1, 0.99), eps=1e-8)
        xt, yt = torch.tensor(x[0]), torch.tensor(y[0])
        for t in range(25):
            idx = torch.tensor(order[0, t])
            m = xt[idx] @ w
            loss = (torch.nn.functional.softplus(m) - yt[idx] * m).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        np.testing.assert_allclose(ours, w.detach().numpy(), rtol=1e-6, atol=1e-10)


def test_two_layer_gd_step_follows_the_loss_gradient():
    from simulations.theory.large_stepsize_two_layer import phi, train

    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((6, 3)), rng.choice([-1.0, 1.0], 6)
    a = np.repeat([1.0, -1.0], 2)
    w0 = 0.3 * rng.standard_normal((4, 3))

    def loss(w):
        return float(np.logaddexp(0, -y * (phi(x @ w.T) @ a / 4)).mean())

    eta = 1e-5
    out = train(x, y, a, w0, np.array([eta]), 1)
    grad = np.zeros_like(w0)
    for idx in np.ndindex(w0.shape):
        e = np.zeros_like(w0)
        e[idx] = 1e-6
        grad[idx] = (loss(w0 + e) - loss(w0 - e)) / 2e-6
    # one step of size eta lowers the loss by eta ||grad||^2 to first order
    assert out["loss"][0, 0] == pytest.approx(loss(w0))
    assert out["loss"][0, 0] - out["loss"][0, 1] == pytest.approx(eta * (grad**2).sum(), rel=1e-3)


def test_logistic_helpers_find_the_last_increase_and_the_stability_limit():
    from simulations.theory._logistic import gd, last_increase, margin_dataset, smoothness_at_zero

    assert list(last_increase(np.array([[3.0, 2, 2.5, 1, 0.5], [3.0, 2, 1, 0.5, 0.1]]))) == [2, 0]
    z = margin_dataset(0.1)
    beta = smoothness_at_zero(z)
    loss = gd(z, np.array([0.9 * 2 / beta, 3 * 2 / beta]), 300)["loss"]
    assert np.all(np.diff(loss[0]) <= 0) and np.any(np.diff(loss[1]) > 0)


def test_label_noise_activations_invert_and_satisfy_the_theorem():
    from simulations.theory.label_noise import activation

    z = np.linspace(-2, 2, 41)
    for name in ("cubic", "sinh"):
        phi, dphi, inv = activation(name)
        np.testing.assert_allclose(inv(phi(z)), z, atol=1e-9)
        third = np.gradient(np.gradient(dphi(z), z), z)  # phi''' by differences
        assert np.all(dphi(z) > 0) and np.all(third[2:-2] > 0)
