"""`fussfast` / `python -m fussfast` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fussfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the build (CUDA, OpenMP) and the visible devices")
    run = sub.add_parser("run", help="train and evaluate from a TOML config; writes DIR/metrics.json")
    run.add_argument("config", nargs="?", help="TOML file (default: the built-in synthetic setup)")
    run.add_argument("--out", default="runs/latest", help="output directory (default: runs/latest)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set fed.strategy=local (repeatable)")
    args = parser.parse_args(argv)

    if args.command == "info":
        from fussfast._info import runtime_report

        print(runtime_report())
    elif args.command == "run":
        from fussfast.config import ConfigError, load_config
        from fussfast.run import run as run_config

        try:
            metrics = run_config(load_config(args.config, args.set), args.out)
        except (ConfigError, FileNotFoundError, RuntimeError) as e:  # bad config, missing data, too few clients
            print(f"fussfast run: {e}", file=sys.stderr)
            return 2
        final = metrics["final"]["global"]
        print(f"final global mIoU {final['miou']:.1f}, accuracy {final['acc']:.1f} "
              f"(majority-class baseline mIoU {metrics['baseline']['majority']['miou']:.1f}); "
              f"metrics in {args.out}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
