"""Differential privacy of FedCC's centroid uploads (``fed.dp_epsilon`` > 0).

What is protected: the sequence of one site's centroid uploads over the run. Two federations are
neighbours when one site's training images differ in any way (any of its images replaced, one
image included), everything else equal. Each site clips every uploaded centroid (row) to L2 norm
``clip`` and adds Gaussian noise of standard deviation ``sigma`` to every coordinate before the
upload. Any two clipped ``[K, D]`` uploads differ by at most ``2 clip`` per row, so by at most
``2 clip sqrt(K)`` in Frobenius norm: that is the L2 sensitivity, and ``sigma = z · 2 clip sqrt(K)``
with ``z`` the noise multiplier for which ``fed.rounds`` Gaussian mechanisms compose to
(epsilon, delta) under Google's ``dp-accounting`` (RDP or PLD accountant; nothing is accounted by
hand here). One image can move every centroid, so a per-row bound alone would not do.

No amplification by subsampling: the server sees which sites upload (a site's participation is
not secret), and a site's centroids depend on all of its images, so every round a site takes part
in costs a full Gaussian mechanism. The accounting assumes every site takes part in every round;
a site sampled less often has spent less. The heads' parameters still travel unnoised: the
guarantee covers what the centroids reveal, not the whole update.

``dp-accounting`` is imported lazily (``pip install "fussfast[dp]"``)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

DP_ACCOUNTANTS = ("pld", "rdp")
# PLD's loss discretization: pessimistic, so still an upper bound; dp-accounting's default 1e-4
# takes minutes to calibrate at large epsilon (21 s at 1024 with 1e-3) for the same multiplier to 1e-6
PLD_INTERVAL = 1e-2


def clip_rows(x: torch.Tensor, clip: float) -> torch.Tensor:
    """Every row of ``x`` scaled down to L2 norm ``clip`` at most (rows inside stay as they are)."""
    norms = x.double().norm(dim=1, keepdim=True)
    scale = (clip / norms.clamp(min=clip)).to(x.dtype)
    return x * scale


def _accountant(kind: str):
    from dp_accounting import pld, rdp

    if kind == "pld":
        return pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
    if kind == "rdp":
        return rdp.RdpAccountant()
    raise ValueError(f"fed.dp_accountant must be one of {DP_ACCOUNTANTS}, got {kind!r}")


def spent_epsilon(multiplier: float, rounds: int, delta: float, accountant: str) -> float:
    """The epsilon at ``delta`` of ``rounds`` Gaussian mechanisms of noise ``multiplier`` (noise std
    over L2 sensitivity), composed by ``dp-accounting``'s ``accountant``."""
    from dp_accounting import GaussianDpEvent

    acc = _accountant(accountant)
    acc.compose(GaussianDpEvent(multiplier), rounds)
    return float(acc.get_epsilon(delta))


@functools.lru_cache(maxsize=32)
def noise_multiplier(epsilon: float, delta: float, rounds: int, accountant: str) -> float:
    """The smallest noise multiplier whose ``rounds``-fold composition stays within (epsilon, delta),
    by ``dp_accounting.calibrate_dp_mechanism`` (cached: the Flower sites build strategies often)."""
    from dp_accounting import GaussianDpEvent, SelfComposedDpEvent, calibrate_dp_mechanism

    return float(calibrate_dp_mechanism(lambda: _accountant(accountant),
                                        lambda z: SelfComposedDpEvent(GaussianDpEvent(z), rounds), epsilon, delta))


@dataclass(frozen=True)
class CentroidPrivacy:
    """(``epsilon``, ``delta``)-DP over ``rounds`` rounds of each site's centroid uploads, rows
    clipped to ``clip``; ``accountant``: ``pld`` or ``rdp``."""

    epsilon: float
    delta: float
    clip: float
    rounds: int
    accountant: str = "pld"

    def __post_init__(self):
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"fed.dp_epsilon must be a finite number > 0, got {self.epsilon!r}")
        if not 0 < self.delta < 1:
            raise ValueError(f"fed.dp_delta must be in (0, 1), got {self.delta!r}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"fed.dp_clip must be a finite number > 0, got {self.clip!r}")
        if self.accountant not in DP_ACCOUNTANTS:
            raise ValueError(f"fed.dp_accountant must be one of {DP_ACCOUNTANTS}, got {self.accountant!r}")

    @property
    def multiplier(self) -> float:
        return noise_multiplier(self.epsilon, self.delta, self.rounds, self.accountant)

    def sensitivity(self, num_centroids: int) -> float:
        """L2 sensitivity of a ``[num_centroids, D]`` upload whose rows are clipped to ``clip``,
        when a site's images are replaced: ``2 clip sqrt(K)``."""
        return 2 * self.clip * math.sqrt(num_centroids)

    def sigma(self, num_centroids: int) -> float:
        """The noise's standard deviation per coordinate."""
        return self.multiplier * self.sensitivity(num_centroids)

    def privatize(self, centroids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The upload: rows clipped to ``clip``, plus N(0, sigma²) per coordinate drawn (in float64,
        on the CPU) from ``generator``."""
        noise = torch.randn(centroids.shape, dtype=torch.float64, generator=generator) * self.sigma(len(centroids))
        return (clip_rows(centroids, self.clip).double() + noise.to(centroids.device)).to(centroids.dtype)

    def record(self, rounds_done: int, num_centroids: int) -> dict:
        """The round record's ``dp``: epsilon spent after ``rounds_done`` rounds, delta, sigma."""
        return {"epsilon": spent_epsilon(self.multiplier, rounds_done, self.delta, self.accountant),
                "delta": self.delta, "sigma": self.sigma(num_centroids), "noise_multiplier": self.multiplier}

    def check_rounds(self, rounds: int) -> None:
        """Refuses ``rounds`` other than the calibration's (more would pass the budget)."""
        if rounds != self.rounds:
            spent = spent_epsilon(self.multiplier, rounds, self.delta, self.accountant)
            raise ValueError(f"'fed.rounds' = {rounds}: the centroid noise was calibrated so that {self.rounds} rounds "
                             f"spend fed.dp_epsilon={self.epsilon}; {rounds} rounds at that noise would spend "
                             f"epsilon={spent:.3g}")
