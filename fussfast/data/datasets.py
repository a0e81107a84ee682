"""Image datasets on disk: Cityscapes-27, COCO-Stuff-27 and plain image folders, plus the
federated splits of the FUSS paper. Every item is ``(image [3, S, S] ImageNet-normalized,
mask [S, S] int64 with -1 = ignore)``; images without masks get an all-ignore mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fussfast.data.synthetic import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# COCO-Stuff 182 fine classes -> 27 coarse ones (the coarse categories STEGO evaluates).
_COARSE_THINGS = [(0, 0, 9), (1, 8, 11), (9, 14, 8), (15, 24, 7), (25, 32, 6), (33, 42, 10), (43, 50, 5),
                  (51, 60, 2), (61, 70, 3), (71, 76, 0), (77, 82, 1), (83, 90, 4)]
_COARSE_STUFF = [17, 17, 22, 20, 20, 22, 15, 25, 16, 13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15, 25, 13, 13,
                 13, 13, 13, 22, 26, 14, 14, 15, 22, 21, 21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16,
                 21, 17, 22, 16, 21, 21, 25, 21, 26, 21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24, 15, 24, 22,
                 25, 15, 20, 17, 17, 22, 14, 18, 18, 18, 18, 18, 18, 18, 26, 26, 19, 19, 24]  # fine 91..181


def coco_fine_to_coarse() -> np.ndarray:
    """Lookup table of 256 entries: fine id -> coarse id, everything else (255 included) -> -1."""
    table = np.full(256, -1, dtype=np.int64)
    for first, last, coarse in _COARSE_THINGS:
        table[first:last + 1] = coarse
    assert len(_COARSE_STUFF) == 91
    table[91:182] = _COARSE_STUFF
    return table


def _five_crop(img, crop: int):
    """Crop number ``crop`` (0-3: corners, 4: centre) of side half the short side, as STEGO's
    five-crop training set."""
    w, h = img.size
    side = min(w, h) // 2
    left, top = [(0, 0), (w - side, 0), (0, h - side), (w - side, h - side),
                 ((w - side) // 2, (h - side) // 2)][crop]
    return img.crop((left, top, left + side, top + side))


def _resize_crop(img, size: int, resample, crop: int | None = None):
    """Optionally one of the five crops, then resize the short side to ``size`` and take the
    centre ``size x size`` crop."""
    if crop is not None:
        img = _five_crop(img, crop)
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), resample)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_pair(image_path: Path, mask_path: Path | None, size: int, label_map: np.ndarray | None = None,
              crop: int | None = None, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """An image (ImageNet-normalized ``[3, size, size]``) and its mask (int64, -1: ignore).

    16-bit images are scaled from [0, 65535]. Mask ids go through ``label_map`` (an id beyond it
    is an error), or without one are classes ``0..num_classes-1`` with 255 as ignore (any other
    id is an error). A mask must have its image's size. Every error names the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_path) as im:
            im.load()
            image_size = im.size
            if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit grey: keep the range, not 8 bits of it
                grey = Image.fromarray(np.asarray(im, dtype=np.float32) / 65535, mode="F")
                img = np.asarray(_resize_crop(grey, size, Image.BILINEAR, crop), dtype=np.float32)
                img = np.repeat(img[..., None], 3, axis=2)
            else:
                img = np.asarray(_resize_crop(im.convert("RGB"), size, Image.BILINEAR, crop), dtype=np.float32) / 255
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ValueError(f"{image_path}: not a readable image ({e})") from None
    image = torch.from_numpy(np.ascontiguousarray((img.transpose(2, 0, 1) - IMAGENET_MEAN) / IMAGENET_STD))
    if mask_path is None:
        return image, torch.full((size, size), -1, dtype=torch.int64)
    try:
        with Image.open(mask_path) as m:
            if m.size != image_size:
                raise ValueError(f"{mask_path}: mask is {m.size[0]}x{m.size[1]} but its image {image_path.name} "
                                 f"is {image_size[0]}x{image_size[1]}")
            mask = np.asarray(_resize_crop(m, size, Image.NEAREST, crop)).astype(np.int64)
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"{mask_path}: not a readable mask ({e})") from None
    if mask.ndim == 3:
        mask = mask[..., 0]
    return image, torch.from_numpy(_mask_ids(mask, mask_path, label_map, num_classes))


def _mask_ids(mask: np.ndarray, path: Path, label_map: np.ndarray | None, num_classes: int | None) -> np.ndarray:
    if label_map is not None:
        if mask.size and (mask.min() < 0 or mask.max() >= len(label_map)):
            bad = mask[(mask < 0) | (mask >= len(label_map))][0]
            raise ValueError(f"{path}: mask id {bad} is outside the dataset's ids 0..{len(label_map) - 1}")
        return label_map[mask]
    mask = np.where(mask == 255, -1, mask)
    if num_classes is not None and mask.size and (mask.min() < -1 or mask.max() >= num_classes):
        bad = mask[(mask < -1) | (mask >= num_classes)][0]
        raise ValueError(f"{path}: mask id {bad} is not a class 0..{num_classes - 1} or 255 (ignore); "
                         "check data.num_classes")
    return mask


class ImageList(torch.utils.data.Dataset):
    """Images (and optional masks) from explicit path lists, resized and centre-cropped; with
    ``five_crop`` every image gives five items (four corners and the centre, half its side)."""

    def __init__(self, name: str, images: list[Path], masks: list[Path | None], size: int,
                 label_map: np.ndarray | None = None, five_crop: bool = False, num_classes: int | None = None):
        if not images:
            raise ValueError(f"{name}: no images found")
        self.name, self.images, self.masks, self.image_size, self.label_map = name, images, masks, size, label_map
        self.num_classes = num_classes
        self.crops = 5 if five_crop else 1

    def __len__(self) -> int:
        return len(self.images) * self.crops

    def files(self, items=None) -> list[Path]:
        """The image and mask files behind ``items`` (default: all), each once, in order."""
        images = range(len(self.images)) if items is None else dict.fromkeys(i // self.crops for i in items)
        return [p for i in images for p in (self.images[i], self.masks[i]) if p is not None]

    def classes(self, i: int) -> set[int]:
        """The classes in image ``i``'s mask at full resolution (reads the mask only)."""
        from PIL import Image

        path = self.masks[i // self.crops]
        if path is None:
            return set()
        with Image.open(path) as m:
            mask = np.asarray(m).astype(np.int64)
        mask = mask[..., 0] if mask.ndim == 3 else mask
        ids = _mask_ids(np.unique(mask), path, self.label_map, self.num_classes)
        return {int(c) for c in ids if c >= 0}

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"{self.name}: item {i} out of range ({len(self)})")
        image, crop = divmod(i, self.crops)
        return load_pair(self.images[image], self.masks[image], self.image_size, self.label_map,
                         crop if self.crops == 5 else None, self.num_classes)


def folder_federation(root: str | Path, size: int, eval_size: int | None = None, num_classes: int | None = None):
    """``ROOT/clients/<site>/images/*`` (+ ``masks/<stem>.png``, evaluation only) per site, and the
    shared evaluation set ``ROOT/val/images`` + ``ROOT/val/masks``; mask ids are ``0..num_classes-1``
    or 255 (ignore)."""
    root = Path(root)
    clients = root / "clients"
    if not clients.is_dir():
        raise FileNotFoundError(f"folder data: no directory {clients}")

    def listing(base: Path, name: str, s: int) -> ImageList:
        images = sorted(p for p in (base / "images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        masks = [base / "masks" / f"{p.stem}.png" for p in images]
        return ImageList(name, images, [m if m.is_file() else None for m in masks], s, num_classes=num_classes)

    sites = {d.name: listing(d, d.name, size) for d in sorted(clients.iterdir()) if d.is_dir()}
    if not sites:
        raise FileNotFoundError(f"folder data: no site directories in {clients}")
    return sites, listing(root / "val", "val", eval_size or size)


# Cityscapes labelId -> trainId (the 19 evaluated classes); every other labelId is ignored.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def cityscapes_label_map(num_classes: int) -> np.ndarray:
    """labelId -> class: 27 classes (labelId - 7, as STEGO/FUSS evaluate) or the 19 trainIds."""
    if num_classes == 27:
        table = np.arange(256, dtype=np.int64) - 7
        table[(table < 0) | (table > 26)] = -1
        return table
    if num_classes == 19:
        table = np.full(256, -1, dtype=np.int64)
        for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
            table[label_id] = train_id
        return table
    raise ValueError(f"cityscapes: num_classes must be 27 or 19, got {num_classes}")


def cityscapes27(root: str | Path, split: str, size: int, cities: list[str] | None = None,
                 five_crop: bool = False, num_classes: int = 27) -> ImageList:
    """Cityscapes ``leftImg8bit``/``gtFine`` layout; class = labelId - 7 (27 classes), or with
    ``num_classes=19`` the trainIds; the rest ignored."""
    root = Path(root)
    base = root / "leftImg8bit" / split
    if not base.is_dir():
        raise FileNotFoundError(f"cityscapes: no directory {base}")
    cities = cities or sorted(d.name for d in base.iterdir() if d.is_dir())
    images, masks = [], []
    for city in cities:
        for img in sorted((base / city).glob("*_leftImg8bit.png")):
            images.append(img)
            masks.append(root / "gtFine" / split / city / img.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"))
    return ImageList(f"cityscapes-{split}", images, [m if m.is_file() else None for m in masks], size,
                     cityscapes_label_map(num_classes), five_crop)


CITY_SPLITS = {"3x6": 3, "6x3": 6, "18x1": 18}


def cityscapes_sites(root: str | Path, scheme: str, size: int, five_crop: bool = False,
                     num_classes: int = 27) -> dict[str, ImageList]:
    """FUSS's Cityscapes splits of the 18 training cities: 3 sites x 6 cities, 6 x 3 or 18 x 1."""
    if scheme not in CITY_SPLITS:
        raise ValueError(f"cityscapes split must be one of {sorted(CITY_SPLITS)}, got {scheme!r}")
    cities = sorted(d.name for d in (Path(root) / "leftImg8bit" / "train").iterdir() if d.is_dir())
    n = CITY_SPLITS[scheme]
    groups = [cities[i::n] for i in range(n)]
    return {f"site{i}": cityscapes27(root, "train", size, g, five_crop, num_classes)
            for i, g in enumerate(groups) if g}


def cocostuff27(root: str | Path, split: str, size: int, five_crop: bool = False) -> ImageList:
    """COCO-Stuff with STEGO's curated image lists (``curated/<split>2017/Coco164kFull_Stuff_Coarse[_7].txt``;
    the validation list is the ``_7`` subset), fine labels mapped to the 27 coarse classes."""
    root = Path(root)
    split_dir = {"train": "train2017", "val": "val2017"}[split]
    name = "Coco164kFull_Stuff_Coarse.txt" if split == "train" else "Coco164kFull_Stuff_Coarse_7.txt"
    listing = root / "curated" / split_dir / name
    if not listing.is_file():
        raise FileNotFoundError(f"cocostuff27: no image list {listing}")
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    images = [root / "images" / split_dir / f"{i}.jpg" for i in ids]
    masks = [root / "annotations" / split_dir / f"{i}.png" for i in ids]
    return ImageList(f"cocostuff27-{split}", images, [m if m.is_file() else None for m in masks], size,
                     coco_fine_to_coarse(), five_crop)


def dirichlet_split(groups: np.ndarray, num_sites: int, alpha: float, seed: int = 0) -> list[np.ndarray]:
    """Image indices per site: the images of every group (e.g. an image's dominant class) are
    spread over the sites in Dirichlet(alpha) proportions; alpha -> infinity is IID."""
    rng = np.random.default_rng(seed)
    sites = [[] for _ in range(num_sites)]
    for g in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == g))
        cuts = (np.cumsum(rng.dirichlet(np.full(num_sites, float(alpha)))) * len(members)).astype(int)[:-1]
        for s, part in enumerate(np.split(members, cuts)):
            sites[s].extend(part.tolist())
    return [np.sort(np.array(s, dtype=np.int64)) for s in sites]


def erased_site_classes(num_sites: int, num_classes: int, classes_per_site: int) -> list[list[int]]:
    """The classes each site annotates in a class-erased split: ``classes_per_site`` consecutive
    classes per site, round robin, so ``num_sites * classes_per_site >= num_classes`` covers all."""
    if not 1 <= classes_per_site <= num_classes:
        raise ValueError(f"classes_per_site must be in [1, {num_classes}], got {classes_per_site}")
    return [sorted({(s * classes_per_site + j) % num_classes for j in range(classes_per_site)})
            for s in range(num_sites)]


def class_erased_split(image_classes: list[set[int]], site_classes: list[list[int]], seed: int = 0
                       ) -> list[np.ndarray]:
    """FedSeg's class-heterogeneous split: each image goes to one site, drawn uniformly among
    the sites that annotate a class the image contains (images no site annotates are left out).
    Returns the image indices of every site."""
    rng = np.random.default_rng(seed)
    sites = [[] for _ in site_classes]
    owners = [set(c) for c in site_classes]
    for i, classes in enumerate(image_classes):
        eligible = [s for s, own in enumerate(owners) if own & classes]
        if eligible:
            sites[eligible[int(rng.integers(len(eligible)))]].append(i)
    return [np.array(s, dtype=np.int64) for s in sites]


class Subset(torch.utils.data.Dataset):
    def __init__(self, name: str, dataset, indices):
        self.name, self.dataset, self.indices = name, dataset, [int(i) for i in indices]
        self.image_size = dataset.image_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]

    def files(self) -> list[Path]:
        return self.dataset.files(self.indices)
