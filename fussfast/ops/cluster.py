"""STEGO's cluster probe: cosine assignment of pixel codes to centroids, and its loss."""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from fussfast import _C
from fussfast.ops import _boundary as bnd
from fussfast.ops import reference

OP = "cluster_assign"


def cluster_assign(
    codes: torch.Tensor,
    centroids: torch.Tensor,
    *,
    alpha: float | None = None,
    reduction: str = "mean",
    backend: str = "fused",
) -> tuple[torch.Tensor, torch.Tensor]:
    """STEGO's ``ClusterLookup.forward``: ``(loss, probs)``.

    ``inner = N(codes) · N(centroids)ᵀ`` per pixel (N: L2 normalization over D);
    ``probs`` = one-hot of the best centroid if ``alpha`` is None, else
    ``softmax(alpha · inner)`` over the K centroids; ``loss = −Σ_k probs · inner``, averaged over
    all pixels (``"mean"``), summed (``"sum"``), or averaged per image (``"none"`` → ``[B]``).

    Args:
        codes: ``[B, D, H, W]``. centroids: ``[K, D]``. Both get gradients of the loss.
        backend: ``"fused"`` or ``"reference"`` (STEGO's einsum formulation).

    Returns ``probs`` as ``[B, K, H, W]`` in the codes' dtype. In the fused path ``probs``
    carries no gradient (the loss does); use the reference backend to differentiate through it.
    On CUDA the fused kernel takes up to 64 centroids.
    """
    bnd.check_backend(OP, backend)
    bnd.check_reduction(OP, reduction)
    alpha = _check_inputs(codes, centroids, alpha)
    if backend == "reference":
        z = bnd.upcast(codes)
        loss, probs = reference.cluster_assign(z, centroids.to(z.dtype), alpha=alpha, reduction=reduction)
        return loss.to(codes.dtype), probs.to(codes.dtype)
    B, _, H, W = codes.shape
    z = codes.to(bnd.kernel_dtype(codes)).flatten(2)
    # The CPU kernel normalizes the codes itself (value and gradient, one pass over a cached tile).
    in_kernel = z.device.type == "cpu" and _C.cpu_tensors_run_cpu_kernels
    if not in_kernel:
        z = bnd.l2_normalize(z)
    c = bnd.l2_normalize(centroids.to(z.dtype))
    probs = torch.empty(B, c.shape[0], H * W, dtype=z.dtype, device=codes.device)
    totals = _ClusterAssign.apply(z, c, -1.0 if alpha is None else alpha, probs, in_kernel)  # alpha < 0: hard
    per_image = (-totals / (H * W)).to(codes.dtype)
    probs = probs.view(B, c.shape[0], H, W).to(codes.dtype)
    if reduction == "mean":
        return per_image.mean(), probs
    if reduction == "sum":
        return per_image.sum() * (H * W), probs
    return per_image, probs


def cluster_labels(codes: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``argmax_k cos(codes[b, :, h, w], centroids[k])`` as int64 ``[B, H, W]`` (lowest k on
    ties), without building the probabilities."""
    _check_inputs(codes, centroids, None)
    B, _, H, W = codes.shape
    labels = torch.empty(B, H * W, dtype=torch.int64, device=codes.device)
    with torch.no_grad():
        # Scaling a pixel's code does not move its argmax, so only the centroids are normalized.
        z = bnd.kernel_input(codes.to(bnd.kernel_dtype(codes))).flatten(2)
        c = bnd.kernel_input(bnd.l2_normalize(centroids.to(z.dtype)))
        _C.cluster_forward(z, c, -1.0, None, labels, None, None, None, False, bnd.stream_handle(z.device))
    return labels.view(B, H, W)


class _ClusterAssign(torch.autograd.Function):
    """Per-image sums of sum_k probs * inner; fills probs; gradients come out of the forward."""

    @staticmethod
    def forward(ctx, z, c, alpha, probs, normalize_codes):
        z, c = bnd.kernel_input(z), bnd.kernel_input(c)
        acc = bnd.accumulation_dtype(z.dtype)
        B, K, D = z.shape[0], c.shape[0], c.shape[1]
        totals = torch.zeros(B, dtype=acc, device=z.device)
        gz = torch.empty(z.shape, dtype=acc, device=z.device) if ctx.needs_input_grad[0] else None
        gc = torch.zeros(B, K, D, dtype=acc, device=z.device) if ctx.needs_input_grad[1] else None
        _C.cluster_forward(z, c, float(alpha), probs, None, totals, gz, gc, normalize_codes,
                           bnd.stream_handle(z.device))
        ctx.save_for_backward(gz, gc)
        ctx.dtypes = (z.dtype, c.dtype)
        return totals

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_totals):
        gz, gc = ctx.saved_tensors
        w = grad_totals[:, None, None]
        grad_z = None if gz is None else (gz * w).to(ctx.dtypes[0])
        grad_c = None if gc is None else (gc * w).sum(0).to(ctx.dtypes[1])
        return grad_z, grad_c, None, None, None


def _check_inputs(codes, centroids, alpha):
    for name, t in (("codes", codes), ("centroids", centroids)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
        bnd.check_dtype(OP, name, t, bnd.FLOAT_DTYPES)
    if codes.dim() != 4:
        raise ValueError(f"{OP}: codes must be [B, D, H, W], got shape {list(codes.shape)}")
    if centroids.dim() != 2 or centroids.shape[1] != codes.shape[1] or centroids.shape[0] < 1:
        raise ValueError(f"{OP}: centroids {list(centroids.shape)} must be [K, D] with D = {codes.shape[1]} "
                         f"(codes {list(codes.shape)})")
    bnd.check_same_device(OP, codes=codes, centroids=centroids)
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"{OP}: alpha must be None or a finite number >= 0, got {alpha!r}")
        alpha = float(alpha)
    return alpha
