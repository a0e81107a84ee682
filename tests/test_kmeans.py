"""kmeans and maximin: quality against scikit-learn, exact properties, determinism, bad input."""

import os
import subprocess
import sys

import pytest
import torch

from fussfast.ops import kmeans, kmeans_reference, maximin, maximin_reference


def blobs(M=3000, D=70, k=27, seed=0, dtype=torch.float32):
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n_samples=M, n_features=D, centers=k, cluster_std=2.0, random_state=seed)
    return torch.from_numpy(x).to(dtype)


def nearest(x, c, cosine=False):
    if cosine:
        return (torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(c, dim=1).T).argmax(1)
    return torch.cdist(x.double(), c.double()).argmin(1)


@pytest.mark.no_simt("27 x 3,000 x 10 runs take 20 s emulated; the other cases run the same kernels")
def test_inertia_within_one_percent_of_sklearn(device):
    from sklearn.cluster import KMeans

    x = blobs()
    ours = kmeans(x.to(device), 27, n_init=10, seed=0)
    theirs = KMeans(n_clusters=27, n_init=10, random_state=0).fit(x.numpy())
    assert ours.inertia <= theirs.inertia_ * 1.01
    assert ours.centroids.shape == (27, 70) and ours.labels.shape == (3000,)
    assert torch.equal(ours.labels.cpu(), nearest(x, ours.centroids.cpu()))
    # the reported inertia is the inertia of the returned centroids and labels
    d = ((x - ours.centroids.cpu()[ours.labels.cpu()]) ** 2).sum(1)
    assert ours.inertia == pytest.approx(float(d.double().sum()), rel=1e-4)


@pytest.mark.no_simt("20,000 points x 3 runs are slow emulated; the CPU kernel is the one checked")
def test_inertia_within_a_tenth_of_a_percent_of_sklearn():
    from sklearn.cluster import KMeans

    x = blobs(M=20_000, D=70, seed=7)
    ours = kmeans(x, 27, n_init=3, seed=1)
    theirs = KMeans(n_clusters=27, n_init=3, random_state=0, algorithm="lloyd").fit(x.numpy())
    assert ours.inertia <= theirs.inertia_ * 1.001


# odd sizes: partial row tiles, several centroid blocks (k above 16 and 32 lanes), D not a
# multiple of any vector width, several chunks (M > 1024), weights with zeros
@pytest.mark.parametrize("M,D,k", [(5, 3, 1), (97, 7, 17), (1031, 13, 33), (2500, 70, 27), (700, 1, 5)])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_lloyd_fixed_point_is_exact(device, M, D, k, metric):
    g = torch.Generator().manual_seed(M + D)
    x = torch.randn(M, D, generator=g, dtype=torch.float64)
    w = torch.rand(M, generator=g, dtype=torch.float64)
    w[::4] = 0
    r = kmeans(x.to(device), k, weights=w.to(device), metric=metric, tol=0.0, max_iter=1000, n_init=2, seed=M)
    labels, c = r.labels.cpu(), r.centroids.cpu()
    xs = torch.nn.functional.normalize(x, dim=1) if metric == "cosine" else x
    assert torch.equal(labels, nearest(xs, c, cosine=metric == "cosine"))
    for j in range(k):  # a converged run's centroids are the weighted means of their clusters
        m = labels == j
        if w[m].sum() > 0:
            want = (w[m, None] * xs[m]).sum(0) / w[m].sum()
            if metric == "cosine":
                want = torch.nn.functional.normalize(want, dim=0)
            torch.testing.assert_close(c[j], want, rtol=1e-9, atol=1e-9)
    d = (1 - (xs * c[labels]).sum(1)).clamp_min(0) if metric == "cosine" else ((xs - c[labels]) ** 2).sum(1)
    assert r.inertia == pytest.approx(float((w * d).sum()), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_same_result_whatever_the_thread_count(metric):
    code = (
        "import hashlib, torch; from fussfast.ops import kmeans; "
        "g = torch.Generator().manual_seed(0); x = torch.randn(5000, 19, generator=g); "
        "w = torch.rand(5000, generator=g); "
        f"r = kmeans(x, 29, weights=w, metric='{metric}', n_init=2, seed=5); "
        "print(hashlib.sha256(r.centroids.numpy().tobytes() + r.labels.numpy().tobytes()).hexdigest(), "
        "r.inertia.hex(), r.n_iter)"
    )
    out = {
        n: subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": str(n)},
                          capture_output=True, text=True, check=True).stdout
        for n in (1, 2, 3)
    }
    assert out[1] == out[2] == out[3] and out[1].strip()


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("where", [0, 4999, 2600])  # first row (the variance's shift), last, a later chunk
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_non_finite_points_raise(device, backend, where, bad, dtype):
    x = torch.randn(5000, 9, dtype=dtype)
    x[where, 8] = bad
    for metric in ("euclidean", "cosine"):
        with pytest.raises(ValueError, match="points contain NaN or Inf"):
            kmeans(x.to(device), 3, metric=metric, n_init=1, backend=backend)


def test_tol_is_relative_to_the_variance(device):
    # the same points scaled: with tol relative to the variance, the runs stop at the same iteration
    x = torch.randn(3000, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scales = (1.0, 1e-3, 1e3)
    runs = [kmeans((s * x).to(device), 5, n_init=1, tol=1e-2, seed=2) for s in scales]
    assert len({r.n_iter for r in runs}) == 1
    assert all(r.inertia == pytest.approx(runs[0].inertia * s * s, rel=1e-9) for r, s in zip(runs, scales))
    assert kmeans(x.to(device), 5, n_init=1, tol=0.0, seed=2).n_iter > runs[0].n_iter  # tol did stop them


def test_reference_backend_agrees(device):
    x = blobs(M=800, D=20, k=9, seed=1).to(device)
    fused, ref = kmeans(x, 9, seed=3), kmeans_reference(x, 9, seed=3)
    assert fused.inertia == pytest.approx(ref.inertia, rel=0.01)


def test_weighted_centroids_are_weighted_means(device):
    g = torch.Generator().manual_seed(0)
    x = blobs(M=600, D=8, k=5, seed=2, dtype=torch.float64)
    w = torch.rand(600, generator=g, dtype=torch.float64)
    w[::3] = 0  # zero-weight points must not pull any centroid
    r = kmeans(x.to(device), 5, weights=w.to(device), tol=0.0, max_iter=500)
    labels, c = r.labels.cpu(), r.centroids.cpu()
    for j in range(5):
        m = labels == j
        want = (w[m, None] * x[m]).sum(0) / w[m].sum()
        torch.testing.assert_close(c[j], want, rtol=1e-9, atol=1e-9)
    inertia = (w * ((x - c[labels]) ** 2).sum(1)).sum()
    assert r.inertia == pytest.approx(float(inertia), rel=1e-9)


def test_integer_weights_equal_repeated_points(device):
    x = blobs(M=300, D=6, k=4, seed=3, dtype=torch.float64)
    reps = torch.randint(1, 4, (300,), generator=torch.Generator().manual_seed(1))
    weighted = kmeans(x.to(device), 4, weights=reps.double().to(device), n_init=20, seed=0)
    repeated = kmeans(x.repeat_interleave(reps, 0).to(device), 4, n_init=20, seed=0)
    assert weighted.inertia == pytest.approx(repeated.inertia, rel=1e-6)


def test_cosine_is_spherical(device):
    x = blobs(M=500, D=16, k=6, seed=4)
    r = kmeans(x.to(device), 6, metric="cosine")
    c = r.centroids.cpu()
    torch.testing.assert_close(c.norm(dim=1), torch.ones(6), rtol=1e-5, atol=1e-5)
    assert torch.equal(r.labels.cpu(), nearest(x, c, cosine=True))
    cos = (torch.nn.functional.normalize(x, dim=1) * c[r.labels.cpu()]).sum(1)
    assert r.inertia == pytest.approx(float((1 - cos).sum()), rel=1e-4)


def test_same_seed_same_result(device):
    x = blobs(M=1000, D=10, k=7, seed=5).to(device)
    a, b = kmeans(x, 7, seed=11, n_init=3), kmeans(x, 7, seed=11, n_init=3)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    assert a.inertia == b.inertia and a.n_iter == b.n_iter


def test_k_equals_m_and_duplicates(device):
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = kmeans(x.to(device), 40, n_init=2)
    assert r.inertia == pytest.approx(0.0, abs=1e-12)
    assert sorted(r.labels.tolist()) == list(range(40))
    dup = x[:10].repeat(5, 1)  # 10 distinct points, 5 copies each
    for k in (10, 12):  # k above the number of distinct points leaves clusters to re-seed
        r = kmeans(dup.to(device), k)
        assert r.inertia == pytest.approx(0.0, abs=1e-12) and torch.isfinite(r.centroids).all()


def test_half_precision_input(device):
    x = blobs(M=400, D=12, k=5, seed=6)
    r = kmeans(x.half().to(device), 5)
    assert r.centroids.dtype == torch.float16
    ref = kmeans(x.half().float().to(device), 5)
    assert r.inertia == pytest.approx(ref.inertia, rel=1e-6)


@pytest.mark.parametrize("args,kwargs,exc,msg", [
    ((torch.randn(5),), {}, ValueError, r"non-empty \[M, D\]"),
    ((torch.randn(0, 3),), {}, ValueError, r"non-empty \[M, D\]"),
    ((torch.randn(5, 3).int(),), {}, TypeError, "points must be one of"),
    ((torch.randn(5, 3),), {"k": 0}, ValueError, "k must be >= 1"),
    ((torch.randn(5, 3),), {"k": 6}, ValueError, "k=6 is larger than the number of points M=5"),
    ((torch.tensor([[0.0, float("nan")], [1.0, 2.0]]),), {"k": 1}, ValueError, "NaN or Inf"),
    ((torch.tensor([[0.0, float("inf")], [1.0, 2.0]]),), {"k": 1}, ValueError, "NaN or Inf"),
    ((torch.randn(5, 3),), {"weights": -torch.ones(5)}, ValueError, "weights must be non-negative"),
    ((torch.randn(5, 3),), {"weights": torch.zeros(5)}, ValueError, "weights are all zero"),
    ((torch.randn(5, 3),), {"weights": torch.ones(4)}, ValueError, r"weights must have shape \[M\]"),
    ((torch.randn(5, 3),), {"weights": torch.tensor([1.0, 1, 1, 1, float("nan")])}, ValueError, "weights contain"),
    ((torch.randn(5, 3),), {"metric": "manhattan"}, ValueError, "metric must be one of"),
    ((torch.randn(5, 3),), {"n_init": 0}, ValueError, "n_init must be >= 1"),
    ((torch.randn(5, 3),), {"tol": -1.0}, ValueError, "tol must be"),
])
def test_kmeans_bad_inputs(args, kwargs, exc, msg):
    kwargs = {"k": 2, **kwargs}
    with pytest.raises(exc, match=msg):
        kmeans(*args, **kwargs)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("M,D,k,start", [(81, 70, 27, 0), (500, 16, 40, 123), (7, 3, 7, 6), (2000, 5, 1, 3)])
def test_maximin_equals_greedy_reference(device, metric, M, D, k, start):
    x = torch.randn(M, D, generator=torch.Generator().manual_seed(M), dtype=torch.float64).to(device)
    got = maximin(x, k, metric=metric, start=start)
    want = maximin(x, k, metric=metric, start=start, backend="reference")  # the plain torch loop
    assert got.dtype == torch.int64 and torch.equal(got, want)
    assert got[0] == start and len(set(got.tolist())) == k  # distinct points: no repeats


def test_maximin_ties_go_to_lowest_index(device):
    # a square: from corner 0 the opposite corner 3 is farthest; then 1 and 2 tie (both at
    # distance 1 from the picks), and the lower index wins; duplicates of a pick are never farther.
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], device=device)
    assert maximin(x, 3).tolist() == [0, 3, 1]
    assert maximin_reference(x, 3).tolist() == [0, 3, 1]
    assert maximin(x, 5).tolist()[:4] == [0, 3, 1, 2]


def test_maximin_bad_inputs():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="k=6 is larger"):
        maximin(x, 6)
    with pytest.raises(ValueError, match="start=5 is not a point index"):
        maximin(x, 2, start=5)
    with pytest.raises(ValueError, match="metric must be one of"):
        maximin(x, 2, metric="l1")
    with pytest.raises(ValueError, match="NaN or Inf"):
        maximin(torch.tensor([[float("nan")]]), 1)
    with pytest.raises(ValueError, match=r"non-empty \[M, D\]"):
        maximin(torch.randn(3), 1)
