"""Shared pieces of the benchmarks: device sync, timing-case metadata, the machine's facts, peak
memory, and torch.compile peers."""

from __future__ import annotations

import functools
import os
import platform
import re

import pytest
import torch

# Instruction sets worth naming in a result: the ones the kernels or torch's peers use.
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16")
# Variables that choose a code path or a thread count, recorded so a result says how it ran.
ENV_KEYS = ("FUSSFAST_CPU_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS",
            "OPENBLAS_CORETYPE", "FAISS_OPT_LEVEL", "OMP_NUM_THREADS")


def sync_for(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _cpuinfo() -> tuple[str, set[str]]:
    """CPU model and feature flags: /proc/cpuinfo on Linux, else py-cpuinfo (pytest-benchmark's)."""
    try:
        text = open("/proc/cpuinfo").read()
        model = re.search(r"^model name\s*:\s*(.*)$", text, re.M).group(1)
        flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())
        return model.strip(), flags
    except (OSError, AttributeError):
        try:
            import cpuinfo

            info = cpuinfo.get_cpu_info()
            return info.get("brand_raw", platform.processor()), set(info.get("flags", []))
        except ImportError:
            return platform.processor() or "unknown", set()


def fussfast_cpu_isa() -> str:
    """The CPU path fussfast's kernels run (run-time dispatch), or "n/a" on a build without it."""
    from fussfast import _C

    return str(_C.cpu_isa()) if hasattr(_C, "cpu_isa") else "n/a"


@functools.lru_cache(maxsize=None)
def machine() -> dict:
    """What a result depends on: CPU model and ISA flags, fussfast's chosen path, threads, versions."""
    model, flags = _cpuinfo()
    return {"cpu": model, "isa_flags": [f for f in ISA_FLAGS if f in flags],
            "fussfast_cpu_isa": fussfast_cpu_isa(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ}}


def results_name(m: dict) -> str:
    """A results file name from the CPU model and ISA, e.g. cpu_intel_xeon_avx512bf16_amx_2t_avx512
    (the last part is fussfast's CPU path, when the build reports one)."""
    model = re.sub(r"\((r|tm)\)|\bprocessor\b|\bcpu\b|@.*|\b\d+-core\b", " ", m["cpu"].lower())
    parts = ["cpu"] + re.findall(r"[a-z0-9]+", model)
    flags = set(m["isa_flags"])
    parts.append("avx512bf16" if "avx512_bf16" in flags else "avx512" if "avx512f" in flags
                 else "avx2" if "avx2" in flags else "generic")
    if "amx_tile" in flags:
        parts.append("amx")
    parts.append(f"{m['threads']}t")
    if m["fussfast_cpu_isa"] != "n/a":
        parts.append(m["fussfast_cpu_isa"])
    return "_".join(parts)


def record(benchmark, *, op: str, device: torch.device, case: str, method: str, mode: str, dtype, **extra):
    """Tag a benchmark so bench/report.py can line the methods up side by side."""
    benchmark.group = f"{op} {device.type} {case} {dtype} {mode}"
    benchmark.extra_info.update(op=op, device=device_name(device), case=case, method=method, mode=mode,
                                dtype=str(dtype).removeprefix("torch."), threads=torch.get_num_threads(),
                                machine=machine(), **extra)


def compiled(fn, benchmark):
    """torch.compile of a pure-torch function, fresh for this case so that no earlier case's graphs
    count towards dynamo's recompile limit (past it, dynamo silently runs eager). Skips in smoke
    runs: compiling takes tens of seconds on a small CPU."""
    if benchmark.disabled:
        pytest.skip("smoke runs (no --benchmark-enable) skip torch.compile")
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def warm_up(run, method: str, benchmark):
    """Call run twice outside the timed region (the first call compiles a torch.compile peer and
    its backward; none in smoke runs); a compile peer that fails here is skipped with the
    reason, never timed."""
    for _ in range(0 if benchmark.disabled else 2):
        try:
            run()
        except Exception as e:  # inductor and dynamo raise many types (no C compiler, unsupported op)
            if method != "compile":
                raise
            pytest.skip(f"torch.compile failed on this machine: {type(e).__name__}: {str(e)[:300]}")


def cuda_peak_mb(fn, device: torch.device) -> float | None:
    """Peak CUDA memory allocated by one call of fn beyond what was live before it."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20
