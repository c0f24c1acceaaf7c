"""Closed-form in-context estimators and risks that the trained models are compared against.

Every estimator sees a batch of contexts x [B, n, d], y [B, n] and queries xq [B, d] (or [B, m, d]) and returns
predictions [B] (or [B, m]); all are vectorized over the batch, run on any device, and treat n = 0 (predict the
prior mean). Risks are E(ŷ − y_q)² *including* the query's label noise σ², not divided by d; divide by d for
the "normalized" error of Garg et al. References: notes/icl.md §2.4 and §3.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from models.icl.lasso_cd import check_lasso_args, lasso_gram

_KERNELS = ("linear", "softmax", "gaussian", "laplace", "hilbert")


def _check(x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> None:
    if x.ndim != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"x must be [B, n, d] and y [B, n]; got {tuple(x.shape)} and {tuple(y.shape)}")
    if xq.shape[0] != x.shape[0] or xq.shape[-1] != x.shape[-1] or xq.ndim not in (2, 3):
        raise ValueError(f"xq must be [B, d] or [B, m, d] matching x {tuple(x.shape)}; got {tuple(xq.shape)}")


def predict(w: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """x_qᵀ w for w [B, d] and xq [B, d] -> [B] or xq [B, m, d] -> [B, m]."""
    return (xq @ w.unsqueeze(-1)).squeeze(-1) if xq.ndim == 3 else (xq * w).sum(-1)


def least_squares_w(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares ŵ = X⁺y (SVD pseudo-inverse: right also when rank-deficient, on any device)."""
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0], x.shape[2])
    return (torch.linalg.pinv(x) @ y.unsqueeze(-1)).squeeze(-1)


def least_squares(x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """Predictions of min-norm least squares."""
    _check(x, y, xq)
    return predict(least_squares_w(x, y), xq)


def posterior_mean_w(
    x: torch.Tensor,
    y: torch.Tensor,
    noise_var: float,
    prior_mean: float | torch.Tensor = 0.0,
    prior_cov: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Posterior mean of w under w ~ N(μ, Ψ), y = Xw + N(0, σ²I):  ŵ = μ + ΨXᵀ(XΨXᵀ + σ²I)⁻¹(y − Xμ).

    The n×n (kernel) form stays right at σ² = 0, where it becomes the interpolant closest to μ (pseudo-inverse).
    With μ = 0 and Ψ = ψ²I this is ridge with λ = σ²/ψ², the Bayes-optimal estimator.
    """
    if noise_var < 0:
        raise ValueError(f"noise_var must be >= 0, got {noise_var}")
    b, n, d = x.shape
    mu = torch.as_tensor(prior_mean, dtype=x.dtype, device=x.device)
    mu = mu.expand(b, d) if mu.ndim <= 1 else mu
    if n == 0:
        return mu.clone()
    psi = torch.as_tensor(prior_cov, dtype=x.dtype, device=x.device)
    xpsi = x * psi if psi.ndim == 0 else x @ psi  # Ψ symmetric: XΨ = (ΨXᵀ)ᵀ
    r = (y - predict(mu, x)).unsqueeze(-1)
    if noise_var == 0:
        # ΨXᵀ(XΨXᵀ)⁺ = Ψ^½ (XΨ^½)⁺: a pseudo-inverse of XΨ^½ itself, not of the kernel (which squares its
        # condition number: in fp32 at n = d the kernel form lost 3 digits against least squares).
        if psi.ndim == 0:
            return mu + psi.sqrt() * (torch.linalg.pinv(x * psi.sqrt()) @ r).squeeze(-1)
        evals, evecs = torch.linalg.eigh(psi)
        root = (evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)) @ evecs.transpose(-1, -2)
        return mu + (root @ (torch.linalg.pinv(x @ root) @ r)).squeeze(-1)
    k = xpsi @ x.transpose(-1, -2)
    alpha = torch.linalg.solve(k + noise_var * torch.eye(n, dtype=x.dtype, device=x.device), r)
    return mu + (xpsi.transpose(-1, -2) @ alpha).squeeze(-1)


def ridge(x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor, lam: float) -> torch.Tensor:
    """Ridge predictions, ŵ = argmin ‖y − Xw‖² + λ‖w‖² (λ = 0 gives min-norm least squares)."""
    _check(x, y, xq)
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    return predict(posterior_mean_w(x, y, lam), xq)


def posterior_mean(
    x: torch.Tensor,
    y: torch.Tensor,
    xq: torch.Tensor,
    noise_var: float,
    prior_mean: float | torch.Tensor = 0.0,
    prior_cov: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Bayes-optimal predictions (posterior mean) under w ~ N(μ, Ψ) and label noise σ²; see `posterior_mean_w`."""
    _check(x, y, xq)
    return predict(posterior_mean_w(x, y, noise_var, prior_mean, prior_cov), xq)


def gd_w(
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
    precond: torch.Tensor | None = None,
    w0: torch.Tensor | None = None,
) -> torch.Tensor:
    """k steps of (preconditioned) GD on L(w) = (1/2n)‖y − Xw‖² from w0 (default 0):

        w_{t+1} = w_t + η Γ (1/n) Xᵀ(y − X w_t),   Γ = precond [d, d] or [B, d, d] (default I).

    One step from 0 with Γ is what a linear-attention layer computes (notes §1.1).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    b, n, d = x.shape
    w = x.new_zeros(b, d) if w0 is None else w0.expand(b, d).clone()
    if n == 0:
        return w
    for _ in range(steps):
        g = (x.transpose(-1, -2) @ (y - predict(w, x)).unsqueeze(-1)).squeeze(-1) / n
        if precond is not None:
            g = (precond @ g.unsqueeze(-1)).squeeze(-1)
        w = w + lr * g
    return w


def gd(
    x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor, steps: int, lr: float, precond: torch.Tensor | None = None
) -> torch.Tensor:
    """Predictions after k steps of (preconditioned) GD from 0; see `gd_w`."""
    _check(x, y, xq)
    return predict(gd_w(x, y, steps, lr, precond), xq)


def tune_gd_lr(
    x: torch.Tensor,
    y: torch.Tensor,
    xq: torch.Tensor,
    yq: torch.Tensor,
    steps: int,
    precond: torch.Tensor | None = None,
    grid: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Step size η (from a log grid, default 10^[-3, 1]) that minimizes the query MSE of k-step (P)GD on this batch.

    Returns (η, mse). Tune on one batch and evaluate on another to avoid optimism.
    """
    _check(x, y, xq)
    grid = torch.logspace(-3, 1, 121) if grid is None else grid
    best = (float("nan"), math.inf)
    for lr in grid.tolist():
        mse = (gd(x, y, xq, steps, lr, precond) - yq).pow(2).mean().item()
        if mse < best[1]:
            best = (lr, mse)
    return best


def averaging(x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """Garg et al.'s averaging estimator ŵ = (1/n) Σ y_i x_i (one GD step with η = 1)."""
    return gd(x, y, xq, 1, 1.0)


def nearest_neighbors(x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Mean label of the k nearest context points (Euclidean); uses all points when n < k; 0 when n = 0."""
    _check(x, y, xq)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = xq if xq.ndim == 3 else xq.unsqueeze(1)
    if x.shape[1] == 0:
        out = q.new_zeros(q.shape[:2])
    else:
        dist = torch.cdist(q, x)
        idx = dist.topk(min(k, x.shape[1]), dim=-1, largest=False).indices
        out = torch.gather(y.unsqueeze(1).expand(-1, q.shape[1], -1), 2, idx).mean(-1)
    return out if xq.ndim == 3 else out.squeeze(1)


def kernel_weights(x: torch.Tensor, xq: torch.Tensor, kernel: str, bandwidth: float = 1.0) -> torch.Tensor:
    """Unnormalized kernel weights k(x_q, x_i) [B, m, n] for the kernels of Abedsoltan et al.'s feature map:
    linear xᵀx', softmax exp(xᵀx'/h), gaussian exp(−‖x−x'‖²/2h²), laplace exp(−‖x−x'‖/h), hilbert ‖x−x'‖^{−d}."""
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    if kernel == "linear":
        return xq @ x.transpose(-1, -2)
    if kernel == "softmax":
        s = xq @ x.transpose(-1, -2) / bandwidth
        return torch.exp(s - s.amax(-1, keepdim=True).clamp_min(0).detach()) if s.shape[-1] else s
    dist = torch.cdist(xq, x)
    if kernel == "gaussian":
        return torch.exp(-dist.pow(2) / (2 * bandwidth**2))
    if kernel == "laplace":
        return torch.exp(-dist / bandwidth)
    return dist.clamp_min(1e-12).pow(-x.shape[-1])


def kernel_regression(
    x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor, kernel: str = "gaussian", bandwidth: float = 1.0
) -> torch.Tensor:
    """Nadaraya–Watson smoother Σ_i k(x_q,x_i) y_i / Σ_i k(x_q,x_i) (the linear kernel is not normalized: it
    returns (1/n) Σ_i x_qᵀx_i y_i, the one-step-GD statistic)."""
    _check(x, y, xq)
    q = xq if xq.ndim == 3 else xq.unsqueeze(1)
    if x.shape[1] == 0:
        out = q.new_zeros(q.shape[:2])
    else:
        k = kernel_weights(x, q, kernel, bandwidth)
        num = (k @ y.unsqueeze(-1)).squeeze(-1)
        out = num / x.shape[1] if kernel == "linear" else num / k.sum(-1).clamp_min(1e-30)
    return out if xq.ndim == 3 else out.squeeze(1)


# ----------------------------------------------------------------------------------------------------- lasso


def lasso_w(x: torch.Tensor, y: torch.Tensor, alpha: float, *, tol: float = 1e-10,
            max_iter: int = 20_000) -> torch.Tensor:
    """Lasso ŵ = argmin (1/2n)‖y − Xw‖² + α‖w‖₁ (sklearn's `Lasso(alpha, fit_intercept=False)` objective) for
    every prompt of x [B, n, d], y [B, n], by batched coordinate descent in float64 until each prompt's duality
    gap is ≤ tol·‖y‖²/n; returns ŵ [B, d] in x's dtype. n = 0 gives ŵ = 0. The baseline that knows the task is
    sparse (Garg et al. §5: sparse linear regression); ValueError unless alpha is a finite number > 0."""
    check_lasso_args(alpha, tol, max_iter)
    b, n, d = x.shape
    if n == 0:
        return x.new_zeros(b, d)
    xd, yd = x.double(), y.double()
    gram = xd.transpose(-1, -2) @ xd / n
    xty = (xd.transpose(-1, -2) @ yd.unsqueeze(-1)).squeeze(-1) / n
    return lasso_gram(gram, xty, yd.pow(2).sum(-1) / n, float(alpha), tol, max_iter).to(x.dtype)


def lasso(x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor, alpha: float, *, tol: float = 1e-10,
          max_iter: int = 20_000) -> torch.Tensor:
    """Lasso predictions x_qᵀŵ (0 when n = 0); see `lasso_w`."""
    _check(x, y, xq)
    return predict(lasso_w(x, y, alpha, tol=tol, max_iter=max_iter), xq)


def _lasso_per_position(x: torch.Tensor, y: torch.Tensor, alpha: float, *, tol: float = 1e-10,
                        max_iter: int = 20_000) -> torch.Tensor:
    """`per_position(lasso, ...)` as one solve: the Gram statistics of every prefix are cumulative sums, so all
    B·N prefix problems go through one coordinate-descent loop (prefix k = 0 predicts 0)."""
    check_lasso_args(alpha, tol, max_iter)
    b, big_n, d = x.shape
    xd, yd = x.double(), y.double()
    zero = xd.new_zeros(b, 1, d, d)
    gram = torch.cat([zero, (xd.unsqueeze(-1) * xd.unsqueeze(-2)).cumsum(1)[:, :-1]], 1)
    xty = torch.cat([xd.new_zeros(b, 1, d), (xd * yd.unsqueeze(-1)).cumsum(1)[:, :-1]], 1)
    yy = torch.cat([xd.new_zeros(b, 1), yd.pow(2).cumsum(1)[:, :-1]], 1)
    n = torch.arange(big_n, dtype=torch.float64, device=x.device).clamp_min(1)
    w = lasso_gram((gram / n[:, None, None]).flatten(0, 1), (xty / n[:, None]).flatten(0, 1),
                    (yy / n).flatten(0, 1), float(alpha), tol, max_iter).view(b, big_n, d)
    return (w * xd).sum(-1).to(x.dtype)


def per_position(
    estimator: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor, **kwargs: object
) -> torch.Tensor:
    """Predictions [B, N] of an estimator for every row k of a prompt from the k rows before it — the
    per-context-length curve that a causal model gives in one pass (row 0 is predicted with no context).
    `lasso` runs as one batched solve over all prefixes (the same answers as the loop, in one convergence loop)."""
    if x.ndim != 3 or y.shape != x.shape[:2]:
        raise ValueError(f"x must be [B, N, d] and y [B, N]; got {tuple(x.shape)} and {tuple(y.shape)}")
    if estimator is lasso:
        return _lasso_per_position(x, y, **kwargs)
    return torch.stack([estimator(x[:, :k], y[:, :k], x[:, k], **kwargs) for k in range(x.shape[1])], dim=1)


# ----------------------------------------------------------------------------------------------- closed forms


def ols_risk(d: int, n: int, noise_var: float = 0.0) -> float:
    """Risk of min-norm least squares with x ~ N(0, I_d), w ~ N(0, I_d): d − n for n < d when noiseless (0 at
    n ≥ d); with noise σ²(1 + d/(n − d − 1)) for n ≥ d + 2 (E tr(XᵀX)⁻¹ = d/(n−d−1)), ∞ at n ∈ {d, d+1}."""
    if d < 1 or n < 0 or noise_var < 0:
        raise ValueError(f"need d >= 1, n >= 0, noise_var >= 0; got d={d}, n={n}, noise_var={noise_var}")
    if noise_var == 0:
        return float(max(d - n, 0))
    if n < d:
        raise ValueError("noisy min-norm risk for n < d has no simple closed form; use Monte Carlo")
    if n <= d + 1:
        return math.inf
    return noise_var * (1.0 + d / (n - d - 1))


def lsa_optimal_gamma(cov: torch.Tensor, n: int, noise_var: float = 0.0) -> torch.Tensor:
    """Γ* = (((n+1)/n) H + ((tr H + σ²)/n) I)⁻¹: the best single-layer linear-attention / one-step-PGD
    preconditioner for x ~ N(0, H), w ~ N(0, I) (Wu et al. 2024)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    tr = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1)[..., None, None]
    return torch.linalg.inv((n + 1) / n * cov + (tr + noise_var) / n * eye)


def lsa_optimal_risk(d: int, n: int, noise_var: float = 0.0) -> float:
    """Risk of the optimal one-layer linear attention (one step of GD with Γ*), x ~ N(0, I), w ~ N(0, I):
    σ² + d(1 + d + σ²)/(n + 1 + d + σ²). Divided by d: 0.231 at d=5, n=20 and 0.344 at d=20, n=40."""
    if d < 1 or n < 1 or noise_var < 0:
        raise ValueError(f"need d >= 1, n >= 1, noise_var >= 0; got d={d}, n={n}, noise_var={noise_var}")
    return noise_var + d * (1 + d + noise_var) / (n + 1 + d + noise_var)


def bayes_risk(
    d: int,
    n: int,
    noise_var: float,
    cov: torch.Tensor | None = None,
    prior_cov: float | torch.Tensor = 1.0,
    samples: int = 4000,
    generator: torch.Generator | None = None,
) -> float:
    """Monte-Carlo Bayes risk σ² + E tr(H C) with C = Ψ − ΨXᵀ(XΨXᵀ + σ²I)⁻¹XΨ the posterior covariance, for
    x ~ N(0, H) (H = cov, default I), w ~ N(μ, Ψ): the risk of the posterior mean, which does not depend on μ."""
    if d < 1 or n < 0 or noise_var < 0 or samples < 1:
        raise ValueError(f"need d >= 1, n >= 0, noise_var >= 0, samples >= 1; got {d}, {n}, {noise_var}, {samples}")
    dt = torch.float64
    h = torch.eye(d, dtype=dt) if cov is None else cov.to(dt)
    psi = torch.as_tensor(prior_cov, dtype=dt)
    psi = psi * torch.eye(d, dtype=dt) if psi.ndim == 0 else psi
    if n == 0:
        return noise_var + float(torch.trace(h @ psi))
    sqrt_h = torch.linalg.cholesky(h)
    x = torch.randn(samples, n, d, generator=generator, dtype=dt) @ sqrt_h.T
    xpsi = x @ psi
    k = xpsi @ x.transpose(-1, -2) + noise_var * torch.eye(n, dtype=dt)
    kinv = torch.linalg.pinv(k, hermitian=True) if noise_var == 0 else torch.linalg.inv(k)
    post = psi - xpsi.transpose(-1, -2) @ kinv @ xpsi
    return noise_var + float(torch.einsum("ij,bji->b", h, post).mean())
