"""The frozen DINO ViT of every client, in half precision: patch tokens as a feature map."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES = (
    "vit_small_patch8_224.dino",
    "vit_small_patch16_224.dino",
    "vit_base_patch8_224.dino",
    "vit_base_patch16_224.dino",
)
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"auto"``: fp16 on CUDA; on a CPU bf16 where it has native bf16 arithmetic (AVX512_BF16 or
    AMX), else fp32 (torch has no fast fp16 CPU kernels: fp16 is the slowest choice there)."""
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "fp16"
    return "bf16" if native_bf16_cpu() else "fp32"


def resolve_head_precision(precision: str, device: torch.device | str) -> str:
    """The head's products (``model.head_precision``). ``"auto"``: bf16 on a CPU with native bf16
    arithmetic, where its matrix products run several times faster than in fp32 (parameters,
    gradients and optimizer stay fp32); fp32 elsewhere (on CUDA a bf16 head is not measured yet)."""
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cpu" and native_bf16_cpu() else "fp32"


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512_BF16 or AMX) that torch's kernels use; not
    when torch is held to a lower instruction set (``ATEN_CPU_CAPABILITY=avx2``, as a forced-AVX2
    benchmark does), where its bf16 products would be emulated."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16", "AMX"):
        return False
    return getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


class FrozenBackbone(nn.Module):
    """A DINO ViT from timm, frozen (``eval()``, no gradients) and cast to ``precision``.

    ``weights``: ``"random"`` (default: no file, no network), ``"timm"`` (timm's pretrained
    download, only when asked), or a local file: a timm ``.safetensors`` state dict, or an official
    DINO ``.pth`` checkpoint (``teacher``/``student``/``model`` wrappers and ``module.``/
    ``backbone.`` prefixes are removed), loaded with ``weights_only=True``.

    ``forward(images [B, 3, H, W])`` with H, W multiples of the patch size returns the last
    block's patch tokens without CLS as ``[B, C, H/p, W/p]`` and the image descriptor
    (mean over the tokens, L2-normalized, float32) ``[B, C]``.
    """

    def __init__(self, name: str = "vit_small_patch8_224.dino", *, weights: str | Path = "random",
                 precision: str = "fp16"):
        super().__init__()
        import timm

        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
        pretrained = weights == "timm"
        self.vit = timm.create_model(name, pretrained=pretrained, num_classes=0, dynamic_img_size=True)
        if not pretrained and str(weights) != "random":
            self.vit.load_state_dict(load_weights(weights, self.vit.state_dict().keys()))
        self.name, self.precision, self.dtype = name, precision, PRECISIONS[precision]
        self.patch_size = self.vit.patch_embed.patch_size[0]
        self.dim = self.vit.embed_dim
        self.vit.to(self.dtype).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "FrozenBackbone":
        return super().train(False)  # always in eval mode: the backbone is frozen

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"backbone: images must be [B, 3, H, W], got {list(images.shape)}")
        B, _, H, W = images.shape
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"backbone: image size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        tokens = self.vit.forward_features(images.to(self.dtype))[:, self.vit.num_prefix_tokens:]
        fmap = tokens.transpose(1, 2).reshape(B, self.dim, H // self.patch_size, W // self.patch_size)
        descriptor = F.normalize(tokens.float().mean(1), dim=1)
        return fmap, descriptor


def load_weights(path: str | Path, expected_keys) -> dict[str, torch.Tensor]:
    """A state dict from a local file, its key names mapped to timm's; a clear error listing the
    missing and unexpected keys when the file does not fit the architecture."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights: no file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("teacher", "student", "model", "state_dict"):
            if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict):
        raise ValueError(f"backbone weights: {path} does not hold a state dict")
    mapped = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        if not key.startswith("head."):  # DINO's projection head is not part of the backbone
            mapped[key] = value
    expected = set(expected_keys)
    missing, unexpected = sorted(expected - mapped.keys()), sorted(mapped.keys() - expected)
    if missing or unexpected:
        raise ValueError(f"backbone weights: {path} does not fit this architecture; missing keys "
                         f"{missing[:10]}{' ...' if len(missing) > 10 else ''}, unexpected keys "
                         f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
    return mapped
