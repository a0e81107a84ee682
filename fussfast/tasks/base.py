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
    """What both local models share: a ``head`` on cached features, predictions, the confusion matrix.

    ``encoder`` (LoRA on the backbone, ``fussfast.model.encoder``): the cached inputs are then the
    frozen backbone's tokens before the adapted blocks, and ``encode`` turns them into the head's
    input features; the LoRA factors are the model's ``lora.*`` arrays, trained with the head."""

    matching = "hungarian"  # how predictions map to classes when scoring
    device: torch.device
    head: torch.nn.Module
    encoder: torch.nn.Module | None = None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input features for cached inputs ``x``: ``x`` itself without an encoder."""
        return x if self.encoder is None else self.encoder(x)

    def encoded(self, cached: torch.Tensor) -> "Encoded | torch.Tensor":
        """A whole site's features to be read in batches: the cache itself, or with an encoder a
        view that encodes each slice when read (no site-sized feature copy)."""
        return cached if self.encoder is None else Encoded(cached, self.encode)

    def trained_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The trained parameters under their array names (``head.…``, ``lora.…``), as the
        strategies' client terms read them."""
        out = {f"head.{k}": p for k, p in self.head.named_parameters()}
        if self.encoder is not None:
            out.update({f"lora.{k}": p for k, p in self.encoder.lora.named_parameters()})
        return out

    def encoder_arrays(self) -> dict[str, torch.Tensor]:
        if self.encoder is None:
            return {}
        return {f"lora.{k}": v.detach().cpu().clone() for k, v in self.encoder.lora.state_dict().items()}

    def load_encoder(self, arrays: dict[str, torch.Tensor]) -> tuple[str, ...]:
        """Sets the ``lora.*`` entries of ``arrays``; returns their names."""
        names = tuple(k for k in arrays if k.startswith("lora."))
        if names and self.encoder is None:
            raise KeyError(f"load_arrays: LoRA arrays {list(names)[:3]} but this model has no LoRA")
        if names:
            state = self.encoder.lora.state_dict()
            unknown = [k for k in names if k.removeprefix("lora.") not in state]
            if unknown:
                raise KeyError(f"load_arrays: unknown arrays {unknown}")
            state.update({k.removeprefix("lora."): arrays[k] for k in names})
            self.encoder.lora.load_state_dict(state)
        return names

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


class Encoded:
    """``cached`` read through ``encode`` one slice at a time, without gradients."""

    def __init__(self, cached: torch.Tensor, encode):
        self.cached, self.encode = cached, encode

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.cached.shape[0],)

    def __getitem__(self, index) -> torch.Tensor:
        with torch.no_grad():
            return self.encode(self.cached[index])
