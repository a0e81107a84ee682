"""Property-based fuzzing of every public op: random shapes (empty and odd included), dtypes,
strides and NaN/Inf. Each call either returns what the float64 reference returns on the same
inputs or raises a Python exception that names the op; never a crash, a hang or silent garbage.
(region_pool's fuzz is in test_region_pool.py.)"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fussfast import ops
from fussfast.ops import reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tensor(g, shape, dtype, *, strided, poison):
    """A random tensor, maybe a non-contiguous view, maybe with a NaN or Inf planted in it."""
    full = list(shape)
    if strided and full:
        full[-1] = full[-1] * 2
    t = torch.randn(*full, generator=g, dtype=torch.float64)
    if strided and full:
        t = t[..., ::2]
    if poison is not None and t.numel():
        where = int(torch.randint(0, t.numel(), (1,), generator=g))
        t[torch.unravel_index(torch.tensor(where), t.shape)] = poison
    return t.to(dtype)


def check(op, call, expected):
    """``call()`` raises a Python exception naming ``op``, or returns ``expected()`` within tolerance."""
    try:
        got = call()
    except (ValueError, TypeError, IndexError) as e:
        assert op in str(e), f"{type(e).__name__} without the op's name: {e}"
        return None
    return got, expected()


def close(got, want, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol * max(1.0, float(want.abs().max()))
                               if want.numel() and torch.isfinite(want).all() else tol, equal_nan=True)


@FUZZ
@given(B=st.integers(0, 3), D=st.integers(0, 5), H=st.integers(0, 5), W=st.integers(1, 6), K=st.integers(0, 5),
       dtype=st.sampled_from(DTYPES), strided=st.booleans(), poison=st.sampled_from([None, math.nan, math.inf]),
       alpha=st.sampled_from([None, 2.0, -1.0]), seed=st.integers(0, 2**31 - 1))
def test_cluster_assign(B, D, H, W, K, dtype, strided, poison, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    codes = tensor(g, (B, D, H, W), dtype, strided=strided, poison=poison)
    centroids = tensor(g, (K, D), dtype, strided=False, poison=None)
    result = check("cluster_assign", lambda: ops.cluster_assign(codes, centroids, alpha=alpha),
                   lambda: reference.cluster_assign(codes.double(), centroids.double(), alpha=alpha))
    if result is None or poison is not None:
        return  # a poisoned pixel may give NaN; the contract is only: no crash, no hang
    (loss, probs), (want_loss, want_probs) = result
    close(loss, want_loss, dtype)
    if alpha is not None:
        close(probs, want_probs, dtype)


@FUZZ
@given(B=st.integers(0, 4), C=st.integers(0, 5), D=st.integers(0, 4), S=st.integers(0, 4), T=st.integers(1, 5),
       dtype=st.sampled_from(DTYPES), strided=st.booleans(), poison=st.sampled_from([None, math.nan, math.inf]),
       pointwise=st.booleans(), zero_clamp=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_correlation_loss(B, C, D, S, T, dtype, strided, poison, pointwise, zero_clamp, seed):
    g = torch.Generator().manual_seed(seed)
    f1, f2 = (tensor(g, (B, C, S, T), dtype, strided=strided, poison=p) for p in (poison, None))
    z1, z2 = (tensor(g, (B, D, S, T), dtype, strided=False, poison=None) for _ in range(2))
    kw = dict(pointwise=pointwise, zero_clamp=zero_clamp, reduction="none")
    result = check("correlation_loss", lambda: ops.correlation_loss(f1, f2, z1, z2, 0.25, **kw),
                   lambda: reference.correlation_loss(*(t.double() for t in (f1, f2, z1, z2)),
                                                      torch.full((B,), 0.25, dtype=torch.float64), **kw))
    if result is not None and poison is None:
        close(*result, dtype)


@FUZZ
@given(B=st.integers(0, 3), K=st.integers(0, 5), H=st.integers(0, 4), W=st.integers(1, 5),
       dtype=st.sampled_from(DTYPES), strided=st.booleans(), poison=st.sampled_from([None, math.nan, -math.inf]),
       ignore_index=st.sampled_from([-1, 255]), bad_label=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_back_ce(B, K, H, W, dtype, strided, poison, ignore_index, bad_label, seed):
    g = torch.Generator().manual_seed(seed)
    logits = tensor(g, (B, K, H, W), dtype, strided=strided, poison=poison)
    labels = torch.randint(0, max(K, 1), (B, H, W), generator=g)
    labels[torch.rand(B, H, W, generator=g) < 0.3] = ignore_index
    if bad_label and labels.numel():
        labels.view(-1)[0] = K + 3  # outside the classes: must be refused, not read out of bounds
    present = torch.rand(B, K, generator=g) < 0.6
    result = check("back_ce", lambda: ops.back_ce(logits, labels, present, ignore_index=ignore_index),
                   lambda: reference.back_ce(logits.double(), labels, present, ignore_index=ignore_index))
    if result is not None:
        assert not (bad_label and labels.numel()), "an out-of-range label was accepted"
        if poison is None:
            close(*result, dtype)


@FUZZ
@given(M=st.integers(0, 40), D=st.integers(0, 4), k=st.integers(-1, 8), dtype=st.sampled_from(DTYPES),
       metric=st.sampled_from(["euclidean", "cosine", "manhattan"]), poison=st.sampled_from([None, math.nan]),
       strided=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_kmeans_and_maximin(M, D, k, dtype, metric, poison, strided, seed):
    g = torch.Generator().manual_seed(seed)
    points = tensor(g, (M, D), dtype, strided=strided, poison=poison)
    result = check("kmeans", lambda: ops.kmeans(points, k, metric=metric, n_init=2, seed=seed), lambda: None)
    if result is not None:
        r = result[0]
        assert r.centroids.shape == (k, D) and r.labels.shape == (M,) and math.isfinite(r.inertia)
        assert int(r.labels.min()) >= 0 and int(r.labels.max()) < k
    result = check("maximin", lambda: ops.maximin(points, k, metric=metric),
                   lambda: reference.maximin(points.double(), k, metric=metric))
    if result is not None:
        got, want = result
        assert got.shape == (k,) and int(got.min()) >= 0 and int(got.max()) < M
        if dtype == torch.float64:
            assert torch.equal(got.cpu(), want.cpu())


@pytest.mark.parametrize("op, call", [
    ("cluster_assign", lambda: ops.cluster_assign(torch.randn(1, 2, 2, 2), torch.randn(3, 5))),
    ("correlation_loss", lambda: ops.correlation_loss(*(torch.randn(2, 3, 2, 2) for _ in range(3)),
                                                      torch.randn(2, 3, 2, 3), 0.1)),
    ("back_ce", lambda: ops.back_ce(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.int64),
                                    torch.ones(1, 4, dtype=torch.bool))),
    ("kmeans", lambda: ops.kmeans(torch.randn(5, 2), 2, n_init=0)),
    ("maximin", lambda: ops.maximin(torch.randn(5, 2), 2, start=7)),
    ("region_pool", lambda: ops.region_pool(torch.randn(1, 2, 2, 2), torch.zeros(1, 3, 3, dtype=torch.int64), 2)),
])
def test_mismatched_arguments_name_the_op(op, call):
    with pytest.raises((ValueError, TypeError, IndexError), match=op):
        call()
