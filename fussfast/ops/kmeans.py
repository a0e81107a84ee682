"""Weighted k-means (k-means++ init, Lloyd), the FedCC-kMeans aggregator."""

from __future__ import annotations

import math

import torch

from fussfast import _C
from fussfast.ops import _boundary as bnd
from fussfast.ops import reference
from fussfast.ops.reference import KMeansResult

OP = "kmeans"
MAX_INIT, MAX_ITER = 10_000, 1_000_000  # beyond these a call would not end in useful time


def kmeans(
    points: torch.Tensor,
    k: int,
    *,
    weights: torch.Tensor | None = None,
    metric: str = "euclidean",
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    backend: str = "fused",
) -> KMeansResult:
    """k-means++ (scikit-learn's greedy variant, 2 + log k local trials) then Lloyd iterations;
    the best of ``n_init`` runs by inertia.

    Args:
        points: ``[M, D]``, any float dtype (16-bit inputs are computed in float32).
        k: number of clusters, ``1 <= k <= M``.
        weights: optional ``[M]`` non-negative sample weights, not all zero.
        metric: ``"euclidean"``, or ``"cosine"`` for spherical k-means (points and centroids are
            normalized; the inertia is ``Σ w · (1 − cos)``).
        tol: relative to the mean per-feature variance of the points, as in scikit-learn; a run
            stops when the total squared centroid shift falls to it, or when no label changes.
        seed: fixes every random draw; the same seed gives the same result on a device.
        backend: ``"fused"`` (compiled kernels) or ``"reference"`` (plain torch).

    A cluster that ends an iteration empty is re-seeded with the point farthest from its centroid.
    """
    bnd.check_backend(OP, backend)
    x, w, k = _check_inputs(points, k, weights, metric, n_init, max_iter, tol, seed)
    on_cpu = x.device.type == "cpu" and backend == "fused"
    if not on_cpu and not torch.isfinite(x).all():  # the CPU kernel checks in its variance pass
        raise ValueError(f"{OP}: points contain NaN or Inf")
    if backend == "reference":
        r = reference.kmeans(x, k, weights=w, metric=metric, n_init=n_init, max_iter=max_iter, tol=tol, seed=seed)
        return KMeansResult(r.centroids.to(points.dtype), r.labels, r.inertia, r.n_iter)
    cosine = metric == "cosine"
    x = bnd.l2_normalize(x) if cosine else x
    if not on_cpu:  # the CPU kernel scales tol itself, in the same pass (torch's var: 1 s at 1M x 70)
        tol = float(tol * x.var(0, unbiased=False).mean()) if x.shape[0] > 1 else 0.0
    centroids = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    inertia, n_iter = _C.kmeans(x, w, k, n_init, max_iter, float(tol), seed, cosine, centroids, labels,
                                bnd.stream_handle(x.device), on_cpu)
    return KMeansResult(centroids.to(points.dtype), labels, float(inertia), int(n_iter))


def _check_inputs(points, k, weights, metric, n_init, max_iter, tol, seed):
    x, k = bnd.point_set(OP, points, k, metric, finite=False)  # checked in kmeans()
    bnd.check_int(OP, "n_init", n_init, minimum=1, maximum=MAX_INIT)
    bnd.check_int(OP, "max_iter", max_iter, minimum=1, maximum=MAX_ITER)
    bnd.check_int(OP, "seed", seed, minimum=0, maximum=2**63 - 1)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise ValueError(f"{OP}: tol must be a finite number >= 0, got {tol!r}")
    if weights is None:
        return x, None, k
    M = x.shape[0]
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"{OP}: weights must be a torch.Tensor, got {type(weights).__name__}")
    bnd.check_dtype(OP, "weights", weights, bnd.FLOAT_DTYPES)
    if weights.shape != (M,):
        raise ValueError(f"{OP}: weights must have shape [M] = [{M}], got {list(weights.shape)}")
    bnd.check_same_device(OP, points=points, weights=weights)
    w = bnd.kernel_input(weights.to(x.dtype))
    if not torch.isfinite(w).all():
        raise ValueError(f"{OP}: weights contain NaN or Inf")
    if (w < 0).any():
        raise ValueError(f"{OP}: weights must be non-negative")
    if not (w > 0).any():
        raise ValueError(f"{OP}: weights are all zero")
    return x, w, k
