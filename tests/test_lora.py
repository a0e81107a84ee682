"""LoRA on the frozen backbone: the adapted forward and its gradients against a float64 backbone with
the low-rank product merged into its weights, W' = W + (alpha / r) B A, for DINO, DINOv2 and SAM."""

import copy

import pytest
import torch

from fussfast.model import FrozenBackbone, LoRA

# (name, image height, width): odd patch grids; the models cut to 4 blocks (SAM: windowed 0, 1, 3
# and global 2) so that float64 copies stay small and fast
CASES = [("vit_small_patch16_224.dino", 48, 80), ("vit_small_patch14_reg4_dinov2.lvd142m", 42, 70),
         ("samvit_base_patch16", 48, 80)]
BLOCKS = 4


def randomized(name: str, precision: str = "fp32") -> FrozenBackbone:
    """A backbone with every parameter random, also those timm starts at zero or near it (position
    embeddings, SAM's relative positions, DINOv2's LayerScale at 1e-5), so that each path counts."""
    torch.manual_seed(0)
    bb = FrozenBackbone(name, precision=precision)
    bb.vit.blocks = bb.vit.blocks[:BLOCKS]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for pname, p in bb.vit.named_parameters():
            if "pos" in pname or pname in ("cls_token", "reg_token"):
                p.normal_(0, 0.5, generator=g)
            elif pname.endswith("gamma"):
                p.uniform_(0.5, 1.5, generator=g)
    return bb


def as_float64(bb: FrozenBackbone) -> FrozenBackbone:
    twin = copy.deepcopy(bb).double()
    twin.dtype = torch.float64
    return twin


def random_lora(bb: FrozenBackbone, seed: int, **options) -> LoRA:
    options = {"rank": 3, "alpha": 5.0, "blocks": [1, 3], "targets": ["qkv", "proj"], **options}
    lora = LoRA(bb, generator=torch.Generator().manual_seed(seed), **options)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, _, factors in lora.factors():
            factors.B.normal_(0, 0.2, generator=g)
    return lora


def merged(bb: FrozenBackbone, lora: LoRA) -> FrozenBackbone:
    """A float64 copy of ``bb`` with W' = W + (alpha / r) B A in each targeted layer."""
    twin = as_float64(bb)
    with torch.no_grad():
        for b, target, factors in lora.factors():
            layer = getattr(twin.vit.blocks[b].attn, target)
            layer.weight += lora.alpha / lora.rank * factors.B.double() @ factors.A.double()
    return twin


@pytest.fixture(scope="module", params=CASES, ids=["dino", "dinov2", "sam"])
def case(request):
    name, H, W = request.param
    bb = randomized(name)
    images = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(2))
    return bb, images, (H // bb.patch_size, W // bb.patch_size)


def test_parameters_names_and_init(case):
    bb = case[0]
    lora = LoRA(bb, rank=4, alpha=8, blocks=[3, 1], targets=["proj", "qkv"])
    dim = bb.vit.embed_dim
    shapes = {k: tuple(v.shape) for k, v in lora.state_dict().items()}
    assert shapes == {f"blocks.{b}.attn.{t}.{f}": s for b in (1, 3) for t, out in (("qkv", 3 * dim), ("proj", dim))
                      for f, s in (("A", (4, dim)), ("B", (out, 4)))}
    assert lora.first_block == 1 and lora.scale == 2.0
    for _, _, factors in lora.factors():
        assert factors.A.dtype == torch.float32 and factors.A.requires_grad
        assert 0 < factors.A.abs().max() <= dim ** -0.5 and factors.A.std() > 0.4 * dim ** -0.5
        assert not factors.B.any()


def test_zero_B_changes_nothing(case):
    bb, images, _ = case
    plain = bb(images)[0]
    with bb.adapted(LoRA(bb, rank=2, alpha=4, blocks=[0, 2])):
        assert torch.equal(bb(images)[0], plain)


def test_adapted_forward_equals_merged_weights(case):
    bb, images, _ = case
    lora = random_lora(bb, seed=3)
    reference = merged(bb, lora)(images.double())[0]
    with bb.adapted(lora):
        out = bb(images)[0]
    assert (out.double() - as_float64(bb)(images.double())[0]).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(out.double(), reference, rtol=1e-4, atol=1e-4)
    # in float64 the adapted backbone meets the merged one to rounding
    twin, lora64 = as_float64(bb), copy.deepcopy(lora).double()
    with twin.adapted(lora64):
        torch.testing.assert_close(twin(images.double())[0], reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("first_block", [0, 2])
def test_gradients_match_merged_weights(case, first_block):
    """dL/dA = s Bᵀ G and dL/dB = s G Aᵀ, with G = dL/dW' on the merged float64 backbone; and the
    gradient reaching the cached tokens is the merged backbone's."""
    bb, images, grid = case
    twin = as_float64(bb)
    lora = random_lora(twin, seed=4, blocks=[2, 3], targets=["qkv", "proj"] if first_block else ["proj"]).double()
    weights = torch.randn(2, bb.dim, *grid, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    tokens = twin.stem(images.double(), first_block).requires_grad_()
    with twin.adapted(lora):
        (twin.tail(tokens, first_block, grid) * weights).sum().backward()

    reference = merged(twin, lora)
    layers = {(b, t): getattr(reference.vit.blocks[b].attn, t).weight.requires_grad_() for b, t, _ in lora.factors()}
    ref_tokens = tokens.detach().clone().requires_grad_()
    (reference.tail(ref_tokens, first_block, grid) * weights).sum().backward()
    for b, target, factors in lora.factors():
        G = layers[b, target].grad
        torch.testing.assert_close(factors.A.grad, lora.scale * factors.B.detach().t() @ G, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(factors.B.grad, lora.scale * G @ factors.A.detach().t(), rtol=1e-9, atol=1e-10)
        assert factors.A.grad.abs().max() > 1e-3 and factors.B.grad.abs().max() > 1e-3
    torch.testing.assert_close(tokens.grad, ref_tokens.grad, rtol=1e-9, atol=1e-10)


def test_backbone_untouched_and_plain_after(case):
    bb, images, grid = case
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    plain = bb(images)[0]
    lora = random_lora(bb, seed=6)
    with bb.adapted(lora):
        loss = bb.tail(bb.stem(images, 1), 1, grid).float().square().mean()
        loss.backward()
        torch.optim.SGD(lora.parameters(), lr=0.1).step()
    assert all(p.grad is None and not p.requires_grad for p in bb.parameters())
    assert all(torch.equal(v, before[k]) for k, v in bb.state_dict().items())
    assert all(f.A.grad is not None and f.B.grad is not None for _, _, f in lora.factors())
    assert not any(m._forward_hooks for m in bb.modules())
    assert torch.equal(bb(images)[0], plain)
    with pytest.raises(KeyError), bb.adapted(lora):  # an error inside the `with` removes the hooks too
        raise KeyError("boom")
    assert not any(m._forward_hooks for m in bb.modules()) and torch.equal(bb(images)[0], plain)


def test_half_precision_backbone():
    """bf16 backbone: zero B changes nothing exactly, the adapted output stays bf16 and near the merged
    float64 reference, and the factors get float32 gradients."""
    bb = randomized("vit_small_patch16_224.dino", precision="bf16")
    images = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(7))
    plain = bb(images)[0]
    with bb.adapted(LoRA(bb, rank=2, alpha=2, blocks=[0])):
        assert torch.equal(bb(images)[0], plain)
    lora = random_lora(bb, seed=8)
    with bb.adapted(lora):
        out = bb.tail(bb.stem(images, 1), 1, (3, 5))
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    reference = merged(bb, lora)(images.double())[0]
    cos = torch.nn.functional.cosine_similarity(out.detach().double(), reference, dim=1)
    assert cos.min() > 0.99
    assert all(f.A.grad.dtype == torch.float32 and f.A.grad.isfinite().all() for _, _, f in lora.factors())


def test_bad_arguments():
    bb = randomized("vit_small_patch16_224.dino")
    for blocks, match in (([], "distinct block indices in \\[0, 3\\]"), ([1, 1], "distinct"), ([4], "\\[0, 3\\]"),
                          ([-1], "\\[0, 3\\]")):
        with pytest.raises(ValueError, match=match):
            LoRA(bb, rank=2, alpha=1, blocks=blocks)
    with pytest.raises(ValueError, match="targets must be distinct names among"):
        LoRA(bb, rank=2, alpha=1, blocks=[0], targets=["fc1"])
    with pytest.raises(ValueError, match="targets"):
        LoRA(bb, rank=2, alpha=1, blocks=[0], targets=[])
    for rank in (0, 2.5, True):
        with pytest.raises(ValueError, match="rank must be an integer >= 1"):
            LoRA(bb, rank=rank, alpha=1, blocks=[0])
    with pytest.raises(ValueError, match=r"rank must be in \[1, 384\] for blocks.0.attn.proj \(384 -> 384\), got 385"):
        LoRA(bb, rank=385, alpha=1, blocks=[0], targets=["proj"])
    for alpha in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
            LoRA(bb, rank=2, alpha=alpha, blocks=[0])
    lora = LoRA(bb, rank=2, alpha=1, blocks=[0])
    with bb.adapted(lora), pytest.raises(RuntimeError, match="already runs with an adapter"):
        with bb.adapted(LoRA(bb, rank=2, alpha=1, blocks=[1])):
            pass
    assert not any(m._forward_hooks for m in bb.modules())
    with pytest.raises(ValueError, match=r"blocks.0.attn.qkv of this backbone is \[2304, 768\], the adapter was made "
                                         r"for \[1152, 384\]"):
        with randomized("samvit_base_patch16").adapted(lora):
            pass
