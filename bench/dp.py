"""The privacy-utility curve of differentially private FedCC on the built-in data: global mIoU and
Dice of FedCC-kMeans and FedCC-Maximin against fed.dp_epsilon (no DP, then each epsilon), every
run ``fussfast run`` with the same seed, data, rounds and local steps (the defaults otherwise);
only ``fed.strategy`` and ``fed.dp_epsilon`` differ.

    python bench/dp.py [--epsilons 16,8,4,2,1] [--rounds 5] [--out DIR]

Prints a markdown table, writes bench/results/<cpu>_dp.json and, under ``--out`` (default: a
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

METHODS = ("fedcc-kmeans", "fedcc-maximin")


def curve(args, out: Path) -> dict:
    base = [f"fed.rounds={args.rounds}", "seed=0", f'cache_dir="{out}/cache"']
    epsilons = [0.0] + [float(e) for e in args.epsilons.split(",")]  # 0: no DP
    runs = {}
    for method in METHODS:
        for eps in epsilons:
            label = f"{method} eps {eps:g}" if eps else f"{method} no DP"
            overrides = [*base, f'fed.strategy="{method}"', f"fed.dp_epsilon={eps}"]
            metrics = run(load_config(None, overrides), out / label.replace(" ", "-"))
            last = metrics["rounds"][-1]
            runs[label] = {"overrides": overrides, "global": metrics["final"]["global"],
                           "dp": [r["dp"] for r in metrics["rounds"] if "dp" in r],
                           "centroid_shift": last.get("centroid_shift")}
            print(f"{label}: mIoU {runs[label]['global']['miou']:.1f}", file=sys.stderr)
    write_report({label: out / label.replace(" ", "-") for label in runs}, out / "report.html",
                 title="Differentially private FedCC: mIoU against epsilon")
    head = ["epsilon (delta 1e-5)", *[f"{m} mIoU / Dice" for m in METHODS], "sigma per coordinate"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for eps in epsilons:
        cells = [f"{eps:g}" if eps else "∞ (no DP)"]
        for m in METHODS:
            g = runs[f"{m} eps {eps:g}" if eps else f"{m} no DP"]["global"]
            cells.append(f"{g['miou']:.1f} / {g['dice']:.1f}")
        dp = runs[f"{METHODS[0]} eps {eps:g}"]["dp"] if eps else []
        cells.append(f"{dp[-1]['sigma']:.3g}" if dp else "0")
        lines.append("| " + " | ".join(cells) + " |")
    return {"base": base, "epsilons": epsilons, "runs": runs, "table": "\n".join(lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epsilons", default="16,8,4,2,1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="where the runs and their report go (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        result = curve(args, out)
        (ROOT / "results" / f"{cpu_name()}_dp.json").write_text(json.dumps({"cpu": cpu_name(), **result}, indent=1))
        print(result["table"])
        if args.out:
            print(f"report: {out / 'report.html'}")


if __name__ == "__main__":
    main()
