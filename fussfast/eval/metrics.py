"""Segmentation scores: confusion matrix on the device, Hungarian matching of clusters to
classes, mIoU, mean Dice and pixel accuracy (all x100), as STEGO and FUSS report them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_clusters: int, num_classes: int,
                     *, ignore_index: int = -1) -> torch.Tensor:
    """``[num_clusters, num_classes]`` int64 counts of (predicted cluster, true class) per pixel.

    Pixels whose target is ``ignore_index`` or outside ``[0, num_classes)`` are skipped; a
    prediction outside ``[0, num_clusters)`` raises ``ValueError``. Computed with one bincount
    on the tensors' device.
    """
    if pred.shape != target.shape:
        raise ValueError(f"confusion_matrix: pred {list(pred.shape)} and target {list(target.shape)} differ")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < num_classes)
    pred, target = pred[keep], target[keep]
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_clusters):
        raise ValueError(f"confusion_matrix: predictions must lie in [0, {num_clusters})")
    counts = torch.bincount(pred * num_classes + target, minlength=num_clusters * num_classes)
    return counts.view(num_clusters, num_classes)


@dataclass(frozen=True)
class Scores:
    miou: float  # mean IoU over the classes that occur in target or prediction, x100
    acc: float  # matched pixels / all counted pixels, x100
    iou: list[float]  # per class, x100 (NaN for a class absent from both)
    assignment: list[int]  # assignment[cluster] = class it is matched to (-1: unmatched)
    dice: float  # mean Dice (2TP / (2TP + FP + FN)) over the same classes as miou, x100
    dice_per_class: list[float]  # per class, x100 (NaN where iou is)


def hungarian_scores(confusion: torch.Tensor) -> Scores:
    """Matches clusters to classes one to one, maximizing the matched pixels
    (``scipy.optimize.linear_sum_assignment(maximize=True)``), then scores the matched matrix.
    ``confusion`` may have more clusters than classes (rows) or fewer: a cluster left unmatched
    predicts no class, so its pixels count as false negatives of their true classes."""
    from scipy.optimize import linear_sum_assignment

    hist = confusion.detach().cpu().numpy().astype(np.float64)
    clusters, classes = linear_sum_assignment(hist, maximize=True)
    assignment = [-1] * hist.shape[0]
    for c, k in zip(clusters, classes):
        assignment[int(c)] = int(k)
    return _scores(hist, assignment)


def scores(confusion: torch.Tensor, matching: str = "hungarian") -> dict:
    """``{"miou", "acc", "dice"}`` with clusters matched to classes (``hungarian``) or taken as
    they are (``identity``, supervised)."""
    s = hungarian_scores(confusion) if matching == "hungarian" else identity_scores(confusion)
    return {"miou": s.miou, "acc": s.acc, "dice": s.dice}


def mean_scores(many: list[dict]) -> dict:
    """The key-wise mean of ``scores()``-like dicts of the same keys (nested dicts too, as the
    ``crf`` figures)."""
    return {k: mean_scores([s[k] for s in many]) if isinstance(v, dict) else sum(s[k] for s in many) / len(many)
            for k, v in many[0].items()}


def identity_scores(confusion: torch.Tensor) -> Scores:
    """Scores of a supervised model: predicted class k is class k (a square confusion matrix)."""
    if confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"identity_scores: the confusion matrix must be square, got {list(confusion.shape)}")
    return _scores(confusion.detach().cpu().numpy().astype(np.float64), list(range(confusion.shape[0])))


def _scores(hist: np.ndarray, assignment: list[int]) -> Scores:
    matched = np.zeros((hist.shape[1], hist.shape[1]))  # [matched class, true class]
    for c, k in enumerate(assignment):
        if k >= 0:
            matched[k] = hist[c]
    tp = np.diag(matched)
    fp = matched.sum(1) - tp
    fn = hist.sum(0) - tp  # an unmatched cluster's pixels are missed by their true class too
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)  # NaN exactly where iou is: a class absent from both
    total = hist.sum()
    acc = float(tp.sum() / total * 100) if total else float("nan")
    mean = lambda v: float(np.nanmean(v) * 100) if np.isfinite(v).any() else float("nan")  # noqa: E731
    per_class = lambda v: [float(x * 100) for x in v]  # noqa: E731
    return Scores(mean(iou), acc, per_class(iou), assignment, mean(dice), per_class(dice))
