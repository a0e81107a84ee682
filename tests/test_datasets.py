"""Image datasets on tiny fake Cityscapes, COCO-Stuff and folder layouts built in a temp dir."""

import numpy as np
import pytest
from PIL import Image

from fussfast.data.datasets import (cityscapes27, cityscapes_sites, coco_fine_to_coarse, cocostuff27,
                                    dirichlet_split, folder_federation)


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def rgb(seed, h=20, w=30):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_cityscapes_layout_and_label_mapping(tmp_path):
    cities = [f"city{i:02d}" for i in range(18)]
    for i, city in enumerate(cities):
        name = f"{city}_000000_000019"
        write_png(tmp_path / "leftImg8bit" / "train" / city / f"{name}_leftImg8bit.png", rgb(i))
        labels = np.full((20, 30), 7 + i % 27, dtype=np.uint8)
        labels[0, :] = 3  # void class below 7
        write_png(tmp_path / "gtFine" / "train" / city / f"{name}_gtFine_labelIds.png", labels)
    ds = cityscapes27(tmp_path, "train", 16)
    image, mask = ds[5]
    assert image.shape == (3, 16, 16) and mask.shape == (16, 16)
    assert set(mask.unique().tolist()) <= {-1, 5} and (mask == 5).any()
    for scheme, n in (("3x6", 3), ("6x3", 6), ("18x1", 18)):
        sites = cityscapes_sites(tmp_path, scheme, 16)
        assert len(sites) == n and sum(len(s) for s in sites.values()) == 18
    with pytest.raises(ValueError, match="split must be one of"):
        cityscapes_sites(tmp_path, "2x9", 16)
    five = cityscapes27(tmp_path, "train", 8, ["city05"], five_crop=True)
    assert len(five) == 5 and five[4][0].shape == (3, 8, 8)
    corner, centre = five[0][1], five[4][1]  # the void top row is in the corner crop only
    assert (corner == -1).any() and not (centre == -1).any()


def test_cocostuff_curated_list_and_coarse_classes(tmp_path):
    table = coco_fine_to_coarse()
    assert table[0] == 9 and table[91] == 17 and table[181] == 24 and table[255] == -1
    assert set(table[:182].tolist()) == set(range(27))
    (tmp_path / "curated" / "val2017").mkdir(parents=True)
    (tmp_path / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt").write_text("000001\n000002\n")
    for i, fine in ((1, 0), (2, 181)):
        write_png(tmp_path / "images" / "val2017" / f"00000{i}.jpg", rgb(i))
        write_png(tmp_path / "annotations" / "val2017" / f"00000{i}.png", np.full((20, 30), fine, dtype=np.uint8))
    ds = cocostuff27(tmp_path, "val", 12)
    assert len(ds) == 2
    assert ds[0][1].unique().tolist() == [9] and ds[1][1].unique().tolist() == [24]
    with pytest.raises(FileNotFoundError, match="no image list"):
        cocostuff27(tmp_path, "train", 12)


def test_folder_layout(tmp_path):
    for site in ("hospital_a", "hospital_b"):
        for j in range(3):
            write_png(tmp_path / "clients" / site / "images" / f"img{j}.png", rgb(j))
        write_png(tmp_path / "clients" / site / "masks" / "img0.png", np.full((20, 30), 2, dtype=np.uint8))
    write_png(tmp_path / "val" / "images" / "v.jpg", rgb(9))
    write_png(tmp_path / "val" / "masks" / "v.png", np.full((20, 30), 255, dtype=np.uint8))
    sites, val = folder_federation(tmp_path, 16)
    assert sorted(sites) == ["hospital_a", "hospital_b"] and len(sites["hospital_a"]) == 3
    assert sites["hospital_a"][0][1].unique().tolist() == [2]
    assert (sites["hospital_a"][1][1] == -1).all()  # no mask file: all ignored
    assert (val[0][1] == -1).all()  # 255 is ignore
    with pytest.raises(FileNotFoundError, match="no directory"):
        folder_federation(tmp_path / "nowhere", 16)


def test_dirichlet_split_partitions_and_skews():
    groups = np.repeat(np.arange(6), 100)
    sites = dirichlet_split(groups, 4, alpha=0.1, seed=0)
    assert sorted(np.concatenate(sites).tolist()) == list(range(600))
    shares = np.array([[np.mean(groups[s] == g) if len(s) else 0 for g in range(6)] for s in sites])
    assert (shares.max(1) > 0.4).sum() >= 3  # small alpha: sites dominated by few groups
    iid = dirichlet_split(groups, 4, alpha=1e6, seed=0)
    assert all(abs(len(s) - 150) <= 6 for s in iid)


def test_cityscapes_train_ids_and_class_erased_sites(tmp_path):
    from fussfast.config import load_config
    from fussfast.assemble import make_data

    # labelIds: 7 road -> 0, 26 car -> 13, 33 bicycle -> 18, 9 parking and 3 void -> ignore
    for split, n in (("train", 6), ("val", 2)):
        for i in range(n):
            city = f"city{i // 3}"
            name = f"{city}_{i:06d}_000019"
            write_png(tmp_path / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", rgb(i))
            labels = np.full((20, 30), 7, dtype=np.uint8)
            labels[:5] = (26, 33, 9)[i % 3]
            labels[-1] = 3
            write_png(tmp_path / "gtFine" / split / city / f"{name}_gtFine_labelIds.png", labels)
    ds = cityscapes27(tmp_path, "train", 20, num_classes=19)
    assert set(ds[0][1].unique().tolist()) == {-1, 0, 13} and set(ds[2][1].unique().tolist()) == {-1, 0}
    assert [ds.classes(i) for i in range(3)] == [{0, 13}, {0, 18}, {0}]
    assert set(cityscapes27(tmp_path, "train", 20)[0][1].unique().tolist()) == {-1, 0, 19}  # 27 classes
    config = load_config(None, ["task=\"supervised\"", "data.kind=\"cityscapes\"", f"data.root=\"{tmp_path}\"",
                                "data.num_classes=19", "data.split=\"class-erased\"", "data.sites=19",
                                "data.classes_per_site=1"])
    with pytest.raises(ValueError, match="no image contains the classes of"):
        make_data(config.data, 0)  # most of the 19 one-class sites find no image
    config = config.replace(["data.sites=2", "data.classes_per_site=10"])
    sites, evaluation, labelled = make_data(config.data, 0)
    assert labelled == {"site0": list(range(10)), "site1": [0, *range(10, 19)]}
    assert len(sites["site0"]) + len(sites["site1"]) == 6 and len(evaluation) == 2
    for name, site in sites.items():
        assert all(set(site[i][1].unique().tolist()) & set(labelled[name]) for i in range(len(site)))
