"""Run the whole CPU benchmark set on this machine and write bench/results/<machine>.{json,md}.

    python bench/run_cpu.py                 # fussfast's own choice of CPU path (AVX-512 here)
    python bench/run_cpu.py --isa avx2      # forced AVX2 path, peers limited to AVX2 as well
    python bench/run_cpu.py -k correlation  # a subset (a pytest -k expression)

--isa sets FUSSFAST_CPU_ISA for fussfast and, unless --native-peers, the matching switches of
torch (ATEN_CPU_CAPABILITY), oneDNN, MKL, OpenBLAS and faiss, so a forced run times what an
AVX2-only machine would run on both sides. The run stops if the build cannot take the path
(no run-time dispatch, or a path this CPU lacks), rather than mislabel the results.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ["bench_correlation.py", "bench_cluster.py", "bench_region_pool.py", "bench_back_ce.py",
         "bench_aggregate.py", "bench_step.py"]
# What the peers' libraries read to stay on one instruction set, per --isa.
PEER_ISA = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell", "FAISS_OPT_LEVEL": "avx2"},
    "generic": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "OPENBLAS_CORETYPE": "Nehalem", "FAISS_OPT_LEVEL": "generic"},
}


def build_path(env: dict) -> str:
    """fussfast's CPU path under env, asked of a fresh interpreter (the choice is made at import)."""
    code = "from fussfast import _C; print(_C.cpu_isa() if hasattr(_C, 'cpu_isa') else 'n/a')"
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


class SkipLog:
    """A pytest plugin that keeps every skip's reason, so the report can say which peers did not run."""

    def __init__(self):
        self.skips = []

    def pytest_runtest_logreport(self, report):
        if report.skipped and isinstance(report.longrepr, tuple):
            self.skips.append({"nodeid": report.nodeid, "reason": report.longrepr[2].removeprefix("Skipped: ")})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isa", choices=["avx512", "avx2", "generic"], help="force fussfast's CPU path")
    ap.add_argument("--native-peers", action="store_true", help="with --isa: leave torch and the peers on their own ISA")
    ap.add_argument("--threads", type=int, default=2, help="threads for fussfast and every peer (default 2)")
    ap.add_argument("-k", dest="select", help="pytest -k expression to run a subset")
    ap.add_argument("--out", help="results path without extension (default bench/results/<machine>)")
    ap.add_argument("files", nargs="*", default=FILES, help=f"benchmark files (default: {' '.join(FILES)})")
    args = ap.parse_args()

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.isa:
        env["FUSSFAST_CPU_ISA"] = args.isa
        if not args.native_peers:
            env.update(PEER_ISA.get(args.isa, {}))
    path = build_path(env)
    if args.isa and path != args.isa:
        print(f"run_cpu: asked for the {args.isa} path, the build runs {path!r} "
              "(n/a: this build has no run-time CPU dispatch)", file=sys.stderr)
        return 2
    print(f"fussfast CPU path: {path}; threads {args.threads}; "
          + " ".join(f"{k}={env[k]}" for k in sorted(PEER_ISA["avx2"]) + ["FUSSFAST_CPU_ISA"] if k in env))

    os.environ.clear()
    os.environ.update(env)  # before torch is imported (by the conftest), so torch reads it too
    import pytest

    with tempfile.TemporaryDirectory() as tmp:
        raw_json = Path(tmp) / "bench.json"
        # every CPU case: the device-parametrized ones on "cpu" (the cpu-<isa> cases skip in bench/),
        # and the CPU-only ones with no device in their id (the FedCC aggregator)
        select = f"not cuda and not simt and ({args.select})" if args.select else "not cuda and not simt"
        log, start = SkipLog(), time.time()
        code = pytest.main([*(str(HERE / f) for f in args.files), "--benchmark-enable", "-q", "-rs",
                            "-p", "no:cacheprovider", "--benchmark-min-rounds=5",
                            "--benchmark-columns=min,median,iqr,rounds",
                            f"--benchmark-json={raw_json}", "-k", select], plugins=[log])
        print(f"benchmarks took {time.time() - start:.0f} s")
        if not raw_json.exists():
            return int(code) or 1
        raw = json.loads(raw_json.read_text())
        raw["fussfast_skipped"] = log.skips
        raw_json.write_text(json.dumps(raw))
        sys.path.insert(0, str(HERE))
        import report

        report.main(str(raw_json), args.out)
    if code != 0:
        print(f"run_cpu: pytest exited {int(code)}; the results above lack the cases that failed", file=sys.stderr)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
