"""FedSeg's background-aware cross-entropy (BackCE) for sites that annotate only some classes."""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from fussfast import _C
from fussfast.ops import _boundary as bnd
from fussfast.ops import reference

OP = "back_ce"


def back_ce(logits: torch.Tensor, labels: torch.Tensor, present: torch.Tensor, *, ignore_index: int = 255,
            reduction: str = "mean", backend: str = "fused") -> torch.Tensor:
    """BackCE (FedSeg, CVPR 2023). With ``p = softmax(logits)`` over the K classes, a labelled
    pixel gives ``-log p_y``; an unlabelled pixel (``ignore_index``) may belong to a class the
    site does not annotate, so the absent classes' probabilities are merged into one background
    channel and it gives ``-log Σ_{k absent} p_k``, computed as ``logsumexp(logits) -
    logsumexp(logits[absent])``. With every class present an unlabelled pixel gives nothing, and
    BackCE is ``F.cross_entropy(..., ignore_index=ignore_index)``.

    Args:
        logits: ``[B, K, ...]`` (the gradient flows to it).
        labels: int64 ``[B, ...]``, each in ``[0, K)`` or ``ignore_index``.
        present: bool ``[K]`` (one site) or ``[B, K]`` (per image): the classes annotated.
        reduction: ``"mean"`` over the counted pixels (labelled, and unlabelled ones of images
            with an absent class), ``"sum"``, or ``"none"`` (per pixel ``[B, ...]``, 0 where not
            counted).
        backend: ``"fused"`` (one pass per pixel, the gradient from the forward) or
            ``"reference"`` (plain torch).
    """
    bnd.check_backend(OP, backend)
    bnd.check_reduction(OP, reduction)
    present = _check_inputs(logits, labels, present, ignore_index)
    if backend == "reference":
        loss = reference.back_ce(bnd.upcast(logits), labels, present, ignore_index=ignore_index, reduction=reduction)
        return loss.to(logits.dtype)
    per_pixel = _BackCE.apply(logits, labels, present, ignore_index)
    if reduction == "none":
        return per_pixel
    if reduction == "sum":
        return per_pixel.sum()
    counted = (labels != ignore_index) | (~present).any(1).view(-1, *[1] * (labels.dim() - 1))
    return per_pixel.sum() / counted.sum().clamp(min=1)


class _BackCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, present, ignore_index):
        x = bnd.kernel_input(bnd.upcast(logits))  # the kernels take float32/float64 only
        B, K, P = x.shape[0], x.shape[1], math.prod(x.shape[2:])  # explicit sizes: B = 0 has no -1
        loss = torch.empty(labels.shape, dtype=x.dtype, device=x.device)
        grad = torch.empty(x.shape, dtype=x.dtype, device=x.device) if ctx.needs_input_grad[0] else None
        _C.back_ce_forward(x.view(B, K, P), bnd.kernel_input(labels).view(B, P),
                           present.to(torch.int32).contiguous(), int(ignore_index), loss.view(B, P),
                           None if grad is None else grad.view(B, K, P), bnd.stream_handle(x.device))
        ctx.save_for_backward(grad)
        ctx.dtype = logits.dtype
        return loss.to(logits.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss.unsqueeze(1).to(grad.dtype)).to(ctx.dtype), None, None, None


def _check_inputs(logits, labels, present, ignore_index):
    for name, t in (("logits", logits), ("labels", labels), ("present", present)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
    bnd.check_dtype(OP, "logits", logits, bnd.FLOAT_DTYPES)
    bnd.check_dtype(OP, "labels", labels, (torch.int64,))
    bnd.check_dtype(OP, "present", present, (torch.bool,))
    if logits.dim() < 2 or labels.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"{OP}: logits must be [B, K, ...] and labels [B, ...] with the same pixels, got "
                         f"{list(logits.shape)} and {list(labels.shape)}")
    B, K = logits.shape[:2]
    if K == 0:
        raise ValueError(f"{OP}: logits must have at least one class, got shape {list(logits.shape)}")
    if present.shape == (K,):
        present = present.expand(B, K)
    if present.shape != (B, K):
        raise ValueError(f"{OP}: present must be [K] or [B, K] = [{B}, {K}], got {list(present.shape)}")
    bnd.check_same_device(OP, logits=logits, labels=labels, present=present)
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= K))
    if bool(bad.any()):  # one device sync: an out-of-range class would read past the logits
        raise ValueError(f"{OP}: labels must lie in [0, {K}) or equal ignore_index={ignore_index}")
    return present
