"""The single-site pipeline every strategy reuses: cached backbone features and the two local
models, ``SiteModel`` (FUSS: correspondence loss + cluster probe, Hungarian evaluation) and
``SupervisedModel`` (FedSeg: CE or BackCE + pixel-to-region contrast, identity evaluation)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fussfast.eval import confusion_matrix, scores
from fussfast.losses import CorrespondenceConfig, CorrespondenceLoss, RegionContrast
from fussfast.model import ClusterProbe, FrozenBackbone, SegmentationHead, SupervisedHead, draw_positives
from fussfast.model.cache import FeatureCache
from fussfast.ops import back_ce


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
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


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


def _load_head(head: torch.nn.Module, arrays: dict[str, torch.Tensor], others: tuple[str, ...] = ()) -> None:
    """Sets the ``head.*`` entries of ``arrays``; names neither ``head.*`` nor in ``others`` raise."""
    state = head.state_dict()
    unknown = [k for k in arrays if k not in others and k.removeprefix("head.") not in state]
    if unknown:
        raise KeyError(f"load_arrays: unknown arrays {unknown}")
    state.update({k.removeprefix("head."): v for k, v in arrays.items() if k.startswith("head.")})
    head.load_state_dict(state)


class _Model:
    """What both local models share: a ``head`` on cached features, predictions, the confusion matrix."""

    matching = "hungarian"  # how predictions map to classes when scoring
    device: torch.device

    def predict(self, features: torch.Tensor, flipped: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def confusion(self, data: FeatureSet, num_classes: int, batch_size: int = 64) -> torch.Tensor:
        """Confusion matrix ``[predicted, true]`` of the predictions against the ground truth."""
        total = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        for b in range(0, data.features.shape[0], batch_size):
            masks = data.masks[b:b + batch_size]
            flipped = data.flipped[b:b + batch_size] if data.flipped is not None else None
            labels = self.predict(data.features[b:b + batch_size], flipped, masks.shape[-2:])
            total += confusion_matrix(labels, masks.to(self.device), num_classes, num_classes).cpu()
        return total

    def scores(self, data: FeatureSet, num_classes: int) -> dict:
        """mIoU and accuracy on ``data``, predictions mapped to classes by ``matching``."""
        return scores(self.confusion(data, num_classes), self.matching)


class SiteModel(_Model):
    """A head and a cluster probe with their optimizers (Adam: head 5e-4, probe 5e-3 by default)."""

    def __init__(self, feat_dim: int, code_dim: int, num_classes: int, *, loss: CorrespondenceConfig,
                 num_neighbors: int = 2, head_lr: float = 5e-4, probe_lr: float = 5e-3,
                 backend: str = "fused", device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.head = SegmentationHead(feat_dim, code_dim).to(self.device)
        self.probe = ClusterProbe(code_dim, num_classes, backend=backend).to(self.device)
        self.loss = CorrespondenceLoss(loss, backend=backend)
        self.num_neighbors = num_neighbors
        self.head_opt = torch.optim.Adam(self.head.parameters(), lr=head_lr)
        self.probe_opt = torch.optim.Adam(self.probe.parameters(), lr=probe_lr)

    def arrays(self) -> dict[str, torch.Tensor]:
        """What travels to the server: the head's parameters and the centroids."""
        out = {f"head.{k}": v.detach().cpu().clone() for k, v in self.head.state_dict().items()}
        out["centroids"] = self.probe.clusters.detach().cpu().clone()
        return out

    def load_arrays(self, arrays: dict[str, torch.Tensor]) -> None:
        """Sets the given arrays (all or some of ``arrays()``'s names); the rest stay as they are."""
        with torch.no_grad():
            _load_head(self.head, arrays, ("centroids",))
            if "centroids" in arrays:
                self.probe.clusters.copy_(arrays["centroids"])

    def optimizer_states(self) -> dict:
        return {"head": self.head_opt.state_dict(), "probe": self.probe_opt.state_dict()}

    def load_optimizer_states(self, states: dict) -> None:
        self.head_opt.load_state_dict(states["head"])
        self.probe_opt.load_state_dict(states["probe"])

    def train_steps(self, data: FeatureSet, table: torch.Tensor, steps: int, batch_size: int,
                    generator: torch.Generator, extra=None) -> list[float]:
        """``steps`` updates on random batches; positives come from the kNN ``table``;
        ``extra(head, feats, code)`` adds a client-side term (FedProx, MOON, distillation)."""
        self.head.train()
        losses = []
        n = data.features.shape[0]
        for _ in range(steps):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=generator)
            pos = draw_positives(table, idx, self.num_neighbors, generator=generator)
            feats = data.features[idx].to(self.device).float()
            feats_pos = data.features[pos].to(self.device).float()
            code, code_pos = self.head(feats), self.head(feats_pos)
            points = self.loss.sample_points(len(idx), self.device, generator=generator)
            corr = self.loss(feats, code, feats_pos, code_pos, points=points)
            probe_loss, _ = self.probe(code.detach())
            self.head_opt.zero_grad()
            self.probe_opt.zero_grad()
            (corr.total + probe_loss + (extra(self.head, feats, code) if extra else 0)).backward()
            self.head_opt.step()
            self.probe_opt.step()
            losses.append(float((corr.total + probe_loss).detach()))
        return losses

    @torch.no_grad()
    def predict(self, features: torch.Tensor, flipped: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        """Cluster per pixel (flip-averaged codes when ``flipped`` is given), nearest-upsampled to ``size``."""
        self.head.eval()
        code = self.head(features.to(self.device))
        if flipped is not None:
            code = (code + self.head(flipped.to(self.device)).flip(-1)) / 2
        labels = self.probe.labels(code)
        return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


class SupervisedModel(_Model):
    """FedSeg's local model: a ``SupervisedHead`` trained with plain CE, BackCE, or BackCE plus
    the pixel-to-region contrast (``objective``: ce, backce, backce+contrast), Adam at ``lr``.

    The classification loss is computed at label resolution on bilinearly upsampled logits.
    ``ce`` ignores unlabelled pixels (BackCE with every class present); ``backce`` sends them to
    the classes the image's site does not annotate. With the contrast, the region memory is built
    from the head as it is when ``train_steps`` starts (the global model, at a round's start).
    """

    matching = "identity"
    OBJECTIVES = ("ce", "backce", "backce+contrast")

    def __init__(self, feat_dim: int, num_classes: int, *, embed_dim: int = 256, objective: str = "backce+contrast",
                 contrast: RegionContrast | None = None, lr: float = 5e-4, backend: str = "fused",
                 device: torch.device | str = "cpu"):
        if objective not in self.OBJECTIVES:
            raise ValueError(f"SupervisedModel: objective must be one of {self.OBJECTIVES}, got {objective!r}")
        self.device = torch.device(device)
        self.num_classes, self.objective, self.backend = num_classes, objective, backend
        self.head = SupervisedHead(feat_dim, num_classes, embed_dim).to(self.device)
        self.contrast = None
        if objective == "backce+contrast":
            self.contrast = contrast or RegionContrast(num_classes, backend=backend)
        self.opt = torch.optim.Adam(self.head.parameters(), lr=lr)

    def arrays(self) -> dict[str, torch.Tensor]:
        return {f"head.{k}": v.detach().cpu().clone() for k, v in self.head.state_dict().items()}

    def load_arrays(self, arrays: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            _load_head(self.head, arrays)

    def optimizer_states(self) -> dict:
        return {"head": self.opt.state_dict()}

    def load_optimizer_states(self, states: dict) -> None:
        self.opt.load_state_dict(states["head"])

    def train_steps(self, data: FeatureSet, table: torch.Tensor, steps: int, batch_size: int,
                    generator: torch.Generator, extra=None) -> list[float]:
        """``steps`` updates on random batches (``table`` is unused: no kNN positives);
        ``extra(head, feats, embed)`` adds a client-side term (FedProx, MOON, distillation)."""
        K = self.num_classes
        labels = data.training_labels(K)
        every = torch.ones(data.features.shape[0], K, dtype=torch.bool)
        labelled = every if data.labelled is None or self.objective == "ce" else data.labelled
        memory = (self.contrast.memory(self.head, data.features, labels, labelled)
                  if self.contrast is not None else None)
        self.head.train()
        losses = []
        n = data.features.shape[0]
        for _ in range(steps):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=generator)
            feats = data.features[idx].to(self.device).float()
            target = labels[idx].to(self.device)
            logits, embed = self.head(feats)
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
            loss = back_ce(logits, target, labelled[idx].to(self.device), ignore_index=-1, backend=self.backend)
            if memory is not None:
                loss = loss + self.contrast(embed, memory.labels[idx.to(memory.labels.device)], memory, generator)
            self.opt.zero_grad()
            (loss + (extra(self.head, feats, embed) if extra else 0)).backward()
            self.opt.step()
            losses.append(float(loss.detach()))
        return losses

    @torch.no_grad()
    def predict(self, features: torch.Tensor, flipped: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        """Class per pixel from the (flip-averaged) logits, bilinearly upsampled to ``size``."""
        self.head.eval()
        logits = self.head(features.to(self.device))[0]
        if flipped is not None:
            logits = (logits + self.head(flipped.to(self.device))[0].flip(-1)) / 2
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)
