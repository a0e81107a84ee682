"""FUSS/STEGO segmentation head and the kNN positives."""

from __future__ import annotations

import torch
from torch import nn


class SegmentationHead(nn.Module):
    """``code = lin(drop(f)) + mlp(drop(f))``: ``lin = Conv1x1(C→D)``,
    ``mlp = Conv1x1(C→C) → ReLU → Conv1x1(C→D)``, ``Dropout2d(0.1)`` on the features.

    Takes the frozen backbone's features in any dtype and computes in float32.
    """

    def __init__(self, in_dim: int, code_dim: int = 70, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.lin = nn.Conv2d(in_dim, code_dim, 1)
        self.mlp = nn.Sequential(nn.Conv2d(in_dim, in_dim, 1), nn.ReLU(), nn.Conv2d(in_dim, code_dim, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        f = self.dropout(feats.float())
        return self.lin(f) + self.mlp(f)


def knn_table(descriptors: torch.Tensor, k: int = 30) -> torch.Tensor:
    """``[N, k]`` indices of each image's most cosine-similar images, the image itself excluded
    (STEGO's kNN file, per site). ``descriptors`` ``[N, C]`` are L2-normalized."""
    n = descriptors.shape[0]
    if n < 2:
        raise ValueError("knn_table: needs at least 2 images")
    k = min(k, n - 1)
    sim = descriptors.float() @ descriptors.float().T
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(k, dim=1).indices


def draw_positives(table: torch.Tensor, index: torch.Tensor, num_neighbors: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """For each image in ``index``, a positive drawn uniformly from its ``num_neighbors`` nearest
    (FUSS uses 2, STEGO 7)."""
    num_neighbors = max(1, min(num_neighbors, table.shape[1]))
    pick = torch.randint(0, num_neighbors, (len(index),), generator=generator)
    return table[index.cpu(), pick].to(index.device)
