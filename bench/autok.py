"""Automatic class count (``fed.k_auto``) on the built-in data: for each true class count,
FedCC-kMeans with auto-K (``fed.k_min`` 2, ``fed.k_max`` twice the truth) against the same run
told the true K. Default sizes, the same seed; the estimate per round, the final estimate's
error and the global mIoU.

    python bench/autok.py [--classes 6,12] [--rounds 5] [--out DIR]

Prints a markdown table, writes bench/results/<cpu>_autok.json and, under ``--out`` (default: a
temporary folder), the runs and their HTML report (``fussfast report``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from scale import cpu_name  # noqa: E402

from fussfast.config import load_config  # noqa: E402
from fussfast.report import write_report  # noqa: E402
from fussfast.run import run  # noqa: E402


def measure(overrides: list[str], out: Path) -> dict:
    metrics = run(load_config(None, overrides), out)
    return {"overrides": overrides, "k_estimate": [r.get("k_estimate") for r in metrics["rounds"]],
            "k_criterion": [r.get("k_criterion") for r in metrics["rounds"]], "global": metrics["final"]["global"],
            "seconds": metrics["timings"]["total_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="6,12")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fussfast-autok-"))
    base = ['fed.strategy="fedcc-kmeans"', f"fed.rounds={args.rounds}", f'cache_dir="{out}/cache"']
    runs = {}
    for k in (int(c) for c in args.classes.split(",")):
        for label, extra in ((f"K={k}, auto-K [2, {2 * k}]", ["fed.k_auto=true", "fed.k_min=2", f"fed.k_max={2 * k}"]),
                             (f"K={k}, told K", [])):
            runs[label] = {"true_k": k, **measure([*base, f"data.num_classes={k}", *extra],
                                                  out / label.replace(" ", "").replace(",", "_"))}
            print(f"{label}: {runs[label]['k_estimate']} mIoU {runs[label]['global']['miou']:.1f}", file=sys.stderr)
    write_report({label: out / label.replace(" ", "").replace(",", "_") for label in runs}, out / "report.html",
                 title="Automatic class count: auto-K against the true K")
    lines = ["| run | K̂ per round | final K̂ − K | global mIoU | global Dice | wall s |", "|---|---|---|---|---|---|"]
    for label, r in runs.items():
        auto = r["k_estimate"][-1] is not None
        lines.append(f"| {label} | {' '.join(map(str, r['k_estimate'])) if auto else '-'} | "
                     f"{r['k_estimate'][-1] - r['true_k'] if auto else '-'} | {r['global']['miou']:.1f} | "
                     f"{r['global']['dice']:.1f} | {r['seconds']:.0f} |")
    print("\n".join(lines))
    path = ROOT / "results" / f"{cpu_name()}_autok.json"
    path.write_text(json.dumps({"command": " ".join(sys.argv), "rounds": args.rounds, "runs": runs}, indent=1) + "\n")
    print(f"wrote {path}; runs and report.html in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
