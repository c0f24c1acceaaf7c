"""The dp2-imdb figure: accuracy against ε beside the paper's column, and accuracy against epochs at ε ≈ 3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from simulations.dp._train import LABELS
from simulations.results import new_figure, save_figure

_PAPER_EPS = {"3.0": 3.0, "0.84": 0.84}


def plot(metrics: dict[str, Any], cfg: Any, out_dir: Path) -> None:
    fig, ax = new_figure(1, 2, size=(12, 4.4))
    left, right = ax[0, 0], ax[0, 1]
    methods = ("dp-sgd", "dp-rmsprop", "dp2-rmsprop")
    per = metrics["per_sigma"]
    for j, m in enumerate(methods):
        color = f"C{j}"
        pe = sorted((_PAPER_EPS[e], metrics["paper"][e][m]) for e in metrics["paper"])
        left.plot([p[0] for p in pe], [p[1] for p in pe], "s--", c=color, alpha=0.6, lw=1,
                  label=f"{LABELS[m]}, paper")
        rep = sorted((entry["epsilon"]["rdp"], entry["replication"]["test_acc"][m]) for entry in per.values()
                     if "replication" in entry)
        if rep:
            left.errorbar([r[0] for r in rep], [np.mean(r[1]) for r in rep], yerr=[np.std(r[1]) for r in rep],
                          fmt="o-", c=color, capsize=3, label=f"{LABELS[m]}, paper's hyperparameters")
        tuned = [(entry["epsilon"]["rdp"], entry["tuned"]["test_acc"][m]) for entry in per.values() if "tuned" in entry]
        if tuned:
            left.errorbar([t[0] for t in tuned], [np.mean(t[1]) for t in tuned], yerr=[np.std(t[1]) for t in tuned],
                          fmt="*", ms=11, c=color, capsize=3, label=f"{LABELS[m]}, equal tuning")
    left.axhline(metrics["nonprivate"]["test_acc"], ls=":", c="k", lw=1, label="non-private optimum")
    left.set(xscale="log", xlabel=f"ε (RDP, δ = {cfg.delta:g})", ylabel="test accuracy (mean ± sd over seeds)",
             title=f"IMDB {metrics['n_train']:,} reviews, {metrics['dim']:,} words ({metrics['features']})")
    left.legend(fontsize=6.5, ncol=2, loc="lower right")
    main = per.get("1.0") or next(iter(per.values()))
    spe = metrics["steps_per_epoch"]
    for kind, style in (("replication", "-"), ("tuned", ":")):
        if kind not in main:
            continue
        for j, m in enumerate(methods):
            c = main[kind]["curves"][m]
            right.plot(np.asarray(c["steps"]) / spe, c["test_acc"], style, c=f"C{j}",
                       label=f"{LABELS[m]} ({'paper hp' if kind == 'replication' else 'tuned'})")
    ref = main.get("tuned", main.get("replication"))
    right.axhline(np.mean(ref["test_acc"]["dp-sgd"]), c="gray", lw=0.8, ls="--", label="DP-SGD final (mean)")
    right.set(xlabel="epoch", ylabel="test accuracy", ylim=(0.5, None),
              title=f"σ = {1.0 if '1.0' in per else next(iter(per))}: first seed")
    right.legend(fontsize=6.5)
    save_figure(fig, out_dir, "dp2_imdb.png")
