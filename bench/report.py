"""Turn a pytest-benchmark JSON into the committed results: a compact JSON and a Markdown table
with the fused op's speed-up over the better baseline and its effective bandwidth.

    python bench/report.py out.json bench/results/region_pool_cpu
"""

import json
import platform
import sys
from collections import defaultdict
from pathlib import Path


def main(src: str, dst: str) -> None:
    raw = json.loads(Path(src).read_text())
    groups = defaultdict(dict)
    for b in raw["benchmarks"]:
        info = b["extra_info"]
        key = (info["device"], f"{info['H']}x{info['W']}", info["D"], info["K"], info["mode"])
        groups[key][info["method"]] = {"median_s": b["stats"]["median"], "min_bytes": info["min_bytes"]}

    rows = []
    for (device, size, D, K, mode), m in sorted(groups.items()):
        fused = m["fused"]["median_s"]
        baselines = {k: v["median_s"] for k, v in m.items() if k != "fused"}
        best = min(baselines, key=baselines.get)
        rows.append({
            "device": device, "labels": size, "D": D, "K": K, "mode": mode,
            "median_ms": {k: v["median_s"] * 1e3 for k, v in m.items()},
            "speedup_vs_best_baseline": baselines[best] / fused, "best_baseline": best,
            "fused_GBps": m["fused"]["min_bytes"] / fused / 1e9,
        })
    machine = raw.get("machine_info", {})
    out = {"op": "region_pool", "B": 8, "dtype": "float32", "cpu": machine.get("cpu", {}).get("brand_raw"),
           "python": platform.python_version(), "datetime": raw.get("datetime"), "rows": rows}
    Path(dst + ".json").write_text(json.dumps(out, indent=1) + "\n")

    lines = [f"# region_pool, B=8, float32, {rows[0]['device'] if rows else ''}", "",
             f"CPU: {out['cpu']}. Median times in ms; speed-up = better baseline / fused; "
             "GB/s = the fewest bytes the op must move / fused time.", "",
             "| labels | D | K | pass | fused | scatter_add | one-hot einsum | speed-up | fused GB/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["median_ms"]
        lines.append(f"| {r['labels']} | {r['D']} | {r['K']} | {r['mode'].replace('_', '+')} | "
                     f"{t['fused']:.3f} | {t['scatter_add']:.3f} | {t['one_hot_einsum']:.3f} | "
                     f"{r['speedup_vs_best_baseline']:.1f}x | {r['fused_GBps']:.1f} |")
    Path(dst + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
