"""beta2-stability: how Adam's and RMSProp's beta_2 moves their algorithmic stability (an observation).

Nguyen, Pham, Reddi, Poczos (2022) bound the uniform stability, and hence the generalization gap, of Adagrad,
RMSProp, Adam and AdamW by quantities that "depend heavily on a single parameter beta_2". We measure the two
things such a bound controls on paired runs:
- parameter divergence ||w_T - w'_T|| between runs on datasets S and S' that differ in one example, trained from
  the same init with the same sample order (the uniform-stability proxy), and the mean |loss(w_T; z) -
  loss(w'_T; z)| over held-out z;
- the generalization gap: test loss - train loss of the run on S.
Model: logistic regression on synthetic data (x ~ N(0, I_d), y ~ Bernoulli(sigmoid(<x, w_true>))), minibatch
Adam (beta_1 = 0.9) and RMSProp (beta_1 = 0), both with bias-corrected second moments (so that beta_2 changes the
averaging horizon, not the first steps' size), beta_2 in {0.9, 0.99, 0.999, 0.9999}, fixed lr and eps.

The direction of the dependence could not be verified from the paper's text (only its abstract was available),
so nothing here is a claim: each result is an *observation* (strict=False) reporting the Spearman correlation
between beta_2 and the measured quantity, and its sign; it "holds" when |rho| >= 0.8, i.e. the trend is monotone
in either direction. Which direction the paper predicts is for the reader to compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from simulations.config import ExperimentConfig, param
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure

NAME = "beta2-stability"
OPTIMIZERS = {"Adam": 0.9, "RMSProp": 0.0}  # name -> beta_1


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: 50 neighbour pairs over 5 datasets, 2000 steps, 2 optimizers x 4 beta_2 (under a minute)."""

    d: int = param(50, "dimension", bounds="[1, 10000]")
    n: int = param(200, "training examples", bounds="[2, 1e6]")
    n_test: int = param(2000, "held-out examples", bounds="[1, 1e7]")
    beta2s: tuple[float, ...] = param((0.9, 0.99, 0.999, 0.9999), "beta_2 values", bounds="(0, 1)", nonempty=True)
    optimizers: tuple[str, ...] = param(tuple(OPTIMIZERS), "optimizers", choices=tuple(OPTIMIZERS), nonempty=True)
    lr: float = param(0.01, "learning rate", bounds="(0, 10]")
    eps: float = param(1e-8, "epsilon of the preconditioner", bounds="(0, 1]")
    steps: int = param(2000, "training steps", bounds="[1, 1e7]")
    batch: int = param(10, "minibatch size", bounds="[1, 1e6]")
    datasets: int = param(5, "independent datasets S (seeds)", bounds="[1, 10000]")
    pairs_per_dataset: int = param(10, "neighbours S' per dataset (one example replaced)", bounds="[1, 10000]")
    seed: int = param(0, "master seed", bounds="[0, 4294967295]")

    def check(self) -> None:
        if self.batch > self.n:
            raise ValueError(f"batch must be <= n, got {self.batch} > {self.n}")
        if len(self.beta2s) < 2:
            raise ValueError(f"beta2s needs at least 2 values for a correlation, got {self.beta2s}")

    @classmethod
    def smoke(cls) -> Config:
        """A few seconds: 2 datasets x 4 pairs, 600 steps."""
        return cls(datasets=2, pairs_per_dataset=4, steps=600, n_test=500)


def adaptive_logistic(x: np.ndarray, y: np.ndarray, order: np.ndarray, which: np.ndarray, beta1: np.ndarray,
                      beta2: np.ndarray, *, lr: float, eps: float) -> np.ndarray:
    """Minibatch Adam (RMSProp when beta1 = 0) on the logistic loss for R runs at once, from w = 0.

    x: (R, n, d) and y: (R, n) each run's data; order: (S, steps, batch) sample orders, run r using
    order[which[r]]; beta1, beta2: (R,). Bias-corrected moments, w <- w - lr m_hat / (sqrt(v_hat) + eps) (torch.optim.Adam's update)."""
    runs, _, d = x.shape
    w, m1, m2 = np.zeros((runs, d)), np.zeros((runs, d)), np.zeros((runs, d))
    rows = np.arange(runs)[:, None]
    b1, b2 = np.asarray(beta1, float)[:, None], np.asarray(beta2, float)[:, None]
    for t in range(order.shape[1]):
        idx = order[which, t]
        xb, yb = x[rows, idx], y[rows, idx]
        r = 1 / (1 + np.exp(-np.einsum("rbd,rd->rb", xb, w))) - yb
        g = np.einsum("rb,rbd->rd", r, xb) / idx.shape[1]
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b2 * m2 + (1 - b2) * g * g
        w = w - lr * (m1 / (1 - b1 ** (t + 1))) / (np.sqrt(m2 / (1 - b2 ** (t + 1))) + eps)
    return w


def _loss(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean logistic loss of each row of w on (x, y): per-run (R,) for shared data x (m, d)."""
    m = x @ w.T  # (m, R)
    return (np.logaddexp(0.0, m) - y[:, None] * m).mean(0)


def run(config: Config, out_dir: Path) -> dict:
    rng = np.random.default_rng(config.seed)
    d, n, p = config.d, config.n, config.pairs_per_dataset
    w_true = rng.standard_normal(d) * 2 / np.sqrt(d)

    def sample(k):
        x = rng.standard_normal((k, d))
        return x, (rng.random(k) < 1 / (1 + np.exp(-x @ w_true))).astype(float)

    x_test, y_test = sample(config.n_test)
    configs = [(o, b2) for o in config.optimizers for b2 in config.beta2s]
    # runs: dataset s, pair j, variant (0 = S, 1 = S'), optimizer setting c
    xs, ys, order = [], [], []
    for _ in range(config.datasets):
        x, y = sample(n)
        xs.append(x)
        ys.append(y)
        order.append(rng.integers(0, n, (config.steps, config.batch)))  # the sample order both runs share
    x_run, y_run, seed_of = [], [], []
    for s in range(config.datasets):
        for _ in range(p):
            i = int(rng.integers(n))
            xr, yr = sample(1)
            for variant in (0, 1):
                xx, yy = xs[s].copy(), ys[s].copy()
                if variant:
                    xx[i], yy[i] = xr[0], yr[0]
                for _c in configs:
                    x_run.append(xx)
                    y_run.append(yy)
                    seed_of.append(s)
    x_run, y_run = np.array(x_run), np.array(y_run)
    seed_of = np.array(seed_of)
    n_runs = len(x_run)
    b1 = np.tile([OPTIMIZERS[o] for o, _ in configs], n_runs // len(configs))
    b2 = np.tile([b for _, b in configs], n_runs // len(configs))
    w = adaptive_logistic(x_run, y_run, np.array(order), seed_of, b1, b2, lr=config.lr, eps=config.eps)
    shape = (config.datasets * p, 2, len(configs), d)
    wv = w.reshape(shape)
    div = np.linalg.norm(wv[:, 0] - wv[:, 1], axis=-1)  # (pairs, configs)
    ls = _loss(wv[:, 0].reshape(-1, d), x_test, y_test).reshape(-1, len(configs))
    ls1 = _loss(wv[:, 1].reshape(-1, d), x_test, y_test).reshape(-1, len(configs))
    loss_diff = np.abs(_loss_pointwise(wv[:, 0], x_test, y_test) - _loss_pointwise(wv[:, 1], x_test, y_test))
    xtr = x_run.reshape(config.datasets * p, 2, len(configs), n, d)[:, 0]
    ytr = y_run.reshape(config.datasets * p, 2, len(configs), n)[:, 0]
    mtr = np.einsum("pcnd,pcd->pcn", xtr, wv[:, 0])
    train = (np.logaddexp(0.0, mtr) - ytr * mtr).mean(-1)
    gap = ls - train
    per: dict = {}
    for k, (o, b) in enumerate(configs):
        base = configs.index((o, config.beta2s[0]))
        rel = div[:, k] / np.maximum(div[:, base], 1e-300)  # paired: same neighbour pair, first beta_2
        dgap = gap[:, k] - gap[:, base]
        per.setdefault(o, {})[str(b)] = {
            "gap_minus_first_beta2": float(dgap.mean()),
            "gap_minus_first_beta2_se": float(dgap.std(ddof=1) / np.sqrt(len(dgap))),
            "divergence_vs_first_beta2": float(rel.mean()),
            "divergence_vs_first_beta2_se": float(rel.std(ddof=1) / np.sqrt(len(rel))),
            "divergence": float(div[:, k].mean()), "divergence_se": float(div[:, k].std(ddof=1) / np.sqrt(len(div))),
            "test_loss_difference": float(loss_diff[:, k].mean()),
            "generalization_gap": float(gap[:, k].mean()), "gap_se": float(gap[:, k].std(ddof=1) / np.sqrt(len(gap))),
            "train_loss": float(train[:, k].mean()), "test_loss": float(ls[:, k].mean()),
            "test_loss_neighbour": float(ls1[:, k].mean()),
        }
    corr = {}
    for o in config.optimizers:
        bs = [float(b) for b in config.beta2s]
        corr[o] = {q: float(spearmanr(bs, [per[o][str(b)][q] for b in config.beta2s])[0])
                   for q in ("divergence", "test_loss_difference", "generalization_gap")}
    metrics = {"per_optimizer": per, "spearman_vs_beta2": corr, "pairs": config.datasets * p}
    _plot(config, per, corr, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=config.seed)


def _loss_pointwise(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The loss at every held-out z, per (pair, config): w is (pairs, configs, d); returns (pairs, configs, m)."""
    m = np.einsum("pcd,md->pcm", w, x)
    return np.logaddexp(0.0, m) - y * m


def _plot(config: Config, per: dict, corr: dict, out_dir: Path) -> None:
    fig, axes = new_figure(1, 2, size=(11.5, 4.3))
    x = 1 - np.array(config.beta2s)
    for i, o in enumerate(config.optimizers):
        rows = [per[o][str(b)] for b in config.beta2s]
        axes[0, 0].errorbar(x, [r["divergence_vs_first_beta2"] for r in rows],
                            yerr=[2 * r["divergence_vs_first_beta2_se"] for r in rows], fmt="o-", color=f"C{i}",
                            label=f"{o}: Spearman(beta2, divergence) = {corr[o]['divergence']:+.2f}")
        axes[0, 1].errorbar(x, [r["gap_minus_first_beta2"] for r in rows],
                            yerr=[2 * r["gap_minus_first_beta2_se"] for r in rows], fmt="o-", color=f"C{i}",
                            label=f"{o}: Spearman(beta2, gap) = {corr[o]['generalization_gap']:+.2f}")
    b0 = f"{config.beta2s[0]:g}"
    for ax, yl, title in ((axes[0, 0], f"||w_T - w'_T|| / same at beta_2={b0}", "parameter divergence on S vs S'"),
                          (axes[0, 1], f"gap - gap at beta_2={b0}", "generalization gap (test - train loss)")):
        ax.set(xscale="log", xlabel="1 - beta_2 (log; beta_2 -> 1 to the right)", ylabel=yl,
               title=f"{title}, paired over {config.datasets * config.pairs_per_dataset} neighbour pairs (±2 s.e.)\n"
                     "no theory curve: the paper's direction is unverified")
        ax.invert_xaxis()
        ax.legend(fontsize=7)
    for ax in axes[0]:
        ax.title.set_fontsize(9)
    save_figure(fig, out_dir, "beta2_stability.png")


def claims(result: dict) -> list[Claim]:
    """Observations only: Spearman rho between beta_2 and divergence / generalization gap, per optimizer; each
    'holds' when |rho| >= 0.8 (a monotone trend, either sign)."""
    out = []
    for o, c in result["metrics"]["spearman_vs_beta2"].items():
        for q in ("divergence", "generalization_gap"):
            rho = c[q]
            sign = "increases" if rho > 0 else ("decreases" if rho < 0 else "is flat")
            out.append(Claim(f"{o}: Spearman(beta2, {q}) = {rho:+.2f} ({q} {sign} with beta2); |rho| >= 0.8",
                             abs(rho), 0.8, abs(rho) >= 0.8, strict=False))
    return out


register(NAME, Config, run, claims, __doc__ or "",
         paper="Nguyen, Pham, Reddi, Poczos, 'On the Algorithmic Stability and Generalization of Adaptive "
               "Optimization Methods', arXiv:2211.03970 (2022)")
