"""Round time and peak memory as a federation grows: sites (3, 30, 152) and images per site
(8, 32, 128, at 10 sites), FedSeg's class-erased split on the built-in data at a small image size, 5 sites
sampled per round, in one process (``fussfast run``) and on Flower's simulation engine
(``fussfast flower-sim``, Ray).

Every run is a fresh process; the feature cache is filled first by a run of its own, so the
figures are of warm runs. Peak memory is the largest sum of the resident sets of the run's whole
process tree (Ray's raylet, GCS and workers included), sampled every 0.1 s; the round time is the
median gap between consecutive checkpoint writes (one per round). Standalone:

    python bench/scale.py [--quick] [--engines inprocess,flower]

prints a table and writes bench/results/<cpu>_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
BASE = ['task="supervised"', 'data.split="class-erased"', "data.num_classes=19", "data.classes_per_site=1",
        "data.image_size=32", "data.eval_size=32", "data.eval_images=16", 'fed.strategy="fedavg"',
        "fed.eval_every=0", "train.local_steps=5", "train.batch_size=8", 'model.precision="fp32"']


def cpu_name() -> str:
    try:
        model = next(line.split(":", 1)[1] for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "cpu"
    words = re.sub(r"\(.*?\)|CPU|@.*", " ", model).lower().split()
    return "cpu_" + "_".join(words[:3]) + f"_{os.cpu_count()}core"


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of ``proc`` and every descendant (Ray's processes are children of the driver)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def watch(cmd: list[str], out: Path, env: dict) -> dict:
    """Runs ``cmd``; peak tree RSS, wall time and the times at which the checkpoint was rewritten."""
    state = out / "checkpoint" / "state.json"
    start, peak, writes, last = time.perf_counter(), 0, [], None
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        try:
            stamp = state.stat().st_mtime_ns
        except OSError:
            stamp = None
        if stamp is not None and stamp != last:
            writes.append(time.perf_counter())
            last = stamp
        time.sleep(0.1)
    err = proc.stderr.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{err[-3000:]}")
    gaps = [b - a for a, b in zip(writes, writes[1:])]
    return {"wall_s": time.perf_counter() - start, "peak_rss_mb": peak / 2**20,
            "round_s": statistics.median(gaps) if gaps else None, "rounds_timed": len(gaps)}


def one(engine: str, sites: int, images: int, rounds: int, cache: Path, work: Path) -> dict:
    sets = BASE + [f"data.sites={sites}", f"data.images_per_site={images}", f"fed.rounds={rounds}",
                   f"fed.clients_per_round={min(5, sites)}", f'cache_dir="{cache}"']
    out = work / f"{engine}-{sites}x{images}"
    command = "run" if engine == "inprocess" else "flower-sim"
    cmd = [sys.executable, "-m", "fussfast", command, "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_DEDUP_LOGS": "0"}
    result = watch(cmd, out, env)
    metrics = json.loads((out / "metrics.json").read_text())
    trained = {n for r in metrics["rounds"] for n in r.get("sampled", [])}
    return {"engine": engine, "sites": sites, "images_per_site": images, "sampled_per_round": min(5, sites),
            "rounds": rounds, "sites_trained": len(trained), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 and 10 sites, 8 and 32 images: a smoke run")
    parser.add_argument("--engines", default="inprocess,flower")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", help="feature cache (default: a temporary directory)")
    parser.add_argument("--cases", help="SITESxIMAGES,... (default: the sweep); rows of other cases already in "
                                        "the results file are kept")
    args = parser.parse_args()
    site_counts, image_counts = ((3, 10), (8, 32)) if args.quick else ((3, 10, 30, 152), (8, 32, 128))
    cases = [(s, 8) for s in site_counts] + [(10, i) for i in image_counts if i != 8]
    if args.cases:
        cases = [tuple(int(v) for v in c.split("x")) for c in args.cases.split(",")]
    engines = args.engines.split(",")
    path = ROOT / "bench" / "results" / f"{cpu_name()}_scale.json"
    path.parent.mkdir(exist_ok=True)
    old = json.loads(path.read_text())["rows"] if args.cases and path.is_file() else []
    rows = [r for r in old if (r["sites"], r["images_per_site"]) not in cases or r["engine"] not in engines]
    with tempfile.TemporaryDirectory(prefix="fussfast-scale-") as tmp:
        cache, work = Path(args.cache or Path(tmp) / "cache"), Path(tmp)
        for sites, images in cases:
            one("inprocess", sites, images, 1, cache, work / "warmup")  # fills the cache: the runs below are warm
            for engine in engines:
                row = one(engine, sites, images, args.rounds, cache, work)
                rows.append(row)
                path.write_text(json.dumps({"cpu": cpu_name(), "threads": 2, "config": BASE, "rows": rows}, indent=1))
                print(f"{engine:>9} sites {sites:>4} images/site {images:>4}: round {row['round_s']:.2f} s, "
                      f"peak RSS {row['peak_rss_mb']:.0f} MiB, wall {row['wall_s']:.1f} s", flush=True)
    print("\n| engine | sites | images/site | sampled | round (s) | peak RSS (MiB) | run (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['sites']} | {r['images_per_site']} | {r['sampled_per_round']} | "
              f"{r['round_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['wall_s']:.1f} |")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
