"""Hungarian evaluation against brute force over every cluster-to-class permutation."""

import itertools

import numpy as np
import pytest
import torch

from fussfast.eval import confusion_matrix, hungarian_scores


def brute_force(hist):
    """Best one-to-one matching by trying every permutation; returns (miou, acc)."""
    K = hist.shape[0]
    best = None
    for perm in itertools.permutations(range(K)):
        matched = hist[list(perm)]  # matched[class] = row of the cluster assigned to it
        trace = np.trace(matched)
        if best is None or trace > best[0]:
            best = (trace, matched)
    matched = best[1]
    tp = np.diag(matched)
    iou = tp / (matched.sum(1) + matched.sum(0) - tp)
    return np.nanmean(iou) * 100, tp.sum() / hist.sum() * 100


@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_matches_brute_force(device, K):
    g = torch.Generator().manual_seed(K)
    for _ in range(5):
        target = torch.randint(0, K, (4, 9, 11), generator=g)
        pred = torch.where(torch.rand(4, 9, 11, generator=g) < 0.7, (target + 1) % K,
                           torch.randint(0, K, (4, 9, 11), generator=g))
        target[torch.rand(4, 9, 11, generator=g) < 0.1] = -1
        hist = confusion_matrix(pred.to(device), target.to(device), K, K)
        assert hist.device.type == device.type and hist.sum() == (target >= 0).sum()
        scores = hungarian_scores(hist)
        miou, acc = brute_force(hist.cpu().numpy().astype(float))
        assert scores.acc == pytest.approx(acc) and scores.miou == pytest.approx(miou)
        if K > 1:  # the relabelled prediction is matched back to its classes
            assert scores.assignment == [(c - 1) % K for c in range(K)]


def test_perfect_and_permuted_prediction():
    target = torch.arange(4).repeat_interleave(25).view(1, 10, 10)
    pred = (target + 2) % 4
    s = hungarian_scores(confusion_matrix(pred, target, 4, 4))
    assert s.miou == pytest.approx(100) and s.acc == pytest.approx(100)


def test_confusion_matrix_checks():
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(torch.zeros(2, 3), torch.zeros(3, 2), 2, 2)
    with pytest.raises(ValueError, match=r"predictions must lie in \[0, 2\)"):
        confusion_matrix(torch.tensor([2]), torch.tensor([0]), 2, 2)
    hist = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([255, 1, 7]), 2, 2, ignore_index=255)
    assert hist.tolist() == [[0, 0], [0, 1]]
