"""The Python side of the kernel boundary, shared by every op (design 2.1).

Wrappers validate user input here with messages that name the op and the argument, turn NumPy and
DLPack arrays (CuPy, JAX, ...) into torch tensors without copying, allocate every output, and hand
the extension contiguous, detached tensors plus the current CUDA stream.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np
import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)
BACKENDS = ("fused", "reference")
METRICS = ("euclidean", "cosine")  # of the clustering ops (kmeans, maximin)
REDUCTIONS = ("mean", "sum", "none")


def to_torch(op: str, **arrays: Any) -> tuple[list[torch.Tensor], Callable[[torch.Tensor], Any]]:
    """Tensors for the given arrays, and a function that returns outputs as the caller's kind.

    torch tensors pass through; NumPy arrays and any object with ``__dlpack__`` (CuPy, ...) are
    viewed zero-copy. All arrays of one call must be of the same kind.
    """
    tensors, kinds = [], set()
    for name, a in arrays.items():
        if isinstance(a, torch.Tensor):
            kinds.add("torch")
            tensors.append(a)
        elif isinstance(a, np.ndarray):
            kinds.add("numpy")
            tensors.append(torch.from_numpy(a))
        elif hasattr(a, "__dlpack__"):
            kinds.add(type(a).__module__.split(".")[0])
            tensors.append(torch.from_dlpack(a))
        else:
            raise TypeError(
                f"{op}: {name} must be a torch.Tensor, a NumPy array or a DLPack array, "
                f"got {type(a).__name__}"
            )
    if len(kinds) > 1:
        raise TypeError(f"{op}: arrays of one call must be of one kind, got {sorted(kinds)}")
    kind = kinds.pop()
    if kind == "torch":
        return tensors, lambda t: t
    if kind == "numpy":
        return tensors, lambda t: t.detach().numpy()
    module = sys.modules[kind]
    return tensors, lambda t: module.from_dlpack(t.detach())


def check_backend(op: str, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")


def check_reduction(op: str, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_dtype(op: str, name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"{op}: {name} must be one of {names}, got {str(t.dtype).removeprefix('torch.')}")


def check_int(op: str, name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{op}: {name} must be <= {maximum}, got {value} (too large to finish)")
    return int(value)


def check_same_device(op: str, **tensors: torch.Tensor) -> torch.device:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {d}" for name, d in devices.items())
        raise ValueError(f"{op}: all inputs must be on one device, got {listed}")
    device = next(iter(devices.values()))
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{op}: only cpu and cuda tensors are supported, got {device}")
    return device


def point_set(op: str, points, k, metric: str, finite: bool = True) -> tuple[torch.Tensor, int]:
    """Validates the [M, D] points, k and metric of a clustering op (kmeans, maximin). Returns the
    points upcast (their kernels take float32/float64 only) and contiguous, and k. ``finite=False``:
    the caller checks for NaN/Inf itself."""
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"{op}: points must be a torch.Tensor, got {type(points).__name__}")
    check_dtype(op, "points", points, FLOAT_DTYPES)
    if points.dim() != 2 or points.shape[0] == 0 or points.shape[1] == 0:
        raise ValueError(f"{op}: points must be a non-empty [M, D] tensor with D >= 1, got shape {list(points.shape)}")
    M = points.shape[0]
    k = check_int(op, "k", k, minimum=1)
    if k > M:
        raise ValueError(f"{op}: k={k} is larger than the number of points M={M}")
    if metric not in METRICS:
        raise ValueError(f"{op}: metric must be one of {METRICS}, got {metric!r}")
    x = kernel_input(upcast(points))
    if finite and not torch.isfinite(x).all():
        raise ValueError(f"{op}: points contain NaN or Inf")
    return x, k


def kernel_input(t: torch.Tensor) -> torch.Tensor:
    """What the extension may read: detached (DLPack refuses grad) and C-contiguous."""
    return t.detach().contiguous()


def stream_handle(device: torch.device) -> int:
    """The current CUDA stream of device as an integer handle (0 on the CPU)."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


NORM_EPS = 1e-10  # STEGO's norm(): F.normalize(t, dim=1, eps=1e-10)


def l2_normalize(t: torch.Tensor) -> torch.Tensor:
    """t / max(||t||, 1e-10) over dim 1, with autograd: F.normalize's value, but a plain sum of
    squares, which torch reduces much faster than its strided norm on NCHW layouts. Clamped before
    the square root, so a zero vector has F.normalize's finite gradient (1/eps), not 0 * inf."""
    return t / t.square().sum(1, keepdim=True).clamp_min(NORM_EPS ** 2).sqrt()


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The half-to-float32 rule, the one definition on the Python side: ops compute 16-bit and
    float32 inputs in float32, float64 in float64 (C++: acc_t in csrc/common/dtype.h)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def upcast(t: torch.Tensor) -> torch.Tensor:
    """t in its accumulation dtype: what the reference backend and the kernels that have no
    16-bit loads compute on."""
    return t.to(accumulation_dtype(t.dtype))


def kernel_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype in which to hand t to kernels that load 16-bit types themselves on CUDA but take
    float32/float64 only on the CPU (cluster_assign, correlation_loss)."""
    return accumulation_dtype(t.dtype) if t.device.type == "cpu" else t.dtype
