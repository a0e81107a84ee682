"""FUSS/STEGO segmentation head and the kNN positives."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


class HeadPrecision:
    """``compute_dtype``: None, products in the parameters' dtype, or ``torch.bfloat16``: the
    1x1 convolutions and matrix products run under autocast (bf16 products on the CPU's bf16
    units, float32 accumulation), while parameters, their gradients and the outputs stay in the
    parameters' dtype. Inputs are converted once, to ``input_dtype``."""

    compute_dtype: torch.dtype | None = None

    @property
    def input_dtype(self) -> torch.dtype:
        return self.compute_dtype or self.lin.weight.dtype

    def products(self, device: torch.device):
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.compute_dtype)

    def output(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.lin.weight.dtype)


class SegmentationHead(HeadPrecision, nn.Module):
    """``code = lin(drop(f)) + mlp(drop(f))``: ``lin = Conv1x1(C→D)``,
    ``mlp = Conv1x1(C→C) → ReLU → Conv1x1(C→D)``, ``Dropout2d(0.1)`` on the features.

    Takes the frozen backbone's features in any dtype and computes in its own (float32 unless
    converted), or in ``compute_dtype`` (``HeadPrecision``).
    """

    def __init__(self, in_dim: int, code_dim: int = 70, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.lin = nn.Conv2d(in_dim, code_dim, 1)
        self.mlp = nn.Sequential(nn.Conv2d(in_dim, in_dim, 1), nn.ReLU(), nn.Conv2d(in_dim, code_dim, 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        with self.products(feats.device):
            f = self.dropout(feats.to(self.input_dtype))
            return self.output(self.lin(f) + self.mlp(f))

    def representation(self, feats: torch.Tensor) -> torch.Tensor:
        """What MOON and distillation compare between models: the code."""
        return self(feats)

    def channel_mask(self, batch: int, device: torch.device | str) -> torch.Tensor | None:
        """``[batch, C]``: the ``Dropout2d`` scale per image and channel (0 or 1/(1-p)), drawn
        from the same random numbers as ``forward`` on a batch of that size; None in eval mode."""
        return channel_mask(self.dropout, batch, self.lin.weight, device)

    def rows(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` on channels-last pixels ``x`` ``[..., C]`` (``input_dtype``) as matrix
        products: the codes ``[..., D]``. ``mask`` (broadcast to x) is the dropout scale."""
        if mask is not None:
            x = x * mask.to(x.dtype)
        # lin and the MLP's first layer read the same pixels: one product, split (not sliced:
        # the backward is one concatenation, not zero-filled full-size gradients per slice)
        with self.products(x.device):
            w = torch.cat([self.lin.weight.flatten(1), self.mlp[0].weight.flatten(1)])
            lin, hidden = F.linear(x, w, torch.cat([self.lin.bias, self.mlp[0].bias])).split(
                [self.lin.out_channels, self.mlp[0].out_channels], -1)
            return self.output(F.linear(hidden.relu(), self.mlp[2].weight.flatten(1), self.mlp[2].bias) + lin)


class SupervisedHead(HeadPrecision, nn.Module):
    """FedSeg's head on frozen features: ``logits = lin(f) + cls(trunk(f))`` (K classes) and the
    projection ``embed = proj(trunk(f))`` (``embed_dim``, 256 as in FedSeg) for the
    pixel-to-region contrast. ``trunk = Conv1x1(C→C) → ReLU`` is shared: the backbone is frozen,
    so the contrast can only shape the classifier through it. Computes in its own dtype, or in
    ``compute_dtype`` (``HeadPrecision``)."""

    def __init__(self, in_dim: int, num_classes: int, embed_dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.lin = nn.Conv2d(in_dim, num_classes, 1)
        self.trunk = nn.Sequential(nn.Conv2d(in_dim, in_dim, 1), nn.ReLU())
        self.cls = nn.Conv2d(in_dim, num_classes, 1)
        self.proj = nn.Sequential(nn.Conv2d(in_dim, in_dim, 1), nn.ReLU(), nn.Conv2d(in_dim, embed_dim, 1))

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.products(feats.device):
            f = self.dropout(feats.to(self.input_dtype))
            h = self.trunk(f)
            return self.output(self.lin(f) + self.cls(h)), self.output(self.proj(h))

    def representation(self, feats: torch.Tensor) -> torch.Tensor:
        """What MOON and distillation compare between models: the projection embedding."""
        return self(feats)[1]

    def channel_mask(self, batch: int, device: torch.device | str) -> torch.Tensor | None:
        """``[batch, C]``: the ``Dropout2d`` scale, as ``SegmentationHead.channel_mask``."""
        return channel_mask(self.dropout, batch, self.lin.weight, device)

    def trunk_rows(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` on channels-last pixels ``x`` ``[..., C]`` as matrix products, up to the
        trunk: ``(logits [..., K], h [..., C])``; ``embed_rows(h)`` gives the embeddings of any
        rows of h, so they need computing only where used (h stays in the compute dtype).
        ``mask``: the dropout scale."""
        if mask is not None:
            x = x * mask.to(x.dtype)
        with self.products(x.device):
            w = torch.cat([self.lin.weight.flatten(1), self.trunk[0].weight.flatten(1)])  # both read f
            lin, hidden = F.linear(x, w, torch.cat([self.lin.bias, self.trunk[0].bias])).split(
                [self.lin.out_channels, self.trunk[0].out_channels], -1)
            h = hidden.relu()
            return self.output(F.linear(h, self.cls.weight.flatten(1), self.cls.bias) + lin), h

    def embed_rows(self, h: torch.Tensor) -> torch.Tensor:
        """The projection embeddings ``[..., E]`` of trunk rows ``h`` ``[..., C]``."""
        p0, p2 = self.proj[0], self.proj[2]
        with self.products(h.device):
            hidden = F.linear(h, p0.weight.flatten(1), p0.bias).relu()
            return self.output(F.linear(hidden, p2.weight.flatten(1), p2.bias))


def channel_mask(dropout: nn.Dropout2d, batch: int, weight: torch.Tensor, device) -> torch.Tensor | None:
    """Dropout2d's scale per image and input channel of ``weight``: the mask it applies to a
    [batch, C, H, W] input of weight's dtype (its noise is [batch, C, 1, 1]: the same draws)."""
    if not dropout.training or dropout.p == 0:
        return None
    channels = weight.shape[1]
    return dropout(torch.ones(batch, channels, 1, 1, device=device, dtype=weight.dtype)).view(batch, channels)


KNN_WIDTH = 30  # neighbours kept per image (STEGO's kNN files keep 30)


def knn_table(descriptors: torch.Tensor, k: int = KNN_WIDTH) -> torch.Tensor:
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
