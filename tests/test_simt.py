"""The SIMT emulator of the CUDA kernels (csrc/testing/simt).

Every op suite already runs its cases under the emulator (the "simt" device of conftest.py).
Here: every op under several schedules and block counts, the checks firing on deliberately
broken kernels (FF_MUTATION in csrc/common/launch.h), the caller's stream, scratch memory freed
on every path, and the launch-configuration fixes found by reading the kernels.
"""

import importlib

import pytest
import torch

import simt_build
from conftest import OP_MODULES
from fussfast import ops
from fussfast.ops import _boundary as bnd

MODULES = [importlib.import_module(f"fussfast.ops.{name}") for name in OP_MODULES]


@pytest.fixture
def route(monkeypatch):
    """route(module) sends every op's kernel calls to module (a _C_simt build)."""

    def to(module):
        for m in MODULES:
            monkeypatch.setattr(m, "_C", module)
        return module

    return to


@pytest.fixture(scope="module")
def mutants():
    names = [f"mutant_{n}" for n in MUTATIONS]
    simt_build.build(*names)
    return {n: simt_build.load(f"mutant_{n}") for n in MUTATIONS}


def randn(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ---- every op, several schedules, several block counts --------------------------------------


def run_every_op(seed):
    """Each op on odd sizes that span several blocks, against its float64 reference."""
    g = torch.Generator().manual_seed(seed)
    close = dict(rtol=1e-9, atol=1e-11)
    # region_pool: 2 strips of 1024 pixels per image for P = 1,300; D = 17 spans two channel chunks
    emb = randn(3, 17, 26, 50, seed=seed).requires_grad_()
    labels = torch.randint(-1, 7, (3, 26, 50), generator=g)
    means, counts = ops.region_pool(emb, labels, 7, normalize=True)
    ref_means, ref_counts = ops.region_pool_reference(emb, labels, 7, normalize=True)
    torch.testing.assert_close(means, ref_means, **close)
    assert torch.equal(counts, ref_counts)
    upstream = randn(*means.shape, seed=seed + 1)
    (grad,) = torch.autograd.grad((means * upstream).sum(), emb)
    (ref_grad,) = torch.autograd.grad((ref_means * upstream).sum(), emb)
    torch.testing.assert_close(grad, ref_grad, **close)
    # cluster_assign: 3 blocks per image, soft assignment with both gradients
    z = randn(2, 6, 13, 11, seed=seed).requires_grad_()
    c = randn(5, 6, seed=seed + 2).requires_grad_()
    loss, probs = ops.cluster_assign(z, c, alpha=2.0)
    ref_loss, ref_probs = ops.cluster_assign_reference(z, c, alpha=2.0)
    torch.testing.assert_close(probs, ref_probs, **close)
    grads = torch.autograd.grad(loss, (z, c))
    ref_grads = torch.autograd.grad(ref_loss, (z, c))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, **close)
    # correlation_loss: 3 row tiles x 2 column tiles, C = 40 in two staged slices
    f1, f2 = randn(2, 40, 7, 10, seed=seed), randn(2, 40, 6, 7, seed=seed + 3)
    z1, z2 = randn(2, 9, 7, 10, seed=seed + 4).requires_grad_(), randn(2, 9, 6, 7, seed=seed + 5).requires_grad_()
    shift = torch.tensor([0.1, 0.4], dtype=torch.float64)
    loss = ops.correlation_loss(f1, f2, z1, z2, shift)
    ref = ops.correlation_loss_reference(f1, f2, z1, z2, shift)
    torch.testing.assert_close(loss, ref, **close)
    for a, b in zip(torch.autograd.grad(loss, (z1, z2)), torch.autograd.grad(ref, (z1, z2))):
        torch.testing.assert_close(a, b, **close)
    # kmeans: 3 blocks of points, weighted; the same labels and centroids as the CPU kernel
    x = randn(600, 5, seed=seed)
    w = torch.rand(600, dtype=torch.float64, generator=g) + 0.1
    got = ops.kmeans(x, 4, weights=w, n_init=2, seed=seed)
    return got, ops.maximin(randn(1100, 3, seed=seed), 9), ops.back_ce(
        randn(2, 5, 17, 19, seed=seed), torch.randint(0, 5, (2, 17, 19), generator=g),
        torch.tensor([True, False, True, False, False]))


@pytest.mark.parametrize("seed", range(4))
def test_every_op_matches_reference_under_several_schedules(seed, simt_kernels, route):
    want = run_every_op(seed)  # CPU kernels for kmeans, maximin and back_ce
    route(simt_kernels)
    simt_kernels.simt_configure(seed=seed, placement="end" if seed % 2 else "start", yield_rate=0.3,
                                multiprocessors=1 + seed, blocks_per_sm=2)
    simt_kernels.simt_launches()  # forget earlier tests' launches
    got = run_every_op(seed)
    assert torch.equal(got[0].labels, want[0].labels)
    torch.testing.assert_close(got[0].centroids, want[0].centroids, rtol=1e-9, atol=1e-11)
    assert got[1].tolist() == want[1].tolist()
    assert got[1].tolist() == ops.maximin_reference(randn(1100, 3, seed=seed), 9).tolist()
    torch.testing.assert_close(got[2], want[2], rtol=1e-12, atol=1e-12)
    launches = simt_kernels.simt_launches()
    maximin = [r for r in launches if r["kernel"] == "maximin_kernel"]
    assert maximin and maximin[0]["cooperative"] and maximin[0]["grid"][0] == min(2 * (1 + seed), 5)
    assert any(r["grid"][0] > 1 for r in launches if r["kernel"] == "accumulate_kernel")


# ---- the checks catch broken kernels --------------------------------------------------------


def correlation_case():
    return ops.correlation_loss(randn(2, 40, 6, 7), randn(2, 40, 5, 5), randn(2, 9, 6, 7), randn(2, 9, 5, 5), 0.3)


def region_pool_case():
    return ops.region_pool(randn(2, 3, 5, 7), torch.randint(0, 4, (2, 5, 7)), 4)


def cluster_case(h, w):
    return lambda: ops.cluster_assign(randn(1, 4, h, w), randn(3, 4))


def maximin_case():
    return ops.maximin(randn(300, 4), 5)


MUTATIONS = {  # FF_MUTATION -> (a call that runs the broken kernel, what the emulator must say)
    1: (correlation_case, r"shared-memory data race on '(as|bs)'"),
    2: (region_pool_case, r"out-of-bounds global access .*: 0 bytes past the end of 'labels'"),
    3: (cluster_case(5, 7), r"__shfl_xor_sync .* calls it with mask 0x7fffffff, which leaves it out"),
    4: (cluster_case(5, 10), r"barrier divergence"),
    5: (maximin_case, r"read of uninitialized shared memory 'values'"),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_checks_catch_broken_kernels(mutation, mutants, simt_kernels, route):
    call, message = MUTATIONS[mutation]
    route(simt_kernels).simt_configure(seed=1, placement="end")
    call()  # the kernel as written passes
    module = route(mutants[mutation])
    module.simt_configure(seed=1, placement="end")
    with pytest.raises(RuntimeError, match=message) as caught:
        call()
    text = str(caught.value)
    assert "block (" in text and "thread" in text and "(kernel " in text, text
    assert module.simt_live_allocations() == 0  # scratch memory freed on the error path too


# ---- streams, scratch memory, launch configuration ------------------------------------------


def test_kernels_run_on_the_callers_stream(simt_kernels, route, monkeypatch):
    route(simt_kernels)
    monkeypatch.setattr(bnd, "stream_handle", lambda device: 0xBEEF)
    simt_kernels.simt_launches()
    run_every_op(0)
    launches = simt_kernels.simt_launches()
    assert {r["kernel"].split(" ")[0] for r in launches} >= {
        "accumulate_kernel", "finalize_kernel", "region_grad_kernel", "scatter_grad_kernel", "cluster_kernel",
        "stats_kernel", "correlation_kernel", "assign_kernel", "scan_blocks_kernel", "slice_sums_kernel",
        "maximin_kernel", "back_ce_kernel"}
    assert {r["stream"] for r in launches} == {0xBEEF}
    assert simt_kernels.simt_live_allocations() == 0


def test_back_ce_and_kmeans_refuse_empty_dimensions(simt_kernels, route):
    route(simt_kernels)
    with pytest.raises(ValueError, match="at least one class"):
        ops.back_ce(torch.zeros(2, 0, 3), torch.zeros(2, 3, dtype=torch.int64), torch.zeros(0, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one class"):  # the binding too
        simt_kernels.back_ce_forward(torch.zeros(2, 0, 3), torch.zeros(2, 3, dtype=torch.int64),
                                     torch.zeros(2, 0, dtype=torch.int32), 255, torch.zeros(2, 3), None, 0)
    with pytest.raises(ValueError, match="D >= 1"):
        ops.kmeans(torch.zeros(5, 0), 2)
    with pytest.raises(ValueError, match="D >= 1"):
        simt_kernels.kmeans(torch.zeros(5, 0), None, 2, 1, 10, 0.0, 0, False, torch.zeros(2, 0),
                            torch.zeros(5, dtype=torch.int64), 0)


def test_region_pool_with_no_classes_launches_nothing(simt_kernels):
    emb, labels = randn(2, 3, 4), torch.full((2, 4), -1)
    acc, counts, means = torch.zeros(2, 0, 3, dtype=torch.float64), torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0, 3, dtype=torch.float64)
    regions, status = torch.zeros(2, 4, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    simt_kernels.region_pool_forward(emb, labels, acc, counts, means, regions, status, -1, False, 0)
    assert regions.eq(0).all() and status.item() == 0


def test_cluster_assign_opts_in_to_large_shared_memory(simt_kernels, route):
    route(simt_kernels)
    # float32 K = 64, D = 128: 48 KiB of dynamic shared memory plus the kernel's static part
    z, c = torch.randn(1, 128, 7, 10), torch.randn(64, 128)
    loss, probs = ops.cluster_assign(z, c)
    ref_loss, ref_probs = ops.cluster_assign_reference(z, c)
    torch.testing.assert_close(loss, ref_loss)
    assert simt_kernels.simt_launches()[-1]["dynamic_smem"] == 4 * (64 * 128 + 64 * 64)
    with pytest.raises(ValueError, match="shared memory"):  # past the device's opt-in limit
        ops.cluster_assign(torch.randn(1, 1024, 1, 5, dtype=torch.float64), torch.randn(64, 1024, dtype=torch.float64))


def test_grid_limits_are_value_errors(simt_kernels, route):
    route(simt_kernels)
    # D = 2^20 channels: 65,536 chunks of 16 in grid.z, one past CUDA's limit
    emb = torch.zeros(1, 2**20, 1)
    with pytest.raises(ValueError, match=r"region_pool: input too large for one launch \(grid of 1 x 1 x 65536"):
        ops.region_pool(emb, torch.zeros(1, 1, dtype=torch.int64), 1)
    assert simt_kernels.simt_live_allocations() == 0
