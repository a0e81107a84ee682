"""Greedy farthest-point selection, the FedCC-Maximin aggregator."""

from __future__ import annotations

import torch

from fussfast import _C
from fussfast.ops import _boundary as bnd

OP = "maximin"


def maximin(points: torch.Tensor, k: int, *, metric: str = "euclidean", start: int = 0,
            backend: str = "fused") -> torch.Tensor:
    """Indices ``[k]`` (int64) of k points picked greedily: first ``start``, then each time the
    point whose distance to the nearest pick so far is largest (squared Euclidean, or 1 − cos for
    ``"cosine"``). Ties go to the lowest index; deterministic. With fewer than k distinct points
    the later picks repeat a point already picked.
    """
    bnd.check_backend(OP, backend)
    x, k = bnd.point_set(OP, points, k, metric)
    start = bnd.check_int(OP, "start", start, minimum=0)
    if start >= x.shape[0]:
        raise ValueError(f"{OP}: start={start} is not a point index (M={x.shape[0]})")
    if backend == "reference":
        return maximin_reference(x, k, cosine=metric == "cosine", start=start)
    indices = torch.empty(k, dtype=torch.int64, device=x.device)
    _C.maximin(x, metric == "cosine", start, indices, bnd.stream_handle(x.device))
    return indices


def maximin_reference(x: torch.Tensor, k: int, *, cosine: bool = False, start: int = 0) -> torch.Tensor:
    """The greedy loop in plain torch (points already normalized for cosine)."""
    min_dist = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    picks = [start]
    for _ in range(1, k):
        c = x[picks[-1]]
        d = 1 - x @ c if cosine else ((x - c) ** 2).sum(1)
        min_dist = torch.minimum(min_dist, d)
        picks.append(int(torch.argmax(min_dist)))  # first index of the maximum
    return torch.tensor(picks, dtype=torch.int64, device=x.device)
