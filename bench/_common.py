"""Shared pieces of the benchmarks: device sync, timing-case metadata, peak memory."""

from __future__ import annotations

import torch


def sync_for(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def record(benchmark, *, op: str, device: torch.device, case: str, method: str, mode: str, dtype, **extra):
    """Tag a benchmark so bench/report.py can line the methods up side by side."""
    benchmark.group = f"{op} {device.type} {case} {dtype} {mode}"
    benchmark.extra_info.update(op=op, device=device_name(device), case=case, method=method, mode=mode,
                                dtype=str(dtype).removeprefix("torch."), threads=torch.get_num_threads(),
                                **extra)


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
