"""``fussfast demo``: the FUSS comparison on the built-in synthetic label-skewed data, with no
files or network: ``local``, ``fedavg``, ``fedcc-kmeans`` and ``fedcc-maximin`` (or the
``strategies`` given) from the same cached features, then ``DIR/report.html`` and
``DIR/metrics.json``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fussfast.config import load_config
from fussfast.report import write_report
from fussfast.run import run

STRATEGIES = ("local", "fedavg", "fedcc-kmeans", "fedcc-maximin")


def demo(out_dir: str | Path, overrides: list[str] = (), strategies: tuple[str, ...] = STRATEGIES) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, t0 = {}, time.perf_counter()
    for i, name in enumerate(strategies):
        print(f"[{i + 1}/{len(strategies)}] {name}", file=sys.stderr)
        config = load_config(None, [f'fed.strategy="{name}"', *overrides])
        results[name] = run(config, out_dir / name)
    summary = {"strategies": {name: {"final": m["final"], "rounds": m["rounds"], "timings": m["timings"]}
                              for name, m in results.items()},
               "baseline": next(iter(results.values()))["baseline"],
               "config": {k: v for k, v in next(iter(results.values()))["config"].items() if k != "fed"},
               "total_s": time.perf_counter() - t0}
    tmp = out_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    tmp.replace(out_dir / "metrics.json")
    title = ("local vs FedAvg vs FedCC" if tuple(strategies) == STRATEGIES else " vs ".join(strategies))
    write_report({name: out_dir / name for name in strategies}, out_dir / "report.html",
                 title=f"fussfast demo: {title} on the built-in synthetic sites")
    return summary
