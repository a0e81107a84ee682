"""STEGO's feature/code sampling (``grid_sample``, bilinear, border padding, align_corners=True)
of channels-last maps, fused: no NCHW copy of the maps, no gather of the maps a row reads."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from fussfast import _C
from fussfast.ops import _boundary as bnd
from fussfast.ops import reference

OP = "bilinear_sample"


def bilinear_sample(maps: torch.Tensor, points: torch.Tensor, index: torch.Tensor | None = None, *,
                    backend: str = "fused") -> torch.Tensor:
    """``out[m, p] = grid_sample(maps[index[m]], points[m, p])`` with STEGO's settings.

    Args:
        maps: ``[N, H, W, C]`` channels-last maps, any float dtype (gradients flow to them).
        points: ``[M, P, 2]`` sample points ``(x, y)`` in ``[-1, 1]`` (x along W), as
            ``grid_sample``'s grid; points outside are clipped to the border. No gradient.
        index: ``[M]`` int64, the map row m samples; None: ``arange(N)`` (then M must equal N).
        backend: ``"fused"`` (the compiled kernel) or ``"reference"`` (``F.grid_sample``).

    Returns ``[M, P, C]`` in the accumulation dtype of ``maps`` (float32 for 16-bit maps).
    The CPU backward is deterministic; on CUDA it adds with float atomics (last bits may vary).
    """
    bnd.check_backend(OP, backend)
    acc = bnd.accumulation_dtype(maps.dtype) if isinstance(maps, torch.Tensor) else None
    index = _check_inputs(maps, points, index)
    if backend == "reference":
        return reference.bilinear_sample(maps.to(acc), points.to(acc), index)
    return _BilinearSample.apply(maps, points.detach().to(acc), index)


def channels_last(maps: torch.Tensor, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """``[B, C, H, W]`` maps as ``[B, H, W, C]`` in ``dtype`` on ``device``, the layout the op reads: one
    converting copy (not two, as ``.to(dtype).permute(...).contiguous()`` would make)."""
    out = torch.empty(maps.shape[0], *maps.shape[2:], maps.shape[1], device=device, dtype=dtype)
    return out.copy_(maps.to(device).permute(0, 2, 3, 1))


def tap_pixels(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[M, 4 P]`` int64: the pixels ``y * width + x`` that each row's points read (the 4 taps,
    the kernel's arithmetic; a tap of weight 0 past the border points at the clipped pixel).
    A map needs values only there, so a caller may compute just those pixels."""
    pts = points.to(bnd.accumulation_dtype(points.dtype))
    ix = ((pts[..., 0] + 1) / 2 * (width - 1)).clamp(0, width - 1).floor().long()
    iy = ((pts[..., 1] + 1) / 2 * (height - 1)).clamp(0, height - 1).floor().long()
    ix1, iy1 = (ix + 1).clamp(max=width - 1), (iy + 1).clamp(max=height - 1)
    return torch.cat([iy * width + ix, iy * width + ix1, iy1 * width + ix, iy1 * width + ix1], 1)


class _BilinearSample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, maps, points, index):
        x, pts, idx = bnd.kernel_input(maps), bnd.kernel_input(points), bnd.kernel_input(index)
        out = torch.empty(*pts.shape[:2], x.shape[3], dtype=pts.dtype, device=x.device)
        _C.bilinear_sample_forward(x, pts, idx, out, bnd.stream_handle(x.device))
        ctx.save_for_backward(pts, idx)
        ctx.shape, ctx.dtype = x.shape, x.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        pts, idx = ctx.saved_tensors
        grad_maps = torch.zeros(ctx.shape, dtype=pts.dtype, device=pts.device)
        _C.bilinear_sample_backward(bnd.kernel_input(grad_out.to(pts.dtype)), pts, idx, grad_maps,
                                    bnd.stream_handle(pts.device))
        return grad_maps.to(ctx.dtype), None, None


def _check_inputs(maps, points, index):
    for name, t in (("maps", maps), ("points", points)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
        bnd.check_dtype(OP, name, t, bnd.FLOAT_DTYPES)
    if maps.dim() != 4 or maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"{OP}: maps must be [N, H, W, C] with H, W >= 1, got shape {list(maps.shape)}")
    if points.dim() != 3 or points.shape[2] != 2:
        raise ValueError(f"{OP}: points must be [M, P, 2], got shape {list(points.shape)}")
    N, M = maps.shape[0], points.shape[0]
    if index is None:
        if M != N:
            raise ValueError(f"{OP}: without index, points need one row per map ({N}), got {M}")
        index = torch.arange(N, device=maps.device)
    else:
        if not isinstance(index, torch.Tensor):
            raise TypeError(f"{OP}: index must be a torch.Tensor, got {type(index).__name__}")
        bnd.check_dtype(OP, "index", index, bnd.INDEX_DTYPES)
        if index.shape != (M,):
            raise ValueError(f"{OP}: index must be [M] = [{M}], got shape {list(index.shape)}")
        if M and (int(index.min()) < 0 or int(index.max()) >= N):
            raise ValueError(f"{OP}: index entries must lie in [0, {N})")
        index = index.long()
    bnd.check_same_device(OP, maps=maps, points=points, index=index)
    if not torch.isfinite(points).all():
        raise ValueError(f"{OP}: points must be finite")
    return index
