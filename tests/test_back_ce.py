"""back_ce (FedSeg's BackCE): fused kernel against the reference and a case by hand, CE when
every class is present, gradients, bad input."""

import pytest
import torch
import torch.nn.functional as F

from fussfast.ops import back_ce, back_ce_reference


def inputs(B, K, H, W, device, seed, ignore_share=0.4):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, K, H, W, generator=g, dtype=torch.float64) * 3).to(device)
    labels = torch.randint(0, K, (B, H, W), generator=g)
    labels[torch.rand(B, H, W, generator=g) < ignore_share] = 255
    present = torch.rand(B, K, generator=g) < 0.5
    present[:, 0] = True
    present[0] = True  # image 0: every class annotated, so its unlabelled pixels count nothing
    labels = torch.where(present.gather(1, labels.clamp(max=K - 1).flatten(1)).view(B, H, W) | (labels == 255),
                         labels, 255)
    return logits, labels.to(device), present.to(device)


@pytest.mark.parametrize("fn", [back_ce, back_ce_reference], ids=["op", "reference"])
def test_by_hand(device, fn):
    """Image 0 annotates class 0 only: a pixel labelled 0 with p = (1/4, 3/4) gives log 4, an
    unlabelled one -log p_1 = log 4/3. Image 1 annotates both: a pixel labelled 1 with
    p = (3/4, 1/4) gives log 4, an unlabelled one nothing, and is not counted."""
    l3 = torch.tensor(3.0).log().item()
    logits = torch.tensor([[[0.0, 0.0], [l3, l3]], [[l3, 0.0], [0.0, 0.0]]], dtype=torch.float64, device=device)
    labels = torch.tensor([[0, 255], [1, 255]], device=device)
    present = torch.tensor([[True, False], [True, True]], device=device)
    l4, l43 = torch.tensor(4.0).log().item(), torch.tensor(4 / 3).log().item()
    per_pixel = torch.tensor([[l4, l43], [l4, 0.0]], dtype=torch.float64, device=device)
    torch.testing.assert_close(fn(logits, labels, present, reduction="none"), per_pixel)
    torch.testing.assert_close(fn(logits, labels, present, reduction="sum"), per_pixel.sum())
    torch.testing.assert_close(fn(logits, labels, present), per_pixel.sum() / 3)


@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 19, 4, 3), (1, 2, 1, 1)])
def test_matches_the_reference(device, shape):
    logits, labels, present = inputs(*shape, device, seed=sum(shape))
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(back_ce(logits, labels, present, reduction=reduction),
                                   back_ce_reference(logits, labels, present, reduction=reduction))


def test_equals_cross_entropy_when_every_class_is_present(device):
    logits, labels, _ = inputs(4, 6, 5, 7, device, seed=1)
    present = torch.ones(6, dtype=torch.bool, device=device)
    torch.testing.assert_close(back_ce(logits, labels, present), F.cross_entropy(logits, labels, ignore_index=255))
    torch.testing.assert_close(back_ce(logits, labels, present, reduction="sum"),
                               F.cross_entropy(logits, labels, ignore_index=255, reduction="sum"))


def test_gradients(device):
    logits, labels, present = inputs(2, 5, 3, 4, device, seed=2)
    for reduction in ("mean", "sum"):
        assert torch.autograd.gradcheck(lambda x: back_ce(x, labels, present, reduction=reduction),
                                        (logits.clone().requires_grad_(),))
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    back_ce(x1, labels, present).backward()
    back_ce_reference(x2, labels, present).backward()
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_and_large_logits(device, dtype):
    logits, labels, present = inputs(2, 8, 6, 6, device, seed=3)
    got = back_ce(logits.to(dtype), labels, present)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.double(), back_ce_reference(logits.to(dtype).double(), labels, present),
                               rtol=tol, atol=tol)
    big = back_ce(logits * 1e4, labels, present)  # log space: no overflow
    assert torch.isfinite(big)


def test_site_mask_and_bad_input():
    logits, labels, _ = inputs(2, 4, 3, 3, "cpu", seed=4)
    site = torch.tensor([True, False, False, True])
    torch.testing.assert_close(back_ce(logits, labels.clamp(max=0), site),
                               back_ce(logits, labels.clamp(max=0), site.expand(2, 4)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        back_ce(logits, torch.full_like(labels, 7), site)
    with pytest.raises(ValueError, match="present must be"):
        back_ce(logits, labels, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="same pixels"):
        back_ce(logits, labels[:, :2], site)


@pytest.mark.parametrize("gap", [30.0, 80.0, 150.0, 800.0])
def test_absent_classes_far_below_the_max(device, gap):
    """Unlabelled pixels whose absent classes lie ``gap`` below the best present one: the CPU
    kernel's shared-max sums lose them past about 57 (float32) and redo those pixels exactly."""
    logits, labels, present = inputs(2, 7, 5, 6, device, seed=int(gap))
    logits = torch.where(present[:, :, None, None], logits + gap, logits)
    ref_x = logits.clone().requires_grad_()
    ref = back_ce_reference(ref_x, labels, present, reduction="none")
    ref.sum().backward()
    for dtype in (torch.float32, torch.float64):
        x = logits.to(dtype).clone().requires_grad_()
        loss = back_ce(x, labels, present, reduction="none")
        loss.sum().backward()
        tol = 2e-7 * (gap + 10) if dtype == torch.float32 else 1e-10  # float32 logits of size gap
        torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=tol)
        torch.testing.assert_close(x.grad.double(), ref_x.grad, rtol=tol, atol=tol)
