"""STEGO's correspondence (feature-correlation) loss over the fused ``correlation_loss``, with
its published presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fussfast.ops import bilinear_sample, correlation_loss


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
        if self.backend == "fused" and pts.coords1 is not None:
            stack = [torch.cat(pair).permute(0, 2, 3, 1) for pair in ((feats, feats_pos), (codes, codes_pos))]
            return self.stacked(*stack, points=pts)
        f1, c1 = _sample(feats, pts.coords1), _sample(codes, pts.coords1)
        f2, c2 = _sample(feats_pos, pts.coords2), _sample(codes_pos, pts.coords2)
        lefts_f, lefts_c = [f1, f1], [c1, c1]
        rights_f, rights_c = [f1, f2], [c1, c2]
        for perm in pts.perms:
            lefts_f.append(f1)
            lefts_c.append(c1)
            rights_f.append(_sample(feats[perm], pts.coords2))
            rights_c.append(_sample(codes[perm], pts.coords2))
        return self._pairs(torch.cat(lefts_f), torch.cat(rights_f), torch.cat(lefts_c), torch.cat(rights_c),
                           B, len(pts.perms))

    def stacked(self, feats: torch.Tensor, codes: torch.Tensor, *, points: SamplePoints) -> CorrespondenceOutput:
        """``forward`` on channels-last maps, sampled by the fused ``bilinear_sample`` (STEGO's
        grid_sample): ``feats`` ``[2B, H, W, C]`` and ``codes`` ``[2B, H, W, D]`` hold the batch,
        then its positives. Every right-hand sample (intra, positive, negatives) is one kernel
        call on the stacked maps with an index, so no map is gathered or permuted."""
        B = feats.shape[0] // 2
        S = points.coords1.shape[1]
        index = torch.cat([torch.arange(2 * B, device=feats.device), *points.perms])
        where = [points.coords1, points.coords2] + [points.coords2] * len(points.perms)
        # STEGO samples at coords.permute(0, 2, 1, 3): the same point order
        where = torch.cat(where).transpose(1, 2).reshape(index.shape[0], S * S, 2)
        rows = len(index)

        def maps(samples):  # [rows, P, ch] -> [rows, ch, S, S]: channels-last, as the correlation op reads them
            return samples.transpose(1, 2).unflatten(2, (S, S))

        rights_f, rights_c = bilinear_sample(feats.detach(), where, index), bilinear_sample(codes, where, index)
        n = rows // B
        return self._pairs(maps(rights_f[:B].repeat(n, 1, 1)), maps(rights_f), maps(rights_c[:B].repeat(n, 1, 1)),
                           maps(rights_c), B, n - 2)

    def _pairs(self, lefts_f, rights_f, lefts_c, rights_c, B, n_neg) -> CorrespondenceOutput:
        cfg = self.config
        shift = torch.tensor([cfg.pos_intra_shift, cfg.pos_inter_shift] + [cfg.neg_inter_shift] * n_neg,
                             dtype=torch.float64, device=lefts_f.device).repeat_interleave(B)
        per_pair = correlation_loss(lefts_f, rights_f, lefts_c, rights_c, shift,
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
