"""Greedy farthest-point selection, the FedCC-Maximin aggregator."""

from __future__ import annotations

import torch

from fussfast import _C
from fussfast.ops import _boundary as bnd
from fussfast.ops import reference

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
        return reference.maximin(x, k, metric=metric, start=start)
    cosine = metric == "cosine"
    indices = torch.empty(k, dtype=torch.int64, device=x.device)
    _C.maximin(bnd.l2_normalize(x) if cosine else x, cosine, start, indices, bnd.stream_handle(x.device))
    return indices
