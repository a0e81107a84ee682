"""FedSeg's pixel-to-region contrast: a region memory built by the global model, and the
contrast of local pixel embeddings against it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fussfast.ops import region_pool
from fussfast.ops.bilinear_sample import channels_last


@dataclass
class RegionMemory:
    """A site's region memory (FedSeg): the global model's normalized mean embedding per image
    and class, which regions exist, and the pixel labels at feature resolution it was built from."""

    regions: torch.Tensor  # [N, K, D], unit norm (zeros where absent)
    present: torch.Tensor  # [N, K] bool
    labels: torch.Tensor  # [N, h, w] int64: annotated class, confident pseudo-label, or -1


def labels_at(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label maps ``[N, H, W]`` sampled at the centres of an ``h x w`` grid (nearest)."""
    H, W = labels.shape[-2:]
    rows = ((torch.arange(size[0]) + 0.5) * H / size[0]).long().clamp(max=H - 1)
    cols = ((torch.arange(size[1]) + 0.5) * W / size[1]).long().clamp(max=W - 1)
    return labels[..., rows.to(labels.device)[:, None], cols.to(labels.device)]


def balanced_anchors(labels: torch.Tensor, max_anchors: int, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """Indices into the flat ``labels`` of at most ``max_anchors`` labelled (>= 0) pixels,
    ``max_anchors // classes`` drawn at random per class present (all of a smaller class)."""
    index = (labels >= 0).nonzero().squeeze(1)
    if index.numel() <= max_anchors:
        return index
    index = index[torch.randperm(index.numel(), generator=generator).to(index.device)]
    y = labels[index]
    counts = torch.bincount(y)
    quota = max_anchors // int((counts > 0).sum())
    y_sorted, order = torch.sort(y, stable=True)
    rank = torch.arange(y.numel(), device=y.device) - (counts.cumsum(0) - counts)[y_sorted]
    return index[order[rank < quota]]


class RegionContrast:
    """FedSeg's local-to-global pixel-to-region contrast.

    ``memory``: before local training the frozen global model embeds every site image; pixels
    keep their annotated class, an unlabelled pixel takes the global model's class where its
    softmax is at least ``threshold`` and that class is one the site does not annotate (an
    annotated class would have been labelled), and ``region_pool`` averages the embeddings per
    image and class into the normalized memory ``[N, K, D]`` in one pass.

    ``__call__``: for at most ``max_anchors`` anchor pixels of the batch (balanced over
    classes), with ``s = cos(anchor, region) / tau`` and P the regions of the anchor's class,
    ``loss = weight * mean_anchors mean_{p in P} -log(e^{s_p} / (e^{s_p} + Σ_{n not in P} e^{s_n}))``.
    Anchors whose class has no region, or with no region of another class, are skipped. At most
    ``max_regions`` regions (a random subset) enter a step.
    """

    def __init__(self, num_classes: int, *, tau: float = 0.07, weight: float = 1.0, threshold: float = 0.8,
                 max_anchors: int = 4096, max_regions: int = 16384, backend: str = "fused"):
        if tau <= 0 or weight < 0 or not 0 <= threshold <= 1 or max_anchors < 1 or max_regions < 1:
            raise ValueError("RegionContrast: need tau > 0, weight >= 0, threshold in [0, 1], max_anchors >= 1, "
                             "max_regions >= 1")
        self.num_classes, self.tau, self.weight, self.threshold = num_classes, tau, weight, threshold
        self.max_anchors, self.max_regions, self.backend = max_anchors, max_regions, backend

    @torch.no_grad()
    def memory(self, head: nn.Module, features: torch.Tensor, labels: torch.Tensor, labelled: torch.Tensor,
               batch_size: int = 64, adapt=None) -> RegionMemory:
        """``features`` [N, C, h, w]; ``labels`` [N, H, W] (-1: unlabelled); ``labelled`` [N, K]
        bool, the classes annotated in each image's site. ``head`` returns (logits, embeddings);
        ``adapt(features, channels_last)`` (e.g. a mixture of experts) maps each batch before the head."""
        was_training = head.training
        head.eval()
        device = next(head.parameters()).device
        regions, counts, maps = [], [], []
        sparse = self.backend == "fused" and hasattr(head, "trunk_rows")
        for b in range(0, features.shape[0], batch_size):  # batches bound the memory, not a loop over images
            if sparse:  # channels-last, embeddings only where a label reaches region_pool
                x = channels_last(features[b:b + batch_size], device, head.lin.weight.dtype)
                logits, h = head.trunk_rows(x if adapt is None else adapt(x, channels_last=True))
                logits = logits.permute(0, 3, 1, 2)
            else:
                x = features[b:b + batch_size].to(device)
                logits, embed = head(x if adapt is None else adapt(x))
            lab = labels_at(labels[b:b + batch_size].to(device), logits.shape[-2:])
            confidence, pseudo = logits.softmax(1).max(1)
            known = labelled[b:b + batch_size].to(device)
            absent = ~known.gather(1, pseudo.flatten(1)).view_as(pseudo)
            lab = torch.where((lab < 0) & (confidence >= self.threshold) & absent, pseudo, lab)
            if sparse:
                where = (lab >= 0).view(-1).nonzero()[:, 0]
                rows = head.embed_rows(h.reshape(-1, h.shape[-1])[where])
                embed = rows.new_zeros(h.shape[:-1].numel(), rows.shape[1]).index_copy_(0, where, rows)
                embed = embed.view(*h.shape[:-1], -1).permute(0, 3, 1, 2)
            means, n = region_pool(embed, lab, self.num_classes, ignore_index=-1, normalize=True,
                                   backend=self.backend)
            regions.append(means)
            counts.append(n)
            maps.append(lab)
        head.train(was_training)
        return RegionMemory(torch.cat(regions), torch.cat(counts) > 0, torch.cat(maps))

    def __call__(self, embed: torch.Tensor, labels: torch.Tensor, memory: RegionMemory,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``embed`` [B, D, h, w] (the local model's); ``labels`` [B, h, w] (``memory.labels`` of the batch)."""
        flat = embed.permute(0, 2, 3, 1).reshape(-1, embed.shape[1])
        return self.at_pixels(lambda rows: flat[rows], labels, memory, generator)

    def at_pixels(self, embed_at, labels: torch.Tensor, memory: RegionMemory,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """``__call__`` with the embeddings given by ``embed_at(rows)`` ``[R, D]`` for pixel
        indices into the flat ``[B, h, w]`` labels: called once, for the anchors used only."""
        device = memory.regions.device
        y = labels.reshape(-1).to(device)
        anchors = balanced_anchors(y, self.max_anchors, generator)
        regions = memory.regions[memory.present]
        region_class = memory.present.nonzero()[:, 1].to(device)
        if regions.shape[0] > self.max_regions:
            keep = torch.randperm(regions.shape[0], generator=generator)[:self.max_regions].to(device)
            regions, region_class = regions[keep], region_class[keep]
        y_a = y[anchors]
        positive = y_a[:, None] == region_class[None]
        usable = positive.any(1) & (~positive).any(1)
        if not bool(usable.any()):
            return embed_at(anchors[:0]).sum() * 0  # keeps the graph: no anchor has both positives and negatives
        z = F.normalize(embed_at(anchors[usable]), dim=1)
        positive, s = positive[usable], z @ regions.to(z).T / self.tau
        negatives = torch.logsumexp(s.masked_fill(positive, float("-inf")), dim=1, keepdim=True)
        per_pair = torch.logaddexp(s, negatives) - s
        per_anchor = (per_pair * positive).sum(1) / positive.sum(1)
        return self.weight * per_anchor.mean()
