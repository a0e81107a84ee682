"""cluster_assign: the fused kernel vs the pure-torch reference (eager), torch.compile of it, and
STEGO's ClusterLookup as STEGO writes it (STEGO-style eager).

Sizes: the probe's training input (B images of 70-d codes at 11x11 and 28x28, K = 27 centroids;
the codes are detached, as in STEGO, so only the centroids get gradients) and the evaluation
size 40x40. Without --benchmark-enable only the smallest case runs, once, and torch.compile is
skipped.
"""

import pytest
import torch
import torch.nn.functional as F

from _common import compiled, cuda_peak_mb, record, sync_for, warm_up
from fussfast.ops import cluster_assign, cluster_assign_reference

D, K = 70, 27


def stego_style(codes, centroids):
    """STEGO's ClusterLookup.forward (alpha None), from its formula: F.normalize both, one einsum,
    a float32 one-hot of the argmax (STEGO's cast, so bfloat16 inputs give a float32 loss), the
    negated picked cosine averaged. In the bfloat16 cases it runs under autocast."""
    with torch.autocast(codes.device.type, dtype=torch.bfloat16, enabled=codes.dtype == torch.bfloat16):
        cos = torch.einsum("bchw,nc->bnhw", F.normalize(codes, dim=1), F.normalize(centroids, dim=1))
        hard = F.one_hot(cos.argmax(1), centroids.shape[0]).permute(0, 3, 1, 2).to(torch.float32)
        return -(hard * cos).sum(1).mean(), hard


METHODS = ["fused", "eager", "compile", "stego"]


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,side", [(8, 11), (8, 28), (32, 28), (8, 40)])
def bench_cluster(benchmark, device, B, side, dtype, method, mode):
    if benchmark.disabled and (B, side) != (8, 11):
        pytest.skip("smoke runs (no --benchmark-enable) cover the smallest case")
    fn = compiled(cluster_assign_reference, benchmark) if method == "compile" else \
        {"fused": cluster_assign, "eager": cluster_assign_reference, "stego": stego_style}[method]
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(B, D, side, side, generator=g).to(device, dtype)
    centroids = torch.randn(K, D, generator=g).to(device, dtype).requires_grad_(mode == "forward_backward")
    sync = sync_for(device)

    def run():
        loss, _ = fn(codes, centroids)
        if mode == "forward_backward":
            torch.autograd.grad(loss, centroids)
        sync()
        return loss

    warm_up(run, method, benchmark)
    want, _ = cluster_assign(codes.double(), centroids.detach().double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(run().detach().double(), want, rtol=tol, atol=tol)
    record(benchmark, op="cluster_assign", device=device, case=f"B={B} {side}x{side} D={D} K={K}",
           method=method, mode=mode, dtype=dtype, peak_mb=cuda_peak_mb(run, device))
    benchmark(run)
