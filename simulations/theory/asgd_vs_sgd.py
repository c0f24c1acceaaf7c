"""asgd-vs-sgd: accelerated SGD beats SGD on small-eigenvalue directions and loses on large ones and in variance.

Li, Deng, Wu, Zhou, Gu (ICLR 2024): for overparameterized linear regression, ASGD's bias error decays faster than
SGD's in the subspace of small eigenvalues and slower in the subspace of large ones, and ASGD's variance error
is always larger; so ASGD wins when w_0 - w* lies mostly in the small-eigenvalue subspace.

ASGD here is the Jain-Kakade-Kidambi-Netrapalli-Sidford form (short step delta, long-step ratio kappa,
statistical advantage xi, constant c): beta = c^2 xi / kappa, zeta = c / (c + beta), K = kappa delta / c and,
with the stochastic gradient g taken at u,

    v <- (1 - beta) v + beta u - beta K g,    u <- zeta (u - delta g) + (1 - zeta) v.

Everything is exact. With Gaussian x ~ N(0, H), H = diag(i^-a), the errors e = (u - w*, v - w*) obey e <- A e -
b g per eigen-coordinate, and the 2 x 2 second moments P_i obey a closed recursion (the Gaussian fourth moment
couples coordinates only through the risk sum_j lambda_j P_j[0, 0]):

    P_i <- M_i P_i M_i^T + b b^T (lambda_i^2 P_i[0, 0] + lambda_i sum_j lambda_j P_j[0, 0] + sigma^2 lambda_i),
    M_i = A - lambda_i b e_1^T,   A = [[zeta + (1 - zeta) beta, (1 - zeta)(1 - beta)], [beta, 1 - beta]],
    b = [zeta delta + (1 - zeta) beta K, beta K];

SGD with the same delta is its scalar analogue (`_linreg`). Bias = the recursion with sigma = 0; variance = the
recursion from w_0 = w* (the excess risk is their sum, by linearity). A Monte Carlo of actual runs checks it.

Claims (the issue's):
- per eigen-direction, the bias contraction factor of ASGD (the spectral radius of its exact per-coordinate
  second-moment map) is smaller than SGD's ((1 - delta lambda)^2 + delta^2 lambda^2) for every eigenvalue below
  one crossing eigenvalue and larger above it (checked at every eigenvalue of H and on a fine grid between);
- ASGD's variance is >= SGD's at every N of the grid;
- with w_0 - w* on the small eigenvalues only (coordinates i > `head`), ASGD's excess risk at the last N is
  <= 0.8x SGD's (at label noise `sigma2`, small enough for the bias to matter: the variance claim says why);
- the Monte Carlo is within 10% of the recursion (a sanity check of our numerics).
Li et al.'s own parameter choices (and any stepsize decay or averaging) are not retrieved; ours are stated above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulations.config import ExperimentConfig, param
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure
from simulations.theory._linreg import sgd_moments

NAME = "asgd-vs-sgd"


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: d = 400, N = 2000, 400 Monte Carlo runs per method (under a minute)."""

    dim: int = param(400, "dimension d (H = diag(i^-a))", bounds="[4, 100000]")
    spectrum_exponent: float = param(2.0, "a of the spectrum lambda_i = i^-a", bounds="(1, 10]")
    delta_scale: float = param(0.25, "short step delta = delta_scale / tr H", bounds="(0, 1)")
    kappa: float = param(1000.0, "ASGD long-step ratio kappa", bounds="(1, 1e8]")
    xi: float = param(10.0, "ASGD statistical advantage xi", bounds="(0, 1e6]")
    c: float = param(0.7, "ASGD constant c", bounds="(0, 1)")
    sigma2: float = param(0.01, "label noise variance", bounds="[0, 100]")
    head: int = param(20, "w_0 - w* is 1 on coordinates i > head, 0 on the head", bounds="[0, 100000]")
    steps: int = param(2000, "samples N (one pass)", bounds="[10, 1e7]")
    mc_runs: int = param(400, "Monte Carlo runs per method", bounds="[10, 1e6]")
    mc_steps: tuple[int, ...] = param((100, 2000), "N at which the Monte Carlo is compared", bounds="[1, 1e7]",
                                      nonempty=True)
    seed: int = param(0, "Monte Carlo seed", bounds="[0, 4294967295]")

    def check(self) -> None:
        if self.head >= self.dim:
            raise ValueError(f"head must be < dim, got {self.head} >= {self.dim}")
        if max(self.mc_steps) > self.steps:
            raise ValueError(f"mc_steps must be <= steps={self.steps}, got {self.mc_steps}")
        beta = self.c**2 * self.xi / self.kappa
        if not 0 < beta < 1:
            raise ValueError(f"c^2 xi / kappa must be in (0, 1), got {beta:g} (c={self.c}, xi={self.xi}, "
                             f"kappa={self.kappa})")

    @classmethod
    def smoke(cls) -> Config:
        """A few seconds: d = 200, N = 1000, 200 Monte Carlo runs."""
        return cls(dim=200, steps=1000, mc_runs=200, mc_steps=(1000,))


def asgd_matrices(delta: float, kappa: float, xi: float, c: float) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) of ASGD's error dynamics e <- A e - b g, e = (u - w*, v - w*)."""
    beta = c * c * xi / kappa
    zeta = c / (c + beta)
    k = kappa * delta / c
    a = np.array([[zeta + (1 - zeta) * beta, (1 - zeta) * (1 - beta)], [beta, 1 - beta]])
    b = np.array([zeta * delta + (1 - zeta) * beta * k, beta * k])
    return a, b


def asgd_risk(lam: np.ndarray, p0: np.ndarray, sigma2: float, a: np.ndarray, b: np.ndarray, steps: int,
              record: set[int]) -> dict[int, np.ndarray]:
    """Per-coordinate excess risk lambda_i E[(u_i - w*_i)^2] at each step in `record`, from second moments p0
    (d x 3: E[e_u^2], E[e_u e_v], E[e_v^2] per coordinate), by the exact recursion of the module docstring."""
    m00, m01 = a[0, 0] - lam * b[0], a[0, 1]
    m10, m11 = a[1, 0] - lam * b[1], a[1, 1]
    p00, p01, p11 = (p0[:, k].astype(float).copy() for k in range(3))
    b00, b01, b11 = b[0] ** 2, b[0] * b[1], b[1] ** 2
    out = {}
    for t in range(1, steps + 1):
        s = lam * lam * p00 + lam * (lam @ p00) + sigma2 * lam
        p00, p01, p11 = (m00 * m00 * p00 + 2 * m00 * m01 * p01 + m01 * m01 * p11 + s * b00,
                         m00 * m10 * p00 + (m00 * m11 + m01 * m10) * p01 + m01 * m11 * p11 + s * b01,
                         m10 * m10 * p00 + 2 * m10 * m11 * p01 + m11 * m11 * p11 + s * b11)
        if t in record:
            out[t] = lam * p00
    return out


def sgd_risk(lam: np.ndarray, p0: np.ndarray, sigma2: float, delta: float, steps: int,
             record: set[int]) -> dict[int, np.ndarray]:
    """Per-coordinate excess risk of constant-step SGD at each step in `record` (exact, `_linreg`'s recursion)."""
    out, c, t = {}, np.asarray(p0, float), 0
    for mark in sorted(r for r in record if r <= steps):
        c = sgd_moments(lam, c, sigma2, delta, mark - t)
        out[mark], t = lam * c, mark
    return out


def contraction(lam: np.ndarray, a: np.ndarray, b: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-eigenvalue bias contraction factors: ASGD's spectral radius of P -> M P M^T + lambda^2 P[0,0] b b^T
    (the exact second-moment map of one coordinate, the cross-coordinate feed aside) and SGD's
    (1 - delta lambda)^2 + delta^2 lambda^2."""
    rho = np.empty(len(lam))
    bb = np.kron(b, b)
    for i, l in enumerate(lam):
        m = a - l * np.outer(b, [1.0, 0.0])
        op = np.kron(m, m) + l * l * np.outer(bb, [1.0, 0.0, 0.0, 0.0])
        rho[i] = np.abs(np.linalg.eigvals(op)).max()
    return rho, (1 - delta * lam) ** 2 + (delta * lam) ** 2


def monte_carlo(lam: np.ndarray, e0: np.ndarray, sigma2: float, delta: float, config: Config, record: set[int],
                rng: np.random.Generator) -> dict[str, dict[int, list[float]]]:
    """Simulated one-pass SGD and ASGD (`mc_runs` runs each, x ~ N(0, H)) from u_0 - w* = v_0 - w* = e0:
    the per-run excess risk sum_i lambda_i (u_i - w*_i)^2 at each step in `record` (mean and standard error)."""
    r = config.mc_runs
    sq = np.sqrt(lam)
    beta = config.c**2 * config.xi / config.kappa
    zeta = config.c / (config.c + beta)
    k = config.kappa * delta / config.c
    w_sgd = np.tile(e0, (r, 1))
    u, v = np.tile(e0, (r, 1)), np.tile(e0, (r, 1))
    out: dict[str, dict[int, list[float]]] = {"SGD": {}, "ASGD": {}}
    for t in range(1, max(record) + 1):
        for name in ("SGD", "ASGD"):
            x = rng.standard_normal((r, len(lam))) * sq
            eps = np.sqrt(sigma2) * rng.standard_normal(r)
            if name == "SGD":
                g = (np.einsum("rd,rd->r", x, w_sgd) - eps)[:, None] * x
                w_sgd -= delta * g
            else:
                g = (np.einsum("rd,rd->r", x, u) - eps)[:, None] * x
                v = (1 - beta) * v + beta * u - beta * k * g
                u = zeta * (u - delta * g) + (1 - zeta) * v
        if t in record:
            for name, err in (("SGD", w_sgd), ("ASGD", u)):
                risk = (err**2 * lam).sum(1)
                out[name][t] = [float(risk.mean()), float(risk.std(ddof=1) / np.sqrt(r))]
    return out


def run(config: Config, out_dir: Path) -> dict:
    rng = np.random.default_rng(config.seed)
    lam = np.arange(1, config.dim + 1, dtype=float) ** -config.spectrum_exponent
    delta = config.delta_scale / lam.sum()
    a, b = asgd_matrices(delta, config.kappa, config.xi, config.c)
    grid = sorted({*np.unique(np.round(np.logspace(0, np.log10(config.steps), 30)).astype(int)),
                   *config.mc_steps, config.steps})
    rec = set(grid)
    tail = (np.arange(1, config.dim + 1) > config.head).astype(float)
    zero = np.zeros(config.dim)
    p_tail = np.stack([tail, tail, tail], 1)  # u_0 = v_0: all three second moments equal
    res = {
        "ASGD": {"bias": asgd_risk(lam, p_tail, 0.0, a, b, config.steps, rec),
                 "variance": asgd_risk(lam, np.zeros((config.dim, 3)), config.sigma2, a, b, config.steps, rec)},
        "SGD": {"bias": sgd_risk(lam, tail, 0.0, delta, config.steps, rec),
                "variance": sgd_risk(lam, zero, config.sigma2, delta, config.steps, rec)},
    }
    curves = {m: {k: [float(v[t].sum()) for t in grid] for k, v in r.items()} for m, r in res.items()}
    for m in curves:
        curves[m]["excess"] = [x + y for x, y in zip(curves[m]["bias"], curves[m]["variance"])]
    grid_lam = np.unique(np.concatenate([lam, np.logspace(np.log10(lam.min()), np.log10(lam.max()), 400)]))
    rho_a, rho_s = contraction(grid_lam, a, b, delta)  # ascending eigenvalues: the spectrum and a fine grid
    faster = rho_a < rho_s
    changes = int(np.count_nonzero(np.diff(faster.astype(int))))
    crossing = float(np.sqrt(grid_lam[np.argmax(~faster)] * grid_lam[np.argmax(~faster) - 1])) if changes == 1 \
        else float("nan")
    mc = monte_carlo(lam, tail, config.sigma2, delta, config, set(config.mc_steps), rng)
    mc_err = []
    for m in ("SGD", "ASGD"):
        for t in config.mc_steps:
            exact = curves[m]["excess"][grid.index(t)]
            mc_err.append(abs(mc[m][t][0] / exact - 1))
    metrics = {
        "delta": delta,
        "beta": config.c**2 * config.xi / config.kappa,
        "N": grid,
        "curves": curves,
        "per_coordinate_bias_at_N": {m: res[m]["bias"][config.steps] for m in res},
        "contraction": {"lambda": grid_lam, "ASGD": rho_a, "SGD": rho_s},
        "sign_changes": changes,
        "asgd_faster_at_smallest_eigenvalue": bool(faster[0]),
        "crossing_eigenvalue": crossing,
        "variance_ratio_min": min(x / y for x, y in zip(curves["ASGD"]["variance"], curves["SGD"]["variance"])),
        "excess_ratio_at_N": curves["ASGD"]["excess"][-1] / curves["SGD"]["excess"][-1],
        "bias_ratio_at_N": curves["ASGD"]["bias"][-1] / curves["SGD"]["bias"][-1],
        "monte_carlo": {m: {str(t): v for t, v in mc[m].items()} for m in mc},
        "worst_mc_rel_error": max(mc_err),
    }
    _plot(config, metrics, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=config.seed)


def _plot(config: Config, met: dict, out_dir: Path) -> None:
    fig, axes = new_figure(1, 3, size=(15.5, 4.4))
    ax = axes[0, 0]
    lam = np.asarray(met["contraction"]["lambda"])
    for name in ("SGD", "ASGD"):
        ax.plot(lam, 1 - np.asarray(met["contraction"][name]), "-", label=f"{name}: 1 - contraction factor")
    if np.isfinite(met["crossing_eigenvalue"]):
        ax.axvline(met["crossing_eigenvalue"], color="0.3", ls=":", label=f"crossing lambda = "
                                                                           f"{met['crossing_eigenvalue']:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="eigenvalue lambda_i", ylabel="bias decay per step",
           title="per-direction bias rate (exact): ASGD faster below the crossing")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    n = np.asarray(met["N"])
    for i, name in enumerate(("SGD", "ASGD")):
        c = met["curves"][name]
        ax.plot(n, c["bias"], "-", color=f"C{i}", label=f"{name} bias (tail init)")
        ax.plot(n, c["variance"], "--", color=f"C{i}", label=f"{name} variance (sigma^2={config.sigma2:g})")
        mc = met["monte_carlo"][name]
        ts = sorted(int(t) for t in mc)
        ax.errorbar(ts, [mc[str(t)][0] for t in ts], yerr=[2 * mc[str(t)][1] for t in ts], fmt="o", color=f"C{i}",
                    ms=5, label=f"{name} Monte Carlo excess (±2 s.e.)")
        ax.plot(n, c["excess"], ":", color=f"C{i}", lw=1.5, label=f"{name} excess = bias + variance (exact)")
    ax.set(xscale="log", yscale="log", xlabel="samples N", ylabel="excess risk component",
           title="exact recursion (lines) vs simulated runs (points)")
    ax.legend(fontsize=6)

    ax = axes[0, 2]
    idx = np.arange(1, config.dim + 1)
    pa = np.asarray(met["per_coordinate_bias_at_N"]["ASGD"])
    ps = np.asarray(met["per_coordinate_bias_at_N"]["SGD"])
    ok = ps > 0
    ax.plot(idx[ok], pa[ok] / ps[ok], ".", ms=3)
    ax.axhline(1.0, color="0.3", ls="--", lw=1, label="equal")
    ax.axvline(config.head + 0.5, color="C3", ls=":", lw=1, label=f"initial error starts (i > {config.head})")
    ax.set(xscale="log", yscale="log", xlabel="eigen-index i", ylabel="ASGD bias / SGD bias (coordinate i)",
           title=f"per-coordinate bias ratio at N={config.steps}")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir, "asgd_vs_sgd.png")


def claims(result: dict) -> list[Claim]:
    """One crossing with ASGD faster below; variance ASGD >= SGD at every N; tail-init excess ratio <= 0.8;
    Monte Carlo within 10%."""
    m = result["metrics"]
    one = m["sign_changes"] == 1 and m["asgd_faster_at_smallest_eigenvalue"]
    return [
        Claim("sign changes of (ASGD - SGD) bias contraction over the spectrum (1, with ASGD faster below)",
              m["sign_changes"], 1, one),
        Claim("min over N of ASGD variance / SGD variance", m["variance_ratio_min"], 1.0,
              m["variance_ratio_min"] >= 1.0),
        Claim("tail init: ASGD excess risk / SGD excess risk at the last N", m["excess_ratio_at_N"], 0.8,
              m["excess_ratio_at_N"] <= 0.8),
        Claim("Monte Carlo vs exact recursion: max relative error", m["worst_mc_rel_error"], 0.10,
              m["worst_mc_rel_error"] <= 0.10, sanity=True),
    ]


register(NAME, Config, run, claims, __doc__ or "",
         paper="Li, Deng, Wu, Zhou, Gu, 'Risk Bounds of Accelerated SGD for Overparameterized Linear Regression', "
               "ICLR 2024 (arXiv:2311.14222)")
