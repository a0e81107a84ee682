"""Pure-torch references of the ops, written from the formulas: the ``backend="reference"`` path
of each op, and what the tests and benchmarks check the kernels against.

Every reference has the same contract:

- Arguments: the op's, with the same names and defaults, minus ``backend``; torch tensors only.
- Inputs are taken as valid: the op checks them before it calls its reference.
- Computation in the inputs' dtype, with plain torch operations, so autograd gives every
  gradient (also of outputs the fused op does not differentiate, such as cluster_assign's probs).
- Returns what the op returns: the same structure, shapes and dtypes.

The ops apply the half-to-float32 rule (``_boundary.accumulation_dtype``) before they call a
reference, as before their kernels, so for 16-bit inputs an op's reference backend computes in
float32 while a direct call of the reference computes in the 16-bit dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fussfast.ops._boundary import NORM_EPS


def _normalize(t: torch.Tensor) -> torch.Tensor:
    return F.normalize(t, dim=1, eps=NORM_EPS)


def bilinear_sample(maps, points, index=None):
    """``[M, P, C]``: ``maps[index[m]]`` (``[N, H, W, C]``, channels-last) read at ``points[m]``
    (``[M, P, 2]``, ``(x, y)`` in ``[-1, 1]``) by STEGO's ``grid_sample`` (bilinear, border
    padding, align_corners=True)."""
    src = maps.permute(0, 3, 1, 2)
    if index is not None:
        src = src[index]
    out = F.grid_sample(src, points[:, :, None, :].to(src.dtype), mode="bilinear", padding_mode="border",
                        align_corners=True)  # [M, C, P, 1]
    return out[..., 0].transpose(1, 2)


def region_pool(embeddings, labels, num_classes, *, ignore_index=-1, normalize=False):
    """``(means [B, K, D], counts [B, K])``: per image and class, the mean embedding of the pixels
    with that label (0 for an empty region) and their number."""
    B, D = embeddings.shape[:2]
    K = num_classes
    x = embeddings.flatten(2).transpose(1, 2)  # [B, P, D]
    lab = labels.flatten(1).long()
    # Row b * (K + 1) + k sums class k of image b; ignored pixels go to the spare row K. index_add
    # rather than a one-hot product keeps a NaN pixel inside its own region.
    rows = torch.where(lab == ignore_index, K, lab) + torch.arange(B, device=lab.device)[:, None] * (K + 1)
    sums = x.new_zeros(B * (K + 1), D).index_add(0, rows.flatten(), x.flatten(0, 1))
    counts = torch.bincount(rows.flatten(), minlength=B * (K + 1))
    sums = sums.view(B, K + 1, D)[:, :K]
    counts = counts.view(B, K + 1)[:, :K]
    means = sums / counts.clamp(min=1).unsqueeze(-1).to(sums.dtype)
    if normalize:
        means = means / means.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
    return means, counts


def cluster_assign(codes, centroids, *, alpha=None, reduction="mean"):
    """``(loss, probs)`` of STEGO's ``ClusterLookup.forward``: the cosine of every pixel code to
    every centroid, one-hot of the best (``alpha`` None) or ``softmax(alpha * cos)``, and
    ``loss = -sum_k probs * cos`` over pixels (mean, sum, or ``"none"``: per-image mean)."""
    inner = torch.einsum("bchw,nc->bnhw", _normalize(codes), _normalize(centroids))
    if alpha is None:
        probs = F.one_hot(inner.argmax(1), centroids.shape[0]).permute(0, 3, 1, 2).to(inner.dtype)
    else:
        probs = torch.softmax(inner * alpha, dim=1)
    per_pixel = -(probs * inner).sum(1)
    if reduction == "mean":
        return per_pixel.mean(), probs
    if reduction == "sum":
        return per_pixel.sum(), probs
    return per_pixel.mean((1, 2)), probs


def correlation_loss(feats1, feats2, codes1, codes2, shift, *, pointwise=True, zero_clamp=True,
                     stabilize=False, reduction="mean", groups=1):
    """STEGO's ``ContrastiveCorrelationLoss.helper``, ``-clamp(S, lo, hi) * (F - shift)`` over
    every position pair (p, q) of every feature pair b, materialized as ``[B, P, Q]``:
    ``F = N(f1)ᵀ N(f2)`` (a constant), with ``pointwise`` ``F - mean_q F + mean F`` (the global
    mean per group of ``B / groups`` pairs); ``S = N(c1)ᵀ N(c2)``; ``lo = 0`` if ``zero_clamp``
    else -inf, ``hi = 0.8`` if ``stabilize`` else +inf. Reductions: mean, sum, or ``"none"``:
    the ``[B]`` per-pair means."""
    B = feats1.shape[0]
    shift = torch.as_tensor(shift, dtype=codes1.dtype, device=codes1.device).expand(B)
    with torch.no_grad():
        fd = torch.einsum("bcp,bcq->bpq", _normalize(feats1.flatten(2)), _normalize(feats2.flatten(2)))
        if pointwise:
            per_group = fd.unflatten(0, (groups, -1))  # [groups, B / groups, P, Q]
            old_mean = per_group.mean((1, 2, 3), keepdim=True)
            per_group = per_group - per_group.mean(3, keepdim=True)
            fd = (per_group - per_group.mean((1, 2, 3), keepdim=True) + old_mean).flatten(0, 1)
    cd = torch.einsum("bdp,bdq->bpq", _normalize(codes1.flatten(2)), _normalize(codes2.flatten(2)))
    lo = 0.0 if zero_clamp else -math.inf
    hi = 0.8 if stabilize else math.inf
    loss = -cd.clamp(lo, hi) * (fd - shift[:, None, None])
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss.mean((1, 2))


def back_ce(logits, labels, present, *, ignore_index=255, reduction="mean"):
    """FedSeg's BackCE from log-softmax: ``-log p_y`` for a labelled pixel; for an unlabelled
    one ``-log sum_{k absent} p_k`` (the classes the site does not annotate, ``present`` false),
    or nothing when every class is present. ``"mean"`` is over the counted pixels."""
    B, K = logits.shape[:2]
    spatial = (1,) * (logits.dim() - 2)
    absent = ~present.expand(B, K).view(B, K, *spatial)
    lse = torch.logsumexp(logits, dim=1)
    lse_absent = torch.logsumexp(logits.masked_fill(~absent, float("-inf")), dim=1)
    labelled = labels != ignore_index
    picked = logits.gather(1, torch.where(labelled, labels, 0).unsqueeze(1)).squeeze(1)
    has_absent = absent.flatten(1).any(1).view(B, *spatial)
    per_pixel = torch.where(labelled, lse - picked,
                            torch.where(has_absent, lse - lse_absent, torch.zeros_like(lse)))
    if reduction == "none":
        return per_pixel
    if reduction == "sum":
        return per_pixel.sum()
    return per_pixel.sum() / (labelled | has_absent).sum().clamp(min=1)


@dataclass(frozen=True)
class KMeansResult:
    """What kmeans and its reference return."""

    centroids: torch.Tensor  # [k, D], the points' dtype
    labels: torch.Tensor  # [M] int64: the nearest centroid of every point
    inertia: float  # sum of w * squared distance (euclidean) or w * (1 - cos) (cosine)
    n_iter: int  # Lloyd iterations of the best run


def _distances(x, c, cosine):
    if cosine:
        return (1 - x @ c.T).clamp_min(0)  # rounding may give 1 - cos < 0 for equal directions
    return ((x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)).clamp_min(0)


def kmeans(points, k, *, weights=None, metric="euclidean", n_init=10, max_iter=300, tol=1e-4, seed=0):
    """k-means++ (greedy, 2 + log k local trials) then Lloyd iterations, best of ``n_init`` by
    inertia; spherical for ``"cosine"``. Its own random draws, so not bit-identical to the kernels."""
    cosine = metric == "cosine"
    x = _normalize(points) if cosine else points
    M = x.shape[0]
    tol = float(tol * x.var(0, unbiased=False).mean()) if M > 1 else 0.0  # relative, as scikit-learn
    w = torch.ones(M, dtype=x.dtype, device=x.device) if weights is None else weights.to(x.dtype)
    g = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(n_init):
        # k-means++, greedy: the best of 2 + log k candidates drawn with probability ~ w * d
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
            one_hot = F.one_hot(labels, k).to(x.dtype) * w[:, None]
            mass = one_hot.sum(0)
            new = (one_hot.T @ x) / mass.clamp_min(1e-300)[:, None]
            empty = (mass == 0).nonzero().flatten()
            if len(empty):  # re-seeded with the points farthest from their centroids
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
        if best is None or inertia < best.inertia:
            best = KMeansResult(c, labels, inertia, n_iter)
    return best


def maximin(points, k, *, metric="euclidean", start=0):
    """Indices ``[k]`` of greedy farthest-point picks: ``start``, then each time the point whose
    distance (squared Euclidean, or 1 - cos) to its nearest pick is largest, lowest index on ties."""
    cosine = metric == "cosine"
    x = _normalize(points) if cosine else points
    min_dist = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
    picks = [start]
    for _ in range(1, k):
        c = x[picks[-1]]
        d = 1 - x @ c if cosine else ((x - c) ** 2).sum(1)
        min_dist = torch.minimum(min_dist, d)
        picks.append(int(torch.argmax(min_dist)))  # argmax returns the first maximum
    return torch.tensor(picks, dtype=torch.int64, device=x.device)
