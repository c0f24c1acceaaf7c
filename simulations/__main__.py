"""`python -m simulations list | run NAME [--smoke] [--set k=v ...] [--out DIR] [--device cpu|cuda]`."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from simulations import registry


def _print_claims(result: dict) -> None:
    claims = result.get("claims", [])
    if not claims:
        print("(no claims)")
        return
    w = max(len(c["name"]) for c in claims)
    print(f"{'claim':<{w}}  {'measured':>12}  {'threshold':>12}  {'holds':>5}  kind")
    for c in claims:
        kind = c.get("kind") or ("claim" if c["strict"] else "observation")
        holds = "yes" if c["holds"] else ("NO" if c["strict"] else "no")
        print(f"{c['name']:<{w}}  {_fmt(c['measured']):>12}  {_fmt(c['threshold']):>12}  {holds:>5}  {kind}")


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("MPLBACKEND", "Agg")
    parser = argparse.ArgumentParser(prog="python -m simulations", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list registered experiments")
    p_run = sub.add_parser("run", help="run one experiment")
    p_run.add_argument("name")
    p_run.add_argument("--smoke", action="store_true", help="the small preset (seconds to a minute on 2 CPU cores)")
    p_run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a Config field (repeatable)")
    p_run.add_argument("--out", default=None, help="output folder (default runs/NAME)")
    p_run.add_argument("--device", choices=("cpu", "cuda"), default=None)
    args = parser.parse_args(argv)

    if args.cmd == "list":
        for name in registry.names():
            try:
                desc = registry.describe(name)
            except Exception as e:  # an experiment whose module fails to import is listed, not hidden
                desc = f"(cannot load: {e})"
            print(f"{name:<28} {desc}")
        return 0

    try:
        overrides = registry.parse_set_args(args.sets)
        out = args.out or os.path.join("runs", args.name)
        command = "python -m simulations " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        result = registry.run(args.name, smoke=args.smoke, overrides=overrides, out_dir=out, device=args.device,
                              command=command)
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    print()
    _print_claims(result)
    print(f"\nresults: {os.path.join(out, 'result.json')}")
    failed = registry.failed_strict(result)
    if failed:
        print(f"{len(failed)} strict claim(s) failed: {', '.join(c['name'] for c in failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
