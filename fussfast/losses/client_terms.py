"""Terms a federated client adds to its local loss: MOON's model contrast and global→local
distillation, both on per-pixel representations."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def moon_contrast(code: torch.Tensor, code_global: torch.Tensor, code_previous: torch.Tensor,
                  tau: float = 0.5) -> torch.Tensor:
    """MOON's model-contrastive term on per-pixel codes ``[B, D, H, W]``: the local code is pulled
    towards the global model's code and pushed from the previous local model's,
    ``-log(e^{cos(z, z_g)/tau} / (e^{cos(z, z_g)/tau} + e^{cos(z, z_prev)/tau}))``, mean over pixels."""
    pos = F.cosine_similarity(code, code_global, dim=1) / tau
    neg = F.cosine_similarity(code, code_previous, dim=1) / tau
    return (torch.logaddexp(pos, neg) - pos).mean()


DISTILL_KINDS = ("cosine", "kl")


def code_distill(code: torch.Tensor, target: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Global→local distillation on per-pixel codes ``[B, D, H, W]`` (``target`` is detached):
    ``cosine``: mean of 1 - cos(z, z_g); ``kl``: mean over pixels of KL(softmax(z_g) || softmax(z))
    over the code channels."""
    target = target.detach()
    if kind == "cosine":
        return (1 - F.cosine_similarity(code, target, dim=1)).mean()
    if kind == "kl":
        p = F.log_softmax(target, dim=1)
        return (p.exp() * (p - F.log_softmax(code, dim=1))).sum(1).mean()
    raise ValueError(f"code_distill: kind must be one of {DISTILL_KINDS}, got {kind!r}")
