"""Turn a pytest-benchmark JSON into the committed results: a compact JSON and a Markdown table
per op, with every peer's median time and its ratio to fussfast's, measured in the same run
(ratio = peer time / fussfast time: > 1 means fussfast is faster).

    python bench/report.py out.json [bench/results/<name>]

Without a destination the name comes from the machine the benchmarks ran on (CPU model, ISA,
threads, fussfast's CPU path; see _common.results_name). bench/run_cpu.py calls this.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

from _common import results_name

RESULTS = Path(__file__).parent / "results"
# Skips that say nothing about a peer: other devices, and the smoke-run subset.
DULL_SKIPS = ("needs a CUDA device", "emulator", "smoke runs", "scikit-learn runs on the CPU",
              "the GPU comparison")


def rows_of(raw: dict) -> list[dict]:
    groups = defaultdict(dict)
    for b in raw["benchmarks"]:
        i = b["extra_info"]
        key = (i["op"], i["device"], i["case"], i["dtype"], i["mode"])
        groups[key][i["method"]] = {"median_ms": b["stats"]["median"] * 1e3, "min_ms": b["stats"]["min"] * 1e3,
                                    "rounds": b["stats"]["rounds"], "peak_mb": i.get("peak_mb"),
                                    "min_bytes": i.get("min_bytes"), "threads": i.get("threads"),
                                    "inertia": i.get("inertia")}
    rows = []
    for (op, device, case, dtype, mode), m in sorted(groups.items()):
        if "fused" not in m:
            continue
        fused = m["fused"]["median_ms"]
        row = {"op": op, "device": device, "case": case, "dtype": dtype, "mode": mode,
               "median_ms": {k: v["median_ms"] for k, v in m.items()},
               "min_ms": {k: v["min_ms"] for k, v in m.items()}, "rounds": {k: v["rounds"] for k, v in m.items()},
               "ratio": {k: v["median_ms"] / fused for k, v in m.items() if k != "fused"},
               "peak_mb": {k: v["peak_mb"] for k, v in m.items() if v["peak_mb"] is not None} or None,
               "inertia": {k: v["inertia"] for k, v in m.items() if v["inertia"] is not None} or None,
               "threads": m["fused"]["threads"]}
        if m["fused"]["min_bytes"]:
            row["fused_GBps"] = m["fused"]["min_bytes"] / (fused / 1e3) / 1e9
        rows.append(row)
    return rows


def machine_of(raw: dict) -> dict:
    """The machine facts recorded with the benchmarks (_common.machine); one machine per file."""
    seen = {json.dumps(b["extra_info"].get("machine"), sort_keys=True) for b in raw["benchmarks"]}
    if len(seen) > 1:
        raise SystemExit("report.py: these benchmarks ran on different machines or settings; report them apart")
    found = json.loads(seen.pop()) if seen else None
    if found:
        return found
    # Older runs: only pytest-benchmark's own machine_info.
    cpu = raw.get("machine_info", {}).get("cpu", {})
    return {"cpu": cpu.get("brand_raw", "unknown"), "isa_flags": [], "fussfast_cpu_isa": "n/a",
            "torch_cpu_capability": None, "threads": None, "torch": None, "env": {}}


def header(m: dict, when: str | None) -> list[str]:
    env = ", ".join(f"{k}={v}" for k, v in m["env"].items()) or "none set"
    return [f"# Benchmarks: {m['cpu']}", "",
            f"- ISA flags: {' '.join(m['isa_flags']) or 'unknown'}",
            f"- fussfast CPU path: {m['fussfast_cpu_isa']}; torch {m['torch']}, its CPU capability "
            f"{m['torch_cpu_capability']}; {m['threads']} threads",
            f"- environment: {env}", f"- run: {when}", ""]


def table(ops: list[dict]) -> list[str]:
    peers = sorted({k for r in ops for k in r["ratio"]})
    gbps, peak, inertia = "fused_GBps" in ops[0], bool(ops[0]["peak_mb"]), bool(ops[0]["inertia"])
    lines = [f"## {ops[0]['op']} ({ops[0]['device']}, {ops[0]['threads']} threads)", "",
             "Median ms; `x` = peer time / fussfast time, same run (> 1: fussfast faster)." +
             (" GB/s = fewest bytes the op must move / fussfast's time." if gbps else ""), "",
             "| case | dtype | pass | fussfast | " + " | ".join(peers) + " | " +
             " | ".join(f"{p}/fussfast" for p in peers) + (" | GB/s" if gbps else "") +
             (" | peak MiB (fussfast / " + " / ".join(peers) + ")" if peak else "") +
             (" | inertia (fussfast / " + " / ".join(peers) + ")" if inertia else "") + " |",
             "|" + "---|" * (4 + 2 * len(peers) + gbps + peak + inertia)]
    for r in ops:
        t = r["median_ms"]
        cells = [r["case"], r["dtype"], r["mode"].replace("_", "+"), f"{t['fused']:.3f}"]
        cells += [f"{t[p]:.3f}" if p in t else "-" for p in peers]
        cells += [f"{r['ratio'][p]:.2f}x" if p in r["ratio"] else "-" for p in peers]
        if gbps:
            cells.append(f"{r['fused_GBps']:.1f}")
        if peak:
            cells.append(" / ".join(f"{r['peak_mb'].get(k, float('nan')):.0f}" for k in ["fused"] + peers))
        if inertia:
            cells.append(" / ".join(f"{r['inertia'].get(k, float('nan')):.6g}" for k in ["fused"] + peers))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def behind(rows: list[dict]) -> list[str]:
    """The summary: every comparison in which fussfast is slower than a peer (ratio < 1)."""
    slow = [f"- {r['op']} {r['case']} {r['dtype']} {r['mode'].replace('_', '+')}: " +
            ", ".join(f"{p} {x:.2f}x" for p, x in sorted(r["ratio"].items()) if x < 1.0)
            for r in rows if min(r["ratio"].values(), default=1.0) < 1.0]
    total = sum(len(r["ratio"]) for r in rows)
    n = sum(x < 1.0 for r in rows for x in r["ratio"].values())
    return [f"## Where fussfast is behind (< 1.0x): {n} of {total} comparisons", ""] + (slow or ["- none"]) + [""]


def skipped(raw: dict) -> list[str]:
    """Peers that did not run (not installed, torch.compile failing), as bench/run_cpu.py saw them."""
    counts = defaultdict(int)
    for s in raw.get("fussfast_skipped", []):
        if not any(d in s["reason"] for d in DULL_SKIPS):
            counts[s["reason"]] += 1
    if not counts:
        return []
    return ["## Skipped", ""] + [f"- {reason} ({n} cases)" for reason, n in sorted(counts.items())] + [""]


def main(src: str, dst: str | None = None) -> Path:
    raw = json.loads(Path(src).read_text())
    rows, m = rows_of(raw), machine_of(raw)
    dst = Path(dst) if dst else RESULTS / results_name(m)
    out = {"machine": m, "datetime": raw.get("datetime"), "rows": rows,
           "skipped": sorted({s["reason"] for s in raw.get("fussfast_skipped", [])
                              if not any(d in s["reason"] for d in DULL_SKIPS)})}
    dst.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{dst}.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = header(m, raw.get("datetime")) + behind(rows)
    for op in sorted({r["op"] for r in rows}):
        lines += table([r for r in rows if r["op"] == op])
    lines += skipped(raw)
    Path(f"{dst}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {dst}.json and {dst}.md")
    return dst


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
