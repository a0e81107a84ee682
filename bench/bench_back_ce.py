"""back_ce: fused kernel vs BackCE in eager PyTorch (the reference: logsumexp over all and over
the absent classes) and torch.compile of it. FedSeg's Cityscapes setting: B=8, K=19, 128x256, a
site annotating 2 classes with half the pixels unlabelled. Without --benchmark-enable the case
runs once, as a smoke test, without torch.compile."""

import pytest
import torch

from _common import compiled, cuda_peak_mb, record, sync_for, warm_up
from fussfast.ops import back_ce, back_ce_reference

B, K, H, W = 8, 19, 128, 256

METHODS = ["fused", "eager", "compile"]


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("method", METHODS)
def bench_back_ce(benchmark, device, method, mode):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, K, H, W, generator=g).to(device).requires_grad_(mode == "forward_backward")
    labels = torch.randint(0, 2, (B, H, W), generator=g)
    labels[torch.rand(B, H, W, generator=g) < 0.5] = 255
    labels = labels.to(device)
    present = torch.zeros(K, dtype=torch.bool, device=device)
    present[:2] = True
    fn = compiled(back_ce_reference, benchmark) if method == "compile" else \
        {"fused": back_ce, "eager": back_ce_reference}[method]
    sync = sync_for(device)

    def run():
        loss = fn(logits, labels, present)
        if mode == "forward_backward":
            torch.autograd.grad(loss, logits)
        sync()
        return loss

    warm_up(run, method, benchmark)
    torch.testing.assert_close(run().detach(), back_ce(logits.detach().double(), labels, present).float(),
                               rtol=1e-4, atol=1e-4)
    record(benchmark, op="back_ce", device=device, case=f"B={B} K={K} {H}x{W}", method=method, mode=mode,
           dtype=torch.float32, peak_mb=cuda_peak_mb(run, device))
    benchmark(run)
