"""FUSS's local model: a segmentation head and a cluster probe trained with STEGO's
correspondence loss on kNN positives; clusters are matched to classes (Hungarian) when scored."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fussfast.features import FeatureSet
from fussfast.losses import CorrespondenceConfig, CorrespondenceLoss
from fussfast.model import ClusterProbe, SegmentationHead, draw_positives
from fussfast.ops.bilinear_sample import channels_last, tap_pixels
from fussfast.tasks.base import MOE, LocalModel, after_step, load_head

ACTIVE = "centroids.active"  # auto-K: how many leading centroid slots are in use


class SiteModel(LocalModel):
    """A head and a cluster probe with their optimizers (Adam: head 5e-4, probe 5e-3 by default);
    with ``moe_experts`` > 0 a ``MixtureAdapter`` in front of the head (``head_input``; Adam at
    ``head_lr``), its load-balancing term weighted by ``moe_balance``. The correspondence loss's
    feature side reads the raw backbone features, only the head reads the adapted ones.

    ``auto_k``: the probe's ``num_classes`` centroids are slots of which the first
    ``probe.active`` are used (auto-K); the count is then the array ``centroids.active``
    (int64 ``[1]``), which the server sets and the sites send back unchanged."""

    def __init__(self, feat_dim: int, code_dim: int, num_classes: int, *, loss: CorrespondenceConfig,
                 num_neighbors: int = 2, head_lr: float = 5e-4, probe_lr: float = 5e-3,
                 backend: str = "fused", head_dtype: torch.dtype | None = None, moe_experts: int = 0,
                 moe_hidden: int = 32, moe_router: str = "pixel", moe_balance: float = 0.01,
                 encoder: torch.nn.Module | None = None, auto_k: bool = False,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.auto_k = auto_k
        self.encoder = encoder
        self.head = SegmentationHead(feat_dim, code_dim).to(self.device)
        self.head.compute_dtype = head_dtype  # None: fp32 products; bfloat16: see HeadPrecision
        self.probe = ClusterProbe(code_dim, num_classes, backend=backend).to(self.device)
        self.loss = CorrespondenceLoss(loss, backend=backend)
        self.num_neighbors = num_neighbors
        self.head_lr = head_lr
        self.head_opt = torch.optim.Adam([*self.head.parameters(), *self.encoder_parameters()], lr=head_lr)
        self.probe_opt = torch.optim.Adam(self.probe.parameters(), lr=probe_lr)
        self._add_moe(feat_dim, moe_experts, moe_hidden, moe_router, moe_balance, head_lr)

    def arrays(self) -> dict[str, torch.Tensor]:
        """The head's parameters, the centroids and the MoE's (``moe.*``, which never travels)."""
        out = {f"head.{k}": v.detach().cpu().clone() for k, v in self.head.state_dict().items()}
        out["centroids"] = self.probe.clusters.detach().cpu().clone()
        if self.auto_k:
            out[ACTIVE] = torch.tensor([self.probe.active], dtype=torch.int64)
        return {**out, **self.encoder_arrays(), **self._moe_arrays()}

    def load_arrays(self, arrays: dict[str, torch.Tensor]) -> None:
        """Sets the given arrays (all or some of ``arrays()``'s names); the rest stay as they are."""
        with torch.no_grad():
            load_head(self.head, arrays, ("centroids", ACTIVE, *self.load_encoder(arrays),
                                          *(k for k in arrays if k.startswith(MOE + "."))))
            if "centroids" in arrays:
                self.probe.clusters.copy_(arrays["centroids"])
            if ACTIVE in arrays:
                if not self.auto_k:
                    raise KeyError(f"load_arrays: {ACTIVE} but this model does not count its active centroids")
                self.probe.active = int(arrays[ACTIVE][0])
            self._load_moe(arrays)

    def prediction_count(self, num_classes: int) -> int:
        return self.probe.n_classes  # every slot: the confusion matrix keeps its shape as K changes

    def trained_parameters(self):
        return {**super().trained_parameters(), "centroids": self.probe.clusters}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"head": self.head_opt, "probe": self.probe_opt, **self._moe_optimizer()}

    def train_steps(self, data: FeatureSet, table: torch.Tensor, steps: int, batch_size: int,
                    generator: torch.Generator, extra=None) -> list[float]:
        """``steps`` updates on random batches; positives come from the kNN ``table``;
        ``extra(head, feats, code)`` adds a client-side term (FedProx, MOON, distillation)."""
        self.head.train()
        losses = []
        n = data.features.shape[0]
        fused = self.loss.backend == "fused" and self.loss.config.feature_samples is not None
        for _ in range(steps):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=generator)
            pos = draw_positives(table, idx, self.num_neighbors, generator=generator)
            if fused:
                feats, code, corr = self._fused_step(data.features, idx, pos, generator)
            else:
                cached = data.features[torch.cat([idx, pos])].to(self.device)
                both = self.encode(cached).float()
                feats = both[:len(idx)]
                adapted = self.head_input(both)  # one call: its gates balance both
                code, code_pos = self.head(adapted[:len(idx)]), self.head(adapted[len(idx):])
                points = self.loss.sample_points(len(idx), self.device, generator=generator)
                target = self.frozen_features(cached).float()  # as _fused_step
                corr = self.loss(target[:len(idx)], code, target[len(idx):], code_pos, points=points)
            probe_loss, _ = self.probe(code.detach())
            optimizers = self.optimizers().values()
            for opt in optimizers:
                opt.zero_grad()
            extra_terms = extra(self.head, feats, code) if extra else 0
            (corr.total + probe_loss + self.balance_term() + extra_terms).backward()
            for opt in optimizers:
                opt.step()
            after_step(extra)
            losses.append(float((corr.total + probe_loss).detach()))
        return losses

    def _fused_step(self, features, idx, pos, generator):
        """The step's features, codes and loss, channels-last: one gather and conversion of the
        batch and its positives, the head as matrix products on the batch's pixels and on just
        the positives' pixels the sampled points read, the sampling fused (bilinear_sample).
        Same random draws, in the same order, as the NCHW path; returns NCHW views."""
        B = len(idx)
        cached = features[torch.cat([idx, pos])]
        x = channels_last(self.encode(cached), self.device, self.head.input_dtype)  # [2B, H, W, C]
        _, H, W, C = x.shape
        a = self.head_input(x, channels_last=True)  # what the head reads
        masks = [self.head.channel_mask(B, self.device) for _ in range(2)]
        code = self.head.rows(a[:B], None if masks[0] is None else masks[0][:, None, None])
        points = self.loss.sample_points(B, self.device, generator=generator)
        used = torch.zeros(B, H * W, dtype=torch.bool, device=self.device)
        used.scatter_(1, tap_pixels(points.coords2.flatten(1, 2), H, W), True)
        where = used.view(-1).nonzero()[:, 0]  # the positives' pixels that are read
        rows = self.head.rows(a[B:].reshape(-1, C)[where], None if masks[1] is None else masks[1][where // (H * W)])
        code_pos = rows.new_zeros(B * H * W, rows.shape[1]).index_copy(0, where, rows).view(B, H, W, -1)
        # the features' side of the loss is the frozen backbone's (the cache itself without LoRA)
        target = x if self.encoder is None else channels_last(self.frozen_features(cached), self.device, x.dtype)
        corr = self.loss.stacked(target, torch.cat([code, code_pos]), points=points)
        return x[:B].permute(0, 3, 1, 2), code.permute(0, 3, 1, 2), corr

    @torch.no_grad()
    def predict(self, features: torch.Tensor, flipped: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        """Cluster per pixel (flip-averaged codes when ``flipped`` is given), nearest-upsampled to ``size``."""
        labels = self.probe.labels(self.codes(features, flipped))
        return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()

    @torch.no_grad()
    def log_probs(self, features: torch.Tensor, flipped: torch.Tensor | None, size: tuple[int, int],
                  alpha: float) -> torch.Tensor:
        """As STEGO feeds its CRF: the flip-averaged codes bilinearly upsampled to ``size``, then
        ``log_softmax(alpha · cosine to each centroid)``."""
        code = F.interpolate(self.codes(features, flipped).float(), size=size, mode="bilinear", align_corners=False)
        return self.probe(code, alpha, log_probs=True)

    def codes(self, features: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor:
        """The eval-mode codes of cached inputs (flip-averaged when ``flipped`` is given)."""
        self.head.eval()
        code = self.head(self.head_input(self.encode(features.to(self.device))))
        if flipped is not None:
            code = (code + self.head(self.head_input(self.encode(flipped.to(self.device)))).flip(-1)) / 2
        return code
