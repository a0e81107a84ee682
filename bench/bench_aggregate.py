"""The FedCC aggregators: kmeans vs scikit-learn and faiss (CPU) and a plain torch k-means (GPU),
FedCC.combine_centroids vs scikit-learn (n_init 10), and maximin vs the greedy torch loop of its
reference.

kmeans runs n_init=1, k=27 and a fixed number of Lloyd iterations on every side (tol=0,
max_iter=20, 5 at 1M x 384; each side may stop earlier only when no label changes; faiss on every
point, no sub-sampling), so the times compare equal work; the inertia of each is recorded next to
its time. A peer that is not installed is skipped with a message. bench/kmeans_peers.py measures
per-iteration and whole-fit times standalone.
Without --benchmark-enable only the smallest cases run, once.
"""

import pytest
import torch

from _common import record, sync_for
from fussfast.ops import kmeans, maximin, maximin_reference

D, K, ITERS = 70, 27, 20


def points(M, device, seed=0, D=D):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(K, D, generator=g) * 4
    x = centers[torch.randint(0, K, (M,), generator=g)] + torch.randn(M, D, generator=g)
    return x.to(device)


def torch_kmeans(x, k, iters, seed=0):
    """fast-pytorch-kmeans style: matmul distances, argmin, one-hot matmul update (random init)."""
    g = torch.Generator().manual_seed(seed)
    c = x[torch.randperm(x.shape[0], generator=g)[:k].to(x.device)]
    for _ in range(iters):
        d = (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)
        labels = d.argmin(1)
        one_hot = torch.nn.functional.one_hot(labels, k).to(x.dtype)
        c = (one_hot.T @ x) / one_hot.sum(0).clamp_min(1)[:, None]
    d = (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)
    return float(d.min(1).values.clamp_min(0).sum())


def sklearn_kmeans(x, k, iters):
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd", random_state=0)
    return float(km.fit(x.numpy()).inertia_)


def faiss_kmeans(x, k, iters):
    import faiss

    xn = x.numpy()
    km = faiss.Kmeans(xn.shape[1], k, niter=iters, seed=1, max_points_per_centroid=xn.shape[0] // k + 1)
    km.train(xn)
    return float(km.index.search(xn, 1)[0].sum())


def fused_kmeans(x, k, iters):
    return kmeans(x, k, n_init=1, max_iter=iters, tol=0.0, seed=0).inertia


PEERS = {"sklearn": "sklearn", "faiss": "faiss"}  # method: module


@pytest.mark.parametrize("method", ["fused", "sklearn", "faiss", "torch"])
@pytest.mark.parametrize("dim", [70, 384])
@pytest.mark.parametrize("M", [2_000, 50_000, 1_000_000])
def bench_kmeans(benchmark, device, M, dim, method):
    if benchmark.disabled and (M != 2_000 or dim != 70):
        pytest.skip("smoke runs (no --benchmark-enable) cover the smallest case")
    if method in PEERS and device.type != "cpu":
        pytest.skip(f"{method} runs on the CPU")
    if method in PEERS:
        pytest.importorskip(PEERS[method], reason=f"{method} is not installed (pip install fussfast[bench])")
    if method == "torch" and device.type != "cuda":
        pytest.skip("the torch k-means baseline is the GPU comparison")
    x, sync = points(M, device, D=dim), sync_for(device)
    fn = {"fused": fused_kmeans, "sklearn": sklearn_kmeans, "faiss": faiss_kmeans, "torch": torch_kmeans}[method]
    iters = 5 if M * dim > 100_000_000 else ITERS

    def run():
        inertia = fn(x, K, iters)
        sync()
        return inertia

    inertia = run()
    record(benchmark, op="kmeans", device=device, case=f"M={M} D={dim} k={K} n_init=1 iters<={iters}",
           method=method, mode="fit", dtype=x.dtype, inertia=inertia)
    rounds = 3 if M >= 1_000_000 else 5 if M >= 50_000 else 20
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("method", ["fused", "sklearn"])
@pytest.mark.parametrize("sites", [3, 30, 74, 300])
def bench_fedcc_aggregate(benchmark, sites, method):
    """FedCC-kMeans on the server: the sites' K x 70 centroids pooled, re-clustered, n_init 10."""
    from fussfast.fed.strategy import FedCC

    if benchmark.disabled and sites != 3:
        pytest.skip("smoke runs (no --benchmark-enable) cover the smallest case")
    g = torch.Generator().manual_seed(sites)
    base = torch.randn(K, D, generator=g)
    cents = [base + 0.3 * torch.randn(K, D, generator=g) for _ in range(sites)]
    if method == "fused":
        strategy = FedCC(method="kmeans")
        fn = lambda: strategy.combine_centroids(cents, None)  # noqa: E731
    else:
        pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install fussfast[bench])")
        from sklearn.cluster import KMeans

        pooled = torch.cat(cents).numpy()
        fn = lambda: torch.from_numpy(KMeans(n_clusters=K, n_init=10, random_state=0).fit(pooled).cluster_centers_)  # noqa: E731
    pooled = torch.cat(cents)
    inertia = float(torch.cdist(pooled.double(), fn().double()).min(1).values.square().sum())
    record(benchmark, op="fedcc_kmeans", device=torch.device("cpu"), case=f"sites={sites} K={K} D={D} n_init=10",
           method=method, mode="aggregate", dtype=pooled.dtype, inertia=inertia)
    benchmark.pedantic(fn, rounds=20 if sites <= 74 else 5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("method", ["fused", "loop"])
@pytest.mark.parametrize("M", [81, 10_000, 100_000, 1_000_000])
def bench_maximin(benchmark, device, M, method):
    if benchmark.disabled and M != 81:
        pytest.skip("smoke runs (no --benchmark-enable) cover the smallest case")
    x, sync = points(M, device), sync_for(device)
    fn = (lambda: maximin(x, K).tolist()) if method == "fused" else (lambda: maximin_reference(x, K).tolist())

    def run():
        out = fn()
        sync()
        return out

    assert run() == maximin_reference(x, K).tolist()
    record(benchmark, op="maximin", device=device, case=f"M={M} D={D} k={K}", method=method, mode="select",
           dtype=x.dtype)
    benchmark.pedantic(run, rounds=3 if M >= 100_000 else 20, iterations=1, warmup_rounds=1)
