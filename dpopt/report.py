"""``python -m dpopt.report``: a privacy statement for DP-SGD-style training, after TF Privacy's.

    python -m dpopt.report --noise-multiplier 1.0 --batch-size 64 --dataset-size 25000 --epochs 100 --delta 1e-5
    python -m dpopt.report --target-epsilon 3 --sample-rate 0.00256 --steps 39000 --delta 1e-5 --json r.json

Prints a setup sentence, what is protected and the adjacency, ε at δ under Poisson sampling for each
accountant, the conservative ε if each example is instead seen once per epoch in shuffled order, the
user-level ε (group privacy) when ``--max-examples-per-user`` is given, library versions, and what is not
covered. ``--json PATH`` writes :meth:`PrivacyReport.to_dict`; ``--plot PATH`` draws ε vs epochs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from dpopt.accounting import PrivacyReport, calibrate_noise, epsilon_curve, privacy_report

__all__ = ["format_report", "main", "plot_epsilon_curve"]

_NOTE = {"prv": " (Opacus' and dpopt.PrivacyEngine's default)"}
_SOURCE = {"rdp": "dp_accounting", "pld": "dp_accounting", "prv": "Opacus' PRVAccountant"}


def format_report(report: PrivacyReport, dataset_size: int | None = None, calibrated_for: float | None = None) -> str:
    """The human-readable privacy statement for ``report``."""
    r = report
    batch = f"{r.sample_rate * dataset_size:.6g} expected examples per step, " if dataset_size else ""
    over = f"over {dataset_size} examples " if dataset_size else ""
    lines = [
        f"DP-SGD-style training (DP-SGD, DP-Adam, DP²: one Poisson-subsampled Gaussian release per step) {over}"
        f"with {batch}sample rate q = {r.sample_rate:.6g}, noise multiplier σ = {r.noise_multiplier:.6g}, "
        f"for T = {r.steps} steps (≈ {r.epochs:.4g} epochs).",
    ]
    if calibrated_for is not None:
        lines.append(f"σ was calibrated so that ε ≤ {calibrated_for:g} at δ = {r.delta:g}.")
    lines += [
        "",
        "This guarantee protects the release of every intermediate model (all checkpoints), not only the final one.",
        "",
        f"Protected: {r.protected} (example-level DP, add-or-remove-one adjacency), at δ = {r.delta:g}:",
    ]
    rows = [(f"ε, Poisson sampling, {a.upper()} accountant{_NOTE.get(a, '')} (*)", r.epsilon[a]) for a in r.epsilon]
    rows.append(("ε, each example once per epoch, arbitrary order (conservative)", r.epsilon_shuffled))
    width = max(len(name) for name, _ in rows) + 2
    lines += [f"  {name:<{width}}{val:10.4f}" for name, val in rows]
    if r.max_examples_per_user is not None:
        lines += [
            "",
            f"User-level DP with add-or-remove-one-user adjacency, at most {r.max_examples_per_user} examples per "
            f"user (group privacy), at δ = {r.delta:g}:",
        ]
        urows = [(f"ε, Poisson sampling, {a.upper()} accountant (*)", v) for a, v in r.user_epsilon.items()]
        urows.append(("ε, each example once per epoch, arbitrary order (conservative)", r.user_epsilon_shuffled))
        lines += [f"  {name:<{width}}{val:10.4f}" for name, val in urows]
    versions = ", ".join(f"{k} {v}" for k, v in r.versions.items())
    lines += [
        "",
        "(*) Holds only if each step's batch is drawn by Poisson sampling with rate q (Opacus' DPDataLoader,",
        "    dpopt.PrivacyEngine's default). With shuffled fixed-size batches the actual ε is believed to be",
        "    closer to this value than to the conservative one, but only the conservative one is proven.",
        "",
        "Not covered: hyperparameter tuning and model selection on the same data, any other use of the data",
        "(e.g. a vocabulary or feature scaling computed from the training set), and floating-point attacks on",
        "the noise unless training ran with secure_mode=True.",
        "",
        "Computed from the event SelfComposed(PoissonSampled(q, Gaussian(σ)), T): "
        + ", ".join(f"{a.upper()} by {_SOURCE[a]}" for a in r.epsilon)
        + f"; {versions}.",
    ]
    return "\n".join(lines)


def plot_epsilon_curve(report: PrivacyReport, path: str, points: int = 12) -> None:
    """Save a PNG of ε at δ vs epochs (one line per accountant in the report).

    Drawn with matplotlib's object API (`matplotlib.figure.Figure`, its own Agg canvas): no pyplot state and no
    backend forced on the caller. Needs matplotlib (not a core dependency).
    """
    try:
        from matplotlib.figure import Figure
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("the ε plot needs matplotlib, which is not installed: pip install matplotlib "
                                  "(or pip install 'fedprivacy-toolkit[sim]')", name="matplotlib") from e

    steps = sorted({max(1, round(report.steps * (i / points))) for i in range(1, points + 1)})
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for a in report.epsilon:
        eps = epsilon_curve(report.noise_multiplier, report.sample_rate, steps, report.delta, a)
        ax.plot([t * report.sample_rate for t in steps], eps, marker="o", label=a.upper())
    ax.set_xlabel("epochs (steps × q)")
    ax.set_ylabel(f"ε at δ = {report.delta:g}")
    ax.set_title(f"σ = {report.noise_multiplier:.4g}, q = {report.sample_rate:.4g}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dpopt.report", description=__doc__.split("\n\n")[0])
    noise = p.add_mutually_exclusive_group(required=True)
    noise.add_argument("--noise-multiplier", type=float, help="σ, noise std / clip norm (> 0)")
    noise.add_argument("--target-epsilon", type=float, help="calibrate σ to reach this ε at --delta")
    p.add_argument("--sample-rate", type=float, help="q in (0, 1]; or give --batch-size and --dataset-size")
    p.add_argument("--batch-size", type=int, help="expected batch size B (q = B / N)")
    p.add_argument("--dataset-size", type=int, help="number of training examples N")
    p.add_argument("--steps", type=int, help="T >= 1 optimizer steps; or give --epochs")
    p.add_argument("--epochs", type=float, help="epochs (T = ceil(epochs / q))")
    p.add_argument("--delta", type=float, required=True, help="δ in (0, 1), e.g. below 1/N")
    p.add_argument("--accountants", default=None,
                   help="comma list of rdp,pld,prv (default all three; rdp,pld where Opacus is not installed)")
    p.add_argument("--calibration-accountant", default="rdp", choices=("rdp", "pld"), help="for --target-epsilon")
    p.add_argument("--max-examples-per-user", type=int, help="also report user-level ε (group privacy)")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.add_argument("--plot", metavar="PATH", help="write an ε-vs-epochs PNG")
    return p


def _resolve(args: argparse.Namespace) -> tuple[float, int]:
    if args.sample_rate is not None:
        if args.batch_size is not None or args.dataset_size is not None:
            raise ValueError("give either --sample-rate or --batch-size with --dataset-size, not both")
        q = args.sample_rate
    elif args.batch_size is not None and args.dataset_size is not None:
        if args.dataset_size < 1 or args.batch_size < 1 or args.batch_size > args.dataset_size:
            raise ValueError(
                f"need 1 <= --batch-size <= --dataset-size, got {args.batch_size} and {args.dataset_size}"
            )
        q = args.batch_size / args.dataset_size
    else:
        raise ValueError("give --sample-rate, or --batch-size and --dataset-size")
    if not 0 < q <= 1:
        raise ValueError(f"--sample-rate must be in (0, 1], got {q}")
    if (args.steps is None) == (args.epochs is None):
        raise ValueError("give exactly one of --steps or --epochs")
    if args.epochs is not None:
        if not args.epochs > 0:
            raise ValueError(f"--epochs must be > 0, got {args.epochs}")
        steps = math.ceil(args.epochs / q - 1e-9)
    else:
        steps = args.steps
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    return q, steps


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; invalid input exits with status 2 and a message naming the option."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        q, steps = _resolve(args)
        accountants = (None if args.accountants is None
                       else tuple(a.strip() for a in args.accountants.split(",") if a.strip()))
        if not 0 < args.delta < 1:
            raise ValueError(f"--delta must be in (0, 1), got {args.delta}")
        sigma = args.noise_multiplier
        if args.target_epsilon is not None:
            sigma = calibrate_noise(args.target_epsilon, args.delta, q, steps, args.calibration_accountant)
        elif not sigma > 0:
            raise ValueError(f"--noise-multiplier must be > 0, got {sigma}")
        report = privacy_report(sigma, q, steps, args.delta, accountants, args.max_examples_per_user)
    except ValueError as err:
        parser.error(str(err))
    print(format_report(report, args.dataset_size, args.target_epsilon))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report.to_dict(), fh, indent=2)
    if args.plot:
        plot_epsilon_curve(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
