"""The lasso solver behind `models.icl.baselines.lasso`: batched cyclic coordinate descent in Gram form.

P problems argmin (1/2n)‖y − Xw‖² + α‖w‖₁ are given by their statistics G = XᵀX/n, c = Xᵀy/n and yᵀy/n (so
every prefix of a prompt is one problem, from cumulative sums), solved together in float64 along a warm-start
path to a duality-gap tolerance, with an exact polish on the current support. Kept apart from the estimators
because it is a solver, not an estimator.
"""

from __future__ import annotations

import math
import warnings

import torch


def check_lasso_args(alpha: float, tol: float, max_iter: int) -> None:
    """ValueError unless alpha is a finite number > 0, tol > 0 and max_iter >= 1."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0 (alpha = 0 is least squares: use least_squares), "
                         f"got {alpha!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")


def _lasso_gap(gram: torch.Tensor, xty: torch.Tensor, yy: torch.Tensor, w: torch.Tensor, alpha: float,
               q: torch.Tensor) -> torch.Tensor:
    """Duality gap [P] of the lasso in Gram form (G = XᵀX/n, c = Xᵀy/n, yy = yᵀy/n, q = Gw): with the residual
    r = y − Xw, rr = ‖r‖²/n = yy − 2cᵀw + wᵀGw, ry = rᵀy/n = yy − cᵀw and the dual point r·s/n scaled into
    the feasible set by s = min(1, α/‖Xᵀr/n‖∞), gap = ½(1 + s²)·rr + α‖w‖₁ − s·ry (sklearn's, divided by n)."""
    cw = (xty * w).sum(-1)
    rr = (yy - 2 * cw + (w * q).sum(-1)).clamp_min(0)
    ry = yy - cw
    dual_norm = (xty - q).abs().amax(-1)
    s = torch.where(dual_norm > alpha, alpha / dual_norm.clamp_min(1e-300), torch.ones_like(dual_norm))
    return 0.5 * (1 + s * s) * rr + alpha * w.abs().sum(-1) - s * ry


def _lasso_polish(gram: torch.Tensor, xty: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """The exact lasso solution for the support S and signs σ of the iterate w: w_S = G_SS⁻¹(c_S − α σ_S),
    w = 0 off S (the KKT equations once S and σ are right). NaN rows where G_SS is singular."""
    on = w != 0
    mask = on.unsqueeze(-1) & on.unsqueeze(-2)
    eye = torch.diag_embed((~on).to(gram.dtype))
    a = torch.where(mask, gram, torch.zeros_like(gram)) + eye
    rhs = torch.where(on, xty - alpha * torch.sign(w), torch.zeros_like(xty))
    sol, info = torch.linalg.solve_ex(a, rhs)
    return torch.where((info == 0).unsqueeze(-1), sol, torch.full_like(sol, math.nan))


_PATH_STAGES = 20


def _cd_sweeps(g: torch.Tensor, c: torch.Tensor, gd: torch.Tensor, safe: torch.Tensor, w: torch.Tensor,
               q: torch.Tensor, alpha: torch.Tensor, sweeps: int) -> None:
    """`sweeps` in-place cyclic CD sweeps over all coordinates (α [P] per problem); see `lasso_gram`."""
    for _ in range(sweeps):
        for j in range(c.shape[-1]):
            z = c[:, j] - q[:, j] + gd[:, j] * w[:, j]
            new = torch.where(gd[:, j] > 0, torch.sign(z) * (z.abs() - alpha).clamp_min(0) / safe[:, j], 0.0)
            q += g[:, :, j] * (new - w[:, j]).unsqueeze(-1)
            w[:, j] = new


def lasso_gram(gram: torch.Tensor, xty: torch.Tensor, yy: torch.Tensor, alpha: float, tol: float,
                max_iter: int, check_every: int = 10) -> torch.Tensor:
    """Batched cyclic coordinate descent for P lasso problems in Gram form (fp64): gram [P, d, d] = XᵀX/n,
    xty [P, d] = Xᵀy/n, yy [P] = yᵀy/n. One sweep updates every coordinate of every problem in turn,

        w_j ← S(c_j − Σ_{k≠j} G_jk w_k, α) / G_jj,   S(z, α) = sign(z)·max(|z| − α, 0)

    (w_j = 0 where G_jj = 0: a coordinate no point touches). CD finds the support fast but creeps to the values
    when columns are correlated (n < d, small α: > 20k sweeps for some prompts), so every `check_every` sweeps
    each problem also tries the exact solution on its current support and signs (`_lasso_polish`); a problem
    is done when the iterate or its polished version has duality gap ≤ tol · yy, and the loop goes on with the
    open ones only. A warning says how many were still open after max_iter sweeps."""
    p, d = xty.shape
    w_out = torch.zeros_like(xty)
    live = torch.arange(p, device=xty.device)
    g, c, y2 = gram, xty, yy
    gd = torch.diagonal(g, dim1=-2, dim2=-1)
    safe = torch.where(gd > 0, gd, torch.ones_like(gd))
    w = torch.zeros_like(c)
    q = torch.zeros_like(c)  # q = G w, kept up to date coordinate by coordinate
    # warm start along a geometric path α_max = ‖c‖∞ → α (glmnet's continuation): at tiny α, CD from 0 keeps
    # the first coordinate it fits and moves mass off it over thousands of sweeps; the path enters coordinates
    # in the order the solution does
    amax = c.abs().amax(-1).clamp_min(alpha)
    for t in range(1, _PATH_STAGES + 1):
        _cd_sweeps(g, c, gd, safe, w, q, (amax * (alpha / amax) ** (t / _PATH_STAGES)), 2)
    q = (g @ w.unsqueeze(-1)).squeeze(-1)
    sweep = 0
    while live.numel():
        # the check comes first, so a problem solved by w = 0 (α ≥ ‖c‖∞, or n = 0) costs no sweep
        bound = tol * y2.clamp_min(1e-300)
        done = _lasso_gap(g, c, y2, w, alpha, q) <= bound
        polished = _lasso_polish(g, c, w, alpha)
        fine = torch.isfinite(polished).all(-1)
        pq = (g @ torch.where(fine.unsqueeze(-1), polished, 0.0).unsqueeze(-1)).squeeze(-1)
        pdone = fine & ~done & (_lasso_gap(g, c, y2, torch.where(fine.unsqueeze(-1), polished, 0.0), alpha, pq)
                                <= bound)
        w = torch.where(pdone.unsqueeze(-1), polished, w)
        done = done | pdone
        if done.any():
            w_out[live[done]] = w[done]
            keep = ~done
            live, g, c, gd, safe, y2, w, q = (t[keep] for t in (live, g, c, gd, safe, y2, w, q))
        if not live.numel() or sweep >= max_iter:
            break
        k = min(check_every, max_iter - sweep)
        _cd_sweeps(g, c, gd, safe, w, q, torch.full_like(y2, alpha), k)
        sweep += k
        q = (g @ w.unsqueeze(-1)).squeeze(-1)  # refresh: no drift from the running updates
    if live.numel():
        w_out[live] = w
        warnings.warn(f"lasso: {live.numel()} of {p} problems did not reach duality gap <= tol={tol:g} * |y|²/n "
                      f"in max_iter={max_iter} sweeps (alpha={alpha:g}); raise max_iter or tol", stacklevel=3)
    return w_out
