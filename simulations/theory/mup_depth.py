"""mup-depth: the maximal-update learning rate of deep ReLU MLPs (mean-field init) scales like L^-3/2.

Jelassi, Hanin, Ji, Reddi, Bhojanapalli, Kumar (2023): for a width-n, depth-L ReLU MLP with mean-field
initialization, the muP learning rate (the largest eta for which the mean squared one-step change of the
pre-activations stays bounded at large n, L) is independent of n for all but the first and last layers and scales
like L^-3/2, because that mean squared change grows like eta^2 L^3.

Network: z^1 = W^1 x (x ~ N(0, I_d)), z^l = W^l relu(z^(l-1)) for l = 2..L, W^l ~ N(0, 2/fan_in),
f = (1/n) v^T relu(z^L), v ~ N(0, I) (the mean-field readout, fixed). One GD step on the loss f (df = 1) with
learning rate eta on W^2..W^L and eta n/d on W^1 (the first layer's muP scaling; `train_first_layer`). To first
order in eta the change of the last pre-activations is the forward-mode recursion

    delta z^1 = -eta (n/d) ||x||^2 g^1,   delta z^l = W^l (D^(l-1) delta z^(l-1)) - eta ||h^(l-1)||^2 g^l,

with g^l = df/dz^l (backprop) and D the ReLU masks, so D(eta) = mean_k (delta z^L_k)^2 = eta^2 C(L, n) and the
learning rate that holds it at a fixed level is eta* = (D_target / C)^(1/2): eta* ~ L^(-slope/2) where slope is
that of log C against log L. The theory predicts slope 3.

Sampling: every W^l enters only through W^l h, (W^l)^T g and W^l u, so instead of drawing n x n matrices we draw
those products from their exact joint law by Gaussian conditioning (W given W h = z and W^T g = b is its mean plus
an independent Gaussian on the orthogonal complements): O(L n) per network instead of O(L n^2), which buys
thousands of networks per point. A test checks it against dense matrices.

Claims (the issue's thresholds): the fitted depth exponent of eta* (from seed-mean C over `depths` at width
`depth_width`) is within +-0.3 of -1.5, with a seed-bootstrap confidence interval reported; eta* varies by < 15%
(max/min - 1) across `widths` at depth `width_depth`. Finite width corrects C by a factor ~ (1 + c L/n) (c ~ 3
here), so that check sits at L/n <= 1/16; at L = 16 (L/n = 1/8 for n = 128) the spread is recorded as an
observation. The input dimension, the loss f and the target level are our choices (the exponent does not depend
on the last two); the note's own derivation is recalled only through its abstract.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simulations.config import ExperimentConfig, param
from simulations.registry import Claim, register
from simulations.results import finalize, new_figure, save_figure
from simulations.theory._common import bootstrap_slope, guide, loglog_slope

NAME = "mup-depth"


@dataclass(frozen=True)
class Config(ExperimentConfig):
    """Full size: depths 4..64 at width 1024 and widths 128..1024 (thousands of networks each; about a minute)."""

    depths: tuple[int, ...] = param((4, 8, 16, 32, 64), "depths L for the exponent", bounds="[2, 10000]",
                                    nonempty=True)
    depth_width: int = param(1024, "width n of the depth sweep", bounds="[4, 1e6]")
    depth_seeds: int = param(1000, "networks per depth", bounds="[10, 1e7]")
    widths: tuple[int, ...] = param((128, 256, 512, 1024), "widths n for the width check", bounds="[4, 1e6]",
                                    nonempty=True)
    width_depth: int = param(8, "depth L of the width check (L/n <= 1/16 for n >= 128)", bounds="[2, 10000]")
    observe_depth: int = param(16, "a second width-check depth, reported as an observation", bounds="[2, 10000]")
    width_seeds: int = param(4000, "networks per width", bounds="[10, 1e7]")
    input_dim: int = param(64, "input dimension d", bounds="[1, 1e6]")
    train_first_layer: bool = param(True, "also step W^1, with the muP rate eta n/d")
    bootstrap: int = param(2000, "bootstrap replicates of the depth fit", bounds="[10, 1e6]")
    tolerance: float = param(0.3, "allowed |fitted exponent - (-1.5)|", bounds="(0, 10]")
    seed: int = param(0, "master seed", bounds="[0, 4294967295]")

    def check(self) -> None:
        if len(self.depths) < 2:
            raise ValueError(f"depths needs at least 2 values, got {self.depths}")
        if len(self.widths) < 2:
            raise ValueError(f"widths needs at least 2 values, got {self.widths}")

    @classmethod
    def smoke(cls) -> Config:
        """A few seconds: width 256, depths 4..32, fewer networks."""
        return cls(depths=(4, 8, 16, 32), depth_width=256, depth_seeds=300, widths=(128, 256, 512),
                   width_seeds=1500, bootstrap=300)


def _unit(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.sqrt((a * a).sum(1))
    return a / np.maximum(norm, 1e-300)[:, None], norm


def _perp(a: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """a minus its component along the (row-wise) unit vectors `unit`."""
    return a - unit * (unit * a).sum(1)[:, None]


def update_size(depth: int, width: int, input_dim: int, seeds: int, rng: np.random.Generator, *,
                train_first_layer: bool = True) -> np.ndarray:
    """C = mean_k (delta z^L_k)^2 / eta^2 for `seeds` independent networks (first order in eta), sampled by
    Gaussian conditioning (see the module docstring). Returns one value per network."""
    s, n = seeds, width
    sd = np.sqrt(2.0 / n)
    x_sq = (rng.standard_normal((s, input_dim)) ** 2).sum(1)
    zs = [rng.standard_normal((s, n)) * np.sqrt(2.0 / input_dim * x_sq)[:, None]]
    hs = []
    for _ in range(1, depth):  # forward: z^l = W^l h given h is N(0, (2/n) ||h||^2 I)
        h = np.maximum(zs[-1], 0.0)
        hs.append(h)
        zs.append(rng.standard_normal((s, n)) * (sd * np.sqrt((h * h).sum(1)))[:, None])
    g = (zs[-1] > 0) * rng.standard_normal((s, n)) / n  # g^L = D^L v / n
    gs, bs = [None] * depth, [None] * depth
    gs[-1] = g
    for layer in range(depth - 1, 0, -1):  # backward: b = (W^l)^T g given W^l h = z
        hh, hn = _unit(hs[layer - 1])
        noise = _perp(rng.standard_normal((s, n)) * (sd * np.sqrt((g * g).sum(1)))[:, None], hh)
        b = hh * ((zs[layer] * g).sum(1) / hn)[:, None] + noise
        bs[layer] = b
        g = (zs[layer - 1] > 0) * b
        gs[layer - 1] = g
    dz = -(n / input_dim) * x_sq[:, None] * gs[0] if train_first_layer else np.zeros((s, n))
    for layer in range(1, depth):  # forward mode: W^l u given W^l h = z and (W^l)^T g = b
        h = hs[layer - 1]
        hh, hn = _unit(h)
        gg, gn = _unit(gs[layer])
        u = (zs[layer - 1] > 0) * dz
        hu = (hh * u).sum(1)
        up = u - hh * hu[:, None]
        wu = zs[layer] * (hu / hn)[:, None] + gg * ((bs[layer] * up).sum(1) / np.maximum(gn, 1e-300))[:, None]
        wu += _perp(rng.standard_normal((s, n)) * (sd * np.sqrt((up * up).sum(1)))[:, None], gg)
        dz = wu - gs[layer] * (h * h).sum(1)[:, None]
    return (dz**2).mean(1)


def update_size_dense(depth: int, width: int, input_dim: int, rng: np.random.Generator, *,
                      train_first_layer: bool = True) -> float:
    """The same C for one network with explicit n x n weight matrices (the reference the test compares with)."""
    n = width
    x = rng.standard_normal(input_dim)
    ws = [rng.standard_normal((n, input_dim)) * np.sqrt(2.0 / input_dim)]
    ws += [rng.standard_normal((n, n)) * np.sqrt(2.0 / n) for _ in range(depth - 1)]
    zs, hs, h = [], [x], x
    for w in ws:
        zs.append(w @ h)
        h = np.maximum(zs[-1], 0.0)
        hs.append(h)
    g = (zs[-1] > 0) * rng.standard_normal(n) / n
    gs = [None] * depth
    gs[-1] = g
    for layer in range(depth - 1, 0, -1):
        g = (zs[layer - 1] > 0) * (ws[layer].T @ g)
        gs[layer - 1] = g
    dz = -(n / input_dim) * (x @ x) * gs[0] if train_first_layer else np.zeros(n)
    for layer in range(1, depth):
        dz = ws[layer] @ ((zs[layer - 1] > 0) * dz) - gs[layer] * (hs[layer] @ hs[layer])
    return float((dz**2).mean())


def run(config: Config, out_dir: Path) -> dict:
    rng = np.random.default_rng(config.seed)
    first = config.train_first_layer
    depth_samples = [update_size(L, config.depth_width, config.input_dim, config.depth_seeds, rng,
                                 train_first_layer=first) for L in config.depths]
    fit = bootstrap_slope(config.depths, depth_samples, reps=config.bootstrap, seed=config.seed + 1)
    trained = [L if first else L - 1 for L in config.depths]
    by_width = {}
    for depth in sorted({config.width_depth, config.observe_depth}):
        cs = {}
        for n in config.widths:
            v = update_size(depth, n, config.input_dim, config.width_seeds, rng, train_first_layer=first)
            cs[str(n)] = {"C": float(v.mean()), "se": float(v.std(ddof=1) / np.sqrt(len(v))),
                          "median": float(np.median(v))}
        c = [cs[str(n)]["C"] for n in config.widths]
        by_width[str(depth)] = {"widths": cs, "eta_star_spread": float(np.sqrt(max(c) / min(c)) - 1)}
    metrics = {
        "depth": {
            "L": list(config.depths),
            "C_mean": [float(s.mean()) for s in depth_samples],
            "C_se": [float(s.std(ddof=1) / np.sqrt(len(s))) for s in depth_samples],
            "C_median": [float(np.median(s)) for s in depth_samples],
            "C_slope": fit["slope"],
            "eta_exponent": -fit["slope"] / 2,
            "eta_exponent_ci95": [-fit["hi"] / 2, -fit["lo"] / 2],
            "eta_exponent_from_medians": -fit["median_slope"] / 2,
            "eta_exponent_vs_trained_layers": -loglog_slope(trained, [s.mean() for s in depth_samples]) / 2,
        },
        "width": by_width,
    }
    _plot(config, metrics, out_dir)
    return finalize(out_dir, NAME, config, metrics, claims, seed=config.seed)


def _plot(config: Config, met: dict, out_dir: Path) -> None:
    fig, axes = new_figure(1, 2, size=(11.5, 4.4))
    ax = axes[0, 0]
    d = met["depth"]
    ls = np.array(d["L"], float)
    c = np.array(d["C_mean"])
    ax.errorbar(ls, c, yerr=2 * np.array(d["C_se"]), fmt="o", label=f"mean over networks (±2 s.e.), "
                f"fitted slope {d['C_slope']:.2f}")
    ax.plot(ls, d["C_median"], "s", mfc="none", label="median over networks")
    guide(ax, ls, 3.0, (ls[-1], c[-1]), "theory L^3 (eta* ~ L^-3/2)")
    guide(ax, ls, 2.0, (ls[-1], c[-1]), "L^2 (eta* ~ 1/L), for contrast", ls=":")
    lo, hi = d["eta_exponent_ci95"]
    ax.set(xscale="log", yscale="log", xlabel="depth L",
           ylabel="C = mean_k (delta z^L_k)^2 / eta^2",
           title=f"n={config.depth_width}: eta* exponent {d['eta_exponent']:.3f} (95% CI [{lo:.3f}, {hi:.3f}])")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    ws = np.array(config.widths, float)
    for i, (depth, w) in enumerate(met["width"].items()):
        cs = np.array([w["widths"][str(n)]["C"] for n in config.widths])
        se = np.array([w["widths"][str(n)]["se"] for n in config.widths])
        eta = 1 / np.sqrt(cs)
        ax.errorbar(ws, eta / eta[-1], yerr=eta / eta[-1] * se / cs, fmt="o-", color=f"C{i}",
                    label=f"L={depth}: spread {100 * w['eta_star_spread']:.1f}%")
    ax.axhline(1.0, color="0.3", ls="--", lw=1, label="theory: independent of n")
    ax.axhspan(1 / 1.15, 1.15, color="0.9", zorder=0, label="±15% band")
    ax.set(xscale="log", xlabel="width n", ylabel="eta*(n) / eta*(largest n)",
           title="muP learning rate vs width (hidden layers)")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    save_figure(fig, out_dir, "mup_depth.png")


def claims(result: dict) -> list[Claim]:
    """|eta* depth exponent + 1.5| <= tolerance; eta* spread across widths < 15% at width_depth (and, as an
    observation, at observe_depth, where finite-width corrections are twice as large)."""
    m = result["metrics"]
    cfg = result["config"]
    e = m["depth"]["eta_exponent"]
    lo, hi = m["depth"]["eta_exponent_ci95"]
    out = [Claim(f"|eta* depth exponent ({e:.3f}, 95% CI [{lo:.3f}, {hi:.3f}]) - (-1.5)|", abs(e + 1.5),
                 cfg["tolerance"], abs(e + 1.5) <= cfg["tolerance"])]
    for depth, w in m["width"].items():
        strict = int(depth) == cfg["width_depth"]
        out.append(Claim(f"L={depth}: eta* spread over widths {cfg['widths']} (max/min - 1)", w["eta_star_spread"],
                         0.15, w["eta_star_spread"] < 0.15, strict=strict))
    return out


register(NAME, Config, run, claims, __doc__ or "",
         paper="Jelassi, Hanin, Ji, Reddi, Bhojanapalli, Kumar, 'Depth Dependence of muP Learning Rates in ReLU "
               "MLPs', arXiv:2305.07810 (2023)")
