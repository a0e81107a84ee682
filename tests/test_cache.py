"""Feature cache: build, memory-mapped read, resume after interruption, stale and corrupt shards."""

import json

import pytest
import torch

from fussfast.model.cache import FeatureCache

KEY = {"dataset": "synthetic", "split": "train", "backbone": "vit_small_patch8_224.dino", "weights": "random",
       "resolution": 32, "crop": "center", "precision": "fp16"}


def fake_extract(calls):
    def extract(start, stop):
        calls.append((start, stop))
        idx = torch.arange(start, stop, dtype=torch.float32)
        return idx[:, None, None, None].expand(-1, 4, 2, 3) / 7, torch.nn.functional.normalize(
            torch.stack([idx, idx + 1], 1), dim=1)
    return extract


def test_build_and_read(tmp_path):
    calls = []
    cache = FeatureCache(tmp_path, KEY, num_images=10, shard_size=4)
    cache.ensure(fake_extract(calls))
    assert calls == [(0, 4), (4, 8), (8, 10)]
    feats, desc = cache.features(), cache.descriptors()
    assert feats.shape == (10, 4, 2, 3) and feats.dtype == torch.float16 and desc.shape == (10, 2)
    torch.testing.assert_close(feats[:, 0, 0, 0].float(), (torch.arange(10) / 7).half().float())
    manifest = json.loads((cache.dir / "manifest.json").read_text())
    assert manifest["key"] == KEY and set(manifest["shards"]) == {"0", "1", "2"}
    calls.clear()
    FeatureCache(tmp_path, KEY, num_images=10, shard_size=4).ensure(fake_extract(calls))
    assert calls == []  # complete: nothing re-extracted


def test_interrupted_extraction_resumes(tmp_path):
    def failing(start, stop):
        if start >= 4:
            raise KeyboardInterrupt
        return fake_extract([])(start, stop)

    cache = FeatureCache(tmp_path, KEY, num_images=10, shard_size=4)
    with pytest.raises(KeyboardInterrupt):
        cache.ensure(failing)
    assert cache.missing_shards() == [1, 2]
    with pytest.raises(RuntimeError, match="missing or corrupt"):
        cache.features()
    calls = []
    cache.ensure(fake_extract(calls))
    assert calls == [(4, 8), (8, 10)]


def test_corrupt_and_stale_shards_are_rebuilt(tmp_path):
    cache = FeatureCache(tmp_path, KEY, num_images=6, shard_size=3)
    cache.ensure(fake_extract([]))
    shard = cache.dir / "shard_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    shard.write_bytes(bytes(data))
    assert cache.missing_shards() == [1]
    calls = []
    cache.ensure(fake_extract(calls))
    assert calls == [(3, 6)]
    # another key or layout never reuses these shards
    other = FeatureCache(tmp_path, {**KEY, "precision": "bf16"}, num_images=6, shard_size=3)
    assert other.dir != cache.dir and other.missing_shards() == [0, 1]
    resized = FeatureCache(tmp_path, KEY, num_images=6, shard_size=2)
    assert resized.missing_shards() == [0, 1, 2]


def test_extract_must_return_the_right_count(tmp_path):
    cache = FeatureCache(tmp_path, KEY, num_images=4, shard_size=4)
    with pytest.raises(ValueError, match="returned 3 images"):
        cache.ensure(lambda a, b: (torch.zeros(3, 1, 1, 1), torch.zeros(3, 1)))
