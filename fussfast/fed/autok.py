"""Automatic class count (auto-K) for FedCC: how many distinct concepts the slot-level
centroids hold, chosen by the mean silhouette of a clustering of them for each candidate K.

Why the silhouette: the server sees only centroids (tens of slot centroids, made from the n
sites x K active points), never pixels. The silhouette scores a partition of exactly those points with the
strategy's own metric, is bounded in [-1, 1] and comparable across K, and needs neither
reference draws (the gap statistic's B uniform reference sets cost B more clusterings per K and
are noisy at tens of points) nor a kernel width (the eigengap of a cosine affinity depends on
one, and its gaps shrink when the groups differ in size). Its cost is one ``[M, M]`` distance
matrix; the clusterings per K are the ``ops.kmeans`` / ``ops.maximin`` kernels (maximin's picks
for K are the first K of its picks for the largest K: one call serves every candidate).

What is clustered (``FedCC`` with ``auto_k``): not the pooled n·K points but the K slot-level
centroids that FedCC's own aggregation makes of them. Every site starts a round from the same
global slots and moves them little, so after round 1 the pooled set is K tight groups, one per
slot (a slot's copies on the sites); a silhouette over the pooled points measures that copy
effect and rises with K up to K itself (measured: it always chose ``fed.k_max``). Reduced to
one point per slot, the question becomes the one auto-K means to ask: which slots hold the
same concept (near-duplicates, to merge) and which are distinct.

Keeping every slot (K̂ = M, the number of points) is judged by a threshold, ``keep_below``:
the M singletons' silhouette is 0 by Rousseeuw's convention, so comparing it with the other
candidates would merge whenever any partition scores above 0, i.e. almost always. Instead a
merge must reach a mean silhouette of ``keep_below`` (default 0.5: Kaufman & Rousseeuw's
"reasonable structure", above 0.5; 0.25 and below is "no substantial structure"); K = M is
recorded in the criterion with that threshold as its score, so K̂ is still the criterion's
argmax (the smallest K on ties).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fussfast.ops import kmeans, maximin


@dataclass(frozen=True)
class KEstimate:
    k: int  # the chosen number of clusters
    centroids: torch.Tensor  # [k, D]: the clustering's centres (kmeans) or picked points (maximin)
    criterion: dict[int, float]  # mean silhouette of each candidate K (empty: no choice was possible)


def distances(points: torch.Tensor, metric: str) -> torch.Tensor:
    """``[M, M]`` float64 distances: Euclidean, or ``1 − cos`` for ``"cosine"``."""
    x = points.double()
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
        return (1 - x @ x.T).clamp_min(0).fill_diagonal_(0)
    return torch.cdist(x, x)


def silhouette(dist: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean silhouette (Rousseeuw 1987) of the partition ``labels`` ``[M]`` under the distance
    matrix ``dist`` ``[M, M]``: per point ``(b − a) / max(a, b)``, ``a`` its mean distance to the
    rest of its cluster, ``b`` the smallest mean distance to another cluster; 0 for a point alone
    in its cluster. NaN when fewer than two clusters are non-empty."""
    _, labels = torch.unique(labels, return_inverse=True)  # drops empty clusters
    members = torch.nn.functional.one_hot(labels).double()  # [M, C]
    if members.shape[1] < 2:
        return float("nan")
    counts = members.sum(0)
    sums = dist @ members  # [M, C]: each point's summed distance to each cluster
    own = counts[labels]
    a = sums.gather(1, labels[:, None])[:, 0] / (own - 1).clamp_min(1)
    b = (sums / counts).scatter(1, labels[:, None], float("inf")).min(1).values
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-300)
    return float(torch.where(own > 1, s, torch.zeros_like(s)).mean())


def estimate_k(points: torch.Tensor, k_min: int, k_max: int, *, method: str = "kmeans",
               metric: str = "euclidean", seed: int = 0, keep_below: float | None = None) -> KEstimate:
    """The K in ``[k_min, min(k_max, M − 1)]`` whose clustering of ``points`` ``[M, D]`` has the
    largest mean silhouette (the smallest such K on ties), with that clustering's centres.
    ``method``: ``"kmeans"`` (k-means++, n_init 10, ``seed``) or ``"maximin"`` (farthest-first
    picks from point 0, each point labelled by its nearest pick). With fewer than ``k_min + 1``
    points there is no choice: K = ``k_min``.

    ``keep_below`` (a float): K = M, every point its own cluster (the points themselves as the
    centres), is a candidate too when ``k_min <= M <= k_max``, scored ``keep_below``: it is
    chosen unless some K < M reaches a mean silhouette of at least ``keep_below``."""
    if not 2 <= k_min <= k_max:
        raise ValueError(f"estimate_k: need 2 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
    if points.shape[0] < k_min:
        raise ValueError(f"estimate_k: {points.shape[0]} points cannot form k_min={k_min} clusters")
    high = min(k_max, points.shape[0] - 1)  # the silhouette needs a point outside any one cluster
    dist = distances(points, metric)
    picks = maximin(points, max(high, k_min), metric=metric, start=0) if method == "maximin" else None
    best, criterion = None, {}
    for k in range(k_min, high + 1):
        if picks is None:
            result = kmeans(points, k, metric=metric, n_init=10, seed=seed)
            labels, centres = result.labels, result.centroids
        else:
            labels, centres = dist[:, picks[:k]].argmin(1), points[picks[:k]]
        criterion[k] = silhouette(dist, labels)
        if best is None or criterion[k] > criterion[best[0]] or criterion[best[0]] != criterion[best[0]]:
            best = (k, centres)
    m = points.shape[0]
    if keep_below is not None and k_min <= m <= k_max:
        criterion[m] = float(keep_below)
        if best is None or not criterion[best[0]] >= keep_below:  # NaN scores lose too
            best = (m, points)
    if best is None:  # too few points to compare candidates
        centres = points[picks[:k_min]] if picks is not None else \
            kmeans(points, k_min, metric=metric, n_init=10, seed=seed).centroids
        return KEstimate(k_min, centres, {})
    return KEstimate(best[0], best[1], criterion)
