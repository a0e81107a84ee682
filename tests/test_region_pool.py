"""region_pool: fused kernel vs the pure-torch reference, gradients, dtypes, bad input, interop."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fussfast.ops import region_pool, region_pool_reference

import fussfast

CUDA_READY = fussfast.cuda_available()


def random_inputs(B, D, H, W, K, device, *, dtype=torch.float64, label_dtype=torch.int64,
                  ignore_index=-1, ignore_frac=0.2, present=None, generator=None):
    """Embeddings and blocky labels (runs, like real segmentations) with some ignored pixels."""
    g = generator or torch.Generator().manual_seed(torch.seed() % 2**31)
    emb = torch.randn(B, D, H, W, generator=g, dtype=torch.float64).to(dtype)
    classes = present if present is not None else K
    labels = torch.randint(0, classes, (B, H, max(W // 3, 1)), generator=g)
    labels = labels.repeat_interleave(3, dim=2)[:, :, :W]
    if labels.shape[2] < W:
        labels = torch.cat([labels, labels[:, :, -1:].expand(-1, -1, W - labels.shape[2])], 2)
    labels[torch.rand(B, H, W, generator=g) < ignore_frac] = ignore_index
    return emb.to(device), labels.to(label_dtype).to(device)


SHAPES = [  # B, D, H, W, K
    (1, 1, 1, 1, 1),
    (1, 3, 5, 7, 4),
    (3, 17, 13, 11, 9),
    (2, 70, 28, 28, 27),
    (5, 33, 1, 129, 19),
]


@pytest.mark.parametrize("B,D,H,W,K", SHAPES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64])
def test_matches_reference_float64(device, B, D, H, W, K, normalize, label_dtype):
    emb, labels = random_inputs(B, D, H, W, K, device, label_dtype=label_dtype)
    emb.requires_grad_(True)
    means, counts = region_pool(emb, labels, K, normalize=normalize)
    ref_means, ref_counts = region_pool_reference(emb, labels, K, normalize=normalize)
    assert means.shape == (B, K, D) and means.dtype == torch.float64
    assert counts.dtype == torch.int64 and torch.equal(counts, ref_counts)
    torch.testing.assert_close(means, ref_means, rtol=1e-12, atol=1e-12)

    upstream = torch.randn_like(means)
    (grad,) = torch.autograd.grad(means, emb, upstream)
    (ref_grad,) = torch.autograd.grad(ref_means, emb, upstream)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


def test_counts_are_pixel_counts(device):
    labels = torch.tensor([[[0, 0, 2], [2, -1, 2]]], device=device)
    emb = torch.arange(12, dtype=torch.float64, device=device).reshape(1, 2, 2, 3)
    means, counts = region_pool(emb, labels, 4)
    assert counts.tolist() == [[2, 0, 3, 0]]
    # channel 0 holds 0..5, channel 1 holds 6..11 (row-major over the 2x3 map)
    expected = [[0.5, 6.5], [0.0, 0.0], [(2 + 3 + 5) / 3, (8 + 9 + 11) / 3], [0.0, 0.0]]
    torch.testing.assert_close(means[0], torch.tensor(expected, dtype=torch.float64, device=device))


def test_more_classes_than_present_gives_zero_means(device):
    emb, labels = random_inputs(2, 6, 9, 10, 40, device, present=3)
    means, counts = region_pool(emb, labels, 40, normalize=True)
    assert (counts[:, 3:] == 0).all() and (means[:, 3:] == 0).all()
    assert torch.isfinite(means).all()


@pytest.mark.parametrize("normalize", [False, True])
def test_all_pixels_ignored(device, normalize):
    emb = torch.randn(2, 5, 4, 6, dtype=torch.float64, device=device, requires_grad=True)
    labels = torch.full((2, 4, 6), 255, device=device)
    means, counts = region_pool(emb, labels, 7, ignore_index=255, normalize=normalize)
    assert (means == 0).all() and (counts == 0).all()
    (grad,) = torch.autograd.grad(means.sum(), emb)
    assert (grad == 0).all()


def test_ignore_index_inside_class_range_wins(device):
    emb, labels = random_inputs(2, 4, 6, 6, 5, device, ignore_frac=0.0)
    means, counts = region_pool(emb, labels, 5, ignore_index=0)
    ref_means, ref_counts = region_pool_reference(emb, labels, 5, ignore_index=0)
    assert (counts[:, 0] == 0).all() and torch.equal(counts, ref_counts)
    torch.testing.assert_close(means, ref_means, rtol=1e-12, atol=1e-12)


def test_empty_inputs(device):
    for B, D, H, W in [(0, 4, 3, 3), (2, 0, 3, 3), (2, 4, 0, 3)]:
        emb = torch.randn(B, D, H, W, dtype=torch.float64, device=device, requires_grad=True)
        labels = torch.zeros(B, H, W, dtype=torch.int64, device=device)
        means, counts = region_pool(emb, labels, 3)
        assert means.shape == (B, 3, D) and counts.shape == (B, 3)
        assert (means == 0).all() and (counts == (H * W)).logical_or(torch.arange(3, device=device) > 0).all()
        (grad,) = torch.autograd.grad(means.sum(), emb)
        assert grad.shape == emb.shape


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
@pytest.mark.parametrize("normalize", [False, True])
def test_reduced_precision(device, dtype, tol, normalize):
    """Stated tolerances: accumulation is float32, so the error is the output rounding of dtype
    (2^-11 for float16, 2^-8 for bfloat16) relative to the values' scale."""
    emb, labels = random_inputs(3, 64, 28, 28, 27, device, dtype=dtype)
    emb.requires_grad_(True)
    means, counts = region_pool(emb, labels, 27, normalize=normalize)
    assert means.dtype == dtype
    exact, ref_counts = region_pool_reference(emb.detach().double(), labels, 27, normalize=normalize)
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(means.double(), exact, rtol=tol, atol=tol)

    upstream = torch.randn(means.shape, dtype=torch.float64, device=device)
    (grad,) = torch.autograd.grad(means, emb, upstream.to(dtype))
    e64 = emb.detach().double().requires_grad_(True)
    (exact_grad,) = torch.autograd.grad(region_pool_reference(e64, labels, 27, normalize=normalize)[0],
                                        e64, upstream.to(dtype).double())
    assert grad.dtype == dtype
    scale = exact_grad.abs().max()
    torch.testing.assert_close(grad.double(), exact_grad, rtol=tol, atol=tol * scale.item())


@pytest.mark.parametrize("normalize", [False, True])
def test_gradcheck(device, normalize):
    emb, labels = random_inputs(2, 3, 4, 5, 4, device)
    emb.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: region_pool(e, labels, 4, normalize=normalize)[0], (emb,))


def test_non_contiguous_inputs(device):
    emb, labels = random_inputs(3, 8, 10, 12, 6, device)
    emb_nc = emb.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # same values, other strides
    labels_nc = labels.transpose(1, 2).contiguous().transpose(1, 2)
    assert not emb_nc.is_contiguous() and not labels_nc.is_contiguous()
    sliced = torch.randn(3, 16, 10, 12, dtype=torch.float64, device=device)[:, ::2]
    for e, l in [(emb_nc, labels_nc), (sliced, labels)]:
        got = region_pool(e, l, 6)
        want = region_pool(e.contiguous(), l.contiguous(), 6)
        # CUDA sums with float atomics, whose order (and so the last bits) varies between runs
        torch.testing.assert_close(got[0], want[0], rtol=1e-13, atol=1e-15)
        assert torch.equal(got[1], want[1])


def test_backend_reference_selects_reference(device):
    emb, labels = random_inputs(2, 5, 6, 7, 3, device)
    got = region_pool(emb, labels, 3, normalize=True, backend="reference")
    want = region_pool_reference(emb, labels, 3, normalize=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_nan_stays_in_its_region(device):
    emb = torch.randn(1, 2, 2, 2, dtype=torch.float64, device=device)
    emb[0, 1, 0, 0] = float("nan")
    labels = torch.tensor([[[0, 1], [1, 1]]], device=device)
    for backend in ("fused", "reference"):
        means, _ = region_pool(emb, labels, 2, backend=backend)
        assert torch.isnan(means[0, 0, 1]) and torch.isfinite(means[0, 0, 0]) and torch.isfinite(means[0, 1]).all()


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_bad_labels_raise_value_error(device, backend):
    emb, labels = random_inputs(2, 3, 4, 5, 4, device)
    for bad in (4, -2, 1000):
        broken = labels.clone()
        broken[1, 2, 3] = bad
        with pytest.raises(ValueError, match=rf"outside \[0, 4\).*ignore_index=-1: {bad}"):
            region_pool(emb, broken, 4, backend=backend)


def test_shape_mismatch_names_both_shapes(device):
    emb = torch.randn(2, 3, 4, 5, device=device)
    for labels in (torch.zeros(2, 4, 6, dtype=torch.long), torch.zeros(3, 4, 5, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"\[2, 3, 4, 5\].*" + str(list(labels.shape)).replace("[", r"\[").replace("]", r"\]")):
            region_pool(emb, labels.to(device), 4)


def test_bad_arguments():
    emb, labels = torch.randn(2, 3, 4, 5), torch.zeros(2, 4, 5, dtype=torch.long)
    with pytest.raises(TypeError, match="embeddings must be one of"):
        region_pool(emb.long(), labels, 4)
    with pytest.raises(TypeError, match="labels must be one of int32, int64"):
        region_pool(emb, labels.float(), 4)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        region_pool(emb, labels, 0)
    with pytest.raises(TypeError, match="num_classes must be an int"):
        region_pool(emb, labels, True)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        region_pool(emb, labels, 4, ignore_index=0.5)
    with pytest.raises(ValueError, match="backend must be one of"):
        region_pool(emb, labels, 4, backend="triton")
    with pytest.raises(TypeError, match="one kind"):
        region_pool(emb, labels.numpy(), 4)
    with pytest.raises(TypeError, match="got list"):
        region_pool(emb.tolist(), labels, 4)
    with pytest.raises(ValueError, match=r"embeddings \[2, 3\]"):
        region_pool(emb[:, :, 0, 0], labels[:, 0, 0], 4)


@pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA device and a CUDA build")
def test_mixed_devices_raise():
    with pytest.raises(ValueError, match="one device"):
        region_pool(torch.randn(1, 2, 3, 3, device="cuda"), torch.zeros(1, 3, 3, dtype=torch.long), 2)


def test_deterministic_on_cpu():
    emb, labels = random_inputs(4, 32, 20, 20, 10, "cpu", dtype=torch.float32)
    a, b = region_pool(emb, labels, 10), region_pool(emb, labels, 10)
    assert torch.equal(a[0], b[0])


def test_numpy_in_numpy_out():
    emb, labels = random_inputs(2, 5, 6, 7, 4, "cpu", dtype=torch.float32, label_dtype=torch.int32)
    means, counts = region_pool(emb.numpy(), labels.numpy(), 4, normalize=True)
    assert isinstance(means, np.ndarray) and isinstance(counts, np.ndarray)
    assert means.dtype == np.float32 and counts.dtype == np.int64
    want = region_pool_reference(emb, labels, 4, normalize=True)
    np.testing.assert_allclose(means, want[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(counts, want[1].numpy())


@pytest.mark.skipif(not CUDA_READY, reason="needs a CUDA device and a CUDA build")
def test_cupy_in_cupy_out():
    cp = pytest.importorskip("cupy")
    emb, labels = random_inputs(2, 5, 6, 7, 4, "cuda", dtype=torch.float32)
    means, counts = region_pool(cp.from_dlpack(emb), cp.from_dlpack(labels), 4)
    assert isinstance(means, cp.ndarray) and isinstance(counts, cp.ndarray)
    want = region_pool_reference(emb, labels, 4)
    torch.testing.assert_close(torch.from_dlpack(means), want[0])
    assert torch.equal(torch.from_dlpack(counts), want[1])


@pytest.mark.no_simt("exhaustive sweep; under emulation the conversions are the host code of common/dtype.h, which the CPU case covers")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_16_bit_value_round_trips(device, dtype):
    """One pixel per image makes each mean the input value itself, so every bit pattern must come
    back as the same value (-0 sums to +0): this checks the kernels' own half/bfloat16
    conversions exhaustively, subnormals, infinities and NaN included."""
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    values = bits.view(dtype).reshape(-1, 1, 1, 1).to(device)
    means, _ = region_pool(values, torch.zeros(values.shape[0], 1, 1, dtype=torch.long, device=device), 1)
    got, want = means.reshape(-1), values.reshape(-1)
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan], want[~nan])


@settings(max_examples=60, deadline=None)
@given(
    B=st.integers(0, 3), D=st.integers(0, 6), H=st.integers(0, 7), W=st.integers(1, 9),
    K=st.integers(1, 6), normalize=st.booleans(), ignore_index=st.sampled_from([-1, 0, 255]),
    dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**31 - 1),
)
def test_fuzz_against_reference(B, D, H, W, K, normalize, ignore_index, dtype, seed):
    devices = ["cpu"] + (["cuda"] if CUDA_READY else [])
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, H, W, generator=g, dtype=dtype)
    labels = torch.randint(0, K, (B, H, W), generator=g)
    labels[torch.rand(B, H, W, generator=g) < 0.3] = ignore_index
    for device in devices:
        e, l = emb.to(device), labels.to(device)
        got, want = region_pool(e, l, K, ignore_index=ignore_index, normalize=normalize), \
            region_pool_reference(e, l, K, ignore_index=ignore_index, normalize=normalize)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(got[0], want[0], rtol=tol, atol=tol)
        assert torch.equal(got[1], want[1])


@pytest.mark.no_simt("exhaustive sweep; under emulation the conversions are the host code of common/dtype.h, which the CPU case covers")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_rounding_matches_torch(device, dtype):
    """The mean of two pixels is (a + b) / 2 in float32, then rounded to dtype: the kernels'
    round-to-nearest-even, subnormals and overflow to inf must agree with torch bit for bit."""
    g = torch.Generator().manual_seed(1)
    bits = torch.randint(-(2**15), 2**15, (200_000, 2), generator=g, dtype=torch.int32).to(torch.int16)
    pairs = bits.view(dtype)
    pairs = pairs[torch.isfinite(pairs).all(1)]
    values = pairs.reshape(-1, 1, 1, 2).to(device)
    labels = torch.zeros(values.shape[0], 1, 2, dtype=torch.long, device=device)
    means, _ = region_pool(values, labels, 1)
    want = ((pairs[:, 0].float() + pairs[:, 1].float()) / 2).to(dtype)
    got = means.reshape(-1).cpu()
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan], want[~nan])
