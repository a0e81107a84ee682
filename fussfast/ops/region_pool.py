"""Pixel-to-region pooling (FedSeg's region memory): per image and class, the mean embedding."""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from fussfast import _C
from fussfast.ops import _boundary as bnd
from fussfast.ops import reference

OP = "region_pool"


def region_pool(
    embeddings: Any,
    labels: Any,
    num_classes: int,
    *,
    ignore_index: int = -1,
    normalize: bool = False,
    backend: str = "fused",
) -> tuple[Any, Any]:
    """Mean pixel embedding per image and class.

    Args:
        embeddings: ``[B, D, *S]`` float32/float64/float16/bfloat16 (``S`` is usually ``H, W``).
            torch tensor (autograd supported), NumPy array (CPU) or CuPy/DLPack array (CUDA).
        labels: ``[B, *S]`` int32 or int64 class per pixel, same kind and device as embeddings.
        num_classes: K. Every label must lie in ``[0, K)`` or equal ``ignore_index``.
        ignore_index: label of pixels that belong to no region (checked before the range).
        normalize: L2-normalize each region mean over D (``x / max(||x||, 1e-10)``).
        backend: ``"fused"`` (the compiled kernel) or ``"reference"`` (pure torch).

    Returns:
        ``(means [B, K, D], counts [B, K])``: means in the embeddings' dtype (accumulated in
        float32, or float64 for float64 input), counts int64. An empty region has a zero mean and
        count 0, never NaN. Outputs are of the same kind as the inputs (torch, NumPy, CuPy).

    Raises:
        TypeError: wrong array kind or dtype. ValueError: shapes that disagree, ``num_classes``
        < 1, labels outside ``[0, K)`` that are not ``ignore_index``, mixed devices.

    On CUDA the label check reads one flag back, which synchronizes with the stream. Sums use
    float atomics there, so the last bits may differ between runs.
    """
    bnd.check_backend(OP, backend)
    (emb, lab), restore = bnd.to_torch(OP, embeddings=embeddings, labels=labels)
    num_classes, ignore_index = _check_inputs(emb, lab, num_classes, ignore_index)
    if backend == "reference":
        _raise_on_bad_labels(lab.flatten(1).long(), num_classes, ignore_index)
        means, counts = reference.region_pool(bnd.upcast(emb), lab, num_classes, ignore_index=ignore_index,
                                              normalize=normalize)
        means = means.to(emb.dtype)
    else:
        means, counts = _RegionPool.apply(emb, lab, num_classes, ignore_index, bool(normalize))
    return restore(means), restore(counts)


class _RegionPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, emb, labels, num_classes, ignore_index, normalize):
        x, lab = bnd.kernel_input(emb), bnd.kernel_input(labels)
        B, D = x.shape[:2]
        acc = torch.zeros(B, num_classes, D, dtype=bnd.accumulation_dtype(x.dtype), device=x.device)
        counts = torch.zeros(B, num_classes, dtype=torch.int64, device=x.device)
        means = torch.empty(B, num_classes, D, dtype=x.dtype, device=x.device)
        regions = torch.empty(lab.shape, dtype=torch.int32, device=x.device)
        status = torch.zeros(1, dtype=torch.int32, device=x.device)
        _C.region_pool_forward(x, lab, acc, counts, means, regions, status, ignore_index, normalize,
                               bnd.stream_handle(x.device))
        if status.item():
            _raise_on_bad_labels(lab.flatten(1).long(), num_classes, ignore_index)
        ctx.save_for_backward(acc, counts, regions)
        ctx.shape, ctx.normalize = x.shape, normalize
        ctx.mark_non_differentiable(counts)
        return means, counts

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_means, _grad_counts):
        acc, counts, regions = ctx.saved_tensors
        grad_means = bnd.kernel_input(grad_means)
        grad_rows = torch.empty_like(acc)
        grad_emb = torch.empty(ctx.shape, dtype=grad_means.dtype, device=grad_means.device)
        _C.region_pool_backward(grad_means, acc, counts, regions, grad_rows, grad_emb, ctx.normalize,
                                bnd.stream_handle(grad_emb.device))
        return grad_emb, None, None, None, None


def _check_inputs(emb, labels, num_classes, ignore_index):
    bnd.check_dtype(OP, "embeddings", emb, bnd.FLOAT_DTYPES)
    bnd.check_dtype(OP, "labels", labels, bnd.INDEX_DTYPES)
    num_classes = bnd.check_int(OP, "num_classes", num_classes, minimum=1)
    ignore_index = bnd.check_int(OP, "ignore_index", ignore_index)
    if emb.dim() < 3 or labels.shape[:1] != emb.shape[:1] or labels.shape[1:] != emb.shape[2:]:
        raise ValueError(
            f"{OP}: embeddings {list(emb.shape)} and labels {list(labels.shape)} must agree in batch "
            "and spatial size (embeddings [B, D, *S], labels [B, *S])"
        )
    bnd.check_same_device(OP, embeddings=emb, labels=labels)
    return num_classes, ignore_index


def _raise_on_bad_labels(lab, num_classes, ignore_index):
    bad = (lab != ignore_index) & ((lab < 0) | (lab >= num_classes))
    if bad.any():
        values = torch.unique(lab[bad])
        shown = ", ".join(str(v) for v in values[:8].tolist()) + (", ..." if len(values) > 8 else "")
        raise ValueError(
            f"{OP}: {int(bad.sum())} labels outside [0, {num_classes}) that are not "
            f"ignore_index={ignore_index}: {shown}"
        )
