"""scaling-law-linear: sketched linear regression obeys risk - sigma^2 = Theta(M^-(a-1) + N^-(a-1)/a).

Lin, Wu, Kakade, Bartlett, Lee (2024): x ~ N(0, H) with a power-law spectrum lambda_i = i^-a (a > 1, infinite
dimension), w* ~ N(0, I), y = <x, w*> + N(0, sigma^2). The model has M parameters acting on sketched covariates
Sx (S is M x infinity with i.i.d. N(0, 1/M) entries) and is trained by one-pass SGD on N samples from v = 0 with
a geometrically decaying stepsize (gamma0 halved every N/log2 N steps). The reducible risk is
Theta(M^-(a-1) + N_eff^-(a-1)/a) with N_eff = N/log N: the approximation error of the best M-parameter model
falls like M^-(a-1); SGD's excess over it falls like N^-(a-1)/a (the variance term, which grows with M, never
shows).

Everything here is exact rather than sampled:
- Sx ~ N(0, S H S^T) and the residual of the best sketched predictor is independent of Sx (jointly Gaussian,
  uncorrelated), so the sketched problem is a well-specified Gaussian regression with noise sigma^2 + Approx(M);
  its expected SGD risk follows the diagonal second-moment recursion of `_linreg` in the eigenbasis of S H S^T.
- The infinite dimension is d = dim_factor * M explicit coordinates plus the tail i > d, folded in through its
  exact moments: S_tail H_tail S_tail^T -> (sum_{i>d} i^-a / M) I (a sum over infinitely many coordinates), and
  likewise for H^2. Approx(M) = tr H - tr(H S^T (S H S^T)^-1 S H), averaged over `sketch_seeds` sketches.
- The N-law is SGD's excess risk at M = infinity (no sketch bottleneck: M >> N^(1/a)), on the exact spectrum
  binned into log-spaced groups of equal-ish eigenvalues beyond the first `exact_eigs`. At finite M the excess
  over Approx(M) bends down as the effective dimension (gamma N_eff)^(1/a) approaches M (for a = 1.5 the bias
  lives on coordinates far beyond it); those sketched curves are drawn and their slopes recorded.
- A Monte Carlo of actual SGD runs (x sampled in d explicit dimensions, fresh w* per run) checks the recursion.

Claims (the issue's): the fitted slope of Approx(M) in M within +-0.1 of -(a-1), and of SGD's excess risk in N
within +-0.1 of -(a-1)/a, for each a; the Monte Carlo within 10% of the recursion (a sanity check of our
numerics). The slope against N_eff = N/log2 N is recorded too: the gap between the N slope and -(a-1)/a is the
log factor. Setup details (sketch distribution, schedule, gamma0, sigma^2) are recalled, not read from the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.linalg import eigh
from scipy.special import zeta

from simulations.config import ExperimentConfig, param
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure
from simulations.theory._common import guide, loglog_slope
from simulations.theory._linreg import geometric_schedule, sgd_excess_risk

NAME = "scaling-law-linear"


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: M in 16..1024, N in 2^7..2^16, a in {1.5, 2}; about a minute on 2 cores."""

    exponents: tuple[float, ...] = param((1.5, 2.0), "spectrum degrees a (lambda_i = i^-a)", bounds="(1, 10]",
                                         nonempty=True)
    sketch_sizes: tuple[int, ...] = param((16, 32, 64, 128, 256, 512, 1024), "model sizes M for the M-law",
                                          bounds="[2, 8192]", nonempty=True)
    sketch_seeds: int = param(3, "sketches S averaged per M", bounds="[1, 100]")
    dim_factor: int = param(16, "explicit coordinates per model parameter (d = dim_factor * M; the rest is the "
                                "tail, folded in exactly)", bounds="[2, 1000]")
    sample_sizes: tuple[int, ...] = param(tuple(2**k for k in range(7, 17)), "sample sizes N for the N-law",
                                          bounds="[4, 1e8]", nonempty=True)
    curve_sketches: tuple[int, ...] = param((64, 1024), "finite M whose SGD excess-vs-N curves are drawn",
                                            bounds="[2, 8192]")
    gamma0: float = param(0.1, "initial SGD stepsize (needs gamma0 * tr H < 1)", bounds="(0, 1]")
    sigma2: float = param(1.0, "label noise variance sigma^2", bounds="[0, 100]")
    exact_eigs: int = param(1000, "leading eigenvalues kept individually for M = infinity", bounds="[10, 1e6]")
    bins_per_decade: int = param(100, "log-spaced bins per decade for the rest of the spectrum",
                                 bounds="[5, 10000]")
    mc_sketch: int = param(32, "M of the Monte Carlo check", bounds="[2, 512]")
    mc_dim: int = param(256, "explicit dimension d of the Monte Carlo check (no tail)", bounds="[4, 8192]")
    mc_sizes: tuple[int, ...] = param((256, 2048), "N of the Monte Carlo check", bounds="[4, 1e6]", nonempty=True)
    mc_runs: int = param(1000, "SGD runs per Monte Carlo point (fresh w*, data, noise)", bounds="[10, 1e6]")
    tolerance: float = param(0.1, "allowed |fitted slope - theory|", bounds="(0, 1]")
    seed: int = param(0, "master seed", bounds="[0, 4294967295]")

    def check(self) -> None:
        if self.gamma0 * float(zeta(min(self.exponents), 1)) >= 1:
            raise ValueError(f"gamma0 * tr H must be < 1 for SGD to be stable; gamma0={self.gamma0} gives "
                             f"{self.gamma0 * float(zeta(min(self.exponents), 1)):.3f} at a={min(self.exponents)}")
        if self.mc_sketch >= self.mc_dim:
            raise ValueError(f"mc_sketch must be < mc_dim, got {self.mc_sketch} >= {self.mc_dim}")

    @classmethod
    def smoke(cls) -> Config:
        """A few seconds: M up to 256, N up to 2^13, 200 Monte Carlo runs."""
        return cls(sketch_sizes=(16, 32, 64, 128, 256), sketch_seeds=2, sample_sizes=tuple(2**k for k in range(7, 14)),
                   curve_sketches=(64,), mc_sizes=(256,), mc_runs=400, mc_dim=128, mc_sketch=16)


def power_law_bins(a: float, exact: int, per_decade: int, top: float = 1e12) -> tuple[np.ndarray, np.ndarray]:
    """The spectrum i^-a, i = 1..infinity, as (eigenvalue, multiplicity): the first `exact` individually, then
    log-spaced groups of integers [lo, hi) each represented by the value that keeps both sum_i lambda_i and
    sum_i lambda_i^2 of the group exact; the last group runs from `top` to infinity (its eigenvalues are far
    too small to be learned at any N we run)."""
    lam = np.arange(1, exact + 1, dtype=float) ** -a
    edges = np.unique(np.round(np.logspace(np.log10(exact + 1), np.log10(top),
                                           max(int(per_decade * np.log10(top / exact)), 2))))
    lo = edges
    hi = np.append(edges[1:], np.inf)
    s1 = zeta(a, lo) - np.where(np.isinf(hi), 0.0, zeta(a, np.where(np.isinf(hi), 1.0, hi)))
    s2 = zeta(2 * a, lo) - np.where(np.isinf(hi), 0.0, zeta(2 * a, np.where(np.isinf(hi), 1.0, hi)))
    rep = s2 / s1
    return np.concatenate([lam, rep]), np.concatenate([np.ones(exact), s1 / rep])


def sketched_problem(a: float, m: int, d: int, rng: np.random.Generator, *, tail: bool = True) -> dict:
    """The sketched regression for one Gaussian sketch S (M x d explicit, plus the exact tail moments when
    `tail`): eigenvalues mu of S H S^T, the prior second moments c0 of v* = (S H S^T)^-1 S H w* in that eigenbasis
    (w* ~ N(0, I)), and Approx(M) = E||w* - S^T v*||_H^2. Returns also S and h for a Monte Carlo."""
    h = np.arange(1, d + 1, dtype=float) ** -a
    t1 = float(zeta(a, d + 1)) if tail else 0.0
    t2 = float(zeta(2 * a, d + 1)) if tail else 0.0
    s = rng.standard_normal((m, d)) / np.sqrt(m)
    a_half = s * np.sqrt(h)
    hs = a_half @ a_half.T + (t1 / m) * np.eye(m)
    sh = s * h
    k2 = sh @ sh.T + (t2 / m) * np.eye(m)  # S H^2 S^T: prior covariance of the sketched signal
    mu, u = eigh(hs)
    proj = np.einsum("ij,ij->j", u, k2 @ u)  # diag(U^T S H^2 S^T U)
    c0 = proj / mu**2
    approx = float(h.sum() + t1 - (proj / mu).sum())
    return {"mu": mu, "c0": c0, "approx": approx, "S": s, "h": h}


def monte_carlo_sgd(prob: dict, sigma2: float, schedule: list[tuple[float, int]], runs: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Excess risk ||w* - S^T v_N||_H^2 of `runs` independent one-pass SGD runs on the sketched model (x sampled
    in the explicit dimensions, a fresh w* ~ N(0, I) per run), computed exactly from each final v."""
    s, h = prob["S"], prob["h"]
    m, d = s.shape
    w_star = rng.standard_normal((runs, d))
    v = np.zeros((runs, m))
    sqrt_h = np.sqrt(h)
    for gamma, steps in schedule:
        for _ in range(steps):
            x = rng.standard_normal((runs, d)) * sqrt_h
            z = x @ s.T
            y = np.einsum("rd,rd->r", x, w_star) + np.sqrt(sigma2) * rng.standard_normal(runs)
            v += (gamma * (y - np.einsum("rm,rm->r", z, v)))[:, None] * z
    e = w_star - v @ s
    return (e**2 * h).sum(1)


def run(config: Config, out_dir: Path) -> dict:
    rng = np.random.default_rng(config.seed)
    ns = np.array(config.sample_sizes)
    per_a = {}
    for a in config.exponents:
        approx = {}
        for m in config.sketch_sizes:
            vals = [sketched_problem(a, m, config.dim_factor * m, rng)["approx"] for _ in range(config.sketch_seeds)]
            approx[str(m)] = float(np.mean(vals))
        mu, w = power_law_bins(a, config.exact_eigs, config.bins_per_decade)
        excess = [sgd_excess_risk(mu, np.ones_like(mu), config.sigma2, geometric_schedule(int(n), config.gamma0),
                                  weights=w) for n in ns]
        curves = {}
        for m in config.curve_sketches:
            p = sketched_problem(a, m, config.dim_factor * m, rng)
            ex = [sgd_excess_risk(p["mu"], p["c0"], config.sigma2 + p["approx"],
                                  geometric_schedule(int(n), config.gamma0)) for n in ns]
            curves[str(m)] = {"approx": p["approx"], "excess": ex, "slope_in_N": loglog_slope(ns, ex)}
        ms = np.array(config.sketch_sizes)
        per_a[str(a)] = {
            "approx_by_M": approx,
            "approx_slope": loglog_slope(ms, [approx[str(m)] for m in ms]),
            "approx_theory": -(a - 1),
            "excess_by_N": dict(zip(map(str, ns), excess)),
            "excess_slope_in_N": loglog_slope(ns, excess),
            "excess_slope_in_Neff": loglog_slope(ns / np.log2(ns), excess),
            "excess_theory": -(a - 1) / a,
            "sketched_curves": curves,
        }
    mc = _monte_carlo(config, rng)
    metrics = {"exponents": per_a, "monte_carlo": mc,
               "worst_mc_rel_error": max(abs(p["mc_mean"] / p["exact"] - 1) for p in mc)}
    _plot(config, per_a, mc, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=config.seed)


def _monte_carlo(config: Config, rng: np.random.Generator) -> list[dict]:
    """Recursion vs simulated SGD at (mc_sketch, mc_dim, each mc_size), for the largest and smallest a."""
    out = []
    for a in sorted({min(config.exponents), max(config.exponents)}):
        prob = sketched_problem(a, config.mc_sketch, config.mc_dim, rng, tail=False)
        for n in config.mc_sizes:
            sched = geometric_schedule(int(n), config.gamma0)
            exact = prob["approx"] + sgd_excess_risk(prob["mu"], prob["c0"], config.sigma2 + prob["approx"],
                                                     sched)
            sims = monte_carlo_sgd(prob, config.sigma2, sched, config.mc_runs, rng)
            out.append({"a": a, "M": config.mc_sketch, "d": config.mc_dim, "N": int(n), "exact": exact,
                        "mc_mean": float(sims.mean()), "mc_se": float(sims.std(ddof=1) / np.sqrt(len(sims)))})
    return out


def _plot(config: Config, per_a: dict, mc: list[dict], out_dir: Path) -> None:
    fig, axes = new_figure(1, 3, size=(15.5, 4.4))
    ax_m, ax_n, ax_mc = axes[0]
    ns = np.array(config.sample_sizes)
    for i, (a, p) in enumerate(per_a.items()):
        color = f"C{i}"
        ms = np.array(config.sketch_sizes)
        ys = [p["approx_by_M"][str(m)] for m in ms]
        ax_m.plot(ms, ys, "o", color=color, label=f"a={a}: Approx(M), slope {p['approx_slope']:.3f}")
        guide(ax_m, ms, p["approx_theory"], (ms[0], ys[0]), f"theory M^-(a-1) = M^{p['approx_theory']:.2f}",
              color=color)
        ex = [p["excess_by_N"][str(n)] for n in ns]
        ax_n.plot(ns, ex, "o-", color=color, label=f"a={a}, M=inf: slope {p['excess_slope_in_N']:.3f} "
                                                   f"(vs N_eff {p['excess_slope_in_Neff']:.3f})")
        guide(ax_n, ns, p["excess_theory"], (ns[0], ex[0]), f"theory N^-(a-1)/a = N^{p['excess_theory']:.2f}",
              color=color)
        for j, (m, c) in enumerate(p["sketched_curves"].items()):
            ax_n.plot(ns, c["excess"], ":", color=color, alpha=0.5 + 0.5 * j / max(len(p["sketched_curves"]), 1),
                      label=f"a={a}, sketched M={m}")
    for ax, xl, yl, title in ((ax_m, "model size M", "approximation error Approx(M)", "M-law (closed form)"),
                              (ax_n, "samples N", "SGD excess risk  E[R] - sigma^2 - Approx(M)",
                               "N-law (exact recursion)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(title)
        ax.legend(fontsize=6)
    labels = [f"a={p['a']}\nN={p['N']}" for p in mc]
    xs = np.arange(len(mc))
    ax_mc.bar(xs - 0.2, [p["exact"] for p in mc], 0.4, label="exact recursion")
    ax_mc.errorbar(xs + 0.2, [p["mc_mean"] for p in mc], yerr=[2 * p["mc_se"] for p in mc], fmt="s",
                   color="C3", label=f"Monte Carlo ({config.mc_runs} runs, ±2 s.e.)")
    ax_mc.set_xticks(xs, labels)
    ax_mc.set_ylabel("E[R] - sigma^2")
    ax_mc.set_title(f"recursion vs simulated SGD (M={config.mc_sketch}, d={config.mc_dim})")
    ax_mc.legend(fontsize=7)
    save_figure(fig, out_dir, "scaling_law.png")


def claims(result: dict) -> list[Claim]:
    """Per a: |Approx(M) slope + (a-1)| <= tol and |excess-in-N slope + (a-1)/a| <= tol; Monte Carlo within 10%."""
    met = result["metrics"]
    tol = result["config"]["tolerance"]
    out = []
    for a, p in met["exponents"].items():
        gap = abs(p["approx_slope"] - p["approx_theory"])
        out.append(Claim(f"a={a}: |slope of Approx(M) in M ({p['approx_slope']:.3f}) - (-(a-1))|", gap, tol,
                         gap <= tol))
        gap = abs(p["excess_slope_in_N"] - p["excess_theory"])
        out.append(Claim(f"a={a}: |slope of SGD excess risk in N ({p['excess_slope_in_N']:.3f}) - (-(a-1)/a)|",
                         gap, tol, gap <= tol))
    worst = met["worst_mc_rel_error"]
    out.append(Claim("Monte Carlo SGD vs exact recursion: max relative error", worst, 0.10, worst <= 0.10,
                     sanity=True))
    return out


register(NAME, Config, run, claims, __doc__ or "",
         paper="Lin, Wu, Kakade, Bartlett, Lee, 'Scaling Laws in Linear Regression: Compute, Parameters, and "
               "Data', NeurIPS 2024 (arXiv:2406.08466)")
