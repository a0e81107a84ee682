"""Turn a pytest-benchmark JSON into the committed results: a compact JSON and a Markdown table
per op, with the fused op's speed-up over each baseline measured in the same run.

    python bench/report.py out.json bench/results/<name>
"""

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(src: str, dst: str) -> None:
    raw = json.loads(Path(src).read_text())
    groups = defaultdict(dict)
    for b in raw["benchmarks"]:
        i = b["extra_info"]
        key = (i["op"], i["device"], i["case"], i["dtype"], i["mode"])
        groups[key][i["method"]] = {"median_ms": b["stats"]["median"] * 1e3, "peak_mb": i.get("peak_mb"),
                                    "min_bytes": i.get("min_bytes"), "threads": i.get("threads"),
                                    "inertia": i.get("inertia")}
    rows = []
    for (op, device, case, dtype, mode), m in sorted(groups.items()):
        if "fused" not in m:
            continue
        fused = m["fused"]["median_ms"]
        row = {"op": op, "device": device, "case": case, "dtype": dtype, "mode": mode,
               "median_ms": {k: v["median_ms"] for k, v in m.items()},
               "speedup": {k: v["median_ms"] / fused for k, v in m.items() if k != "fused"},
               "peak_mb": {k: v["peak_mb"] for k, v in m.items() if v["peak_mb"] is not None} or None,
               "inertia": {k: v["inertia"] for k, v in m.items() if v["inertia"] is not None} or None,
               "threads": m["fused"]["threads"]}
        if m["fused"]["min_bytes"]:
            row["fused_GBps"] = m["fused"]["min_bytes"] / (fused / 1e3) / 1e9
        rows.append(row)
    cpu = raw.get("machine_info", {}).get("cpu", {}).get("brand_raw")
    out = {"cpu": cpu, "datetime": raw.get("datetime"), "torch": _torch_version(), "rows": rows}
    Path(dst + ".json").write_text(json.dumps(out, indent=1) + "\n")

    lines = []
    for op in sorted({r["op"] for r in rows}):
        ops = [r for r in rows if r["op"] == op]
        baselines = sorted({k for r in ops for k in r["speedup"]})
        lines += [f"## {op} ({ops[0]['device']}, {ops[0]['threads']} threads)", "",
                  "Median ms; `x` = baseline time / fused time, measured in the same run." +
                  (" GB/s = fewest bytes the op must move / fused time." if "fused_GBps" in ops[0] else ""), "",
                  "| case | dtype | pass | fused | " + " | ".join(baselines) + " | " +
                  " | ".join(f"vs {b}" for b in baselines) + (" | GB/s" if "fused_GBps" in ops[0] else "") +
                  (" | peak MiB (fused / " + " / ".join(baselines) + ")" if ops[0]["peak_mb"] else "") +
                  (" | inertia (fused / " + " / ".join(baselines) + ")" if ops[0]["inertia"] else "") + " |",
                  "|" + "---|" * (4 + 2 * len(baselines) + ("fused_GBps" in ops[0]) + bool(ops[0]["peak_mb"])
                                  + bool(ops[0]["inertia"]))]
        for r in ops:
            t = r["median_ms"]
            cells = [r["case"], r["dtype"], r["mode"].replace("_", "+"), f"{t['fused']:.3f}"]
            cells += [f"{t[b]:.3f}" if b in t else "-" for b in baselines]
            cells += [f"{r['speedup'][b]:.2f}x" if b in r["speedup"] else "-" for b in baselines]
            if "fused_GBps" in r:
                cells.append(f"{r['fused_GBps']:.1f}")
            if r["peak_mb"]:
                cells.append(" / ".join(f"{r['peak_mb'].get(k, float('nan')):.0f}" for k in ["fused"] + baselines))
            if r["inertia"]:
                cells.append(" / ".join(f"{r['inertia'].get(k, float('nan')):.6g}" for k in ["fused"] + baselines))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    header = [f"# Benchmarks: {out['cpu']}, torch {out['torch']}, {out['datetime']}", ""]
    Path(dst + ".md").write_text("\n".join(header + lines))
    print("\n".join(header + lines))


def _torch_version():
    try:
        import torch
        return torch.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main(*sys.argv[1:])
