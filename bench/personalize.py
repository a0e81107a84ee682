"""Full-head FedAvg against pFedSAM-style personalization on the built-in data: bytes per round,
per-site and global scores, and the wall time of a round (what LoRA's uncached blocks cost).

Every variant is ``fussfast run`` with the same seed, data, rounds and local steps; only the
``--set`` overrides of ``VARIANTS`` differ. Standalone:

    python bench/personalize.py [--task unsupervised|supervised] [--rounds 5] [--quick]

prints a markdown table and writes bench/results/<cpu>_personalize_<task>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from scale import cpu_name  # noqa: E402

from fussfast.config import load_config  # noqa: E402
from fussfast.run import run  # noqa: E402

LORA = ["model.lora_rank=4", "model.lora_blocks=4"]
MOE = ["model.moe_experts=3", "fed.personal_steps=20", "fed.distill_weight=1.0"]
VARIANTS = {
    "fedavg, full head": [],
    "LoRA, full head shared": LORA,
    "L-MoE + distillation (two-phase)": MOE,
    "LoRA + L-MoE + distillation, head.mlp local": [*LORA, *MOE, 'fed.local_params=["head.mlp"]'],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("unsupervised", "supervised"), default="unsupervised")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    args = parser.parse_args()
    base = [f'task="{args.task}"', 'fed.strategy="fedavg"', f"fed.rounds={args.rounds}", "seed=0"]
    if args.task == "supervised":
        base += ['loss.objective="backce"', 'data.split="class-erased"']
    if args.quick:
        base += ["data.images_per_site=8", "data.eval_images=4", "data.image_size=32", "data.eval_size=32",
                 "train.local_steps=2", "fed.rounds=1"]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in VARIANTS.items():
            if args.quick:
                extra = [e.replace("personal_steps=20", "personal_steps=2") for e in extra]
            config = load_config(None, [*base, *extra, f'cache_dir="{tmp}/cache"'])
            metrics = run(config, Path(tmp) / name.replace(" ", "_").replace(",", "").replace("/", "_"))
            final = metrics["final"]
            sent = metrics["rounds"][-1]["bytes"]
            rows[name] = {
                "overrides": extra,
                "bytes_per_site_round": {"down": max(b["down"] for b in sent.values()),
                                         "up": max(b["up"] for b in sent.values())},
                "global": final["global"],
                "sites": final["clients"],
                "round_seconds": statistics.median(r["seconds"] for r in metrics["rounds"]),
            }
            print(f"{name}: {rows[name]['global']}", file=sys.stderr)
    report = {"cpu": cpu_name(), "task": args.task, "base": base, "variants": rows}
    if not args.quick:
        out = ROOT / "results" / f"{cpu_name()}_personalize_{args.task}.json"
        out.write_text(json.dumps(report, indent=1))
    print(markdown(report))


def markdown(report: dict) -> str:
    variants = report["variants"]
    sites = sorted(next(iter(variants.values()))["sites"])
    metric = ["miou", "dice"] if "dice" in next(iter(variants.values()))["global"] else ["miou"]
    head = ["variant", "KB per site and round (up = down)", "round s",
            *[f"global {m}" for m in metric], *[f"{s} {m}" for s in sites for m in metric]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, v in variants.items():
        cells = [name, f"{v['bytes_per_site_round']['up'] / 1024:.0f}", f"{v['round_seconds']:.1f}",
                 *[f"{v['global'][m]:.1f}" for m in metric],
                 *[f"{v['sites'][s][m]:.1f}" for s in sites for m in metric]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
