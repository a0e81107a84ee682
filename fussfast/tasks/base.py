"""What both tasks' local models share: a ``head`` on cached features, predictions, scoring."""

from __future__ import annotations

import torch

from fussfast.data.synthetic import IMAGENET_MEAN, IMAGENET_STD
from fussfast.eval import DenseCRF, confusion_matrix, scores
from fussfast.features import FeatureSet


def load_head(head: torch.nn.Module, arrays: dict[str, torch.Tensor], others: tuple[str, ...] = ()) -> None:
    """Sets the ``head.*`` entries of ``arrays``; names neither ``head.*`` nor in ``others`` raise."""
    state = head.state_dict()
    unknown = [k for k in arrays if k not in others and k.removeprefix("head.") not in state]
    if unknown:
        raise KeyError(f"load_arrays: unknown arrays {unknown}")
    state.update({k.removeprefix("head."): v for k, v in arrays.items() if k.startswith("head.")})
    head.load_state_dict(state)


class LocalModel:
    """What both local models share: a ``head`` on cached features, predictions, the confusion matrix."""

    matching = "hungarian"  # how predictions map to classes when scoring
    device: torch.device

    def predict(self, features: torch.Tensor, flipped: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def log_probs(self, features: torch.Tensor, flipped: torch.Tensor | None, size: tuple[int, int],
                  alpha: float) -> torch.Tensor:
        """``[B, K, *size]`` log-probabilities of the classes (clusters) per pixel, for the CRF;
        ``alpha`` scales the unsupervised model's cluster cosines."""
        raise NotImplementedError

    @torch.no_grad()
    def confusion(self, data: FeatureSet, num_classes: int, batch_size: int = 64,
                  crf: DenseCRF | None = None) -> torch.Tensor:
        """Confusion matrix ``[predicted, true]`` of the predictions against the ground truth; with
        ``crf``, of the predictions refined by it on ``data.images``."""
        if crf is not None and data.images is None:
            raise ValueError("config key 'eval.crf': this evaluation set has no images to refine on")
        total = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        batch_size = batch_size if crf is None else min(batch_size, 8)  # full-resolution probabilities
        for b in range(0, data.features.shape[0], batch_size):
            masks = data.masks[b:b + batch_size]
            flipped = data.flipped[b:b + batch_size] if data.flipped is not None else None
            if crf is None:
                labels = self.predict(data.features[b:b + batch_size], flipped, masks.shape[-2:])
            else:
                log_probs = self.log_probs(data.features[b:b + batch_size], flipped, masks.shape[-2:], crf.alpha)
                labels = crf.labels(pixels(data.images, range(b, b + len(masks))), log_probs)
            total += confusion_matrix(labels, masks.to(self.device), num_classes, num_classes).cpu()
        return total

    def scores(self, data: FeatureSet, num_classes: int, crf: DenseCRF | None = None) -> dict:
        """mIoU, Dice and accuracy on ``data``, predictions mapped to classes by ``matching``; with
        ``crf``, also those of the CRF-refined predictions under ``"crf"`` (matched on their own)."""
        out = scores(self.confusion(data, num_classes), self.matching)
        if crf is not None:
            out["crf"] = scores(self.confusion(data, num_classes, crf=crf), self.matching)
        return out


def pixels(dataset, indices) -> torch.Tensor:
    """``[B, 3, H, W]`` uint8 RGB of ``dataset``'s images (items ``(normalized image, mask)``) at ``indices``."""
    images = torch.stack([dataset[i][0] for i in indices]).float()
    mean, std = (torch.from_numpy(v).float().view(3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (((images * std + mean).clamp(0, 1)) * 255).round().to(torch.uint8)
