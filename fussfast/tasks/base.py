"""What both tasks' local models share: a ``head`` on cached inputs, what may sit in front of it
(LoRA's encoder, the mixture of experts), predictions, scoring (optionally through a dense CRF)."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from fussfast.data.synthetic import IMAGENET_MEAN, IMAGENET_STD
from fussfast.eval import DenseCRF, confusion_matrix, scores
from fussfast.features import FeatureSet
from fussfast.model.moe import MixtureAdapter, balance_loss

MOE = "moe"  # the arrays' prefix of the mixture of experts (a local group: it never travels)


def load_head(head: torch.nn.Module, arrays: dict[str, torch.Tensor], others: tuple[str, ...] = ()) -> None:
    """Sets the ``head.*`` entries of ``arrays``; names neither ``head.*`` nor in ``others`` raise."""
    state = head.state_dict()
    unknown = [k for k in arrays if k not in others and k.removeprefix("head.") not in state]
    if unknown:
        raise KeyError(f"load_arrays: unknown arrays {unknown}")
    state.update({k.removeprefix("head."): v for k, v in arrays.items() if k.startswith("head.")})
    head.load_state_dict(state)


class Representation(nn.Module):
    """What MOON and distillation compare between models, from raw features: the head's
    representation of ``moe(features)``, or of the features themselves without ``moe``."""

    def __init__(self, head: nn.Module, moe: MixtureAdapter | None):
        super().__init__()
        self.head, self.moe = head, moe

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head.representation(feats if self.moe is None else self.moe(feats))


class LocalModel:
    """What both local models share: a ``head`` on cached inputs, what sits in front of it,
    predictions, the confusion matrix.

    In front of the head, in this order (each optional):

    - ``encoder`` (LoRA on the backbone, ``fussfast.model.encoder``): the cached inputs are then
      the frozen backbone's tokens before the adapted blocks, and ``encode`` turns them into
      features; its factors are the ``lora.*`` arrays, trained with the head by the head's Adam.
    - ``moe``, the local mixture of experts (arrays ``moe.*``, its own Adam): ``head_input``
      adapts the features the head reads.
    """

    matching = "hungarian"  # how predictions map to classes when scoring
    device: torch.device
    head: nn.Module
    head_lr: float  # the head's (and LoRA's) learning rate: SCAFFOLD's eta
    encoder: nn.Module | None = None
    moe: MixtureAdapter | None = None
    moe_balance = 0.0  # weight of the experts' load-balancing term
    adapting = True  # False: the MoE is bypassed (phase 1 of a two-phase round trains the global model)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The features of cached inputs ``x``: ``x`` itself without an encoder."""
        return x if self.encoder is None else self.encoder(x)

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's features of cached inputs ``x``, without gradients: the teacher
        signal of STEGO's loss. With LoRA these are not the adapted features the head reads: a
        target the adapter could move would let it collapse features and codes together."""
        return x if self.encoder is None else self.encoder.frozen(x)

    def encoded(self, cached: torch.Tensor) -> "Encoded | torch.Tensor":
        """A whole site's features to be read in batches: the cache itself, or with an encoder a
        view that encodes each slice when read (no site-sized feature copy)."""
        return cached if self.encoder is None else Encoded(cached, self.encode)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """LoRA's factors (none without an encoder): the head's Adam trains them."""
        return [] if self.encoder is None else list(self.encoder.parameters())

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

    def _add_moe(self, dim: int, experts: int, hidden: int, router: str, balance: float, lr: float) -> None:
        """A MoE of ``experts`` experts in front of the head (none if 0), trained by its own Adam."""
        if experts > 0:
            self.moe = MixtureAdapter(dim, experts, hidden, router).to(self.device)
            self.moe_balance = balance
            self.moe_opt = torch.optim.Adam(self.moe.parameters(), lr=lr)

    def head_input(self, feats: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """What the head reads: the frozen features through the MoE (when there is one and it is
        not bypassed), in the features' layout (NCHW, or channels-last whole images) and dtype.
        Every path (training, fused training, predictions, the region memory) goes through here."""
        if self.moe is None or not self.adapting:
            return feats
        return self.moe.rows(feats) if channels_last else self.moe(feats)

    def balance_term(self):
        """The MoE's load-balancing term on the last ``head_input``'s gates, weighted (0 without)."""
        if self.moe is None:
            return 0
        gates, self.moe.last_gates = self.moe.last_gates, None  # taken once: no graph outlives the step
        if not self.adapting or gates is None or self.moe_balance == 0:
            return 0
        return self.moe_balance * balance_loss(gates)

    def representation(self) -> Representation:
        """The model's representation of raw features (``Representation``; shares the parameters)."""
        return Representation(self.head, self.moe if self.adapting else None)

    def _moe_arrays(self) -> dict[str, torch.Tensor]:
        if self.moe is None:
            return {}
        return {f"{MOE}.{k}": v.detach().cpu().clone() for k, v in self.moe.state_dict().items()}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimizer, by its name in the saved state."""
        raise NotImplementedError

    def _moe_optimizer(self) -> dict[str, torch.optim.Optimizer]:
        return {MOE: self.moe_opt} if self.moe is not None else {}

    def optimizer_states(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers().items()}

    def load_optimizer_states(self, states: dict) -> None:
        for name, opt in self.optimizers().items():
            opt.load_state_dict(states[name])

    def _load_moe(self, arrays: dict[str, torch.Tensor]) -> None:
        given = {k.removeprefix(MOE + "."): v for k, v in arrays.items() if k.startswith(MOE + ".")}
        if given and self.moe is None:
            raise KeyError(f"load_arrays: unknown arrays {sorted(given)} (the model has no MoE)")
        if given:
            self.moe.load_state_dict({**self.moe.state_dict(), **given})

    def trained_parameters(self) -> dict[str, nn.Parameter]:
        """Every trained parameter by its array name (``arrays()``'s names: ``head.…``, ``lora.…``,
        ``moe.…``), as the strategies' client terms and ``phase`` read them."""
        params = {f"head.{k}": p for k, p in self.head.named_parameters()}
        if self.encoder is not None:
            params.update({f"lora.{k}": p for k, p in self.encoder.lora.named_parameters()})
        if self.moe is not None:
            params.update({f"{MOE}.{k}": p for k, p in self.moe.named_parameters()})
        return params

    @contextlib.contextmanager
    def phase(self, trains: Callable[[str], bool], adapting: bool = True):
        """Within: only the parameters whose array name ``trains`` accepts get gradients; Adam
        steps no parameter without one, so the others stay bit-exact (their moments too).
        ``adapting=False`` bypasses the MoE (the head reads the raw features)."""
        frozen = [p for k, p in self.trained_parameters().items() if p.requires_grad and not trains(k)]
        before, self.adapting = self.adapting, adapting
        for p in frozen:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in frozen:
                p.requires_grad_(True)
            self.adapting = before

    def predict(self, features: torch.Tensor, flipped: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def log_probs(self, features: torch.Tensor, flipped: torch.Tensor | None, size: tuple[int, int],
                  alpha: float) -> torch.Tensor:
        """``[B, K, *size]`` log-probabilities of the classes (clusters) per pixel, for the CRF;
        ``alpha`` scales the unsupervised model's cluster cosines."""
        raise NotImplementedError

    def prediction_count(self, num_classes: int) -> int:
        """How many values a prediction may take: the classes (the unsupervised model: its centroid slots)."""
        return num_classes

    @torch.no_grad()
    def confusion(self, data: FeatureSet, num_classes: int, batch_size: int = 64,
                  crf: DenseCRF | None = None) -> torch.Tensor:
        """Confusion matrix ``[predicted, true]`` (``[prediction_count, num_classes]``) of the
        predictions against the ground truth; with ``crf``, of the predictions refined by it on
        ``data.images``."""
        if crf is not None and data.images is None:
            raise ValueError("config key 'eval.crf': this evaluation set has no images to refine on")
        rows = self.prediction_count(num_classes)
        total = torch.zeros(rows, num_classes, dtype=torch.int64)
        batch_size = batch_size if crf is None else min(batch_size, 8)  # full-resolution probabilities
        for b in range(0, data.features.shape[0], batch_size):
            masks = data.masks[b:b + batch_size]
            flipped = data.flipped[b:b + batch_size] if data.flipped is not None else None
            if crf is None:
                labels = self.predict(data.features[b:b + batch_size], flipped, masks.shape[-2:])
            else:
                log_probs = self.log_probs(data.features[b:b + batch_size], flipped, masks.shape[-2:], crf.alpha)
                labels = crf.labels(pixels(data.images, range(b, b + len(masks))), log_probs)
            total += confusion_matrix(labels, masks.to(self.device), rows, num_classes).cpu()
        return total

    def scores(self, data: FeatureSet, num_classes: int, crf: DenseCRF | None = None) -> dict:
        """mIoU, Dice and accuracy on ``data``, predictions mapped to classes by ``matching``; with
        ``crf``, also those of the CRF-refined predictions under ``"crf"`` (matched on their own)."""
        out = scores(self.confusion(data, num_classes), self.matching)
        if crf is not None:
            out["crf"] = scores(self.confusion(data, num_classes, crf=crf), self.matching)
        return out


def after_step(extra) -> None:
    """Runs ``extra.after_step`` (a strategy's correction of the optimizer step just taken:
    SCAFFOLD's), if the client term ``extra`` has one."""
    hook = getattr(extra, "after_step", None)
    if hook is not None:
        hook()


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


def pixels(dataset, indices) -> torch.Tensor:
    """``[B, 3, H, W]`` uint8 RGB of ``dataset``'s images (items ``(normalized image, mask)``) at ``indices``."""
    images = torch.stack([dataset[i][0] for i in indices]).float()
    mean, std = (torch.from_numpy(v).float().view(3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (((images * std + mean).clamp(0, 1)) * 255).round().to(torch.uint8)
