"""label-noise-rank-one: label-noise GD on a two-layer net converges to rank-one features; plain GD does not.

Gatmiry, Li, Reddi, Jegelka (ICML 2024): for f(x) = sum_j phi(theta_j^T x) with high-dimensional data (n <= d)
and a suitable activation, label-noise SGD with a small step minimizes the sharpness tr(Hessian) on the manifold
of zero-loss models and converges to its global minimizer, where every neuron computes the same linear feature:
the feature matrix R = X Theta^T (n x m) has rank one.

Why, and what the limit is (our derivation): at zero loss, with L = (1/2n) sum_i (f(x_i) - y_i)^2,
tr Hessian = (1/n) sum_i ||x_i||^2 sum_j phi'(R_ij)^2 subject to sum_j phi(R_ij) = y_i. With n <= d and independent
x_i every R is reachable, so the problem splits per example; with u_j = phi(R_ij) each term is sum_j g(u_j),
g(u) = phi'(phi^-1(u))^2, and g'' = 2 phi'''/phi' > 0 when phi' > 0 and phi''' > 0. By Jensen the minimum is at
R_ij = phi^-1(y_i / m) for every j: rank one, with a predicted value for every entry. phi(z) = z + z^3/3
(phi' = 1 + z^2, phi''' = 2) or sinh both qualify.

Simulation: full-batch label-noise GD (every label gets fresh +-sigma noise at every step) and plain GD from the
same init. The dynamics close on R: R <- R - eta X X^T E with E_ij = (f_i - y~_i) phi'(R_ij) / n (components of
theta_j orthogonal to span(X) never move), so we simulate R exactly at O(n^2 m) per step. The theory is about
the manifold limit Phi(theta_t) (where gradient flow from theta_t lands); we measure at that projection, computed
by `project_steps` noise-free GD steps, and record the raw iterate too.

Claims (the issue's thresholds): sigma_2/sigma_1(R) < 0.05 for label-noise GD and > 0.2 for plain GD; the
label-noise features match phi^-1(y_i/m) within 0.05 (max over entries). The n, d, m, eta, sigma values are ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulations.config import ExperimentConfig, param
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "label-noise-rank-one"
ACTIVATIONS = ("cubic", "sinh")


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: 2 * 10^5 label-noise steps (about 10 s)."""

    n: int = param(10, "training points", bounds="[2, 10000]")
    d: int = param(40, "input dimension (needs n <= d)", bounds="[2, 100000]")
    width: int = param(8, "neurons m", bounds="[2, 10000]")
    activation: str = param("cubic", "phi: cubic z + z^3/3 or sinh (both have phi' > 0, phi''' > 0)",
                            choices=ACTIVATIONS)
    feature_range: tuple[float, float] = param((0.4, 1.0), "the predicted features r_i = phi^-1(y_i/m) are "
                                               "drawn uniformly here (labels y_i = m phi(r_i))", bounds="[-10, 10]")
    init_scale: float = param(0.7, "std of the initial theta entries (times 1, ||x_i|| ~ 1)", bounds="(0, 10]")
    eta: float = param(0.1, "stepsize", bounds="(0, 10]")
    sigma: float = param(1.0, "label noise: y_i +- sigma, fresh every step", bounds="(0, 100]")
    steps: int = param(200_000, "label-noise GD steps", bounds="[100, 1e8]")
    project_steps: int = param(5000, "noise-free GD steps that project an iterate onto the zero-loss manifold",
                               bounds="[1, 1e7]")
    checkpoints: int = param(12, "points of the sharpness/rank curve (each projected)", bounds="[2, 1000]")
    seed: int = param(0, "seed of data, init and noise", bounds="[0, 4294967295]")

    def check(self) -> None:
        if self.n > self.d:
            raise ValueError(f"n must be <= d (the theorem's high-dimensional regime), got n={self.n} > d={self.d}")
        lo, hi = self.feature_range
        if not lo < hi:
            raise ValueError(f"feature_range must be (lo, hi) with lo < hi, got {self.feature_range}")

    @classmethod
    def smoke(cls) -> Config:
        """About 3 s: 10^5 steps (the drift along the manifold is slow: 4 * 10^4 steps leave errors ~0.16)."""
        return cls(steps=100_000, checkpoints=5, project_steps=3000)


def activation(name: str):
    """(phi, phi', phi^-1) for 'cubic' (z + z^3/3) or 'sinh'."""
    if name == "sinh":
        return np.sinh, np.cosh, np.arcsinh

    def inv(u: np.ndarray) -> np.ndarray:  # z + z^3/3 = u: Cardano's formula for the one real root
        u = np.asarray(u, float)
        s = np.sqrt(9 * u * u / 4 + 1)
        return np.cbrt(1.5 * u + s) + np.cbrt(1.5 * u - s)

    return (lambda z: z + z**3 / 3), (lambda z: 1 + z * z), inv


def gd(r: np.ndarray, k: np.ndarray, y: np.ndarray, phi, dphi, eta: float, steps: int, sigma: float = 0.0,
       rng: np.random.Generator | None = None) -> np.ndarray:
    """`steps` full-batch GD steps on R (label noise +-sigma per label and step when sigma > 0)."""
    r = r.copy()
    n = len(y)
    for _ in range(steps):
        target = y if sigma == 0 else y + sigma * (2.0 * rng.integers(0, 2, n) - 1.0)
        r -= eta * k @ (((phi(r).sum(1) - target) / n)[:, None] * dphi(r))
    return r


def summary(r: np.ndarray, x_sq: np.ndarray, y: np.ndarray, r_star: np.ndarray, phi, dphi) -> dict[str, float]:
    """Rank ratio sigma_2/sigma_1, the largest |R_ij - r*_i|, the noise-free loss and tr Hessian at R."""
    s = np.linalg.svd(r, compute_uv=False)
    n = len(y)
    return {"sv_ratio": float(s[1] / s[0]), "max_feature_error": float(np.abs(r - r_star[:, None]).max()),
            "loss": float(((phi(r).sum(1) - y) ** 2).mean() / 2),
            "trace_hessian": float((x_sq * (dphi(r) ** 2).sum(1)).sum() / n)}


def run(config: Config, out_dir: Path) -> dict:
    rng = np.random.default_rng(config.seed)
    phi, dphi, _ = activation(config.activation)
    x = rng.standard_normal((config.n, config.d)) / np.sqrt(config.d)
    k = x @ x.T
    x_sq = np.diag(k).copy()
    r_star = rng.uniform(*config.feature_range, config.n)
    y = config.width * phi(r_star)
    r0 = x @ (config.init_scale * rng.standard_normal((config.width, config.d))).T

    def projected(r):
        return gd(r, k, y, phi, dphi, config.eta, config.project_steps)

    plain = projected(gd(r0, k, y, phi, dphi, config.eta, config.steps))
    marks = np.unique(np.round(np.linspace(0, config.steps, config.checkpoints + 1)).astype(int))
    curve, raw, r, t = [], [], r0, 0
    for mark in marks:
        r = gd(r, k, y, phi, dphi, config.eta, mark - t, config.sigma, rng)
        t = mark
        curve.append({"step": int(mark), **summary(projected(r), x_sq, y, r_star, phi, dphi)})
        raw.append({"step": int(mark), **summary(r, x_sq, y, r_star, phi, dphi)})
    final = projected(r)
    metrics = {
        "label_noise": summary(final, x_sq, y, r_star, phi, dphi),
        "label_noise_raw_iterate": raw[-1],
        "plain_gd": summary(plain, x_sq, y, r_star, phi, dphi),
        "min_trace_hessian_on_manifold": float((x_sq * config.width * dphi(r_star) ** 2).sum() / config.n),
        "curve_projected": curve,
        "curve_raw": raw,
        "features": {"predicted": r_star, "label_noise": final, "plain_gd": plain},
    }
    _plot(config, metrics, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=config.seed)


def _plot(config: Config, met: dict, out_dir: Path) -> None:
    fig, axes = new_figure(1, 3, size=(15, 4.3))
    steps = [c["step"] for c in met["curve_projected"]]
    ax = axes[0, 0]
    ax.plot(steps, [c["sv_ratio"] for c in met["curve_projected"]], "o-", label="label-noise GD (projected)")
    ax.plot(steps, [c["sv_ratio"] for c in met["curve_raw"]], ".:", label="label-noise GD (raw iterate)")
    ax.axhline(met["plain_gd"]["sv_ratio"], color="C3", label="plain GD (converged)")
    ax.axhline(0.05, color="0.3", ls="--", lw=0.8, label="claim thresholds 0.05 / 0.2")
    ax.axhline(0.2, color="0.3", ls="--", lw=0.8)
    ax.set(yscale="log", xlabel="step", ylabel="sigma_2 / sigma_1 of R = X Theta^T",
           title="features collapse to rank one (theory: ratio -> 0)")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    low = met["min_trace_hessian_on_manifold"]
    ax.plot(steps, [max(c["trace_hessian"] - low, 1e-16) for c in met["curve_projected"]], "o-",
            label="label-noise GD (projected)")
    ax.axhline(met["plain_gd"]["trace_hessian"] - low, color="C3", label="plain GD")
    ax.set(yscale="log", xlabel="step", ylabel="tr Hessian - theory's minimum on the manifold",
           title=f"sharpness falls to the predicted minimum ({low:.3f})")
    ax.legend(fontsize=7)
    ax = axes[0, 2]
    pred = np.asarray(met["features"]["predicted"])
    for name, mark, col in (("plain_gd", "x", "C3"), ("label_noise", "o", "C0")):
        r = np.asarray(met["features"][name])
        ax.plot(np.repeat(pred, r.shape[1]), r.ravel(), mark, color=col, ms=4, alpha=0.7,
                label=name.replace("_", " ") + " R_ij")
    lim = [min(pred.min(), np.asarray(met["features"]["plain_gd"]).min()),
           max(pred.max(), np.asarray(met["features"]["plain_gd"]).max())]
    ax.plot(lim, lim, "k--", lw=1, label="theory R_ij = phi^-1(y_i/m)")
    ax.set(xlabel="predicted feature phi^-1(y_i / m)", ylabel="learned feature R_ij",
           title="every neuron learns the predicted feature")
    ax.legend(fontsize=7)
    for ax in axes[0, :2]:
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    save_figure(fig, out_dir, "label_noise.png")


def claims(result: dict) -> list[Claim]:
    """Rank ratio < 0.05 (label noise), > 0.2 (plain GD); features within 0.05 of phi^-1(y_i/m)."""
    m = result["metrics"]
    ln, pg = m["label_noise"], m["plain_gd"]
    return [
        Claim("label-noise GD: sigma_2/sigma_1 of X Theta^T", ln["sv_ratio"], 0.05, ln["sv_ratio"] < 0.05),
        Claim("plain GD: sigma_2/sigma_1 of X Theta^T", pg["sv_ratio"], 0.2, pg["sv_ratio"] > 0.2),
        Claim("label-noise GD: max |R_ij - phi^-1(y_i/m)|", ln["max_feature_error"], 0.05,
              ln["max_feature_error"] < 0.05),
    ]


register(NAME, Config, run, claims, __doc__ or "",
         paper="Gatmiry, Li, Reddi, Jegelka, 'Simplicity Bias via Global Convergence of Sharpness Minimization', "
               "ICML 2024 (arXiv:2410.16401)")
