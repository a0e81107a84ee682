"""back_ce (FedSeg's BackCE): fused kernel against the formula, CE when every class is present,
gradients, bad input."""

import pytest
import torch
import torch.nn.functional as F

from fussfast.ops import back_ce, back_ce_reference


def by_loop(logits, labels, present, ignore_index=255):
    """The formula pixel by pixel, in float64."""
    B, K = logits.shape[:2]
    x = logits.double().flatten(2)
    y = labels.flatten(1)
    total, counted = 0.0, 0
    for b in range(B):
        for p in range(x.shape[2]):
            prob = torch.softmax(x[b, :, p], 0)
            if y[b, p] != ignore_index:
                total += -torch.log(prob[y[b, p]])
                counted += 1
            elif (~present[b]).any():
                total += -torch.log(prob[~present[b]].sum())
                counted += 1
    return torch.as_tensor(total / max(counted, 1), dtype=torch.float64)


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


@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 19, 4, 3), (1, 2, 1, 1)])
def test_matches_the_formula_and_reference(device, shape):
    logits, labels, present = inputs(*shape, device, seed=sum(shape))
    want = by_loop(logits.cpu(), labels.cpu(), present.cpu())
    torch.testing.assert_close(back_ce(logits, labels, present).cpu(), want)
    torch.testing.assert_close(back_ce_reference(logits, labels, present).cpu(), want)
    torch.testing.assert_close(back_ce(logits, labels, present, reduction="none"),
                               back_ce_reference(logits, labels, present, reduction="none"))


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
