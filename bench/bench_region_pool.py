"""region_pool: the fused kernel against the ways people write it in plain PyTorch
(`scatter_add_`, torch_scatter's method; a one-hot einsum), the pure-torch reference (eager,
index_add), torch.compile of the reference, and torch_scatter itself where it is installed.

Time:   pytest bench/bench_region_pool.py --benchmark-enable --benchmark-json=out.json
Report: python bench/report.py out.json bench/results/<name>
Without --benchmark-enable (the default in pyproject) every case runs once and the methods are
checked against each other, so CI keeps the benchmark working.
"""

import pytest
import torch
import torch.nn.functional as F

from _common import compiled, cuda_peak_mb, record, sync_for, warm_up
from fussfast.ops import region_pool, region_pool_reference

B = 8
IGNORE = -1


def scatter_add_pool(emb, labels, K):
    """torch_scatter's method: scatter_add_ sums and counts, ignored pixels into a spare bin."""
    Bn, D = emb.shape[:2]
    x, lab = emb.flatten(2), labels.flatten(1)
    idx = torch.where(lab == IGNORE, K, lab)
    sums = x.new_zeros(Bn, D, K + 1).scatter_add_(2, idx[:, None, :].expand(Bn, D, -1), x)
    counts = x.new_zeros(Bn, K + 1).scatter_add_(1, idx, torch.ones_like(lab, dtype=x.dtype))
    means = sums[:, :, :K] / counts[:, None, :K].clamp(min=1)
    return means.transpose(1, 2), counts[:, :K]


def one_hot_pool(emb, labels, K):
    """One-hot masks and a batched matrix product."""
    lab = labels.flatten(1)
    onehot = F.one_hot(torch.where(lab == IGNORE, K, lab), K + 1)[..., :K].to(emb.dtype)  # [B, P, K]
    sums = torch.einsum("bdp,bpk->bkd", emb.flatten(2), onehot)
    counts = onehot.sum(1)
    return sums / counts.clamp(min=1)[..., None], counts


def torch_scatter_pool(emb, labels, K):
    """torch_scatter.scatter_mean, the library peer (an optional install: skipped when absent)."""
    scatter_mean = pytest.importorskip("torch_scatter", reason="torch_scatter is not installed").scatter_mean
    lab = labels.flatten(1)
    idx = torch.where(lab == IGNORE, K, lab)[:, None, :].expand(-1, emb.shape[1], -1)
    return scatter_mean(emb.flatten(2), idx, dim=2, dim_size=K + 1)[:, :, :K].transpose(1, 2), None


METHODS = {
    "fused": lambda e, l, K: region_pool(e, l, K),
    "eager": region_pool_reference,
    "compile": None,  # torch.compile of the reference, made per case
    "scatter_add": scatter_add_pool,
    "one_hot_einsum": one_hot_pool,
    "torch_scatter": torch_scatter_pool,
}


def segmentation_labels(H, W, K, device, seed=0):
    """Blocky label maps like real segmentations: a coarse random grid upsampled, 5% ignored."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, K, (B, 1, max(H // 7, 1), max(W // 7, 1)), generator=g).float()
    labels = F.interpolate(coarse, size=(H, W), mode="nearest")[:, 0].long()
    labels[torch.rand(B, H, W, generator=g) < 0.05] = IGNORE
    return labels.to(device)


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("K", [19, 27])
@pytest.mark.parametrize("D", [70, 256])
@pytest.mark.parametrize("HW", [(28, 28), (128, 256)], ids=["28x28", "128x256"])
def bench_region_pool(benchmark, device, HW, D, K, method, mode):
    if benchmark.disabled and (HW, D, K) != ((28, 28), 70, 19):
        pytest.skip("smoke runs (no --benchmark-enable) cover the smallest case")
    H, W = HW
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(B, D, H, W, generator=g).to(device).requires_grad_(mode == "forward_backward")
    labels = segmentation_labels(H, W, K, device)
    grad = torch.randn(B, K, D, generator=g).to(device)
    fn = compiled(region_pool_reference, benchmark) if method == "compile" else METHODS[method]
    sync = sync_for(device)

    def run():
        means, _ = fn(emb, labels, K)
        if mode == "forward_backward":
            torch.autograd.grad(means, emb, grad)
        sync()
        return means

    warm_up(run, method, benchmark)
    # Same answer as the fused op, so a timing never comes from a wrong result.
    want = region_pool(emb.detach().double(), labels, K)[0].float()
    torch.testing.assert_close(run().detach(), want, rtol=1e-4, atol=1e-5)

    elem = emb.element_size()
    bytes_moved = emb.numel() * elem + labels.numel() * labels.element_size() + B * K * (D * elem + 8)
    if mode == "forward_backward":  # backward reads the labels again and writes the gradient
        bytes_moved += emb.numel() * elem + labels.numel() * labels.element_size()
    record(benchmark, op="region_pool", device=device, case=f"B={B} {H}x{W} D={D} K={K}", method=method,
           mode=mode, dtype=emb.dtype, min_bytes=bytes_moved, peak_mb=cuda_peak_mb(run, device))
    benchmark(run)
