"""Frozen backbones (DINO, DINOv2, SAM from timm, random weights), the split forward, weight files,
segmentation head, kNN positives."""

import pytest
import torch
from safetensors.torch import save_file

from fussfast.model import BACKBONES, FrozenBackbone, SegmentationHead, draw_positives, knn_table, patch_size_of


@pytest.fixture(scope="module")
def vit_s8_fp32():
    torch.manual_seed(0)
    return FrozenBackbone("vit_small_patch8_224.dino", precision="fp32")


def test_frozen_and_shapes(vit_s8_fp32):
    bb = vit_s8_fp32
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.training and not bb.vit.training
    feats, desc = bb(torch.randn(2, 3, 64, 96))
    assert feats.shape == (2, 384, 8, 12) and feats.dtype == torch.float32
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        bb(torch.randn(1, 3, 60, 64))


@pytest.mark.parametrize("precision,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_agrees_with_fp32(tmp_path, vit_s8_fp32, precision, dtype):
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit_s8_fp32.vit.state_dict().items()}, str(path))
    half = FrozenBackbone("vit_small_patch8_224.dino", weights=path, precision=precision)
    assert all(p.dtype == dtype for p in half.parameters())  # cast, not autocast
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    f32, _ = vit_s8_fp32(images)
    f16, _ = half(images)
    cos = torch.nn.functional.cosine_similarity(f16.float(), f32, dim=1).mean()
    assert cos >= 0.99


def test_official_dino_checkpoint_layout(tmp_path, vit_s8_fp32):
    state = {f"module.backbone.{k}": v for k, v in vit_s8_fp32.vit.state_dict().items()}
    state["module.head.mlp.0.weight"] = torch.zeros(3, 3)
    path = tmp_path / "dino.pth"
    torch.save({"teacher": state, "epoch": 100}, path)
    loaded = FrozenBackbone("vit_small_patch8_224.dino", weights=path, precision="fp32")
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(images)[0], vit_s8_fp32(images)[0])


def test_bad_weight_files(tmp_path, vit_s8_fp32):
    with pytest.raises(FileNotFoundError, match="no file at"):
        FrozenBackbone(weights=tmp_path / "missing.pth")
    state = dict(vit_s8_fp32.vit.state_dict())
    state.pop("norm.weight")
    state["extra.bias"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys \['norm.weight'\], unexpected keys \['extra.bias'\]"):
        FrozenBackbone(weights=path)
    with pytest.raises(ValueError, match="unknown backbone"):
        FrozenBackbone("resnet50")
    with pytest.raises(ValueError, match="unknown precision"):
        FrozenBackbone(precision="fp8")


# (name, dim, prefix tokens, image height, width)
FAMILIES = [("vit_small_patch16_224.dino", 384, 1, 48, 80), ("vit_small_patch14_dinov2.lvd142m", 384, 1, 42, 70),
             ("vit_small_patch14_reg4_dinov2.lvd142m", 384, 5, 42, 70), ("samvit_base_patch16", 256, 0, 48, 80)]


@pytest.mark.parametrize("name,dim,prefix,H,W", FAMILIES, ids=["dino", "dinov2", "dinov2-reg4", "sam"])
def test_families_and_split_forward(name, dim, prefix, H, W):
    torch.manual_seed(0)
    bb = FrozenBackbone(name, precision="fp32")
    with torch.no_grad():  # timm starts these at zero (or 1e-5): random, so that every path counts
        for pname, p in bb.vit.named_parameters():
            if "pos" in pname or pname in ("cls_token", "reg_token") or pname.endswith("gamma"):
                p.normal_(0, 0.5)
    images = torch.randn(2, 3, H, W)
    grid = (H // bb.patch_size, W // bb.patch_size)
    fmap, desc = bb(images)
    assert bb.dim == dim and bb.num_prefix_tokens == prefix and bb.num_blocks == 12
    assert fmap.shape == (2, dim, *grid) and fmap.dtype == torch.float32
    torch.testing.assert_close(desc.double(), torch.nn.functional.normalize(fmap.double().mean((2, 3)), dim=1))
    if bb.is_sam:  # the neck's map: SAM's image embedding
        assert bb.stem(images, 0).shape == (2, *grid, 768)
    else:  # the patch tokens, as timm's own intermediate path gives them (prefix tokens dropped)
        assert bb.stem(images, 0).shape == (2, prefix + grid[0] * grid[1], dim)
        timm_map = bb.vit.forward_intermediates(images, indices=[11], norm=True, output_fmt="NCHW",
                                                intermediates_only=True)[0]
        torch.testing.assert_close(fmap, timm_map)
    for b in (0, 5, 12):
        torch.testing.assert_close(bb.tail(bb.stem(images, b), b, grid), fmap, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"first_block must be in \[0, 12\], got 13"):
        bb.stem(images, 13)


def test_patch_sizes():
    assert [patch_size_of(n) for n in BACKBONES] == [8, 16, 8, 16, 14, 14, 14, 14, 16, 16]
    bb = FrozenBackbone("vit_small_patch14_dinov2.lvd142m", precision="fp32")
    assert bb.patch_size == 14
    with pytest.raises(ValueError, match="image size 64x64 is not a multiple of the patch size 14"):
        bb(torch.randn(1, 3, 64, 64))


def test_sam_checkpoint_keys_are_mapped(tmp_path):
    """SAM's own checkpoint: the image encoder's keys become timm's, the prompt encoder and mask
    decoder are dropped (a file with one block's keys: only missing keys are reported)."""
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16),
                "image_encoder.blocks.0.mlp.lin1.weight": torch.zeros(3072, 768),
                "image_encoder.neck.0.weight": torch.zeros(256, 768, 1, 1),
                "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.zeros(2, 128),
                "mask_decoder.iou_token.weight": torch.zeros(1, 256)}, tmp_path / "sam_vit_b.pth")
    with pytest.raises(ValueError, match=r"missing keys \[.*, unexpected keys \[\]$") as error:
        FrozenBackbone("samvit_base_patch16", weights=tmp_path / "sam_vit_b.pth")
    mapped = ("patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "neck.0.weight")
    assert all(k not in str(error.value) for k in mapped)


def test_segmentation_head():
    head = SegmentationHead(384, 70)
    feats = torch.randn(2, 384, 5, 7, dtype=torch.float16)
    code = head(feats)
    assert code.shape == (2, 70, 5, 7) and code.dtype == torch.float32
    code.sum().backward()
    assert all(p.grad is not None for p in head.parameters())
    head.eval()
    f = torch.randn(1, 384, 2, 2)
    want = head.lin(f) + head.mlp(f)
    torch.testing.assert_close(head(f), want)


def test_knn_positives():
    g = torch.Generator().manual_seed(0)
    desc = torch.nn.functional.normalize(torch.randn(20, 16, generator=g), dim=1)
    table = knn_table(desc, k=5)
    assert table.shape == (20, 5)
    sim = desc @ desc.T
    for i in range(20):
        assert i not in table[i].tolist()
        others = sim[i].clone()
        others[i] = -2
        assert torch.equal(table[i], others.topk(5).indices)
    pos = draw_positives(table, torch.arange(20), num_neighbors=2, generator=g)
    assert all(p in table[i, :2].tolist() for i, p in enumerate(pos.tolist()))
    with pytest.raises(ValueError, match="at least 2 images"):
        knn_table(desc[:1])


def test_auto_precision_follows_the_device(monkeypatch):
    from fussfast.model import resolve_precision

    assert resolve_precision("fp16", "cpu") == "fp16" and resolve_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert resolve_precision("auto", "cpu") == "fp32"  # never fp16 on a CPU: torch has no fast kernels
