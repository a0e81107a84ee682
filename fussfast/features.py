"""Backbone features of a dataset, extracted once and cached on disk (``FeatureSet``, ``extract``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fussfast._files import file_sha256
from fussfast.model import FrozenBackbone
from fussfast.model.cache import FeatureCache


@dataclass
class FeatureSet:
    """Backbone features of a dataset (with its horizontally flipped copy for evaluation)."""

    features: torch.Tensor  # [N, C, h, w] float16
    descriptors: torch.Tensor  # [N, C]
    masks: torch.Tensor  # [N, H, W] int64 ground truth (-1: ignore)
    flipped: torch.Tensor | None = None  # features of the flipped images
    labelled: torch.Tensor | None = None  # [N, K] bool: the classes each image's site annotates (None: all)

    def training_labels(self, num_classes: int) -> torch.Tensor:
        """The labels a supervised site trains on: classes its site does not annotate become -1."""
        if self.labelled is None:
            return self.masks
        known = torch.cat([self.labelled, torch.zeros_like(self.labelled[:, :1])], 1)  # column K: ignore
        index = torch.where(self.masks < 0, num_classes, self.masks).flatten(1)
        return torch.where(known.gather(1, index).view_as(self.masks), self.masks, -1)


def weights_digest(weights: str, seed: int) -> str:
    if weights == "random":
        return f"random-seed{seed}"
    if weights == "timm":
        return "timm"
    return file_sha256(weights)[:16]


def extract(backbone: FrozenBackbone, dataset, key: dict, cache_dir: str | Path, device: torch.device,
            *, flip: bool = False, batch_size: int = 32, progress=None) -> FeatureSet:
    """Features of every image of ``dataset`` (items ``(image, mask)``), cached on disk."""

    def features_of(start, stop, flipped):
        images = torch.stack([dataset[i][0] for i in range(start, stop)])
        if flipped:
            images = images.flip(-1)
        out_f, out_d = [], []
        for b in range(0, len(images), batch_size):
            f, d = backbone(images[b:b + batch_size].to(device))
            out_f.append(f.cpu())
            out_d.append(d.cpu())
        return torch.cat(out_f), torch.cat(out_d)

    sets = []
    for flipped in (False, True) if flip else (False,):
        cache = FeatureCache(cache_dir, {**key, "flip": flipped}, len(dataset))
        cache.ensure(lambda a, b: features_of(a, b, flipped), progress=progress)
        sets.append(cache)
    masks = torch.stack([dataset[i][1] for i in range(len(dataset))])
    return FeatureSet(sets[0].features(), sets[0].descriptors(), masks, sets[1].features() if flip else None)
