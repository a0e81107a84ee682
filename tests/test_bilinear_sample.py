"""bilinear_sample: fused kernel vs grid_sample (the reference), gradients, dtypes, bad input."""

import pytest
import torch
import torch.nn.functional as F

from fussfast.ops import bilinear_sample, bilinear_sample_reference
from fussfast.ops.bilinear_sample import tap_pixels


def random_points(M, P, g, spread=1.3):
    """Points inside and beyond [-1, 1], with some exactly on the corners, edges and pixel centres."""
    pts = (torch.rand(M, P, 2, generator=g, dtype=torch.float64) * 2 - 1) * spread
    special = torch.tensor([-1.0, 1.0, 0.0, -1.0, 1.0, 1.0, -1.0, 1.0], dtype=torch.float64).view(-1, 2)
    n = min(P, special.shape[0])
    pts[:, :n] = special[:n]
    return pts


SHAPES = [  # N, H, W, C, M, P
    (1, 1, 1, 1, 1, 1),
    (2, 5, 7, 3, 2, 9),
    (3, 13, 11, 70, 7, 121),
    (4, 28, 28, 33, 9, 17),
    (2, 1, 9, 5, 3, 4),
]


@pytest.mark.parametrize("N,H,W,C,M,P", SHAPES)
@pytest.mark.parametrize("with_index", [False, True])
def test_matches_grid_sample_float64(device, N, H, W, C, M, P, with_index):
    g = torch.Generator().manual_seed(N * 1000 + C)
    M = M if with_index else N
    maps = torch.randn(N, H, W, C, generator=g, dtype=torch.float64).to(device).requires_grad_()
    points = random_points(M, P, g).to(device)
    index = torch.randint(0, N, (M,), generator=g).to(device) if with_index else None
    out = bilinear_sample(maps, points, index)
    ref = bilinear_sample_reference(maps, points, index)
    assert out.shape == (M, P, C) and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device)
    (grad,) = torch.autograd.grad(out, maps, upstream)
    (ref_grad,) = torch.autograd.grad(ref, maps, upstream)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


def test_reference_is_steo_sample():
    """The reference is STEGO's sample(): grid_sample of NCHW maps at a [B, S, S, 2] grid."""
    g = torch.Generator().manual_seed(1)
    t = torch.randn(3, 6, 9, 8, generator=g, dtype=torch.float64)  # NCHW
    coords = torch.rand(3, 5, 5, 2, generator=g, dtype=torch.float64) * 2 - 1
    stego = F.grid_sample(t, coords.permute(0, 2, 1, 3), padding_mode="border", align_corners=True)
    ours = bilinear_sample_reference(t.permute(0, 2, 3, 1), coords.permute(0, 2, 1, 3).reshape(3, 25, 2))
    torch.testing.assert_close(ours.transpose(1, 2).reshape(3, 6, 5, 5), stego, rtol=0, atol=0)


def test_gradcheck(device):
    g = torch.Generator().manual_seed(2)
    maps = torch.randn(2, 4, 5, 3, generator=g, dtype=torch.float64).to(device).requires_grad_()
    points = random_points(3, 6, g).to(device)
    index = torch.tensor([1, 0, 1], device=device)
    assert torch.autograd.gradcheck(lambda m: bilinear_sample(m, points, index), (maps,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(device, dtype):
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(3, 11, 9, 19, generator=g).to(dtype).to(device).requires_grad_()
    points = random_points(5, 31, g).float().to(device)
    index = torch.tensor([2, 0, 1, 2, 2], device=device)
    out = bilinear_sample(maps, points, index)
    assert out.dtype == torch.float32
    ref = bilinear_sample_reference(maps.detach().double(), points.double(), index)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(out.shape, generator=g).to(device)
    (grad,) = torch.autograd.grad(out, maps, upstream)
    assert grad.dtype == dtype
    m64 = maps.detach().double().requires_grad_()
    (ref_grad,) = torch.autograd.grad(bilinear_sample_reference(m64, points.double(), index), m64, upstream.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(grad.double(), ref_grad, rtol=tol, atol=tol)


def test_backward_is_deterministic_on_cpu():
    g = torch.Generator().manual_seed(4)
    maps = torch.randn(2, 6, 6, 40, generator=g, requires_grad=True)
    points = torch.rand(40, 300, 2, generator=g) * 2 - 1  # many rows on few pixels
    index = torch.randint(0, 2, (40,), generator=g)
    upstream = torch.randn(40, 300, 40, generator=g)
    grads = [torch.autograd.grad(bilinear_sample(maps, points, index), maps, upstream)[0] for _ in range(3)]
    assert all(torch.equal(grads[0], x) for x in grads[1:])


def test_empty_points(device):
    maps = torch.randn(2, 3, 3, 4, device=device, requires_grad=True)
    out = bilinear_sample(maps, torch.zeros(2, 0, 2, device=device))
    assert out.shape == (2, 0, 4)
    (grad,) = torch.autograd.grad(out.sum(), maps)
    assert (grad == 0).all()


def test_bad_input():
    maps = torch.randn(2, 3, 3, 4)
    with pytest.raises(ValueError, match="points must be"):
        bilinear_sample(maps, torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match="one row per map"):
        bilinear_sample(maps, torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match=r"index entries must lie in \[0, 2\)"):
        bilinear_sample(maps, torch.zeros(3, 5, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="finite"):
        bilinear_sample(maps, torch.full((2, 5, 2), float("nan")))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        bilinear_sample(torch.randn(2, 3, 3), torch.zeros(2, 5, 2))
    with pytest.raises(TypeError, match="maps must be one of"):
        bilinear_sample(maps.long(), torch.zeros(2, 5, 2))


def test_tap_pixels_are_all_that_is_read(device):
    """Zeroing every pixel outside tap_pixels leaves the samples unchanged; zeroing one inside
    changes them."""
    g = torch.Generator().manual_seed(5)
    maps = torch.randn(3, 9, 7, 4, generator=g, dtype=torch.float64).to(device)
    points = random_points(3, 20, g).to(device)
    pix = tap_pixels(points, 9, 7)
    used = torch.zeros(3, 63, dtype=torch.bool, device=device).scatter_(1, pix, True)
    kept = maps * used.view(3, 9, 7, 1)
    torch.testing.assert_close(bilinear_sample(kept, points), bilinear_sample(maps, points), rtol=0, atol=0)
    assert not used.all()
    inner = (points.abs() < 0.9).all(-1).nonzero()[0]  # a point away from the border: 4 taps of weight > 0
    m, p = int(inner[0]), int(inner[1])
    hole = maps.clone().view(3, 63, 4)
    hole[m, pix[m, p]] = 0
    assert not torch.equal(bilinear_sample(hole.view(3, 9, 7, 4), points)[m, p], bilinear_sample(maps, points)[m, p])
