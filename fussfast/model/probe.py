"""STEGO's cluster probe as an nn.Module over the fused cluster kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fussfast.ops import cluster_assign, cluster_labels


class ClusterProbe(nn.Module):
    """K centroids in code space (STEGO's ClusterLookup). Train it on ``codes.detach()``.

    ``forward(codes, alpha=None)`` → ``(loss, probs)`` as in STEGO; ``log_probs=True`` returns
    ``log_softmax(alpha · cos)`` instead. ``labels(codes)`` → int64 cluster per pixel.

    ``active``: only the first ``active`` centroids (default all) take part in the assignment,
    the loss and the labels; the others are slots kept for later rounds (auto-K) and get no
    gradient.
    """

    def __init__(self, dim: int, n_classes: int, *, backend: str = "fused"):
        super().__init__()
        self.n_classes, self.dim, self.backend = n_classes, dim, backend
        self.clusters = nn.Parameter(torch.randn(n_classes, dim))
        self.active = n_classes

    def used(self) -> torch.Tensor:
        """The active centroids, ``[active, D]`` (a view: gradients reach only these rows)."""
        if not 1 <= self.active <= self.n_classes:
            raise ValueError(f"ClusterProbe: active={self.active} must lie in [1, {self.n_classes}]")
        return self.clusters[:self.active]

    def forward(self, codes: torch.Tensor, alpha: float | None = None, log_probs: bool = False):
        if log_probs:
            if alpha is None:
                raise ValueError("ClusterProbe: log_probs needs an alpha")
            inner = torch.einsum("bchw,nc->bnhw", F.normalize(codes, dim=1), F.normalize(self.used(), dim=1))
            return F.log_softmax(inner * alpha, dim=1)
        return cluster_assign(codes, self.used().to(codes.dtype), alpha=alpha, backend=self.backend)

    @torch.no_grad()
    def labels(self, codes: torch.Tensor) -> torch.Tensor:
        return cluster_labels(codes, self.used().to(codes.dtype))
