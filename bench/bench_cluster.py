"""cluster_assign: fused kernel vs STEGO's eager ClusterLookup (the reference) vs torch.compile
of it.

Sizes: the probe's training input (B images of 70-d codes at 28x28, K = 27 centroids; the codes
are detached, as in STEGO, so only the centroids get gradients) and the evaluation size 40x40.
Without --benchmark-enable only the smallest case runs, once, and torch.compile is skipped.
"""

import pytest
import torch

from _common import cuda_peak_mb, record, sync_for
from fussfast.ops import cluster_assign, cluster_assign_reference

D, K = 70, 27

_compiled = {}


def compiled_reference(x, clusters):
    fn = _compiled.setdefault("fn", torch.compile(cluster_assign_reference, dynamic=False))
    return fn(x, clusters)


METHODS = {"fused": cluster_assign, "eager": cluster_assign_reference, "compile": compiled_reference}


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,side", [(8, 28), (32, 28), (8, 40)])
def bench_cluster(benchmark, device, B, side, dtype, method, mode):
    if benchmark.disabled and (method == "compile" or (B, side) != (8, 28)):
        pytest.skip("smoke runs (no --benchmark-enable) cover the smallest case without torch.compile")
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(B, D, side, side, generator=g).to(device, dtype)
    centroids = torch.randn(K, D, generator=g).to(device, dtype).requires_grad_(mode == "forward_backward")
    fn, sync = METHODS[method], sync_for(device)

    def run():
        loss, _ = fn(codes, centroids)
        if mode == "forward_backward":
            torch.autograd.grad(loss, centroids)
        sync()
        return loss

    want, _ = cluster_assign(codes.double(), centroids.detach().double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(run().detach().double(), want, rtol=tol, atol=tol)
    record(benchmark, op="cluster_assign", device=device, case=f"B={B} {side}x{side} D={D} K={K}",
           method=method, mode=mode, dtype=dtype, peak_mb=cuda_peak_mb(run, device))
    benchmark(run)
