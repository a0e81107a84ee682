"""cluster_assign / cluster_labels: fused kernels vs STEGO's ClusterLookup (the reference),
gradients, bad input."""

import pytest
import torch

import fussfast
from fussfast.ops import cluster_assign, cluster_assign_reference, cluster_labels

CUDA_READY = fussfast.cuda_available()


def make(B, D, H, W, K, device, dtype=torch.float64):
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    codes = torch.randn(B, D, H, W, generator=g, dtype=torch.float64).to(device, dtype)
    centroids = torch.randn(K, D, generator=g, dtype=torch.float64).to(device, dtype)
    return codes, centroids


SHAPES = [(1, 1, 1, 1, 1), (2, 5, 3, 7, 4), (3, 70, 11, 13, 27), (1, 33, 20, 17, 64)]


@pytest.mark.parametrize("fn", [cluster_assign, cluster_assign_reference], ids=["op", "reference"])
def test_by_hand(device, fn):
    """Two pixels, (3, 4) and (1, 0), and centroids (1, 0) and (0, 2): the cosines are (0.6, 0.8)
    and (1, 0). Hard: pixel 0 takes centroid 1, pixel 1 centroid 0, loss -(0.8 + 1) / 2.
    alpha = 0: uniform probabilities, loss -(0.7 + 0.5) / 2."""
    codes = torch.tensor([[3.0, 1.0], [4.0, 0.0]], dtype=torch.float64, device=device).view(1, 2, 1, 2)
    centroids = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64, device=device)
    loss, probs = fn(codes, centroids)
    torch.testing.assert_close(loss, loss.new_tensor(-0.9), rtol=1e-12, atol=1e-14)
    assert probs.tolist() == [[[[0.0, 1.0]], [[1.0, 0.0]]]]
    loss, probs = fn(codes, centroids, alpha=0.0, reduction="sum")
    torch.testing.assert_close(loss, loss.new_tensor(-1.2), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(probs, torch.full_like(probs, 0.5), rtol=1e-12, atol=1e-14)
    loss, _ = fn(codes, centroids, alpha=0.0, reduction="none")
    torch.testing.assert_close(loss, loss.new_tensor([-0.6]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("alpha", [None, 0.0, 3.0])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_stego_float64(device, shape, alpha):
    B, D, H, W, K = shape
    codes, centroids = make(B, D, H, W, K, device)
    codes.requires_grad_(True)
    centroids.requires_grad_(True)
    loss, probs = cluster_assign(codes, centroids, alpha=alpha)
    want_loss, want_probs = cluster_assign_reference(codes, centroids, alpha=alpha)
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(probs, want_probs.detach(), rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(loss, (codes, centroids))
    want = torch.autograd.grad(want_loss, (codes, centroids))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)  # the kernel normalizes in its own order


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("alpha", [None, 2.0])
def test_reductions_and_weighted_upstream(device, reduction, alpha):
    codes, centroids = make(3, 8, 5, 6, 5, device)
    codes.requires_grad_(True)
    centroids.requires_grad_(True)
    loss, _ = cluster_assign(codes, centroids, alpha=alpha, reduction=reduction)
    ref, _ = cluster_assign_reference(codes, centroids, alpha=alpha, reduction=reduction)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    weights = torch.rand(loss.shape, dtype=loss.dtype, device=device)  # per-image weights
    got = torch.autograd.grad((loss * weights).sum(), (codes, centroids))
    want = torch.autograd.grad((ref * weights).sum(), (codes, centroids))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("alpha", [None, 2.0])
def test_zero_and_tiny_codes_have_f_normalize_gradients(device, alpha):
    # A zero code and one below the norm's eps take F.normalize's finite gradient g / eps; the
    # others the projection. On the CPU the kernel normalizes the codes itself: both paths count.
    codes, centroids = make(2, 6, 3, 5, 4, device)
    with torch.no_grad():
        codes[0, :, 0, 0] = 0
        codes[1, :, 2, 4] *= 1e-12
    codes.requires_grad_(True)
    loss, _ = cluster_assign(codes, centroids, alpha=alpha)
    want, _ = cluster_assign_reference(codes, centroids, alpha=alpha)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    got, ref = torch.autograd.grad(loss, codes)[0], torch.autograd.grad(want, codes)[0]
    assert torch.isfinite(got).all() and ref[0, :, 0, 0].abs().max() > 1e6  # 1/eps-sized, as F.normalize
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_only_centroids_get_gradients_from_detached_codes(device):
    """STEGO trains the probe on code.detach(): only the centroid gradient is computed."""
    codes, centroids = make(2, 6, 4, 4, 3, device)
    centroids.requires_grad_(True)
    loss, _ = cluster_assign(codes, centroids)
    ref, _ = cluster_assign_reference(codes, centroids)
    (g,) = torch.autograd.grad(loss, centroids)
    (r,) = torch.autograd.grad(ref, centroids)
    torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("alpha", [None, 1.5])
def test_gradcheck(device, alpha):
    codes, centroids = make(2, 4, 3, 2, 3, device)
    codes.requires_grad_(True)
    centroids.requires_grad_(True)
    fn = lambda z, c: cluster_assign(z, c, alpha=alpha, reduction="none")[0]
    assert torch.autograd.gradcheck(fn, (codes, centroids))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_reduced_precision(device, dtype, tol):
    codes, centroids = make(2, 70, 12, 12, 27, device, dtype=dtype)
    loss, probs = cluster_assign(codes, centroids, alpha=2.0)
    assert loss.dtype == dtype and probs.dtype == dtype
    want, want_probs = cluster_assign(codes.double(), centroids.double(), alpha=2.0)
    torch.testing.assert_close(loss.double(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(probs.double(), want_probs, rtol=tol, atol=tol)


def test_cluster_labels(device):
    codes, centroids = make(3, 70, 9, 10, 27, device, dtype=torch.float32)
    labels = cluster_labels(codes * torch.rand(3, 1, 9, 10, device=device) * 5, centroids)
    assert labels.dtype == torch.int64 and labels.shape == (3, 9, 10)
    _, probs = cluster_assign_reference(codes, centroids)
    assert torch.equal(labels, probs.argmax(1))


def test_cluster_labels_ties_go_to_lowest_index(device):
    centroids = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], device=device)  # 0 and 1 tie
    codes = torch.tensor([[1.0, 0.0], [0.0, 3.0]], device=device).T.reshape(1, 2, 1, 2)
    assert cluster_labels(codes, centroids).tolist() == [[[0, 2]]]


def test_bad_inputs(device):
    codes, centroids = make(2, 6, 3, 3, 4, device, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"must be \[K, D\] with D = 6"):
        cluster_assign(codes, centroids[:, :5])
    with pytest.raises(ValueError, match=r"codes must be \[B, D, H, W\]"):
        cluster_assign(codes[0], centroids)
    with pytest.raises(TypeError, match="codes must be one of"):
        cluster_assign(codes.int(), centroids)
    with pytest.raises(ValueError, match="alpha must be None or a finite number"):
        cluster_assign(codes, centroids, alpha=float("inf"))
    with pytest.raises(ValueError, match="reduction must be"):
        cluster_assign(codes, centroids, reduction="max")
    with pytest.raises(ValueError, match=r"must be \[K, D\]"):
        cluster_labels(codes, centroids[None])


@pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA device and a CUDA build")
def test_mixed_devices_raise():
    codes, centroids = make(2, 6, 3, 3, 4, "cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="one device"):
        cluster_assign(codes.cuda(), centroids)
