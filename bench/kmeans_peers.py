"""kmeans against scikit-learn and faiss, standalone: per-Lloyd-iteration time, whole-fit time and
final inertia, interleaved in one process, medians.

Per iteration: (fit with max_iter = 1 + n) - (fit with max_iter = 1), divided by the iterations run - 1
(scikit-learn from fixed initial centroids), n_init 1, tol 0,
so the init (and faiss's random sampling) cancels; on unclustered (Gaussian) points, so that no
method converges within the n iterations. Whole fit: n_init 1, max_iter 300, tol 1e-4
(faiss: niter 25, its default and what it would run), then the inertia of each, which must agree.
faiss runs on every point (max_points_per_centroid = M / k + 1, no sub-sampling).

    python bench/kmeans_peers.py [--sizes 2000,50000,1000000] [--dims 70,384] [--repeats 5]
    python bench/kmeans_peers.py --fedcc          # the FedCC aggregator, 3/30/74/300 sites
"""

import argparse
import statistics
import time

import torch

from fussfast.ops import kmeans

K = 27


def blobs(M, D, seed=0, spread=4.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(K, D, generator=g) * spread
    return (centers[torch.randint(0, K, (M,), generator=g)] + torch.randn(M, D, generator=g)).contiguous()


def peers():
    out = {}
    try:
        from sklearn.cluster import KMeans

        def run_sklearn(x, iters, tol):
            # timing iterations (tol 0): from fixed centroids, since its k-means++ varies by seconds at 1M
            init = x[:K] if tol == 0 else "k-means++"
            km = KMeans(n_clusters=K, init=init, n_init=1, max_iter=iters, tol=tol, algorithm="lloyd",
                        random_state=0).fit(x)
            return float(km.inertia_), km.n_iter_

        out["sklearn"] = run_sklearn
    except ImportError:
        print("scikit-learn is not installed: skipped")
    try:
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())

        def run_faiss(x, iters, tol):
            km = faiss.Kmeans(x.shape[1], K, niter=iters, seed=1, max_points_per_centroid=x.shape[0] // K + 1)
            km.train(x)
            return float(km.index.search(x, 1)[0].sum()), iters

        out["faiss"] = run_faiss
    except ImportError:
        print("faiss is not installed (pip install faiss-cpu): skipped")
    return out


def fussfast_fit(x, iters, tol):
    r = kmeans(x, K, n_init=1, max_iter=iters, tol=tol, seed=0)
    return r.inertia, r.n_iter


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def lloyd(sizes, dims, repeats):
    methods = {"fussfast": fussfast_fit, **peers()}
    for D in dims:
        for M in sizes:
            x, xb = torch.randn(M, D, generator=torch.Generator().manual_seed(0)), blobs(M, D)
            xn, xbn = x.numpy(), xb.numpy()
            n = 20 if M * D <= 50_000 * 384 else 5
            per, fit, inertia = {m: [] for m in methods}, {m: [] for m in methods}, {}
            for _ in range(repeats):
                for name, fn in methods.items():  # interleaved
                    arg = x if name == "fussfast" else xn
                    t1, _ = timed(fn, arg, 1, 0.0)
                    tn, (_, iters) = timed(fn, arg, 1 + n, 0.0)  # fewer where labels stopped changing
                    per[name].append((tn - t1) / max(1, iters - 1))
            for _ in range(0 if M * D > 100_000_000 else max(1, repeats // 2) if M >= 1_000_000 else repeats):
                for name, fn in methods.items():
                    arg = xb if name == "fussfast" else xbn
                    t, (inertia[name], _) = timed(fn, arg, 25 if name == "faiss" else 300, 1e-4)
                    fit[name].append(t)
            base = statistics.median(per["fussfast"])
            print(f"M={M} D={D} k={K}: per iteration (median of {repeats}, {n} iterations)")
            for name in methods:
                p = statistics.median(per[name])
                line = f"  {name:9s} {p * 1e3:9.3f} ms/iter  ratio {p / base:5.2f}"
                if fit[name]:  # whole fits are skipped above 10^8 values (1M x 384)
                    line += (f"   fit {statistics.median(fit[name]):7.3f} s  inertia {inertia[name]:.6g}"
                             f" ({inertia[name] / inertia['fussfast'] - 1:+.4%})")
                print(line)


def fedcc(sites_list, repeats):
    from fussfast.fed.strategy import FedCC

    strategy = FedCC(method="kmeans")
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        print("scikit-learn is not installed: skipped")
        return
    for sites in sites_list:
        g = torch.Generator().manual_seed(sites)
        base = torch.randn(K, 70, generator=g)
        cents = [base + 0.3 * torch.randn(K, 70, generator=g) for _ in range(sites)]
        pooled = torch.cat(cents).numpy()
        ours, theirs = [], []
        for _ in range(repeats):
            t, c = timed(strategy.combine_centroids, cents, None)
            ours.append(t)
            t, km = timed(lambda: KMeans(n_clusters=K, n_init=10, random_state=0).fit(pooled))
            theirs.append(t)
        a = float(torch.cdist(torch.from_numpy(pooled).double(), c.double()).min(1).values.square().sum())
        print(f"FedCC {sites:4d} sites ({sites * K} points): fussfast {statistics.median(ours) * 1e3:8.2f} ms,"
              f" sklearn {statistics.median(theirs) * 1e3:8.2f} ms, ratio {statistics.median(theirs) / statistics.median(ours):5.2f},"
              f" inertia {a:.6g} vs {km.inertia_:.6g} ({a / km.inertia_ - 1:+.4%})")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="2000,50000,1000000")
    p.add_argument("--dims", default="70,384")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fedcc", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.fedcc:
        fedcc([3, 30, 74, 300], a.repeats)
    else:
        lloyd([int(s) for s in a.sizes.split(",")], [int(d) for d in a.dims.split(",")], a.repeats)
