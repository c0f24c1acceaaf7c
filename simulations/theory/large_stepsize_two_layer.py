"""large-stepsize-two-layer: large-stepsize GD on a near-homogeneous two-layer net: EoS, then margin growth.

Cai, Wu, Mei, Lindsey, Bartlett (NeurIPS 2024): for two-layer networks with a near-homogeneous activation
(phi' bounded away from 0) on separable data, GD with a large stepsize first oscillates (an EoS phase), leaves
that phase in finite time once the risk falls below a stepsize-dependent threshold, and then the normalized margin
grows nearly monotonically while the loss falls fast; a larger stepsize ends with a much lower loss than a small
one after the same number of steps.

Network: f(x) = (1/m) sum_j a_j phi(w_j^T x), fixed a_j = +-1, trained first layer W, phi(z) = z/2 + softplus(z)/2
(phi' in [1/2, 1], |z phi'(z) - phi(z)| <= log(2)/2: near 1-homogeneous), logistic loss, full-batch GD from
W_0 ~ init_scale * N(0, 1). Normalized margin: min_i y_i f(x_i) / ||W||_F.

Data ("separable"): n points in d dimensions with y_i x_i = (gamma, +-1, 0.3 N(0, I)); a minority (10 of 40) have
second coordinate -1, so the first large step misclassifies it. "xor": 4 Gaussian clusters at (+-1, +-1) with
label sign(x_1 x_2), 0.1 noise and 0.3 N(0, 1) in the other dimensions: not linearly separable (only the network
separates it), so the theorem's finite-time exit does not apply; its results are observations.

Claims (separable data; thresholds the issue's):
- every stepsize >= `large_eta` oscillates early (max loss > initial loss) and its last loss increase comes
  before T/10;
- after the stable phase begins (t0 = the later of the last loss increase and the first step where every margin
  is positive), the normalized margin never falls more than 10% of its final value below its running maximum, at
  every stepsize whose stable phase begins within the run (the others are listed in the record);
- the final loss at the largest stepsize is <= 1/100 of that at the smallest.
Widths, activation and data are our design; the paper's CIFAR-10 subsets and exact settings are not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulations.config import ExperimentConfig, param
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure
from simulations.theory._common import guide
from simulations.theory._logistic import last_increase

NAME = "large-stepsize-two-layer"
DATASETS = ("separable", "xor")


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: T = 3000 steps, 7 stepsizes 4..16384, both datasets (a few seconds)."""

    n: int = param(40, "training points", bounds="[4, 100000]")
    d: int = param(5, "input dimension", bounds="[3, 10000]")
    width: int = param(64, "hidden neurons m (even: half have a_j = +1)", bounds="[2, 100000]")
    gamma: float = param(0.2, "margin coordinate of the separable data", bounds="(0, 10]")
    minority: float = param(0.25, "fraction of separable points with second coordinate -1", bounds="[0, 0.5]")
    init_scale: float = param(0.1, "std of the initial first-layer weights", bounds="(0, 10]")
    etas: tuple[float, ...] = param((4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0), "stepsizes",
                                    bounds="(0, 1e7]", nonempty=True)
    large_eta: float = param(4096.0, "stepsizes at least this large must oscillate early", bounds="(0, 1e7]")
    steps: int = param(3000, "GD steps T", bounds="[10, 1e7]")
    margin_tolerance: float = param(0.1, "allowed drop below the running max, as a fraction of the final "
                                         "normalized margin", bounds="(0, 1]")
    datasets: tuple[str, ...] = param(DATASETS, "datasets to run (the claims use 'separable')", choices=DATASETS,
                                      nonempty=True)
    seed: int = param(0, "seed of data and initialization", bounds="[0, 4294967295]")

    def check(self) -> None:
        if self.width % 2:
            raise ValueError(f"width must be even (half the output weights are +1), got {self.width}")
        if "separable" not in self.datasets:
            raise ValueError(f"datasets must include 'separable' (the claims use it), got {self.datasets}")
        if not any(e >= self.large_eta for e in self.etas):
            raise ValueError(f"etas must include one >= large_eta={self.large_eta}, got {self.etas}")

    @classmethod
    def smoke(cls) -> Config:
        """A few seconds: 4 stepsizes."""
        return cls(etas=(4.0, 256.0, 4096.0, 16384.0))


def phi(z: np.ndarray) -> np.ndarray:
    """z/2 + softplus(z)/2."""
    return 0.5 * z + 0.5 * np.logaddexp(0.0, z)


def dphi(z: np.ndarray) -> np.ndarray:
    """phi'(z) = 1/2 + sigmoid(z)/2, in [1/2, 1]."""
    return 0.5 + 0.25 * (1.0 + np.tanh(0.5 * z))


def make_data(kind: str, config: Config, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) for 'separable' or 'xor' (see the module docstring)."""
    n, d = config.n, config.d
    if kind == "separable":
        y = rng.choice([-1.0, 1.0], n)
        z = np.empty((n, d))
        z[:, 0] = config.gamma
        k = int(round(config.minority * n))
        z[:, 1] = np.where(np.arange(n) < n - k, 1.0, -1.0)
        z[:, 2:] = 0.3 * rng.standard_normal((n, d - 2))
        return y[:, None] * z, y
    centers = rng.choice([-1.0, 1.0], (n, 2))
    x = np.concatenate([centers + 0.1 * rng.standard_normal((n, 2)), 0.3 * rng.standard_normal((n, d - 2))], 1)
    return x, np.sign(centers[:, 0] * centers[:, 1])


def train(x: np.ndarray, y: np.ndarray, a: np.ndarray, w0: np.ndarray, etas: np.ndarray,
          steps: int) -> dict[str, np.ndarray]:
    """Full-batch GD on the first layer for every stepsize as one batch; loss, min margin and ||W||_F per step."""
    e, m = len(etas), len(a)
    w = np.broadcast_to(w0, (e, *w0.shape)).copy()
    loss = np.empty((e, steps + 1))
    margin = np.empty((e, steps + 1))
    norm = np.empty((e, steps + 1))
    n = len(y)
    for t in range(steps + 1):
        pre = np.einsum("emd,nd->enm", w, x)
        f = phi(pre) @ a / m
        yf = y * f
        loss[:, t] = np.logaddexp(0.0, -yf).mean(1)
        margin[:, t] = yf.min(1)
        norm[:, t] = np.sqrt((w**2).sum((1, 2)))
        if t == steps:
            break
        g = -y * 0.5 * (1.0 - np.tanh(0.5 * yf)) / n  # dL/df_i
        coef = g[:, :, None] * dphi(pre) * (a / m)  # (E, n, m)
        w -= etas[:, None, None] * np.einsum("enm,nd->emd", coef, x)
    return {"loss": loss, "normalized_margin": margin / norm}


def stable_start(loss: np.ndarray, nmargin: np.ndarray) -> int:
    """t0: the later of the last loss increase and the first step at which every margin is positive."""
    tau = int(last_increase(loss[None])[0])
    pos = np.flatnonzero(nmargin > 0)
    return max(tau, int(pos[0]) if len(pos) else len(nmargin))


def worst_margin_drop(nmargin: np.ndarray, t0: int) -> float | None:
    """max over t >= t0 of (running max - margin(t)) / final margin; None when the stable phase never began
    within the run (t0 past the end, or the final margin not positive)."""
    seg = nmargin[t0:]
    if len(seg) == 0 or seg[-1] <= 0:
        return None
    return float(np.max(np.maximum.accumulate(seg) - seg) / seg[-1])


def run(config: Config, out_dir: Path) -> dict:
    rng = np.random.default_rng(config.seed)
    a = np.repeat([1.0, -1.0], config.width // 2)
    etas = np.array(config.etas)
    per, curves = {}, {}
    for kind in config.datasets:
        x, y = make_data(kind, config, rng)
        w0 = config.init_scale * rng.standard_normal((config.width, config.d))
        out = train(x, y, a, w0, etas, config.steps)
        rows = {}
        for i, eta in enumerate(config.etas):
            lo, nm = out["loss"][i], out["normalized_margin"][i]
            t0 = stable_start(lo, nm)
            rows[str(eta)] = {
                "final_loss": float(lo[-1]),
                "initial_loss": float(lo[0]),
                "max_loss": float(lo.max()),
                "loss_increases": int((np.diff(lo) > 0).sum()),
                "last_increase": int(last_increase(lo[None])[0]),
                "stable_start": t0,
                "final_normalized_margin": float(nm[-1]),
                "worst_margin_drop": worst_margin_drop(nm, t0),
            }
        large = [r for e, r in zip(config.etas, rows.values()) if e >= config.large_eta]
        per[kind] = {
            "stepsizes": rows,
            "large_not_oscillating": int(sum(r["max_loss"] <= r["initial_loss"] for r in large)),
            "large_latest_stable_start": max(r["last_increase"] for r in large),
            "worst_margin_drop": max((r["worst_margin_drop"] for r in rows.values()
                                     if r["worst_margin_drop"] is not None), default=float("inf")),
            "stable_phase_not_reached": [e for e, r in rows.items() if r["worst_margin_drop"] is None],
            "loss_ratio_largest_over_smallest": rows[str(max(config.etas))]["final_loss"]
            / rows[str(min(config.etas))]["final_loss"],
        }
        curves[kind] = out
    _plot(config, curves, per, out_dir)
    return finalize(out_dir, NAME, config, {"datasets": per}, claims, seed=config.seed)


def _plot(config: Config, curves: dict, per: dict, out_dir: Path) -> None:
    kinds = list(curves)
    fig, axes = new_figure(len(kinds), 3, size=(15, 4.2 * len(kinds)))
    t = np.arange(config.steps + 1)
    for r, kind in enumerate(kinds):
        out, rows = curves[kind], per[kind]["stepsizes"]
        ax_l, ax_m, ax_f = axes[r]
        for i, eta in enumerate(config.etas):
            ax_l.plot(t[1:], out["loss"][i, 1:], lw=0.9, color=f"C{i}", label=f"eta={eta:g}")
            nm = out["normalized_margin"][i]
            ax_m.plot(t[1:], np.where(nm[1:] > 0, nm[1:], np.nan), lw=0.9, color=f"C{i}")
            t0 = rows[str(eta)]["stable_start"]
            if 0 < t0 <= config.steps:
                ax_m.axvline(t0, color=f"C{i}", ls=":", lw=0.7)
        ax_l.axvline(config.steps / 10, color="0.3", ls="--", lw=0.8, label="T/10")
        tt = t[t >= config.steps / 30]
        guide(ax_l, tt, -1, (tt[-1], out["loss"][-1, -1]), "stable phase: ~1/(eta t)", ls="-.", lw=1.5)
        ax_l.set(xscale="log", yscale="log", xlabel="step t", ylabel="training loss",
                 title=f"{kind}: loss (large eta oscillates first)")
        ax_l.legend(fontsize=6, ncol=2)
        ax_m.set(xscale="log", xlabel="step t", ylabel="normalized margin min_i y_i f(x_i) / ||W||_F",
                 title=f"{kind}: margin (dotted: stable phase starts; <= 0 not drawn)")
        e = np.array(config.etas)
        ax_f.plot(e, [rows[str(x)]["final_loss"] for x in config.etas], "o-", label="final loss at T")
        ax_f.plot(e, rows[str(e.min())]["final_loss"] / 100 * np.ones_like(e), "k:", lw=0.8,
                  label="1/100 of the smallest eta's (claim)")
        guide(ax_f, e, -1, (e[0], rows[str(e.min())]["final_loss"]), "theory ~1/(eta T)")
        ax_f.set(xscale="log", yscale="log", xlabel="stepsize eta", ylabel=f"loss at T={config.steps}",
                 title=f"{kind}: final loss vs stepsize")
        ax_f.legend(fontsize=7)
    save_figure(fig, out_dir, "large_stepsize_two_layer.png")


def claims(result: dict) -> list[Claim]:
    """Separable: oscillation then stability before T/10 at large eta; margin nearly monotone after t0; final loss
    ratio <= 1/100. XOR: the same numbers as observations (not linearly separable: no guarantee)."""
    cfg = result["config"]
    out = []
    for kind, p in result["metrics"]["datasets"].items():
        strict = kind == "separable"
        tag = f"{kind}: "
        out += [
            Claim(tag + f"stepsizes >= {cfg['large_eta']:g} whose loss never exceeds its initial value",
                  p["large_not_oscillating"], 0, p["large_not_oscillating"] == 0, strict=strict),
            Claim(tag + "latest last-loss-increase step among large stepsizes (< T/10)",
                  p["large_latest_stable_start"], cfg["steps"] / 10,
                  p["large_latest_stable_start"] < cfg["steps"] / 10, strict=strict),
            Claim(tag + "worst drop of the normalized margin below its running max after t0 (/ final margin)",
                  p["worst_margin_drop"], cfg["margin_tolerance"], p["worst_margin_drop"] <= cfg["margin_tolerance"],
                  strict=strict),
            Claim(tag + "final loss at the largest eta / at the smallest eta", p["loss_ratio_largest_over_smallest"],
                  0.01, p["loss_ratio_largest_over_smallest"] <= 0.01, strict=strict),
        ]
    return out


register(NAME, Config, run, claims, __doc__ or "",
         paper="Cai, Wu, Mei, Lindsey, Bartlett, 'Large Stepsize Gradient Descent for Non-Homogeneous Two-Layer "
               "Networks: Margin Improvement and Fast Optimization', NeurIPS 2024 (arXiv:2406.08654)")
