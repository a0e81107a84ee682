"""pFedSAM's localized mixture of experts (L-MoE): a residual adapter on frozen features that
stays on its site (``fed`` keeps the ``moe`` group local)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ROUTERS = ("pixel", "image")


def balance_loss(gates: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation of the mean gates: with ``m_e`` the mean over rows of
    ``gates[..., e]`` (rows: every leading index), ``CV² = Var_e(m) / Mean_e(m)²`` (population
    variance). 0 exactly when every expert gets the same mean gate, whatever E; chosen over Switch
    Transformer's ``E · Σ_e m_e · (top-1 fraction of e)`` because it is differentiable in every
    gate and has no ties to break."""
    m = gates.reshape(-1, gates.shape[-1]).mean(0)
    return m.var(unbiased=False) / m.mean().square()


class MixtureAdapter(nn.Module):
    """``f + Σ_e g_e · expert_e(f)`` on features ``f`` with E experts
    ``Linear(C→hidden) → ReLU → Linear(hidden→C)`` (1x1 convolutions on NCHW maps) and softmax
    gates ``g = softmax(router(f))``, ``router = Linear(C→E)``: per pixel (``router="pixel"``)
    or per image (``"image"``: from the image's mean feature, one gate vector for all its
    pixels). The experts' last layers start at zero, so an untrained adapter is the identity.

    Computes in its parameters' dtype and returns the input's dtype. ``last_gates``: the gates
    of the last call (``[..., E]``; ``[B, 1, .., E]`` when routed per image), which the local
    model takes for the load-balancing term (``balance_loss``), as Switch Transformer reads its
    auxiliary loss."""

    def __init__(self, dim: int, experts: int, hidden: int, router: str = "pixel"):
        super().__init__()
        if router not in ROUTERS:
            raise ValueError(f"MixtureAdapter: router must be one of {ROUTERS}, got {router!r}")
        if experts < 1 or hidden < 1:
            raise ValueError(f"MixtureAdapter: experts and hidden must be >= 1, got {experts}, {hidden}")
        self.router_kind = router
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
                                     for _ in range(experts))
        for expert in self.experts:
            nn.init.zeros_(expert[2].weight)
            nn.init.zeros_(expert[2].bias)
        self.last_gates: torch.Tensor | None = None

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax gates of channels-last ``x`` ``[B, ..., C]``: ``[B, ..., E]`` per pixel, or
        ``[B, 1, ..., E]`` per image (from the mean over the pixels of each ``x[b]``)."""
        if self.router_kind == "image":
            x = x.mean(tuple(range(1, x.dim() - 1)), keepdim=True)
        return F.softmax(self.router(x), -1)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter on channels-last ``x`` ``[B, ..., C]`` (per-image routing averages each
        ``x[b]``: pass whole images, not a selection of their pixels)."""
        f = x.to(self.router.weight.dtype)
        g = self.gates(f)
        self.last_gates = g
        out = f + sum(g[..., e:e + 1] * expert(f) for e, expert in enumerate(self.experts))
        return out.to(x.dtype)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """The adapter on NCHW feature maps ``[B, C, H, W]``."""
        return self.rows(feats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
