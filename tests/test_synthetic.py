"""The built-in synthetic data: deterministic, exact masks, label skew across sites."""

import numpy as np
import pytest
import torch

from fussfast.data import synthetic_federation
from fussfast.data.synthetic import IMAGENET_MEAN, IMAGENET_STD, class_textures


def test_deterministic_and_shaped():
    sites, evaluation = synthetic_federation(num_sites=2, num_classes=5, images_per_site=4, seed=3)
    again, _ = synthetic_federation(num_sites=2, num_classes=5, images_per_site=4, seed=3)
    img, mask = sites["site1"][2]
    img2, mask2 = again["site1"][2]
    assert torch.equal(img, img2) and torch.equal(mask, mask2)
    assert img.shape == (3, 64, 64) and img.dtype == torch.float32 and mask.shape == (64, 64)
    assert mask.min() >= 0 and mask.max() < 5
    other, _ = synthetic_federation(num_sites=2, num_classes=5, images_per_site=4, seed=4)
    assert not torch.equal(other["site1"][2][0], img)
    with pytest.raises(IndexError):
        sites["site0"][4]


def test_regions_carry_their_class_colour():
    sites, _ = synthetic_federation(num_sites=1, num_classes=4, images_per_site=3, alpha=None, seed=1)
    colors = class_textures(4, seed=1)["colors"]
    for i in range(3):
        img, mask = sites["site0"][i]
        raw = img.numpy() * IMAGENET_STD + IMAGENET_MEAN
        for k in mask.unique().tolist():
            mean = raw[:, mask.numpy() == k].mean(1)
            nearest = np.argmin(((colors * 0.8 - mean) ** 2).sum(1))  # stripes average to 0.8x
            assert nearest == k


def test_label_skew_and_explicit_classes():
    sites, evaluation = synthetic_federation(num_sites=2, num_classes=6, images_per_site=20,
                                             site_classes=[[0, 1], [4, 5]], seed=0)
    seen = {name: set(torch.cat([ds[i][1].flatten() for i in range(len(ds))]).unique().tolist())
            for name, ds in sites.items()}
    assert seen == {"site0": {0, 1}, "site1": {4, 5}}
    eval_classes = set(torch.cat([evaluation[i][1].flatten() for i in range(len(evaluation))]).unique().tolist())
    assert eval_classes == set(range(6))
    skewed, _ = synthetic_federation(num_sites=3, num_classes=6, alpha=0.1, seed=2)
    dists = np.stack([s.class_probs for s in skewed.values()])
    assert (dists.max(1) > 0.5).all()  # small alpha: each site dominated by a few classes
