"""`fussfast` / `python -m fussfast` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fussfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the build (CUDA, OpenMP) and the visible devices")
    args = parser.parse_args(argv)

    if args.command == "info":
        from fussfast._info import runtime_report

        print(runtime_report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
