"""correlation_loss: the fused kernel vs the pure-torch reference (eager), torch.compile of it,
and STEGO's own formulation (STEGO-style eager).

Sizes: STEGO's training step (B = 8 images x 7 pair types = 56 pairs, 11x11 sampled points),
full resolution 28x28 and the evaluation size 40x40 (B = 8 pairs on the CPU, 56 on a GPU);
C in {384, 768} (ViT-S, ViT-B), D = 70; float32 and bfloat16; forward and forward+backward.
Without --benchmark-enable only the smallest case runs, once, and torch.compile is skipped.
"""

import pytest
import torch
import torch.nn.functional as F

from _common import compiled, cuda_peak_mb, record, sync_for, warm_up
from fussfast.ops import correlation_loss, correlation_loss_reference

D, SHIFT = 70, 0.2


def stego_style(f1, f2, c1, c2, shift):
    """The loss as STEGO's ContrastiveCorrelationLoss computes it (pointwise, zero clamp), written
    here from its formula: maps kept 4-D, F.normalize over channels (eps 1e-10), each correlation
    one einsum to [n, h, w, i, j], the feature correlation centered in place without autograd.
    STEGO trains in float32; in the bfloat16 cases it runs under autocast, as mixed precision
    would run it."""
    unit = lambda t: F.normalize(t, dim=1, eps=1e-10)
    with torch.no_grad():
        fd = torch.einsum("nchw,ncij->nhwij", unit(f1), unit(f2))
        total = fd.mean()
        fd -= fd.mean([3, 4], keepdim=True)
        fd = fd - fd.mean() + total
    cd = torch.einsum("nchw,ncij->nhwij", unit(c1), unit(c2))
    return (-cd.clamp(min=0) * (fd - shift)).mean()


def stego_autocast(f1, f2, c1, c2, shift):
    with torch.autocast(f1.device.type, dtype=torch.bfloat16, enabled=f1.dtype == torch.bfloat16):
        return stego_style(f1, f2, c1, c2, shift)


METHODS = ["fused", "eager", "compile", "stego"]


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("C", [384, 768])
@pytest.mark.parametrize("side", [11, 28, 40])
def bench_correlation(benchmark, device, side, C, dtype, method, mode):
    if benchmark.disabled and (side != 11 or C != 384):
        pytest.skip("smoke runs (no --benchmark-enable) cover the smallest case")
    # pointwise and zero_clamp, as STEGO trains
    fn = compiled(correlation_loss_reference, benchmark) if method == "compile" else \
        {"fused": correlation_loss, "eager": correlation_loss_reference, "stego": stego_autocast}[method]
    B = 56 if side == 11 or device.type == "cuda" else 8
    g = torch.Generator().manual_seed(0)
    make = lambda ch: torch.randn(B, ch, side, side, generator=g).to(device, dtype)
    f1, f2, c1, c2 = make(C), make(C), make(D), make(D)
    c1.requires_grad_(mode == "forward_backward")
    c2.requires_grad_(mode == "forward_backward")
    sync = sync_for(device)

    def run():
        loss = fn(f1, f2, c1, c2, SHIFT)
        if mode == "forward_backward":
            torch.autograd.grad(loss, (c1, c2))
        sync()
        return loss

    warm_up(run, method, benchmark)
    want = correlation_loss(f1.double(), f2.double(), c1.detach().double(), c2.detach().double(), SHIFT)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(run().detach().double(), want, rtol=tol, atol=tol * 0.1)
    record(benchmark, op="correlation_loss", device=device, case=f"B={B} {side}x{side} C={C} D={D}",
           method=method, mode=mode, dtype=dtype, peak_mb=cuda_peak_mb(run, device))
    benchmark(run)
