"""What both tasks' local models share: a ``head`` on cached features, predictions, scoring."""

from __future__ import annotations

import torch

from fussfast.eval import confusion_matrix, scores
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
    head_lr: float  # the head's learning rate (SCAFFOLD's eta)

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
