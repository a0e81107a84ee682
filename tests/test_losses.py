"""CorrespondenceLoss against STEGO's ContrastiveCorrelationLoss; derangements; ClusterProbe."""

import pytest
import torch
import torch.nn.functional as F

from fussfast.losses import PRESETS, CorrespondenceConfig, CorrespondenceLoss, derangement
from fussfast.model import ClusterProbe
from fussfast.ops import cluster_assign_reference, correlation_loss_reference


def stego_sample(t, coords):
    return F.grid_sample(t, coords.permute(0, 2, 1, 3).to(t.dtype), padding_mode="border", align_corners=True)


def stego_helper(cfg):
    """STEGO's ContrastiveCorrelationLoss.helper with cfg's options: the per-pair mean losses."""
    return lambda f1, f2, c1, c2, shift: correlation_loss_reference(
        f1, f2, c1, c2, shift, pointwise=cfg.pointwise, zero_clamp=cfg.zero_clamp, stabilize=cfg.stabilize,
        reduction="none")


def stego_total(cfg, feats, codes, feats_pos, codes_pos, pts):
    """STEGO's ContrastiveCorrelationLoss.forward + its weighting in train_segmentation.py, with
    the given random draws."""
    helper = stego_helper(cfg)
    f1, c1 = stego_sample(feats, pts.coords1), stego_sample(codes, pts.coords1)
    f2, c2 = stego_sample(feats_pos, pts.coords2), stego_sample(codes_pos, pts.coords2)
    intra = helper(f1, f1, c1, c1, cfg.pos_intra_shift)
    inter = helper(f1, f2, c1, c2, cfg.pos_inter_shift)
    negs = [helper(f1, stego_sample(feats[p], pts.coords2), c1, stego_sample(codes[p], pts.coords2),
                   cfg.neg_inter_shift) for p in pts.perms]
    neg = torch.cat(negs, 0)
    return (cfg.pos_inter_weight * inter.mean() + cfg.pos_intra_weight * intra.mean()
            + cfg.neg_inter_weight * neg.mean()), intra.mean(), inter.mean(), neg.mean()


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize(
    "feature_samples", [11, 5, pytest.param(None, marks=pytest.mark.no_simt("full maps: 13 s emulated; 11 and 5 cover it"))]
)
def test_matches_stego_loss(device, preset, feature_samples):
    g = torch.Generator().manual_seed(3)
    B, C, D, H, W = 4, 48, 9, 14, 12
    feats, feats_pos = (torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(device) for _ in range(2))
    codes, codes_pos = (torch.randn(B, D, H, W, generator=g, dtype=torch.float64).to(device).requires_grad_()
                        for _ in range(2))
    loss = CorrespondenceLoss(CorrespondenceConfig.preset(preset, feature_samples=feature_samples))
    pts = loss.sample_points(B, device, generator=g)
    out = loss(feats, codes, feats_pos, codes_pos, points=pts)
    if feature_samples is None:  # full maps: sampling is the identity
        full = loss.sample_points(B, device, generator=torch.Generator().manual_seed(0))
        assert full.coords1 is None
    want = (stego_total(loss.config, feats, codes, feats_pos, codes_pos, pts) if feature_samples
            else _stego_full(loss.config, feats, codes, feats_pos, codes_pos, pts.perms))
    for got, exp in zip((out.total, out.intra, out.inter, out.neg), want):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12)
    g_got = torch.autograd.grad(out.total, (codes, codes_pos))
    g_want = torch.autograd.grad(want[0], (codes, codes_pos))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13)


def _stego_full(cfg, feats, codes, feats_pos, codes_pos, perms):
    helper = stego_helper(cfg)
    intra = helper(feats, feats, codes, codes, cfg.pos_intra_shift).mean()
    inter = helper(feats, feats_pos, codes, codes_pos, cfg.pos_inter_shift).mean()
    neg = torch.cat([helper(feats, feats[p], codes, codes[p], cfg.neg_inter_shift) for p in perms]).mean()
    total = cfg.pos_inter_weight * inter + cfg.pos_intra_weight * intra + cfg.neg_inter_weight * neg
    return total, intra, inter, neg


def test_derangement_has_no_fixed_points_and_covers_all():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(400):
        p = derangement(3, g)
        assert sorted(p.tolist()) == [0, 1, 2] and not (p == torch.arange(3)).any()
        seen.add(tuple(p.tolist()))
    assert seen == {(1, 2, 0), (2, 0, 1)}  # both derangements of 3 appear
    for n in (2, 5, 64):
        assert not (derangement(n, g) == torch.arange(n)).any()
    with pytest.raises(ValueError, match="n >= 2"):
        derangement(1)


def test_negatives_need_two_images():
    loss = CorrespondenceLoss("cityscapes")
    with pytest.raises(ValueError, match="at least 2"):
        loss.sample_points(1, "cpu")
    loss0 = CorrespondenceLoss(CorrespondenceConfig.preset("cityscapes", neg_samples=0))
    x = torch.randn(1, 8, 6, 6)
    out = loss0(x, torch.randn(1, 4, 6, 6), x, torch.randn(1, 4, 6, 6))
    assert out.neg == 0 and torch.isfinite(out.total)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown correspondence preset"):
        CorrespondenceConfig.preset("ade20k")


def test_backend_reference_agrees():
    g = torch.Generator().manual_seed(1)
    feats, codes = torch.randn(3, 16, 9, 9, generator=g), torch.randn(3, 7, 9, 9, generator=g)
    fused, ref = CorrespondenceLoss("cocostuff27-vits"), CorrespondenceLoss("cocostuff27-vits", backend="reference")
    pts = fused.sample_points(3, "cpu", generator=g)
    a, b = fused(feats, codes, feats, codes, points=pts), ref(feats, codes, feats, codes, points=pts)
    torch.testing.assert_close(a.total, b.total, rtol=1e-5, atol=1e-6)


def test_cluster_probe(device):
    torch.manual_seed(0)
    probe = ClusterProbe(dim=12, n_classes=5).to(device)
    codes = torch.randn(2, 12, 7, 8, device=device)
    loss, probs = probe(codes)
    want, want_probs = cluster_assign_reference(codes, probe.clusters)
    torch.testing.assert_close(loss, want)
    assert torch.equal(probs, want_probs) and torch.equal(probe.labels(codes), want_probs.argmax(1))
    loss.backward()
    assert probe.clusters.grad is not None and torch.isfinite(probe.clusters.grad).all()
    log_probs = probe(codes, alpha=3.0, log_probs=True)
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(2, 7, 8, device=device))
    with pytest.raises(ValueError, match="needs an alpha"):
        probe(codes, log_probs=True)


def test_moon_contrast_against_the_formula():
    from fussfast.losses import moon_contrast

    g = torch.Generator().manual_seed(3)
    z, zg, zp = (torch.randn(2, 5, 3, 7, generator=g, dtype=torch.float64) for _ in range(3))
    cos = lambda a, b: (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))  # noqa: E731
    pos, neg = torch.exp(cos(z, zg) / 0.3), torch.exp(cos(z, zp) / 0.3)
    want = (-torch.log(pos / (pos + neg))).mean()
    torch.testing.assert_close(moon_contrast(z, zg, zp, tau=0.3), want)
    # same global and previous model: a constant log 2 with no gradient (MOON's first round)
    z.requires_grad_(True)
    loss = moon_contrast(z, zg, zg.clone())
    torch.testing.assert_close(loss.detach(), torch.tensor(2.0, dtype=torch.float64).log())
    loss.backward()
    assert z.grad.abs().max() < 1e-12
    assert torch.autograd.gradcheck(lambda x: moon_contrast(x, zg, zp), (z.detach().requires_grad_(),))


def test_code_distill():
    from fussfast.losses import code_distill

    g = torch.Generator().manual_seed(4)
    z, t = (torch.randn(2, 6, 4, 5, generator=g, dtype=torch.float64) for _ in range(2))
    assert float(code_distill(t, t)) == pytest.approx(0.0, abs=1e-12)
    assert float(code_distill(t, t, "kl")) == pytest.approx(0.0, abs=1e-12)
    p, q = torch.softmax(t, 1), torch.softmax(z, 1)
    torch.testing.assert_close(code_distill(z, t, "kl"), (p * (p / q).log()).sum(1).mean())
    cos = (z * t).sum(1) / (z.norm(dim=1) * t.norm(dim=1))
    torch.testing.assert_close(code_distill(z, t), (1 - cos).mean())
    with pytest.raises(ValueError, match="kind must be"):
        code_distill(z, t, "l2")
