"""Weighted k-means (k-means++ init, Lloyd), the FedCC-kMeans aggregator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fussfast import _C
from fussfast.ops import _boundary as bnd

OP = "kmeans"


@dataclass(frozen=True)
class KMeansResult:
    centroids: torch.Tensor  # [k, D], the points' dtype
    labels: torch.Tensor  # [M] int64: the nearest centroid of every point
    inertia: float  # sum of w * squared distance (euclidean) or w * (1 - cos) (cosine)
    n_iter: int  # Lloyd iterations of the best run


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
    cosine = metric == "cosine"
    tol_abs = float(tol * x.var(0, unbiased=False).mean()) if x.shape[0] > 1 else 0.0
    if backend == "reference":
        centroids, labels, inertia, n_iter = _reference(x, w, k, cosine, n_init, max_iter, tol_abs, seed)
    else:
        centroids = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
        labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
        inertia, n_iter = _C.kmeans(x, w, k, n_init, max_iter, tol_abs, seed, cosine, centroids, labels,
                                    bnd.stream_handle(x.device))
    return KMeansResult(centroids.to(points.dtype), labels, float(inertia), int(n_iter))


def kmeans_reference(points, k, **kwargs) -> KMeansResult:
    """The same algorithm in plain torch (its own random draws, so not bit-identical)."""
    return kmeans(points, k, backend="reference", **kwargs)


def _distances(x, c, cosine):
    if cosine:
        return 1 - x @ c.T
    return ((x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)).clamp_min(0)


def _reference(x, w, k, cosine, n_init, max_iter, tol, seed):
    M = x.shape[0]
    w = torch.ones(M, dtype=x.dtype, device=x.device) if w is None else w
    g = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(n_init):
        # k-means++, greedy: the best of 2 + log k candidates drawn with probability ~ w * d^2
        idx = torch.multinomial(w.cpu(), 1, generator=g).to(x.device)
        c = x[idx]
        closest = _distances(x, c, cosine)[:, 0]
        for _ in range(1, k):
            pot = w * closest
            if pot.sum() > 0:
                cand = torch.multinomial(pot.cpu(), 2 + int(math.log(k)), replacement=True, generator=g).to(x.device)
            else:
                cand = torch.zeros(1, dtype=torch.int64, device=x.device)
            trial = torch.minimum(closest[None], _distances(x, x[cand], cosine).T)
            pick = int((trial * w).sum(1).argmin())
            closest = trial[pick]
            c = torch.cat([c, x[cand[pick]][None]])
        previous, n_iter = None, 0
        for n_iter in range(1, max_iter + 1):
            d = _distances(x, c, cosine)
            labels = d.argmin(1)
            if previous is not None and torch.equal(labels, previous):
                break
            previous = labels
            one_hot = torch.nn.functional.one_hot(labels, k).to(x.dtype) * w[:, None]
            mass = one_hot.sum(0)
            new = (one_hot.T @ x) / mass.clamp_min(1e-300)[:, None]
            empty = (mass == 0).nonzero().flatten()
            if len(empty):
                far = d.gather(1, labels[:, None])[:, 0].argsort(descending=True, stable=True)
                new[empty] = x[far[:len(empty)]]
            if cosine:
                new = new / new.norm(dim=1, keepdim=True).clamp_min(1e-300)
            shift = float(((new - c) ** 2).sum())
            c = new
            if shift <= tol:
                break
        d = _distances(x, c, cosine)
        labels = d.argmin(1)
        inertia = float((w * d.gather(1, labels[:, None])[:, 0]).sum())
        if best is None or inertia < best[2]:
            best = (c, labels, inertia, n_iter)
    return best


def _check_inputs(points, k, weights, metric, n_init, max_iter, tol, seed):
    x, k = bnd.point_set(OP, points, k, metric)
    bnd.check_int(OP, "n_init", n_init, minimum=1)
    bnd.check_int(OP, "max_iter", max_iter, minimum=1)
    bnd.check_int(OP, "seed", seed, minimum=0)
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
