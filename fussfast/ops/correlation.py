"""STEGO's feature-correlation (correspondence distillation) loss, fused."""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from fussfast import _C
from fussfast.ops import _boundary as bnd
from fussfast.ops import reference

OP = "correlation_loss"


def correlation_loss(
    feats1: torch.Tensor,
    feats2: torch.Tensor,
    codes1: torch.Tensor,
    codes2: torch.Tensor,
    shift: float | torch.Tensor,
    *,
    pointwise: bool = True,
    zero_clamp: bool = True,
    stabilize: bool = False,
    reduction: str = "mean",
    groups: int = 1,
    backend: str = "fused",
) -> torch.Tensor:
    """STEGO's ``ContrastiveCorrelationLoss.helper`` loss, without the ``[B, P, Q]`` tensors.

    ``F = N(f1)ᵀ N(f2)`` per pair (features are constants); with ``pointwise``,
    ``F ← F − mean_q F + mean_{b,p,q} F``. ``S = N(c1)ᵀ N(c2)``;
    ``L = −clamp(S, lo, hi) · (F − shift_b)`` with ``lo = 0`` if ``zero_clamp`` else −inf and
    ``hi = 0.8`` if ``stabilize`` else +inf. N is L2 normalization over channels (eps 1e-10).

    Args:
        feats1, feats2: ``[B, C, H, W]`` and ``[B, C, H', W']`` features (no gradient).
        codes1, codes2: ``[B, D, H, W]`` and ``[B, D, H', W']`` codes (gradients flow to both).
        shift: a float, or a ``[B]`` tensor so several pair types share one call.
        reduction: ``"mean"`` (over every pair and position, as STEGO), ``"sum"``, or ``"none"``
            → ``[B]``, each pair's mean over its ``P·Q`` positions.
        groups: the batch is this many equal, consecutive groups (pair types), each with its own
            pointwise global mean, exactly like one call per group. Default 1: the whole batch.
        backend: ``"fused"`` or ``"reference"`` (the STEGO formulation in plain torch).

    On the CPU, float16/bfloat16 features are read as they are (products accumulate in float32)
    and 16-bit codes are computed in float32; the loss has the codes' dtype.
    """
    bnd.check_backend(OP, backend)
    bnd.check_reduction(OP, reduction)
    shift = _check_inputs(feats1, feats2, codes1, codes2, shift, groups)
    if backend == "reference":
        dtype = bnd.accumulation_dtype(codes1.dtype)
        f1, f2, c1, c2 = (t.to(dtype) for t in (feats1, feats2, codes1, codes2))
        return reference.correlation_loss(f1, f2, c1, c2, shift, pointwise=pointwise, zero_clamp=zero_clamp,
                                          stabilize=stabilize, reduction=reduction, groups=groups).to(codes1.dtype)
    lo = 0.0 if zero_clamp else -math.inf
    hi = 0.8 if stabilize else math.inf
    per_pair = _fused(feats1, feats2, codes1, codes2, shift, pointwise, lo, hi, groups).to(codes1.dtype)
    if reduction == "mean":
        return per_pair.mean()
    if reduction == "sum":
        return per_pair.sum() * (feats1.shape[2] * feats1.shape[3] * feats2.shape[2] * feats2.shape[3])
    return per_pair


def _fused(feats1, feats2, codes1, codes2, shift, pointwise, lo, hi, groups):
    dtype = bnd.kernel_dtype(codes1)
    acc = bnd.accumulation_dtype(dtype)
    cpu_kernel = feats1.device.type == "cpu" and _C.cpu_tensors_run_cpu_kernels
    channels_last = cpu_kernel and _channels_last(feats1, feats2)
    f1, f2 = (_feature_input(f, dtype, acc, cpu_kernel) for f in (feats1, feats2))
    if channels_last:  # [B, P, C] as they lie in memory: no transposing copy
        f1, f2 = (bnd.kernel_input(f.permute(0, 2, 3, 1)).flatten(1, 2) for f in (f1, f2))
        (B, P, C), Q = f1.shape, f2.shape[1]
    else:
        f1, f2 = (bnd.kernel_input(f).flatten(2) for f in (f1, f2))
        (B, C, P), Q = f1.shape, f2.shape[2]
    stats = [f1.new_empty(B, P, dtype=acc), f1.new_empty(B, Q, dtype=acc), f1.new_empty(B, P, dtype=acc),
             f1.new_empty(B, dtype=acc), f1.new_empty(B, 2, C, dtype=acc)]
    _C.correlation_stats(f1, f2, *stats, bool(pointwise), channels_last, bnd.stream_handle(f1.device))
    bias = -shift.to(acc)
    if pointwise:  # the global mean of F, per group of pairs
        bias = bias + stats[3].reshape(groups, -1).mean(1).repeat_interleave(B // groups)
    z1, z2 = codes1.to(dtype).flatten(2), codes2.to(dtype).flatten(2)
    if not cpu_kernel:  # the CPU kernel normalizes the codes itself, value and gradient
        z1, z2 = bnd.l2_normalize(z1), bnd.l2_normalize(z2)
    sums = _Correlation.apply(z1, z2, f1, f2, stats, bias.contiguous(), lo, hi, channels_last, cpu_kernel)
    return sums / (P * Q)


def _channels_last(feats1, feats2) -> bool:
    """Whether both feature maps lie channels-last in memory (``[B, C, H, W]`` views of
    ``[B, H, W, C]`` data, as sampled features come), and are not also plain contiguous."""
    both = all(f.is_contiguous(memory_format=torch.channels_last) for f in (feats1, feats2))
    return both and not all(f.is_contiguous() for f in (feats1, feats2))


def _feature_input(feats, dtype, acc, cpu_kernel):
    """The CPU kernel reads 16-bit features as they are beside float32 codes (half the memory
    traffic; bfloat16 products on vdpbf16ps where the CPU has it); otherwise the codes' dtype."""
    if cpu_kernel and acc == torch.float32 and feats.dtype in (torch.float16, torch.bfloat16):
        return feats
    return feats.to(dtype)


class _Correlation(torch.autograd.Function):
    """Per-pair loss sums from the codes (raw when ``normalize_codes``: the kernel normalizes
    them); the code gradients come out of the forward."""

    @staticmethod
    def forward(ctx, z1, z2, f1, f2, stats, bias, lo, hi, channels_last, normalize_codes):
        z1, z2 = bnd.kernel_input(z1), bnd.kernel_input(z2)
        acc = bias.dtype
        loss = torch.zeros(f1.shape[0], dtype=acc, device=f1.device)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        g1 = torch.zeros(z1.shape, dtype=acc, device=z1.device) if need_grad else None
        g2 = torch.zeros(z2.shape, dtype=acc, device=z2.device) if need_grad else None
        _C.correlation_forward(f1, f2, z1, z2, *stats, bias, loss, g1, g2, lo, hi, channels_last, normalize_codes,
                               bnd.stream_handle(f1.device))
        ctx.save_for_backward(g1, g2)
        ctx.code_dtype = z1.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        g1, g2 = ctx.saved_tensors
        scale = grad_loss[:, None, None]
        return (g1 * scale).to(ctx.code_dtype), (g2 * scale).to(ctx.code_dtype), *[None] * 8


def _check_inputs(feats1, feats2, codes1, codes2, shift, groups):
    named = {"feats1": feats1, "feats2": feats2, "codes1": codes1, "codes2": codes2}
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
        bnd.check_dtype(OP, name, t, bnd.FLOAT_DTYPES)
        if t.dim() != 4:
            raise ValueError(f"{OP}: {name} must be [B, C, H, W], got shape {list(t.shape)}")
    device = bnd.check_same_device(OP, **named)
    (B, C), D = feats1.shape[:2], codes1.shape[1]
    if B == 0 or feats1.shape[2:].numel() == 0 or feats2.shape[2:].numel() == 0:
        raise ValueError(f"{OP}: needs at least one pair and one position per map, got feats1 "
                         f"{list(feats1.shape)} and feats2 {list(feats2.shape)}")
    if feats2.shape[:2] != (B, C):
        raise ValueError(f"{OP}: feats1 {list(feats1.shape)} and feats2 {list(feats2.shape)} must share B and C")
    if codes1.shape[0] != B or codes2.shape[0] != B or codes2.shape[1] != D:
        raise ValueError(f"{OP}: codes1 {list(codes1.shape)} and codes2 {list(codes2.shape)} must share B "
                         f"(= {B}) and D")
    for f, c, i in ((feats1, codes1, 1), (feats2, codes2, 2)):
        if f.shape[2:] != c.shape[2:]:
            raise ValueError(f"{OP}: feats{i} {list(f.shape)} and codes{i} {list(c.shape)} must share H and W")
    if codes1.dtype != codes2.dtype:
        raise TypeError(f"{OP}: codes1 and codes2 must share a dtype, got {codes1.dtype} and {codes2.dtype}")
    groups = bnd.check_int(OP, "groups", groups, minimum=1)
    if B % groups:
        raise ValueError(f"{OP}: groups={groups} must divide the batch size {B}")
    if isinstance(shift, torch.Tensor):
        if shift.shape not in ((B,), ()):
            raise ValueError(f"{OP}: shift must be a float or a [B] = [{B}] tensor, got shape {list(shift.shape)}")
        shift = shift.detach().to(device=device).expand(B)
    elif isinstance(shift, (int, float)) and not isinstance(shift, bool):
        shift = torch.full((B,), float(shift), dtype=torch.float64, device=device)
    else:
        raise TypeError(f"{OP}: shift must be a float or a tensor, got {type(shift).__name__}")
    if not torch.isfinite(shift).all():
        raise ValueError(f"{OP}: shift must be finite")
    return shift
