"""Training objectives built on fussfast.ops."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fussfast.ops import correlation_loss


@dataclass(frozen=True)
class CorrespondenceConfig:
    """STEGO's ContrastiveCorrelationLoss settings (names follow STEGO's config keys)."""

    pos_intra_weight: float
    pos_inter_weight: float
    neg_inter_weight: float
    pos_intra_shift: float
    pos_inter_shift: float
    neg_inter_shift: float
    feature_samples: int | None = 11  # points per side of the sampled grid; None = full maps
    neg_samples: int = 5
    pointwise: bool = True
    zero_clamp: bool = True
    stabilize: bool = False

    @classmethod
    def preset(cls, name: str, **overrides) -> "CorrespondenceConfig":
        """One of PRESETS, with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown correspondence preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


# Published STEGO/FUSS settings (STEGO configs; FUSS uses the Cityscapes one).
PRESETS = {
    "cityscapes": CorrespondenceConfig(
        pos_intra_weight=1.0, pos_inter_weight=0.5775, neg_inter_weight=0.9059,
        pos_intra_shift=0.4583, pos_inter_shift=0.1754, neg_inter_shift=0.3136),
    "cocostuff27-vitb": CorrespondenceConfig(
        pos_intra_weight=0.1, pos_inter_weight=1.0, neg_inter_weight=0.1538,
        pos_intra_shift=0.12, pos_inter_shift=0.2, neg_inter_shift=1.0),
    "cocostuff27-vits": CorrespondenceConfig(
        pos_intra_weight=0.67, pos_inter_weight=0.25, neg_inter_weight=0.63,
        pos_intra_shift=0.08, pos_inter_shift=0.02, neg_inter_shift=0.66),
}


@dataclass
class CorrespondenceOutput:
    total: torch.Tensor  # weighted sum of the three terms
    intra: torch.Tensor
    inter: torch.Tensor
    neg: torch.Tensor


@dataclass
class SamplePoints:
    """Random draws of one step: grid points for both sides and the negatives' derangements."""

    coords1: torch.Tensor | None  # [B, S, S, 2] in [-1, 1], or None for the full maps
    coords2: torch.Tensor | None
    perms: list[torch.Tensor]


class CorrespondenceLoss(nn.Module):
    """Drop-in for STEGO's ContrastiveCorrelationLoss on (feats, codes, feats_pos, codes_pos).

    The intra pairs (an image with itself), the kNN-positive pairs and ``neg_samples`` negative
    pairings all go through one fused ``correlation_loss`` call, each pair type keeping its own
    shift and pointwise mean (``groups``). Negatives pair every image with another one: a true
    derangement of the batch (STEGO's ``super_perm`` can pair an image with itself).
    """

    def __init__(self, config: CorrespondenceConfig | str = "cityscapes", *, backend: str = "fused"):
        super().__init__()
        self.config = CorrespondenceConfig.preset(config) if isinstance(config, str) else config
        self.backend = backend

    def sample_points(self, batch: int, device: torch.device | str,
                      generator: torch.Generator | None = None) -> SamplePoints:
        cfg = self.config
        if cfg.neg_samples > 0 and batch < 2:
            raise ValueError("CorrespondenceLoss: negative pairs need a batch of at least 2 images")
        perms = [derangement(batch, generator).to(device) for _ in range(cfg.neg_samples)]
        if cfg.feature_samples is None:
            return SamplePoints(None, None, perms)
        shape = (batch, cfg.feature_samples, cfg.feature_samples, 2)
        coords = [(torch.rand(shape, generator=generator) * 2 - 1).to(device) for _ in range(2)]
        return SamplePoints(coords[0], coords[1], perms)

    def forward(self, feats: torch.Tensor, codes: torch.Tensor, feats_pos: torch.Tensor,
                codes_pos: torch.Tensor, *, points: SamplePoints | None = None) -> CorrespondenceOutput:
        cfg = self.config
        B = feats.shape[0]
        pts = points if points is not None else self.sample_points(B, feats.device)
        f1, c1 = _sample(feats, pts.coords1), _sample(codes, pts.coords1)
        f2, c2 = _sample(feats_pos, pts.coords2), _sample(codes_pos, pts.coords2)
        lefts_f, lefts_c = [f1, f1], [c1, c1]
        rights_f, rights_c = [f1, f2], [c1, c2]
        for perm in pts.perms:
            lefts_f.append(f1)
            lefts_c.append(c1)
            rights_f.append(_sample(feats[perm], pts.coords2))
            rights_c.append(_sample(codes[perm], pts.coords2))
        n_neg = len(pts.perms)
        shift = torch.tensor([cfg.pos_intra_shift, cfg.pos_inter_shift] + [cfg.neg_inter_shift] * n_neg,
                             dtype=torch.float64, device=feats.device).repeat_interleave(B)
        per_pair = correlation_loss(
            torch.cat(lefts_f), torch.cat(rights_f), torch.cat(lefts_c), torch.cat(rights_c), shift,
            pointwise=cfg.pointwise, zero_clamp=cfg.zero_clamp, stabilize=cfg.stabilize,
            reduction="none", groups=2 + n_neg, backend=self.backend)
        intra, inter = per_pair[:B].mean(), per_pair[B:2 * B].mean()
        neg = per_pair[2 * B:].mean() if n_neg else per_pair.new_zeros(())
        total = cfg.pos_intra_weight * intra + cfg.pos_inter_weight * inter + cfg.neg_inter_weight * neg
        return CorrespondenceOutput(total, intra, inter, neg)


def derangement(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random permutation of range(n) with no fixed point (n >= 2), by rejection:
    about e draws on average."""
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2, got {n}")
    while True:
        perm = torch.randperm(n, generator=generator)
        if not (perm == torch.arange(n)).any():
            return perm


def _sample(t: torch.Tensor, coords: torch.Tensor | None) -> torch.Tensor:
    """STEGO's sample(): grid_sample at coords (border padding, align_corners=True)."""
    if coords is None:
        return t
    return F.grid_sample(t, coords.permute(0, 2, 1, 3).to(t.dtype), padding_mode="border", align_corners=True)


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
               batch_size: int = 64) -> RegionMemory:
        """``features`` [N, C, h, w]; ``labels`` [N, H, W] (-1: unlabelled); ``labelled`` [N, K]
        bool, the classes annotated in each image's site. ``head`` returns (logits, embeddings)."""
        from fussfast.ops import region_pool

        was_training = head.training
        head.eval()
        device = next(head.parameters()).device
        regions, counts, maps = [], [], []
        for b in range(0, features.shape[0], batch_size):  # batches bound the memory, not a loop over images
            logits, embed = head(features[b:b + batch_size].to(device))
            lab = labels_at(labels[b:b + batch_size].to(device), logits.shape[-2:])
            confidence, pseudo = logits.softmax(1).max(1)
            known = labelled[b:b + batch_size].to(device)
            absent = ~known.gather(1, pseudo.flatten(1)).view_as(pseudo)
            lab = torch.where((lab < 0) & (confidence >= self.threshold) & absent, pseudo, lab)
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
        D = embed.shape[1]
        z = F.normalize(embed, dim=1).permute(0, 2, 3, 1).reshape(-1, D)
        y = labels.reshape(-1).to(z.device)
        anchors = balanced_anchors(y, self.max_anchors, generator)
        regions = memory.regions[memory.present].to(z)
        region_class = memory.present.nonzero()[:, 1].to(z.device)
        if regions.shape[0] > self.max_regions:
            keep = torch.randperm(regions.shape[0], generator=generator)[:self.max_regions].to(z.device)
            regions, region_class = regions[keep], region_class[keep]
        y_a = y[anchors]
        positive = y_a[:, None] == region_class[None]
        usable = positive.any(1) & (~positive).any(1)
        if not bool(usable.any()):
            return z.sum() * 0  # keeps the graph: no anchor has both positives and negatives
        positive, s = positive[usable], z[anchors[usable]] @ regions.T / self.tau
        negatives = torch.logsumexp(s.masked_fill(positive, float("-inf")), dim=1, keepdim=True)
        per_pair = torch.logaddexp(s, negatives) - s
        per_anchor = (per_pair * positive).sum(1) / positive.sum(1)
        return self.weight * per_anchor.mean()
