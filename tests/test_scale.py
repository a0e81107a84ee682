"""Federations of many sites: the class-erased split's mask cache, features and models made only
for the sites in use, and the same config on Flower's simulation engine."""

import json
import os

import numpy as np
import pytest
import torch

from fussfast.assemble import make_data, prepare
from fussfast.config import load_config
from fussfast.data.datasets import ImageList
from tests.test_datasets import rgb, write_png

TINY = ["data.image_size=16", "data.eval_size=16", "data.eval_images=4", "train.local_steps=2",
        "train.batch_size=4", "model.precision=\"fp32\"", "model.backbone=\"vit_small_patch8_224.dino\""]


def cityscapes(root, labels_of):
    """Six training images in two cities, image ``i`` labelled with labelIds ``labels_of(i)``."""
    for split, n in (("train", 6), ("val", 2)):
        for i in range(n):
            city = f"city{i // 3}"
            name = f"{city}_{i:06d}_000019"
            write_png(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", rgb(i))
            labels = np.full((20, 30), 7, dtype=np.uint8)  # road: class 0
            labels[:5] = labels_of(i)
            write_png(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", labels)


def test_class_erased_mask_cache_hit_invalidation_and_corruption(tmp_path, monkeypatch):
    root, cache = tmp_path / "data", tmp_path / "cache"
    cityscapes(root, lambda i: (26, 33, 24)[i % 3])  # car 13, bicycle 18, person 11
    decoded = []
    real = ImageList.classes
    monkeypatch.setattr(ImageList, "classes", lambda self, i: decoded.append(i) or real(self, i))
    config = load_config(None, ["task=\"supervised\"", "data.kind=\"cityscapes\"", f"data.root=\"{root}\"",
                                "data.num_classes=19", "data.split=\"class-erased\"", "data.sites=2",
                                "data.classes_per_site=10"]).data

    def split():
        sites, _, labelled = make_data(config, 0, cache)
        return {name: ds.indices for name, ds in sites.items()}, labelled

    first = split()
    assert len(decoded) == 6
    decoded.clear()
    assert split() == first and decoded == []  # warm: no mask decoded
    (stored,) = (cache / "json").glob("*.json")
    assert sorted(json.loads(stored.read_text())["value"][1]) == [0, 18]

    # a mask changes under the same name: image 1 now shows a car (13) instead of a bicycle (18)
    mask = root / "gtFine" / "train" / "city0" / "city0_000001_000019_gtFine_labelIds.png"
    labels = np.full((20, 30), 7, dtype=np.uint8)
    labels[:5] = 26
    write_png(mask, labels)
    os.utime(mask, ns=(1, 1))  # an old mtime: the content digest, not the time, must notice
    changed = split()
    assert len(decoded) == 6
    values = sorted(sorted(json.loads(p.read_text())["value"][1]) for p in (cache / "json").glob("*.json"))
    assert values == [[0, 13], [0, 18]]  # an entry for the new contents; the old one is no longer used
    decoded.clear()

    # a corrupt cache file (edited value, then garbage) is recomputed, never used
    for path in (cache / "json").glob("*.json"):
        entry = json.loads(path.read_text())
        if sorted(entry["value"][1]) == [0, 13]:
            entry["value"][1] = [5]
            path.write_text(json.dumps(entry))
    assert split() == changed and len(decoded) == 6
    decoded.clear()
    for path in (cache / "json").glob("*.json"):
        path.write_text("{not json")
    assert split() == changed and len(decoded) == 6
    decoded.clear()
    assert split() == changed and decoded == []  # rewritten whole


def test_many_sites_touch_only_the_sampled_ones(tmp_path):
    config = load_config(None, TINY + ["data.sites=8", "data.images_per_site=4", "fed.strategy=\"fedavg\"",
                                       "fed.clients_per_round=2", "fed.rounds=3", "fed.eval_every=0",
                                       f"cache_dir=\"{tmp_path / 'cache'}\""])
    prepare(config)  # cold: extracts every site
    setup = prepare(config)  # warm: nothing read yet
    assert all(d.loads == 0 and d._data is None for d in setup.train.values())
    federation = setup.federation()
    assert not any(c.started for c in federation.clients.values())
    for r in (1, 2):  # unscored rounds
        record = federation.run_round(r)
        federation.history.append(record)
    sampled = {n for r in federation.history for n in r["sampled"]}
    assert 2 <= len(sampled) <= 4
    for name, d in setup.train.items():
        rounds_in = sum(name in r["sampled"] for r in federation.history)
        assert d.loads == rounds_in and d._data is None  # read for its rounds only, then released
        assert federation.clients[name].started == (name in sampled)
    tensors, meta = federation.state()
    assert set(meta["clients"]) == sampled and len(meta["sites"]) == 8
    # the features read back are the extracted ones, masks included
    site = setup.train["site3"].get()
    ds = make_data(config.data, config.seed)[0]["site3"]
    assert torch.equal(site.masks, torch.stack([ds[i][1] for i in range(len(ds))]))
    setup.train["site3"].release()
    before = {n: d.loads for n, d in setup.train.items()}
    scores = federation.evaluate()  # every site, one at a time
    assert set(scores["clients"]) == set(setup.train)
    assert all(d.loads == before[n] + 1 and d._data is None for n, d in setup.train.items())
    assert {n for n, c in federation.clients.items() if c.started} == sampled  # scoring built no lasting model

    # a checkpoint of the started clients only resumes into a fresh federation
    fresh = prepare(config).federation()
    fresh.load_state(tensors, meta)
    assert {n for n, c in fresh.clients.items() if c.started} == sampled


def test_flower_simulation_smoke(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("flwr.simulation")
    from fussfast.flower.simulation import simulate

    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    overrides = TINY + ["data.sites=3", "data.images_per_site=6", "fed.strategy=\"fedavg\"", "fed.rounds=2",
                        "fed.clients_per_round=2", f"cache_dir=\"{tmp_path / 'cache'}\""]
    assert simulate(None, overrides, tmp_path / "out") == 3
    rounds = json.loads((tmp_path / "out" / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:  # two virtual sites trained and sent usable updates each round
        assert len(r["sampled"]) == 2 and set(r["loss"]) == set(r["sampled"]) and not r["excluded"]
        assert set(r["clients"]) == {"site0", "site1", "site2"}  # every virtual site scored
