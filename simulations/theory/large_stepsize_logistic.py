"""large-stepsize-logistic: GD with eta = Theta(T) on separable logistic regression reaches loss ~1/T^2, not 1/T.

Wu, Bartlett, Telgarsky, Yu (COLT 2024): on linearly separable data GD with any stepsize eta first oscillates
(an "edge of stability" phase that ends within O(eta) steps), then decreases the loss as O~(1/(eta t)). Choosing
eta = Theta(T) for a budget of T steps gives a final loss O~(1/T^2): GD accelerates by leaving the classical
stable regime eta < 2/beta, where the loss decreases monotonically but only at rate 1/t.

We run full-batch GD from 0 on the 4-point dataset of `_logistic` (margin gamma = 0.1 along e1; 2/beta ~ 11.7)
for every budget T in `horizons`, with the stable stepsizes `stable_etas` (< 2/beta) and with eta = T/k for each
k in `large_divisors`. Claims (the issue's thresholds):
- for every T >= 300, the loss at T with eta = T/k (the median over the k grid: single large-eta runs are
  erratic, some land on tiny losses by luck) is at least 10x below the best stable stepsize's;
- the fitted slope of log L_T(eta = T/3) against log T is <= -1.7 (theory: -2 up to log factors), while the best
  stable stepsize's slope lies in [-1.2, -0.8] (theory: -1);
- the loss is non-monotone (at least one increase) for every eta = T/k >= 30, and monotone for every stable eta.
The dataset and stepsize grid are our design; the paper's own figures are recalled, not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulations.config import ExperimentConfig, param
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure
from simulations.theory._common import guide, loglog_slope
from simulations.theory._logistic import gd, last_increase, margin_dataset, smoothness_at_zero

NAME = "large-stepsize-logistic"


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: T up to 10^4 (about a second of GD for every run together)."""

    gamma: float = param(0.1, "margin of the dataset", bounds="(0, 1]")
    horizons: tuple[int, ...] = param((100, 300, 1000, 3000, 10000), "step budgets T", bounds="[10, 1e7]",
                                      nonempty=True)
    stable_etas: tuple[float, ...] = param((1.0, 2.0, 4.0, 8.0), "stepsizes below 2/beta", bounds="(0, inf)",
                                           nonempty=True)
    large_divisors: tuple[int, ...] = param((10, 5, 3, 2, 1), "k of the large stepsizes eta = T/k (must hold 3)",
                                            bounds="[1, 1000]", nonempty=True)
    sweep_points: int = param(25, "log-spaced stepsizes in 1..max T for the loss-vs-eta panel", bounds="[2, 1000]")
    claim_min_horizon: int = param(300, "smallest T at which the acceleration claim is checked", bounds="[1, 1e7]")
    oscillation_min_eta: float = param(30.0, "large stepsizes at least this big must show a loss increase",
                                       bounds="(0, inf)")

    def check(self) -> None:
        if 3 not in self.large_divisors:
            raise ValueError(f"large_divisors must contain 3 (the claim's eta = T/3), got {self.large_divisors}")
        beta = smoothness_at_zero(margin_dataset(self.gamma))
        if max(self.stable_etas) >= 2 / beta:
            raise ValueError(f"stable_etas must all be < 2/beta = {2 / beta:.3f}, got {self.stable_etas}")
        if sum(t >= self.claim_min_horizon for t in self.horizons) < 2:
            raise ValueError(f"need >= 2 horizons >= claim_min_horizon={self.claim_min_horizon}, got {self.horizons}")

    @classmethod
    def smoke(cls) -> Config:
        """Under a second: T up to 3000."""
        return cls(horizons=(100, 300, 1000, 3000), sweep_points=12)


def run(config: Config, out_dir: Path) -> dict:
    z = margin_dataset(config.gamma)
    beta = smoothness_at_zero(z)
    hs, ks = list(config.horizons), list(config.large_divisors)
    t_max = max(hs)
    sweep = np.unique(np.round(np.logspace(0, np.log10(t_max), config.sweep_points), 3))
    large = [(t, k, t / k) for t in hs for k in ks]
    etas = np.array([*config.stable_etas, *(e for _, _, e in large), *sweep])
    loss = gd(z, etas, t_max)["loss"]
    ns = len(config.stable_etas)
    tau = last_increase(loss)

    stable = {str(e): {"loss_at_T": {str(t): float(loss[i, t]) for t in hs},
                       "last_increase": int(last_increase(loss[i:i + 1, :])[0])}
              for i, e in enumerate(config.stable_etas)}
    by_t: dict = {}
    for j, (t, k, eta) in enumerate(large):
        row = ns + j
        by_t.setdefault(str(t), {})[str(k)] = {"eta": eta, "loss_at_T": float(loss[row, t]),
                                              "last_increase": int(last_increase(loss[row:row + 1, :t + 1])[0])}
    best_stable = {str(t): min(stable[str(e)]["loss_at_T"][str(t)] for e in config.stable_etas) for t in hs}
    best_eta = min(config.stable_etas, key=lambda e: stable[str(e)]["loss_at_T"][str(t_max)])
    median_large = {str(t): float(np.median([by_t[str(t)][str(k)]["loss_at_T"] for k in ks])) for t in hs}
    fit = [t for t in hs if t >= config.claim_min_horizon]
    ratios = {str(t): best_stable[str(t)] / median_large[str(t)] for t in hs}
    sweep_rows = slice(ns + len(large), None)
    metrics = {
        "two_over_beta": 2 / beta,
        "stable": stable,
        "large": by_t,
        "best_stable_loss": best_stable,
        "median_large_loss": median_large,
        "ratio_best_stable_over_large": ratios,
        "min_ratio_from_claim_horizon": min(ratios[str(t)] for t in fit),
        "slope_eta_T_over_3": loglog_slope(fit, [by_t[str(t)]["3"]["loss_at_T"] for t in fit]),
        "best_stable_eta": best_eta,
        "slope_best_stable": loglog_slope(fit, [stable[str(best_eta)]["loss_at_T"][str(t)] for t in fit]),
        "slope_stable": {str(e): loglog_slope(fit, [stable[str(e)]["loss_at_T"][str(t)] for t in fit])
                         for e in config.stable_etas},
        "slope_median_large": loglog_slope(fit, [median_large[str(t)] for t in fit]),
        "sweep": {"eta": sweep, "loss_at_T": {str(t): loss[sweep_rows, t] for t in hs},
                  "last_increase": tau[sweep_rows]},
    }
    osc = [by_t[str(t)][str(k)]["last_increase"] for t, k, e in large if e >= config.oscillation_min_eta]
    metrics["large_eta_runs_without_increase"] = int(sum(o == 0 for o in osc))
    metrics["stable_runs_with_increase"] = int(sum(stable[str(e)]["last_increase"] > 0 for e in config.stable_etas))
    _plot(config, loss, etas, metrics, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims)


def _plot(config: Config, loss: np.ndarray, etas: np.ndarray, met: dict, out_dir: Path) -> None:
    fig, axes = new_figure(2, 2, size=(11.5, 8.4))
    hs = list(config.horizons)
    t_max = max(hs)
    ax = axes[0, 0]
    t = np.arange(1, t_max + 1)
    show = [*config.stable_etas[-1:], t_max / 30, t_max / 3, t_max]
    for i, e in enumerate(show):
        row = int(np.argmin(np.abs(etas - e)))
        ax.plot(t, loss[row, 1:], lw=1, color=f"C{i}", label=f"eta={etas[row]:.4g}")
    guide(ax, t[t >= 10], -1, (10, loss[len(config.stable_etas) - 1, 10]), "1/t")
    ax.set(xscale="log", yscale="log", xlabel="step t", ylabel="logistic loss", title="loss curves (large eta spikes early)")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    sweep = np.asarray(met["sweep"]["eta"])
    for i, tt in enumerate(hs):
        ax.plot(sweep, met["sweep"]["loss_at_T"][str(tt)], "o-", ms=3, color=f"C{i}", label=f"T={tt}")
    ax.axvline(met["two_over_beta"], color="0.4", ls=":", label="2/beta (stability limit)")
    ax.set(xscale="log", yscale="log", xlabel="stepsize eta", ylabel="loss at step T",
           title="final loss vs stepsize: the best eta grows with T")
    ax.set_ylim(1e-14, 10)  # a few huge-eta runs land on losses ~1e-60 by luck: off scale, kept in the record
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    third = [met["large"][str(tt)]["3"]["loss_at_T"] for tt in hs]
    best = [met["best_stable_loss"][str(tt)] for tt in hs]
    med = [met["median_large_loss"][str(tt)] for tt in hs]
    ax.plot(hs, third, "o-", label=f"eta=T/3 (slope {met['slope_eta_T_over_3']:.2f})")
    ax.plot(hs, med, "s:", label=f"median over eta=T/k (slope {met['slope_median_large']:.2f})")
    ax.plot(hs, best, "^-", label=f"best stable eta (slope {met['slope_best_stable']:.2f})")
    guide(ax, hs, -2, (hs[-1], third[-1]), "theory 1/T^2")
    guide(ax, hs, -1, (hs[-1], best[-1]), "theory 1/T", ls="-.")
    ax.set(xscale="log", yscale="log", xlabel="budget T", ylabel="loss at step T", title="acceleration: L_T vs T")
    ax.legend(fontsize=7)

    ax = axes[1, 1]
    tau = np.asarray(met["sweep"]["last_increase"])
    ok = tau > 0
    ax.plot(sweep[ok], tau[ok], "o", label="last step with a loss increase")
    ax.plot(sweep, sweep, "--", color="0.3", label="O(eta) bound (eta)")
    ax.set(xscale="log", yscale="log", xlabel="stepsize eta", ylabel="end of the oscillating phase (step)",
           title="phase-1 length (stable etas never increase: not drawn)")
    ax.legend(fontsize=7)
    save_figure(fig, out_dir, "large_stepsize_logistic.png")


def claims(result: dict) -> list[Claim]:
    """Acceleration >= 10x for T >= claim_min_horizon; slopes (<= -1.7 at eta = T/3, [-1.2, -0.8] for the best
    stable eta); non-monotone for large eta, monotone for stable eta."""
    m = result["metrics"]
    s3, ss = m["slope_eta_T_over_3"], m["slope_best_stable"]
    return [
        Claim("min over T >= 300 of best-stable-eta loss / loss at eta = Theta(T) (median over T/k)",
              m["min_ratio_from_claim_horizon"], 10.0, m["min_ratio_from_claim_horizon"] >= 10.0),
        Claim("slope of log L_T(eta = T/3) vs log T", s3, -1.7, s3 <= -1.7),
        Claim(f"slope of log L_T vs log T at the best stable eta = {m['best_stable_eta']:g} (in [-1.2, -0.8])",
              ss, -0.8, -1.2 <= ss <= -0.8),
        Claim("large-eta runs (eta >= 30) whose loss never increases", m["large_eta_runs_without_increase"], 0,
              m["large_eta_runs_without_increase"] == 0),
        Claim("stable-eta runs whose loss ever increases", m["stable_runs_with_increase"], 0,
              m["stable_runs_with_increase"] == 0),
    ]


register(NAME, Config, run, claims, __doc__ or "",
         paper="Wu, Bartlett, Telgarsky, Yu, 'Large Stepsize Gradient Descent for Logistic Loss: Non-Monotonicity "
               "of the Loss Improves Optimization Efficiency', COLT 2024 (arXiv:2402.15926)")
