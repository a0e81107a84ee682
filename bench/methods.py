"""The comparisons of the issue-17 methods on the built-in data, each ``fussfast run`` with the
same seed, data, rounds and local steps; only the ``--set`` overrides of a variant differ.

``strategies``: FedSeg's Table 1(b) setting (``examples/fedseg.toml``: six sites, one annotated
class each, three sampled per round) with BackCE: FedAvg, FedProx, FedDyn, SCAFFOLD, MOON, over
several seeds.

``personalize``: full-head FedAvg against pFedSAM-style personalization (LoRA on the backbone,
the local mixture of experts with two-phase distillation, the head's MLP kept local): bytes per
round, per-site and global mIoU/Dice, and the round's wall time (what LoRA's uncached blocks cost).

    python bench/methods.py strategies [--seeds 0,1,2] [--rounds 6] [--out DIR]
    python bench/methods.py personalize [--task unsupervised|supervised] [--rounds 5] [--out DIR]

Each prints a markdown table, writes bench/results/<cpu>_<comparison>.json and, under ``--out``
(default: a temporary folder), the runs and their HTML report (``fussfast report``).
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
from fussfast.report import write_report  # noqa: E402
from fussfast.run import run  # noqa: E402

FEDSEG = ROOT.parent / "examples" / "fedseg.toml"
STRATEGIES = ("fedavg", "fedprox", "feddyn", "scaffold", "moon")
LORA = ["model.lora_rank=4", "model.lora_blocks=4"]
MOE = ["model.moe_experts=3", "fed.personal_steps=20", "fed.distill_weight=1.0"]
# head layers kept on the sites: the unsupervised head's MLP branch; the supervised head's
# projection (which BackCE alone never reads) and, apart, its trunk and projection too (only its
# two linear classifiers then travel)
LOCAL = {"unsupervised": ['["head.mlp"]'], "supervised": ['["head.proj"]', '["head.trunk", "head.proj"]']}


def personalized(task: str) -> dict[str, list[str]]:
    variants = {"fedavg, full head": [], "LoRA, full head shared": LORA, "L-MoE + distillation (two-phase)": MOE}
    for local in LOCAL[task]:
        variants[f"LoRA + L-MoE + distillation, {local} local"] = [*LORA, *MOE, f"fed.local_params={local}"]
    return variants


def measure(config_file, overrides: list[str], out: Path) -> dict:
    metrics = run(load_config(config_file, overrides), out)
    sent = metrics["rounds"][-1]["bytes"]
    return {"overrides": overrides, "global": metrics["final"]["global"], "sites": metrics["final"]["clients"],
            "loss": statistics.mean(metrics["rounds"][-1]["loss"].values()),
            "bytes_per_site_round": {"down": max(b["down"] for b in sent.values()),
                                     "up": max(b["up"] for b in sent.values())},
            "round_seconds": statistics.median(r["seconds"] for r in metrics["rounds"])}


def strategies(args, out: Path) -> dict:
    seeds = [int(s) for s in args.seeds.split(",")]
    base = ['task="supervised"', 'loss.objective="backce"', f"fed.rounds={args.rounds}", f'cache_dir="{out}/cache"']
    runs = {}
    for name in STRATEGIES:
        for seed in seeds:
            label = f"{name} seed {seed}"
            runs[label] = measure(FEDSEG, [*base, f'fed.strategy="{name}"', f"seed={seed}"], out / label.replace(" ", "-"))
            print(f"{label}: {runs[label]['global']}", file=sys.stderr)
    write_report({label: out / label.replace(" ", "-") for label in runs if label.endswith(f"seed {seeds[0]}")},
                 out / "report.html", title="FedAvg vs FedProx vs FedDyn vs SCAFFOLD vs MOON, BackCE, class-erased")
    lines = ["| strategy | global mIoU, seeds " + " / ".join(map(str, seeds)) + " | mean | global Dice, mean | "
             f"per-site mIoU, seed {seeds[0]} | task loss, last round, seed {seeds[0]} | bytes per sampled site and "
             "round, each way |", "|---|---|---|---|---|---|---|"]
    for name in STRATEGIES:
        rs = [runs[f"{name} seed {s}"] for s in seeds]
        first = rs[0]
        mious = " / ".join(f"{r['global']['miou']:.1f}" for r in rs)
        sites = " ".join(f"{v['miou']:.1f}" for v in first["sites"].values())
        lines.append(f"| `{name}` | {mious} | {statistics.mean(r['global']['miou'] for r in rs):.1f} | "
                     f"{statistics.mean(r['global']['dice'] for r in rs):.1f} | {sites} | {first['loss']:.3f} | "
                     f"{first['bytes_per_site_round']['up']:,} |")
    return {"config": str(FEDSEG.relative_to(ROOT.parent)), "base": base, "seeds": seeds, "runs": runs,
            "table": "\n".join(lines)}


def personalize(args, out: Path) -> dict:
    base = [f'task="{args.task}"', 'fed.strategy="fedavg"', f"fed.rounds={args.rounds}", "seed=0",
            f'cache_dir="{out}/cache"']
    if args.task == "supervised":
        base += ['loss.objective="backce"', 'data.split="class-erased"']
    runs = {}
    for name, extra in personalized(args.task).items():
        runs[name] = measure(None, [*base, *extra], out / _folder(name))
        print(f"{name}: {runs[name]['global']}", file=sys.stderr)
    write_report({name: out / _folder(name) for name in runs}, out / "report.html",
                 title=f"Full-head FedAvg vs pFedSAM-style personalization ({args.task})")
    sites = sorted(next(iter(runs.values()))["sites"])
    head = ["variant", "KB per site and round (up = down)", "round s", "global mIoU / Dice",
            *[f"{s} mIoU / Dice" for s in sites]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, v in runs.items():
        cells = [name, f"{v['bytes_per_site_round']['up'] / 1024:.0f}", f"{v['round_seconds']:.1f}",
                 f"{v['global']['miou']:.1f} / {v['global']['dice']:.1f}",
                 *[f"{v['sites'][s]['miou']:.1f} / {v['sites'][s]['dice']:.1f}" for s in sites]]
        lines.append("| " + " | ".join(cells) + " |")
    return {"task": args.task, "base": base, "runs": runs, "table": "\n".join(lines)}


def _folder(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="comparison", required=True)
    s = sub.add_parser("strategies")
    s.add_argument("--seeds", default="0,1,2")
    s.add_argument("--rounds", type=int, default=6)
    p = sub.add_parser("personalize")
    p.add_argument("--task", choices=("unsupervised", "supervised"), default="unsupervised")
    p.add_argument("--rounds", type=int, default=5)
    for q in (s, p):
        q.add_argument("--out", help="where the runs and their report go (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        result = (strategies if args.comparison == "strategies" else personalize)(args, out)
        name = args.comparison + (f"_{args.task}" if args.comparison == "personalize" else "_supervised")
        (ROOT / "results" / f"{cpu_name()}_{name}.json").write_text(json.dumps({"cpu": cpu_name(), **result},
                                                                               indent=1))
        print(result["table"])
        if args.out:
            print(f"report: {out / 'report.html'}")


if __name__ == "__main__":
    main()
