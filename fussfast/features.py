"""Backbone features of a dataset, extracted once and cached on disk (``FeatureSet``, ``extract``),
and read lazily for federations of many sites (``LazyFeatureSet``, ``on_disk``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
    images: object = None  # the dataset the features come from (items (image, mask)): the CRF's images

    def training_labels(self, num_classes: int) -> torch.Tensor:
        """The labels a supervised site trains on: classes its site does not annotate become -1."""
        if self.labelled is None:
            return self.masks
        known = torch.cat([self.labelled, torch.zeros_like(self.labelled[:, :1])], 1)  # column K: ignore
        index = torch.where(self.masks < 0, num_classes, self.masks).flatten(1)
        return torch.where(known.gather(1, index).view_as(self.masks), self.masks, -1)

    def __len__(self) -> int:
        return self.features.shape[0]

    def get(self) -> "FeatureSet":  # the interface of ``LazyFeatureSet``: already in memory
        return self

    def release(self) -> None:
        pass


class LazyFeatureSet:
    """A dataset's ``FeatureSet`` read by ``load()`` when first used (``get()``) and dropped by
    ``release()``, so that a federation of many sites maps only the sites in use. ``labelled``
    (the site's annotated classes) and ``images`` (its dataset, read lazily) stay; ``loads``
    counts the reads."""

    def __init__(self, num_images: int, load: Callable[[], FeatureSet]):
        self.num_images, self._load, self._data = num_images, load, None
        self.labelled: torch.Tensor | None = None
        self.images = None
        self.loads = 0

    def __len__(self) -> int:
        return self.num_images

    def get(self) -> FeatureSet:
        if self._data is None:
            self._data = self._load()
            self._data.labelled, self._data.images = self.labelled, self.images
            self.loads += 1
        return self._data

    def release(self) -> None:
        self._data = None


def weights_digest(weights: str, seed: int) -> str:
    if weights == "random":
        return f"random-seed{seed}"
    if weights == "timm":
        return "timm"
    return file_sha256(weights)[:16]


def _caches(dataset, key: dict, cache_dir: str | Path, flip: bool) -> list[FeatureCache]:
    return [FeatureCache(cache_dir, {**key, "flip": f}, len(dataset)) for f in ((False, True) if flip else (False,))]


def on_disk(dataset, key: dict, cache_dir: str | Path, *, flip: bool = False) -> bool:
    """Whether ``extract`` would find every shard (by size; it still verifies their digests)."""
    return all(c.on_disk() for c in _caches(dataset, key, cache_dir, flip))


def extract(backbone: FrozenBackbone | Callable[[], FrozenBackbone], dataset, key: dict, cache_dir: str | Path,
            device: torch.device, *, flip: bool = False, stem_block: int | None = None, batch_size: int = 32,
            progress=None) -> FeatureSet:
    """Features and masks of every image of ``dataset`` (items ``(image, mask)``), cached on disk
    and memory-mapped. ``backbone`` may be a function that builds it: it is called only when a
    shard must be extracted. ``stem_block``: the features kept are the backbone's tokens at the
    input of that block (``FrozenBackbone.stem``, for LoRA on the blocks from there on); the
    descriptors are still the frozen backbone's."""

    def features_of(start, stop, flipped):
        net = backbone if isinstance(backbone, torch.nn.Module) else backbone()
        items = [dataset[i] for i in range(start, stop)]
        images = torch.stack([image for image, _ in items])
        if flipped:
            images = images.flip(-1)
        out_f, out_d = [], []
        for b in range(0, len(images), batch_size):
            x = images[b:b + batch_size].to(device)
            f, d = net(x)
            if stem_block is not None:
                f = net.stem(x, stem_block)
            out_f.append(f.cpu())
            out_d.append(d.cpu())
        masks = () if flipped else (torch.stack([mask for _, mask in items]),)  # the masks: once, unflipped
        return torch.cat(out_f), torch.cat(out_d), *masks

    caches = _caches(dataset, key, cache_dir, flip)
    for cache, flipped in zip(caches, (False, True)):
        cache.ensure(lambda a, b: features_of(a, b, flipped), progress=progress)
    plain = caches[0]
    return FeatureSet(plain.features(), plain.descriptors(), plain.masks(), caches[1].features() if flip else None)
