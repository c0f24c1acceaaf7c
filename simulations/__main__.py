"""The experiments' command line (also installed as `fedprivacy`).

    python -m simulations list                        every experiment, its area and what it shows
    python -m simulations show NAME                   summary, paper, config fields, presets and claims
    python -m simulations run NAME [--smoke] [--set KEY=VALUE ...] [--out DIR] [--device cpu|cuda]
    python -m simulations run NAME --help             that experiment's config fields
    python -m simulations gallery [--out DIR]         the static results gallery (docs/gallery/index.html)
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from simulations import registry


def _list() -> int:
    from simulations import catalog

    entries = catalog.entries()
    width = max((len(e.name) for e in entries), default=0)
    for e in entries:
        print(f"{e.name:<{width}}  {e.area:<7} {e.title}")
    return 0


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    from simulations.explain import KIND_LEGEND, claims_table

    overrides = registry.parse_set_args(args.sets)
    out = Path(args.out or os.path.join("runs", args.name))
    command = "python -m simulations " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    started = time.time()
    result = registry.run(args.name, smoke=args.smoke, overrides=overrides, out_dir=out, device=args.device,
                          command=command)
    print()
    print(claims_table(result.get("claims", [])))
    print(KIND_LEGEND)
    print(f"\nrecord: {out / 'result.json'}")
    plots = sorted(p for p in out.glob("*.png") if p.stat().st_mtime >= started - 1)
    for p in plots:
        print(f"plot:   {p}")
    failed = registry.failed_strict(result)
    if failed:
        print(f"{len(failed)} strict claim(s) failed: {', '.join(c['name'] for c in failed)}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the experiments (name, area, one line each)")
    p_show = sub.add_parser("show", help="explain one experiment: summary, paper, config fields, claims")
    p_show.add_argument("name")
    p_run = sub.add_parser("run", help="run one experiment", add_help=False)
    p_run.add_argument("name", nargs="?")
    p_run.add_argument("-h", "--help", action="store_true", help="this experiment's config fields")
    p_run.add_argument("--smoke", action="store_true", help="the small preset (seconds to a minute on 2 CPU cores)")
    p_run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a Config field (repeatable); --set scale=NAME picks a preset")
    p_run.add_argument("--out", default=None, help="output folder (default runs/NAME)")
    p_run.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p_gal = sub.add_parser("gallery", help="build the static results gallery from docs/results/")
    p_gal.add_argument("--results", default=None, help="records folder (default: the checkout's docs/results)")
    p_gal.add_argument("--out", default=None, help="output folder (default: the checkout's docs/gallery)")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.cmd == "list":
            return _list()
        if args.cmd == "show":
            from simulations.explain import show

            print(show(args.name))
            return 0
        if args.cmd == "gallery":
            from simulations.gallery import build

            path = build(results_dir=args.results, out_dir=args.out)
            print(f"gallery: {path}")
            return 0
        if args.name is None:
            if args.help:
                print(__doc__)
                return 0
            parser.error("run needs an experiment NAME (`python -m simulations list` shows them)")
        if args.help:
            from simulations.explain import config_help

            print(config_help(args.name))
            return 0
        return _run(args, argv)
    except (KeyError, ValueError, ModuleNotFoundError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
