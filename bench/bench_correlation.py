"""correlation_loss: fused kernel vs STEGO's eager formulation (the reference) vs torch.compile
of it.

Sizes: STEGO's training step (B = 8 images x 7 pair types = 56 pairs, 11x11 sampled points),
full resolution 28x28 and the evaluation size 40x40 (B = 8 pairs on the CPU, 56 on a GPU);
C in {384, 768} (ViT-S, ViT-B), D = 70; float32 and bfloat16; forward and forward+backward.
Without --benchmark-enable only the smallest case runs, once, and torch.compile is skipped.
"""

import pytest
import torch

from _common import cuda_peak_mb, record, sync_for
from fussfast.ops import correlation_loss, correlation_loss_reference

D, SHIFT = 70, 0.2

_compiled = {}


def compiled_reference(*args):
    fn = _compiled.setdefault("fn", torch.compile(correlation_loss_reference, dynamic=False))
    return fn(*args)


METHODS = {  # pointwise and zero_clamp, as STEGO trains
    "fused": lambda f1, f2, c1, c2: correlation_loss(f1, f2, c1, c2, SHIFT),
    "eager": lambda f1, f2, c1, c2: correlation_loss_reference(f1, f2, c1, c2, SHIFT),
    "compile": lambda f1, f2, c1, c2: compiled_reference(f1, f2, c1, c2, SHIFT),
}


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("C", [384, 768])
@pytest.mark.parametrize("side", [11, 28, 40])
def bench_correlation(benchmark, device, side, C, dtype, method, mode):
    if benchmark.disabled and (method == "compile" or side != 11 or C != 384):
        pytest.skip("smoke runs (no --benchmark-enable) cover the smallest case without torch.compile")
    B = 56 if side == 11 or device.type == "cuda" else 8
    g = torch.Generator().manual_seed(0)
    make = lambda ch: torch.randn(B, ch, side, side, generator=g).to(device, dtype)
    f1, f2, c1, c2 = make(C), make(C), make(D), make(D)
    c1.requires_grad_(mode == "forward_backward")
    c2.requires_grad_(mode == "forward_backward")
    fn, sync = METHODS[method], sync_for(device)

    def run():
        loss = fn(f1, f2, c1, c2)
        if mode == "forward_backward":
            torch.autograd.grad(loss, (c1, c2))
        sync()
        return loss

    want = correlation_loss(f1.double(), f2.double(), c1.detach().double(), c2.detach().double(), SHIFT)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(run().detach().double(), want, rtol=tol, atol=tol * 0.1)
    record(benchmark, op="correlation_loss", device=device, case=f"B={B} {side}x{side} C={C} D={D}",
           method=method, mode=mode, dtype=dtype, peak_mb=cuda_peak_mb(run, device))
    benchmark(run)
