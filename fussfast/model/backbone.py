"""The frozen backbone of every client (DINO, DINOv2 or SAM's image encoder, from timm), in half
precision: its last feature map, whole (``forward``) or split at a block (``stem`` and ``tail``, for
adapters such as LoRA on the blocks after the split)."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES = (
    "vit_small_patch8_224.dino",
    "vit_small_patch16_224.dino",
    "vit_base_patch8_224.dino",
    "vit_base_patch16_224.dino",
    "vit_small_patch14_dinov2.lvd142m",
    "vit_small_patch14_reg4_dinov2.lvd142m",
    "vit_base_patch14_dinov2.lvd142m",
    "vit_base_patch14_reg4_dinov2.lvd142m",
    "samvit_base_patch16",
    "samvit_large_patch16",
)
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def patch_size_of(name: str) -> int:
    """The patch size of a backbone in ``BACKBONES``, read from its timm name (``..._patch14_...``)."""
    return int(re.search(r"_patch(\d+)", name).group(1))


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
    """A ViT from timm, frozen (``eval()``, no gradients) and cast to ``precision``: DINO
    (``*.dino``), DINOv2 (``*_dinov2.lvd142m``, patch 14, ``_reg4_``: with 4 register tokens) or
    SAM's image encoder (``samvit_*``: windowed attention with relative positions, then a neck).

    ``weights``: ``"random"`` (default: no file, no network), ``"timm"`` (timm's pretrained
    download, only when asked), or a local file: a timm ``.safetensors`` state dict, an official
    DINO ``.pth`` checkpoint (``teacher``/``student``/``model`` wrappers and ``module.``/
    ``backbone.`` prefixes are removed), or SAM's own checkpoint (its ``image_encoder.`` part),
    loaded with ``weights_only=True``.

    ``forward(images [B, 3, H, W])`` with H, W multiples of the patch size returns the feature map
    ``[B, dim, H/p, W/p]`` in the backbone's dtype and the image descriptor (mean over the map,
    L2-normalized, float32) ``[B, dim]``. For the ViTs the map is the last block's normed patch
    tokens (CLS and registers dropped, ``dim`` = the embedding width); for SAM it is the neck's
    output (``dim`` = 256), SAM's image embedding: the map its mask decoder reads, projected and
    LayerNorm-ed as DINO's final norm is, where SAM's raw block tokens are not normalized.

    ``stem(images, b)`` and ``tail(tokens, b, grid)`` split ``forward`` before block ``b``:
    ``tail(stem(x, b), b, grid)`` is ``forward(x)[0]``.
    """

    def __init__(self, name: str = "vit_small_patch8_224.dino", *, weights: str | Path = "random",
                 precision: str = "fp16"):
        super().__init__()
        import timm

        if name not in BACKBONES:
            raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
        self.is_sam = name.startswith("samvit")
        pretrained = weights == "timm"
        # SAM keeps its 1024-pixel layout (so its checkpoints load) and resizes its position
        # embeddings to the input itself; timm's ViTs need dynamic_img_size for that.
        options = {} if self.is_sam else {"dynamic_img_size": True}
        self.vit = timm.create_model(name, pretrained=pretrained, num_classes=0, **options)
        if not pretrained and str(weights) != "random":
            self.vit.load_state_dict(load_weights(weights, self.vit.state_dict().keys(), sam=self.is_sam))
        self.name, self.precision, self.dtype = name, precision, PRECISIONS[precision]
        self.patch_size = self.vit.patch_embed.patch_size[0]
        self.dim = self.vit.num_features  # the neck's 256 channels for SAM, the embedding width else
        self.num_prefix_tokens = getattr(self.vit, "num_prefix_tokens", 0)  # CLS and registers
        self.vit.to(self.dtype).eval().requires_grad_(False)

    @property
    def num_blocks(self) -> int:
        return len(self.vit.blocks)

    def train(self, mode: bool = True) -> "FrozenBackbone":
        return super().train(False)  # always in eval mode: the backbone is frozen

    def adapted(self, adapter) -> AbstractContextManager:
        """``with backbone.adapted(lora):`` the backbone runs with the adapter's deltas added
        (``fussfast.model.lora.LoRA.applied_to``); plain again after the ``with``."""
        return adapter.applied_to(self)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = self._grid(images)
        fmap = self._feature_map(self.vit.forward_features(images.to(self.dtype)), grid)
        return fmap, F.normalize(fmap.float().mean((2, 3)), dim=1)

    @torch.no_grad()
    def stem(self, images: torch.Tensor, first_block: int) -> torch.Tensor:
        """The input of block ``first_block`` (0 ≤ first_block ≤ num_blocks), in the backbone's
        dtype: ``[B, T, C]`` tokens with the prefix tokens first for the ViTs, ``[B, h, w, C]``
        for SAM."""
        self._grid(images)
        self._check_block(first_block)
        vit, x = self.vit, self.vit.patch_embed(images.to(self.dtype))
        if self.is_sam:  # as VisionTransformerSAM.forward_features
            if vit.pos_embed is not None:
                from timm.layers import resample_abs_pos_embed_nhwc

                x = x + resample_abs_pos_embed_nhwc(vit.pos_embed, x.shape[1:3])
            x = vit.pos_drop(x)
        else:  # as VisionTransformer.forward_features
            x = vit._pos_embed(x)
        x = vit.norm_pre(vit.patch_drop(x))
        for block in vit.blocks[:first_block]:
            x = block(x)
        return x

    def tail(self, tokens: torch.Tensor, first_block: int, grid: tuple[int, int]) -> torch.Tensor:
        """Blocks ``first_block:`` on ``stem``'s tokens, then the final norm (ViTs) or the neck
        (SAM): the feature map ``[B, dim, h, w]`` in the backbone's dtype, for ``grid`` = (h, w)
        patches. Not under no_grad: gradients reach adapters and the tokens' producers."""
        self._check_block(first_block)
        x = tokens
        for block in self.vit.blocks[first_block:]:
            x = block(x)
        return self._feature_map(self.vit.neck(x.permute(0, 3, 1, 2)) if self.is_sam else self.vit.norm(x), grid)

    def _feature_map(self, features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``forward_features``' output as ``[B, dim, h, w]``: SAM's neck gives it so already; the
        ViTs' tokens lose their prefix tokens and become a map."""
        if self.is_sam:
            return features
        tokens = features[:, self.num_prefix_tokens:]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], self.dim, *grid)

    def _grid(self, images: torch.Tensor) -> tuple[int, int]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"backbone: images must be [B, 3, H, W], got {list(images.shape)}")
        H, W = images.shape[2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"backbone: image size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        return H // self.patch_size, W // self.patch_size

    def _check_block(self, first_block: int) -> None:
        if not 0 <= first_block <= self.num_blocks:
            raise ValueError(f"backbone: first_block must be in [0, {self.num_blocks}], got {first_block}")


def load_weights(path: str | Path, expected_keys, *, sam: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from a local file, its key names mapped to timm's; a clear error listing the
    missing and unexpected keys when the file does not fit the architecture. ``sam``: SAM's own
    checkpoint is mapped as timm maps it (its image encoder only)."""
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
    if sam:
        from timm.models.vision_transformer_sam import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, None)
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
