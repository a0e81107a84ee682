"""Hungarian evaluation against brute force over every cluster-to-class permutation."""

import itertools

import numpy as np
import pytest
import torch

from fussfast.eval import confusion_matrix, hungarian_scores, identity_scores, mean_scores, scores


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


def dice_formula(matched):
    """Per-class Dice of a matched ``[predicted class, true class]`` matrix, float64, straight
    from the definition: 2|P ∩ T| / (|P| + |T|); NaN where the class is in neither."""
    K = matched.shape[0]
    out = np.full(K, np.nan)
    for k in range(K):
        both, predicted, true = matched[k, k], matched[k, :].sum(), matched[:, k].sum()
        if predicted + true > 0:
            out[k] = 2 * both / (predicted + true)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_dice_against_the_formula_with_absent_classes(seed):
    rng = np.random.default_rng(seed)
    K = int(rng.integers(3, 8))
    hist = rng.integers(0, 50, (K, K)).astype(np.int64)
    absent = rng.choice(K, 2, replace=False)  # one class in neither prediction nor truth, one predicted only
    hist[absent[0], :] = 0
    hist[:, absent[0]] = 0
    hist[:, absent[1]] = 0
    hist[absent[1], absent[1] - 1] = 7
    s = identity_scores(torch.from_numpy(hist))
    dice = dice_formula(hist.astype(np.float64))
    assert np.isnan(s.dice_per_class[absent[0]]) and np.isnan(s.iou[absent[0]])
    assert s.dice_per_class[absent[1]] == 0  # predicted, never true: counts as 0 as mIoU does
    np.testing.assert_allclose(s.dice_per_class, dice * 100, rtol=1e-12, equal_nan=True)
    assert s.dice == pytest.approx(np.nanmean(dice) * 100, rel=1e-12)
    iou = np.array(s.iou) / 100  # Dice = 2 IoU / (1 + IoU), class by class
    np.testing.assert_allclose(np.array(s.dice_per_class) / 100, 2 * iou / (1 + iou), rtol=1e-12, equal_nan=True)
    assert s.dice >= s.miou  # Dice >= IoU for every class


def test_hungarian_dice_is_on_the_matched_matrix():
    rng = np.random.default_rng(5)
    K = 5
    hist = rng.integers(0, 30, (K, K)) + np.diag(rng.integers(100, 200, K))  # cluster k is class k ...
    perm = rng.permutation(K)
    s = hungarian_scores(torch.from_numpy(hist[perm]))  # ... with the clusters shuffled
    assert s.dice == pytest.approx(np.nanmean(dice_formula(hist.astype(np.float64))) * 100, rel=1e-12)
    assert scores(torch.from_numpy(hist[perm])) == {"miou": s.miou, "acc": s.acc, "dice": s.dice}
    supervised = scores(torch.from_numpy(hist), "identity")
    assert supervised["dice"] == pytest.approx(s.dice, rel=1e-12)


def test_mean_scores_averages_nested_figures():
    a = {"miou": 10.0, "dice": 20.0, "crf": {"miou": 30.0}}
    b = {"miou": 20.0, "dice": 40.0, "crf": {"miou": 60.0}}
    assert mean_scores([a, b]) == {"miou": 15.0, "dice": 30.0, "crf": {"miou": 45.0}}
