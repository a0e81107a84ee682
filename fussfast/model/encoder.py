"""The trainable end of the frozen backbone when LoRA is on: what a site's model reads instead
of cached features.

With LoRA on blocks ``first..`` of the backbone, everything before block ``first`` is still
frozen, so its output (``FrozenBackbone.stem``) is what the feature cache keeps; each step then
runs the adapted blocks (``FrozenBackbone.tail`` with the site's ``LoRA``) on the cached tokens.
One frozen backbone serves every site of a process; each site's ``AdaptedEncoder`` owns only its
low-rank factors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fussfast.model.backbone import FrozenBackbone
from fussfast.model.lora import LoRA


class AdaptedEncoder(nn.Module):
    """``forward(tokens)``: the feature map ``[B, C, h, w]`` (float32) of the backbone's blocks
    from ``lora.first_block`` on, adapted by ``lora``, from the cached ``stem`` tokens. Its only
    parameters are the LoRA factors (``lora.*``); the backbone is referenced, not owned."""

    def __init__(self, backbone: FrozenBackbone, lora: LoRA):
        super().__init__()
        self.lora = lora
        self.__dict__["backbone"] = backbone  # not a submodule: never in state_dict, parameters or .to()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self._on_device(tokens)
        with self.backbone.adapted(self.lora):
            return self.backbone.tail(tokens, self.lora.first_block, token_grid(tokens, self.backbone)).float()

    @torch.no_grad()
    def frozen(self, tokens: torch.Tensor) -> torch.Tensor:
        """The plain backbone's feature map of the same tokens (no adapter), float32."""
        tokens = self._on_device(tokens)
        return self.backbone.tail(tokens, self.lora.first_block, token_grid(tokens, self.backbone)).float()

    def _on_device(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.to(next(self.lora.parameters()).device, self.backbone.dtype)


def token_grid(tokens: torch.Tensor, backbone: FrozenBackbone) -> tuple[int, int]:
    """The patch grid ``(h, w)`` of stem tokens: ``[B, h, w, C]`` (SAM) as they are; ``[B, T, C]``
    (ViTs: prefix tokens, then the patches of a square image)."""
    if tokens.dim() == 4:
        return tokens.shape[1], tokens.shape[2]
    patches = tokens.shape[1] - backbone.num_prefix_tokens
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"AdaptedEncoder: {patches} patch tokens are not a square grid")
    return side, side
