"""correlation_loss: fused kernels vs STEGO's formulation (the reference), gradients, dtypes,
memory, bad input."""

import itertools
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import fussfast
from fussfast import _C
from fussfast.ops import correlation_loss, correlation_loss_reference

CUDA_READY = fussfast.cuda_available()


def make_inputs(B, C, D, hw1, hw2, device, dtype=torch.float64, seed=None):
    g = torch.Generator().manual_seed(torch.seed() % 2**31 if seed is None else seed)
    f1 = torch.randn(B, C, *hw1, generator=g, dtype=torch.float64)
    f2 = torch.randn(B, C, *hw2, generator=g, dtype=torch.float64)
    c1 = torch.randn(B, D, *hw1, generator=g, dtype=torch.float64)
    c2 = torch.randn(B, D, *hw2, generator=g, dtype=torch.float64)
    shift = torch.rand(B, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (f1, f2, c1, c2)] + [shift.to(device)]


def inputs_off_the_kink(*args, **kwargs):
    """make_inputs, drawn again while a code product S lies within 1e-6 of the clamp's kink at 0:
    there the gradient jumps, so float32 and float64 may fall on either side of it (a CI run met
    one). For comparisons of reduced-precision gradients with float64."""
    while True:
        f1, f2, c1, c2, shift = make_inputs(*args, **kwargs)
        z1, z2 = (F.normalize(c.double().flatten(2), dim=1) for c in (c1, c2))
        if torch.bmm(z1.transpose(1, 2), z2).abs().min() > 1e-6:
            return f1, f2, c1, c2, shift


def by_hand_inputs(device):
    """One pair, P = Q = 2, C = D = 2. Normalized features: p0 = (1, 0), p1 = (0, 1) and
    q0 = (1, 0), q1 = (0.6, 0.8), so F = [[1, 0.6], [0, 0.8]], and pointwise
    F - mean_q F + mean F = [[0.8, 0.4], [0.2, 1.0]]. Codes: S = [[1, -1], [0, 0]]."""
    f1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f2 = torch.tensor([[1.0, 3.0], [0.0, 4.0]])
    c1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c2 = torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    return [t.view(1, 2, 1, 2).double().to(device) for t in (f1, f2, c1, c2)]


# (pointwise, zero_clamp, stabilize) -> mean of -clamp(S, lo, hi) * (F - 0.3) over the 4 elements
BY_HAND = {
    (False, True, False): -(1 - 0.3) / 4,
    (True, True, False): -(0.8 - 0.3) / 4,
    (True, False, False): (-(0.8 - 0.3) + (0.4 - 0.3)) / 4,
    (False, True, True): -0.8 * (1 - 0.3) / 4,
}


@pytest.mark.parametrize("fn", [correlation_loss, correlation_loss_reference], ids=["op", "reference"])
@pytest.mark.parametrize("options", sorted(BY_HAND))
def test_by_hand(device, fn, options):
    pointwise, zero_clamp, stabilize = options
    args = by_hand_inputs(device) + [0.3]
    opts = dict(pointwise=pointwise, zero_clamp=zero_clamp, stabilize=stabilize)
    want = torch.tensor(BY_HAND[options], dtype=torch.float64, device=device)
    torch.testing.assert_close(fn(*args, **opts), want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fn(*args, **opts, reduction="sum"), want * 4, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fn(*args, **opts, reduction="none"), want[None], rtol=1e-12, atol=1e-14)


OPTIONS = list(itertools.product([True, False], repeat=3))  # pointwise, zero_clamp, stabilize
SHAPES = [  # B, C, D, hw1, hw2: P != Q, B = 1, C and D not multiples of any tile
    (1, 7, 5, (3, 4), (5, 3)),
    (3, 17, 9, (11, 11), (7, 13)),
    (2, 130, 70, (12, 13), (11, 11)),
]


@pytest.mark.parametrize("pointwise,zero_clamp,stabilize", OPTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"B{s[0]}C{s[1]}D{s[2]}")
def test_matches_stego_float64(device, shape, pointwise, zero_clamp, stabilize):
    B, C, D, hw1, hw2 = shape
    f1, f2, c1, c2, _ = make_inputs(B, C, D, hw1, hw2, device)
    c1.requires_grad_(True)
    c2.requires_grad_(True)
    opts = dict(pointwise=pointwise, zero_clamp=zero_clamp, stabilize=stabilize)
    got = correlation_loss(f1, f2, c1, c2, 0.27, **opts)
    want = correlation_loss_reference(f1, f2, c1, c2, 0.27, **opts)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    g_got = torch.autograd.grad(got, (c1, c2))
    g_want = torch.autograd.grad(want, (c1, c2))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_and_per_pair_shift(device, reduction):
    f1, f2, c1, c2, shift = make_inputs(4, 11, 6, (5, 6), (4, 7), device)
    got = correlation_loss(f1, f2, c1, c2, shift, reduction=reduction)
    want = correlation_loss_reference(f1, f2, c1, c2, shift, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # a per-pair shift is the same as calling pair by pair with pointwise off
    per_pair = correlation_loss(f1, f2, c1, c2, shift, reduction="none", pointwise=False)
    one_by_one = torch.stack([correlation_loss(f1[i:i + 1], f2[i:i + 1], c1[i:i + 1], c2[i:i + 1],
                                               float(shift[i]), pointwise=False) for i in range(4)])
    torch.testing.assert_close(per_pair, one_by_one, rtol=1e-12, atol=1e-12)
    if reduction == "sum":
        elems = 5 * 6 * 4 * 7
        torch.testing.assert_close(got, per_pair.new_tensor(0) + correlation_loss(
            f1, f2, c1, c2, shift, reduction="none").sum() * elems, rtol=1e-12, atol=1e-12)


def test_groups_equal_separate_calls(device):
    """groups=k gives each group its own pointwise global mean, like k separate STEGO calls."""
    f1, f2, c1, c2, _ = make_inputs(6, 9, 5, (4, 5), (6, 3), device)
    shifts = torch.tensor([0.1] * 2 + [0.2] * 2 + [0.3] * 2, dtype=torch.float64, device=device)
    fused = correlation_loss(f1, f2, c1, c2, shifts, groups=3, reduction="none")
    separate = torch.cat([
        correlation_loss_reference(f1[i:i + 2], f2[i:i + 2], c1[i:i + 2], c2[i:i + 2], 0.1 * (i // 2 + 1),
                                   reduction="none") for i in (0, 2, 4)])
    torch.testing.assert_close(fused, separate, rtol=1e-10, atol=1e-12)
    ref = correlation_loss_reference(f1, f2, c1, c2, shifts, groups=3, reduction="none")
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
def test_reduced_precision(device, dtype, tol):
    """Tolerances relative to the float64 result on the same (rounded) inputs: float32 math
    throughout, so the error comes from the 16-bit codes' normalization and output rounding."""
    f1, f2, c1, c2, shift = inputs_off_the_kink(3, 96, 70, (11, 11), (11, 11), device, dtype=dtype)
    c1.requires_grad_(True)
    got = correlation_loss(f1, f2, c1, c2, shift)
    assert got.dtype == dtype
    c1_64 = c1.detach().double().requires_grad_(True)
    want = correlation_loss(f1.double(), f2.double(), c1_64, c2.double(), shift)
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * 1e-1)
    # scaled like a GradScaler would: the raw gradients of a mean over B*P*Q terms sit below
    # float16's smallest subnormal
    (g,) = torch.autograd.grad(got * 2**14, c1)
    (g64,) = torch.autograd.grad(want * 2**14, c1_64)
    assert g.dtype == dtype
    torch.testing.assert_close(g.double(), g64, rtol=tol, atol=tol * g64.abs().max().item())


def as_channels_last(maps):
    """The same values, laid out [B, H, W, C] in memory (as sampled features come)."""
    return maps.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


@pytest.mark.parametrize("bf16", [None, "amx", "avx512bf16", "widen"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pointwise", [True, False])
def test_channels_last_features(device, dtype, bf16, pointwise):
    """Feature maps that lie channels-last in memory (the CPU kernel reads them in place, on
    every ISA path and, for bfloat16, every way of multiplying) give the float64 reference's
    loss and code gradients on the same values; odd C, P != Q. Codes are float64 with float64
    features, else float32."""
    if bf16 is not None and (dtype != torch.bfloat16 or device.type != "cpu"):
        pytest.skip("the bfloat16 methods only matter for bfloat16 features on the CPU")
    if bf16 is not None and (bf16 not in _C.cpu_bf16_methods() or _C.cpu_isa() != "avx512"):
        pytest.skip(f"{bf16} does not run here (CPU ISA {_C.cpu_isa()}, methods {_C.cpu_bf16_methods()})")
    f1, f2, c1, c2, shift = inputs_off_the_kink(3, 131, 9, (11, 11), (7, 13), device)
    f1, f2 = (as_channels_last(f.to(dtype)) for f in (f1, f2))
    assert not f1.is_contiguous() and f1.is_contiguous(memory_format=torch.channels_last)
    codes = [c.to(torch.float64 if dtype == torch.float64 else torch.float32).requires_grad_() for c in (c1, c2)]
    previous = _C.cpu_bf16() if bf16 else None
    if bf16:
        _C.set_cpu_bf16(bf16)
    try:
        loss = correlation_loss(f1, f2, *codes, shift, pointwise=pointwise, reduction="none")
        grads = torch.autograd.grad(loss.sum(), codes)
    finally:
        if bf16:
            _C.set_cpu_bf16(previous)
    exact = [c.detach().double().requires_grad_() for c in codes]
    want = correlation_loss_reference(f1.double(), f2.double(), *exact, shift, pointwise=pointwise, reduction="none")
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss.double(), want, **tol)
    for got, ref in zip(grads, torch.autograd.grad(want.sum(), exact)):
        torch.testing.assert_close(got.double(), ref, **tol)


@pytest.mark.parametrize("pointwise,zero_clamp,stabilize", [(True, True, False), (False, False, True)])
def test_gradcheck(device, pointwise, zero_clamp, stabilize):
    f1, f2, c1, c2, shift = make_inputs(2, 5, 4, (3, 2), (2, 3), device)
    c1.requires_grad_(True)
    c2.requires_grad_(True)
    fn = lambda a, b: correlation_loss(f1, f2, a, b, shift, pointwise=pointwise, zero_clamp=zero_clamp,
                                       stabilize=stabilize, reduction="none")
    assert torch.autograd.gradcheck(fn, (c1, c2))


def test_no_grad_path_matches(device):
    f1, f2, c1, c2, shift = make_inputs(2, 8, 5, (6, 6), (5, 5), device)
    with torch.no_grad():
        a = correlation_loss(f1, f2, c1, c2, shift)
    b = correlation_loss(f1, f2, c1.requires_grad_(True), c2, shift)
    assert torch.equal(a, b.detach())


def test_cpu_is_deterministic():
    f1, f2, c1, c2, shift = make_inputs(5, 40, 12, (20, 20), (19, 21), "cpu", dtype=torch.float32)
    c1.requires_grad_(True)
    c2.requires_grad_(True)
    runs = []
    for _ in range(2):
        loss = correlation_loss(f1, f2, c1, c2, shift)
        runs.append((loss,) + torch.autograd.grad(loss, (c1, c2)))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_fused_cpu_memory_does_not_grow_with_p_times_q():
    """B=4, 64x64 maps (P = Q = 4096), C=384, D=70: one [B, P, Q] float32 tensor is 268 MB; the
    fused forward+backward must raise the process's peak memory by less than 300 MB."""
    code = textwrap.dedent("""
        import resource, torch
        from fussfast.ops import correlation_loss
        g = torch.Generator().manual_seed(0)
        f1, f2 = torch.randn(4, 384, 64, 64, generator=g), torch.randn(4, 384, 64, 64, generator=g)
        c1 = torch.randn(4, 70, 64, 64, generator=g, requires_grad=True)
        c2 = torch.randn(4, 70, 64, 64, generator=g, requires_grad=True)
        correlation_loss(f1[:1, :, :8, :8], f2[:1, :, :8, :8], c1[:1, :, :8, :8], c2[:1, :, :8, :8], 0.1)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        loss = correlation_loss(f1, f2, c1, c2, 0.1)
        loss.backward()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    grown_mb = float(out.stdout.strip().splitlines()[-1])
    assert grown_mb < 300, f"peak memory grew by {grown_mb:.0f} MB"


def test_bad_inputs(device):
    f1, f2, c1, c2, shift = make_inputs(2, 6, 4, (3, 3), (3, 3), device, dtype=torch.float32)
    cases = [
        ((f1[:1], f2, c1, c2, 0.1), ValueError, "share B and C"),
        ((f1, f2[:, :5], c1, c2, 0.1), ValueError, "share B and C"),
        ((f1, f2, c1, c2[:, :3], 0.1), ValueError, "share B"),
        ((f1, f2, c1[:, :, :2], c2, 0.1), ValueError, "share H and W"),
        ((f1[0], f2, c1, c2, 0.1), ValueError, r"must be \[B, C, H, W\]"),
        ((f1.long(), f2, c1, c2, 0.1), TypeError, "feats1 must be one of"),
        ((f1, f2, c1, c2, torch.zeros(3)), ValueError, "shift must be a float or a"),
        ((f1, f2, c1, c2, "0.1"), TypeError, "shift must be a float"),
        ((f1, f2, c1, c2, float("nan")), ValueError, "shift must be finite"),
        ((f1[:, :, :0], f2, c1[:, :, :0], c2, 0.1), ValueError, "at least one pair"),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            correlation_loss(*args)
    with pytest.raises(ValueError, match="reduction must be"):
        correlation_loss(f1, f2, c1, c2, 0.1, reduction="max")
    with pytest.raises(ValueError, match="groups=3 must divide"):
        correlation_loss(f1, f2, c1, c2, 0.1, groups=3)


@pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA device and a CUDA build")
def test_mixed_devices_raise():
    f1, f2, c1, c2, _ = make_inputs(2, 6, 4, (3, 3), (3, 3), "cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="one device"):
        correlation_loss(f1.cuda(), f2, c1, c2, 0.1)


@pytest.mark.parametrize("method", ["amx", "avx512bf16", "widen"])
def test_bfloat16_feature_products_on_every_method(method):
    # bfloat16 features beside float32 codes: each way this CPU can multiply them (AMX tiles,
    # vdpbf16ps, widened to float32) matches the float64 reference on the same bfloat16 values.
    if method not in _C.cpu_bf16_methods() or _C.cpu_isa() != "avx512":
        pytest.skip(f"{method} does not run here (CPU ISA {_C.cpu_isa()}, methods {_C.cpu_bf16_methods()})")
    g = torch.Generator().manual_seed(7)
    f1, f2 = (torch.randn(3, 67, h, w, generator=g).bfloat16() for h, w in ((9, 7), (5, 11)))
    c1, c2 = (torch.randn(3, 13, h, w, generator=g, requires_grad=True) for h, w in ((9, 7), (5, 11)))
    previous = _C.cpu_bf16()
    _C.set_cpu_bf16(method)
    try:
        loss = correlation_loss(f1, f2, c1, c2, 0.2)
        grads = torch.autograd.grad(loss, (c1, c2))
    finally:
        _C.set_cpu_bf16(previous)
    d1, d2 = (c.detach().double().requires_grad_() for c in (c1, c2))
    want = correlation_loss_reference(f1.double(), f2.double(), d1, d2, 0.2)
    torch.testing.assert_close(loss.double(), want, rtol=1e-4, atol=1e-6)
    for got, ref in zip(grads, torch.autograd.grad(want, (d1, d2))):
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-6)
