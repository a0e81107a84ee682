"""FedSeg's local model: a supervised head trained with CE, BackCE, or BackCE plus the
pixel-to-region contrast; predictions are classes (identity matching) when scored."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fussfast.features import FeatureSet
from fussfast.losses import RegionContrast
from fussfast.model import SupervisedHead
from fussfast.ops import back_ce
from fussfast.ops.bilinear_sample import channels_last
from fussfast.tasks.base import MOE, LocalModel, after_step, load_head

OBJECTIVES = ("ce", "backce", "backce+contrast")


class SupervisedModel(LocalModel):
    """FedSeg's local model: a ``SupervisedHead`` trained with plain CE, BackCE, or BackCE plus
    the pixel-to-region contrast (``objective``: ce, backce, backce+contrast), Adam at ``lr``.

    The classification loss is computed at label resolution on bilinearly upsampled logits.
    ``ce`` ignores unlabelled pixels (BackCE with every class present); ``backce`` sends them to
    the classes the image's site does not annotate. With the contrast, the region memory is built
    from the head as it is when ``train_steps`` starts (the global model, at a round's start).
    With ``moe_experts`` > 0 a ``MixtureAdapter`` sits in front of the head (``head_input``, its
    own Adam at ``lr``, its load-balancing term weighted by ``moe_balance``).
    """

    matching = "identity"

    def __init__(self, feat_dim: int, num_classes: int, *, embed_dim: int = 256, objective: str = "backce+contrast",
                 contrast: RegionContrast | None = None, lr: float = 5e-4, backend: str = "fused",
                 head_dtype: torch.dtype | None = None, moe_experts: int = 0, moe_hidden: int = 32,
                 moe_router: str = "pixel", moe_balance: float = 0.01, encoder: torch.nn.Module | None = None,
                 device: torch.device | str = "cpu"):
        if objective not in OBJECTIVES:
            raise ValueError(f"SupervisedModel: objective must be one of {OBJECTIVES}, got {objective!r}")
        self.device = torch.device(device)
        self.encoder = encoder
        self.num_classes, self.objective, self.backend = num_classes, objective, backend
        self.head = SupervisedHead(feat_dim, num_classes, embed_dim).to(self.device)
        self.head.compute_dtype = head_dtype  # None: fp32 products; bfloat16: see HeadPrecision
        self.contrast = None
        if objective == "backce+contrast":
            self.contrast = contrast or RegionContrast(num_classes, backend=backend)
        self.head_lr = lr
        self.opt = torch.optim.Adam([*self.head.parameters(), *self.encoder_parameters()], lr=lr)
        self._add_moe(feat_dim, moe_experts, moe_hidden, moe_router, moe_balance, lr)

    def arrays(self) -> dict[str, torch.Tensor]:
        """The head's parameters, LoRA's (``lora.*``) and the MoE's (``moe.*``, which never travels)."""
        return {**{f"head.{k}": v.detach().cpu().clone() for k, v in self.head.state_dict().items()},
                **self.encoder_arrays(), **self._moe_arrays()}

    def load_arrays(self, arrays: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            load_head(self.head, arrays, (*self.load_encoder(arrays), *(k for k in arrays if k.startswith(MOE + "."))))
            self._load_moe(arrays)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"head": self.opt, **self._moe_optimizer()}

    def train_steps(self, data: FeatureSet, table: torch.Tensor, steps: int, batch_size: int,
                    generator: torch.Generator, extra=None) -> list[float]:
        """``steps`` updates on random batches (``table`` is unused: no kNN positives);
        ``extra(head, feats, embed)`` adds a client-side term (FedProx, MOON, distillation)."""
        K = self.num_classes
        labels = data.training_labels(K)
        every = torch.ones(data.features.shape[0], K, dtype=torch.bool)
        labelled = every if data.labelled is None or self.objective == "ce" else data.labelled
        memory = (self.contrast.memory(self.head, self.encoded(data.features), labels, labelled,
                                       adapt=self.head_input)
                  if self.contrast is not None else None)
        self.head.train()
        losses = []
        n = data.features.shape[0]
        # fused: channels-last products, and the embeddings only at the contrast's anchors
        # unless a client term reads them (extra.needs_code, set by fed.Client)
        sparse = self.backend == "fused" and (extra is None or not getattr(extra, "needs_code", True))
        for _ in range(steps):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=generator)
            target = labels[idx].to(self.device)
            if sparse:
                x = channels_last(self.encode(data.features[idx]), self.device, self.head.input_dtype)
                mask = self.head.channel_mask(len(idx), self.device)
                logits, h = self.head.trunk_rows(self.head_input(x, channels_last=True),
                                                 None if mask is None else mask[:, None, None])
                logits = logits.permute(0, 3, 1, 2).contiguous()  # NCHW before the upsampling
                feats, embed = x.permute(0, 3, 1, 2), None
            else:
                feats = self.encode(data.features[idx].to(self.device)).float()
                logits, embed = self.head(self.head_input(feats))
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
            loss = back_ce(logits, target, labelled[idx].to(self.device), ignore_index=-1, backend=self.backend)
            if memory is not None:
                batch_labels = memory.labels[idx.to(memory.labels.device)]
                if sparse:
                    rows = h.reshape(-1, h.shape[-1])
                    loss = loss + self.contrast.at_pixels(lambda r: self.head.embed_rows(rows[r]), batch_labels,
                                                          memory, generator)
                else:
                    loss = loss + self.contrast(embed, batch_labels, memory, generator)
            optimizers = self.optimizers().values()
            for opt in optimizers:
                opt.zero_grad()
            (loss + self.balance_term() + (extra(self.head, feats, embed) if extra else 0)).backward()
            for opt in optimizers:
                opt.step()
            after_step(extra)
            losses.append(float(loss.detach()))
        return losses

    @torch.no_grad()
    def predict(self, features: torch.Tensor, flipped: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        """Class per pixel from the (flip-averaged) logits, bilinearly upsampled to ``size``."""
        return self._logits(features, flipped, size).argmax(1)

    @torch.no_grad()
    def log_probs(self, features: torch.Tensor, flipped: torch.Tensor | None, size: tuple[int, int],
                  alpha: float) -> torch.Tensor:
        """``log_softmax`` of the upsampled logits (``alpha`` is for clusters: unused)."""
        return F.log_softmax(self._logits(features, flipped, size).float(), dim=1)

    def _logits(self, features, flipped, size):
        """The flip-averaged logits, bilinearly upsampled to ``size``."""
        self.head.eval()
        logits = self.head(self.head_input(self.encode(features.to(self.device))))[0]
        if flipped is not None:
            logits = (logits + self.head(self.head_input(self.encode(flipped.to(self.device))))[0].flip(-1)) / 2
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
