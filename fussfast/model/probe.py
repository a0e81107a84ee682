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
    """

    def __init__(self, dim: int, n_classes: int, *, backend: str = "fused"):
        super().__init__()
        self.n_classes, self.dim, self.backend = n_classes, dim, backend
        self.clusters = nn.Parameter(torch.randn(n_classes, dim))

    def forward(self, codes: torch.Tensor, alpha: float | None = None, log_probs: bool = False):
        if log_probs:
            if alpha is None:
                raise ValueError("ClusterProbe: log_probs needs an alpha")
            inner = torch.einsum("bchw,nc->bnhw", F.normalize(codes, dim=1), F.normalize(self.clusters, dim=1))
            return F.log_softmax(inner * alpha, dim=1)
        return cluster_assign(codes, self.clusters.to(codes.dtype), alpha=alpha, backend=self.backend)

    @torch.no_grad()
    def labels(self, codes: torch.Tensor) -> torch.Tensor:
        return cluster_labels(codes, self.clusters.to(codes.dtype))
