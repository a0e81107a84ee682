"""The FedCC aggregators: kmeans vs scikit-learn (CPU) and a plain torch k-means (GPU), and
maximin vs the greedy torch loop of its reference.

kmeans runs n_init=1, k=27, D=70 and a fixed number of Lloyd iterations on both sides (tol=0,
max_iter=20; each side may stop earlier only when no label changes), so the times compare equal
work; the inertia of each is recorded next to its time.
Without --benchmark-enable only the smallest case runs, once.
"""

import pytest
import torch

from _common import record, sync_for
from fussfast.ops import kmeans, maximin, maximin_reference

D, K, ITERS = 70, 27, 20


def points(M, device, seed=0):
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

    return float(KMeans(n_clusters=k, n_init=1, max_iter=iters, tol=0.0, random_state=0).fit(x.numpy()).inertia_)


def fused_kmeans(x, k, iters):
    return kmeans(x, k, n_init=1, max_iter=iters, tol=0.0, seed=0).inertia


@pytest.mark.parametrize("method", ["fused", "sklearn", "torch"])
@pytest.mark.parametrize("M", [81, 486, 100_000, 1_000_000])
def bench_kmeans(benchmark, device, M, method):
    if benchmark.disabled and M != 81:
        pytest.skip("smoke runs (no --benchmark-enable) cover the smallest case")
    if method == "sklearn" and device.type != "cpu":
        pytest.skip("scikit-learn runs on the CPU")
    if method == "torch" and device.type != "cuda":
        pytest.skip("the torch k-means baseline is the GPU comparison")
    x, sync = points(M, device), sync_for(device)
    fn = {"fused": fused_kmeans, "sklearn": sklearn_kmeans, "torch": torch_kmeans}[method]

    def run():
        inertia = fn(x, K, ITERS)
        sync()
        return inertia

    inertia = run()
    record(benchmark, op="kmeans", device=device, case=f"M={M} D={D} k={K} n_init=1 iters<={ITERS}",
           method=method, mode="fit", dtype=x.dtype, inertia=inertia)
    rounds = 3 if M >= 100_000 else 20
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)


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
