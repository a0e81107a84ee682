"""`fussfast` / `python -m fussfast` command line."""

from __future__ import annotations

import argparse
import os
import sys

# Errors that describe the input or the machine (a bad config, a missing or corrupt file, a full
# disk, too little memory), printed as one line; anything else is a bug and says how to report it.
USER_ERRORS = (ValueError, TypeError, KeyError, OSError, RuntimeError, MemoryError)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fussfast", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also FUSSFAST_DEBUG=1), for bug reports")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the build (CUDA, OpenMP) and the visible devices")
    run = sub.add_parser("run", help="train and evaluate from a TOML config; writes DIR/metrics.json")
    run.add_argument("config", nargs="?", help="TOML file (default: the built-in synthetic setup)")
    run.add_argument("--out", help="output directory (default: runs/latest, or the --resume directory)")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR after its last completed round")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set fed.strategy=local (repeatable)")
    demo = sub.add_parser("demo", help="compare local, FedAvg and FedCC on built-in synthetic data; "
                                       "writes DIR/report.html and DIR/metrics.json")
    demo.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key for every strategy (repeatable)")
    demo.add_argument("--strategies", metavar="NAME,NAME", help="the strategies compared, any of fed.strategy's "
                      "(default: local,fedavg,fedcc-kmeans,fedcc-maximin)")
    show = sub.add_parser("config", help="print the resolved config as TOML, or with --keys every key")
    show.add_argument("config", nargs="?", help="TOML file (default: the built-in synthetic setup)")
    show.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    show.add_argument("--keys", action="store_true", help="the table of keys (Markdown): default, allowed, meaning")
    report = sub.add_parser("report", help="write an HTML report comparing finished runs")
    report.add_argument("runs", nargs="+", help="run directories (each with metrics.json)")
    report.add_argument("--out", default="report.html", help="output file (default: report.html)")
    sim = sub.add_parser("flower-sim", help="run a config on Flower's simulation engine, one virtual SuperNode per "
                                            "site (needs fussfast[simulation]); writes DIR/metrics.json")
    sim.add_argument("config", nargs="?", help="TOML file (default: the built-in synthetic setup)")
    sim.add_argument("--out", default="runs/flower-sim", help="output directory (default: runs/flower-sim)")
    sim.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    sim.add_argument("--supernodes", type=int, default=0, help="virtual SuperNodes (default: one per site)")
    sim.add_argument("--cpus-per-site", type=float, default=1.0, help="Ray CPUs per ClientApp (default: 1)")
    args = parser.parse_args(argv)

    if args.command == "info":
        from fussfast._info import runtime_report

        print(runtime_report())
        return 0
    from fussfast.config import ConfigError

    try:
        if args.command == "run":
            return _run(args)
        if args.command == "flower-sim":
            from fussfast.flower.simulation import simulate

            n = simulate(args.config, args.set, args.out, supernodes=args.supernodes, cpus_per_site=args.cpus_per_site)
            print(f"{n} virtual sites; metrics in {args.out}/metrics.json")
        if args.command == "config":
            from fussfast.config import keys_markdown, load_config, to_toml

            print(keys_markdown() if args.keys else to_toml(load_config(args.config, args.set)))
        if args.command == "demo":
            from fussfast.config import load_config
            from fussfast.demo import STRATEGIES
            from fussfast.demo import demo as run_demo

            strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip()) if args.strategies \
                else STRATEGIES
            for name in strategies:  # bad overrides and names fail before any work
                load_config(None, [*args.set, f'fed.strategy="{name}"'])
            summary = run_demo(args.out, args.set, strategies)
            for name, s in summary["strategies"].items():
                g = s["final"]["global"]
                print(f"{name:>14}: global mIoU {g['miou']:.1f}, Dice {g['dice']:.1f}")
            print(f"report: {args.out}/report.html ({summary['total_s']:.0f} s)")
        elif args.command == "report":
            from pathlib import Path

            from fussfast.report import write_report

            print(write_report({Path(d).name: d for d in args.runs}, args.out))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of our output stopped (| head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        if args.debug or os.environ.get("FUSSFAST_DEBUG") == "1":
            raise
        if isinstance(e, USER_ERRORS):
            kind = "" if isinstance(e, (ConfigError, OSError, RuntimeError)) else f"{type(e).__name__}: "
            print(f"fussfast {args.command}: {kind}{_one_line(e)}", file=sys.stderr)
            return 2
        print(f"fussfast {args.command}: internal error {type(e).__name__}: {_one_line(e)}\n"
              "run again with --debug for the traceback, and report it", file=sys.stderr)
        return 1
    return 0


def _one_line(e: BaseException) -> str:
    text = str(e) if not isinstance(e, KeyError) else str(e.args[0] if e.args else e)
    return " ".join(text.split()) or type(e).__name__


def _run(args) -> int:
    from fussfast.config import load_config
    from fussfast.run import run as run_config

    out = args.out or args.resume or "runs/latest"
    if args.resume and args.out and args.out != args.resume:
        raise ValueError("--resume continues in its own directory; leave out --out")
    metrics = run_config(load_config(args.config, args.set), out, resume=bool(args.resume))
    final = metrics["final"]["global"]
    crf = final.get("crf")
    crf = f", with the dense CRF mIoU {crf['miou']:.1f}, Dice {crf['dice']:.1f}" if crf else ""
    print(f"final global mIoU {final['miou']:.1f}, Dice {final['dice']:.1f}, accuracy {final['acc']:.1f}{crf} "
          f"(majority-class baseline mIoU {metrics['baseline']['majority']['miou']:.1f}); "
          f"metrics in {out}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
