"""LoRA (Hu et al. 2021) on the frozen backbone's attention projections, one adapter per client.

The backbone is shared by every client of a process and never changes: a ``LoRA`` holds only its
own trainable low-rank factors, and ``with lora.applied_to(backbone):`` (or
``backbone.adapted(lora)``) adds their product to the targeted layers' outputs through forward
hooks that the ``with`` removes again, so no weight is copied or modified.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

LORA_TARGETS = ("qkv", "proj")  # the attention's input and output projections: blocks[i].attn.<target>


class LowRank(nn.Module):
    """One layer's factors: ``A`` [rank, in] and ``B`` [out, rank], float32. ``A`` is drawn as
    PEFT draws it (Kaiming-uniform with a = √5: U(±1/√in)), ``B`` is zero, so that a new adapter
    changes nothing."""

    def __init__(self, in_features: int, out_features: int, rank: int, generator: torch.Generator | None):
        super().__init__()
        bound = 1 / math.sqrt(in_features)
        self.A = nn.Parameter((torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound)
        self.B = nn.Parameter(torch.zeros(out_features, rank))


class LoRA(nn.Module):
    """Low-rank deltas for ``targets`` (⊆ ``LORA_TARGETS``) of the backbone's ``blocks``:
    ``y = W x + b + (alpha / rank) · B A x``, the delta and the sum computed in float32 (x and the
    base output upcast; float64 for a float64 backbone), the sum returned in the backbone's dtype.

    Parameters are named ``blocks.<i>.attn.<target>.A`` / ``.B``. ``first_block`` = min(blocks):
    the backbone's output before it does not depend on the adapter (``FrozenBackbone.stem`` of it
    can be cached). ``generator`` draws ``A`` (torch's global generator when None).
    """

    def __init__(self, backbone, *, rank: int, alpha: float, blocks: Iterable[int],
                 targets: Iterable[str] = LORA_TARGETS, generator: torch.Generator | None = None):
        super().__init__()
        blocks, targets = [int(b) for b in blocks], list(targets)
        n = backbone.num_blocks
        if not blocks or len(set(blocks)) != len(blocks) or not all(0 <= b < n for b in blocks):
            raise ValueError(f"LoRA: blocks must be distinct block indices in [0, {n - 1}], got {blocks}")
        if not targets or len(set(targets)) != len(targets) or not set(targets) <= set(LORA_TARGETS):
            raise ValueError(f"LoRA: targets must be distinct names among {LORA_TARGETS}, got {targets}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRA: rank must be an integer >= 1, got {rank!r}")
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"LoRA: alpha must be a finite number > 0, got {alpha}")
        self.rank, self.alpha, self.scale = int(rank), float(alpha), float(alpha) / rank
        self.block_ids, self.targets = tuple(sorted(blocks)), tuple(t for t in LORA_TARGETS if t in targets)
        self.blocks = nn.ModuleDict()
        for b in self.block_ids:
            layers = nn.ModuleDict()
            for target in self.targets:
                linear = _layer(backbone, b, target)
                if not 1 <= rank <= min(linear.in_features, linear.out_features):
                    raise ValueError(f"LoRA: rank must be in [1, {min(linear.in_features, linear.out_features)}] "
                                     f"for blocks.{b}.attn.{target} ({linear.in_features} -> "
                                     f"{linear.out_features}), got {rank}")
                layers[target] = LowRank(linear.in_features, linear.out_features, self.rank, generator)
            self.blocks[str(b)] = nn.ModuleDict({"attn": layers})

    @property
    def first_block(self) -> int:
        return self.block_ids[0]

    def factors(self) -> Iterator[tuple[int, str, LowRank]]:
        for b in self.block_ids:
            for target in self.targets:
                yield b, target, self.blocks[str(b)]["attn"][target]

    @contextmanager
    def applied_to(self, backbone):
        """For the ``with``: the backbone's targeted layers add this adapter's delta. One adapter
        at a time; the hooks are removed on exit, also on an exception."""
        if getattr(backbone, "_lora_applied", False):
            raise RuntimeError("LoRA: the backbone already runs with an adapter; leave its `with` first")
        handles = []
        try:
            backbone._lora_applied = True
            for b, target, factors in self.factors():
                linear = _layer(backbone, b, target)
                if linear.weight.shape != (factors.B.shape[0], factors.A.shape[1]):
                    raise ValueError(f"LoRA: blocks.{b}.attn.{target} of this backbone is "
                                     f"{list(linear.weight.shape)}, the adapter was made for "
                                     f"{[factors.B.shape[0], factors.A.shape[1]]}")
                handles.append(linear.register_forward_hook(self._hook(factors)))
            yield backbone
        finally:
            for handle in handles:
                handle.remove()
            backbone._lora_applied = False

    def _hook(self, factors: LowRank):
        def add_delta(linear: nn.Linear, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
            dtype = torch.promote_types(output.dtype, torch.float32)  # float32 for a half backbone
            delta = (inputs[0].to(dtype) @ factors.A.to(dtype).t()) @ factors.B.to(dtype).t()
            # the sum is rounded once, to the backbone's dtype, which its next layers need
            return (output.to(dtype) + self.scale * delta).to(output.dtype)
        return add_delta

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, blocks={list(self.block_ids)}, targets={list(self.targets)}"


def _layer(backbone, block: int, target: str) -> nn.Linear:
    return getattr(backbone.vit.blocks[block].attn, target)
