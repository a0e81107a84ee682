"""Built-in synthetic data: textured scenes with exact masks, split into label-skewed sites.

Numpy only and deterministic: image ``i`` of a site is a pure function of (seed, site, i).
Each class has its own colour and stripe texture (orientation and frequency); a scene is a
Voronoi partition of the image into a few regions, each region one class. Sites draw their
regions' classes from their own class distribution (Dirichlet(alpha) over the classes, or an
explicit list), so the federation sees label skew as in FUSS's non-IID splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)[:, None, None]
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)[:, None, None]


def class_textures(num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Colour, stripe angle and stripe frequency of every class (distinct and deterministic)."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(num_classes) / num_classes + rng.uniform(0, 1 / num_classes)) % 1.0
    colors = np.stack([0.5 + 0.4 * np.cos(2 * np.pi * (hues + s)) for s in (0, 1 / 3, 2 / 3)], 1)
    angles = rng.permutation(num_classes) * np.pi / num_classes
    freqs = 0.15 + 0.35 * rng.permutation(num_classes) / max(num_classes - 1, 1)
    return {"colors": colors.astype(np.float32), "angles": angles, "freqs": freqs}


def render_scene(rng: np.random.Generator, textures: dict, class_probs: np.ndarray, size: int,
                 regions: tuple[int, int] = (3, 7)) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image [3, size, size] float32 in [0, 1], mask [size, size] int64)``."""
    n = int(rng.integers(regions[0], regions[1] + 1))
    seeds = rng.uniform(0, size, (n, 2))
    labels = rng.choice(len(class_probs), size=n, p=class_probs)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    nearest = ((yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2).argmin(0)
    mask = labels[nearest]
    angle, freq = textures["angles"][mask], textures["freqs"][mask]
    stripes = 0.5 + 0.5 * np.sin(freq * 2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)))
    image = textures["colors"][mask].transpose(2, 0, 1) * (0.6 + 0.4 * stripes[None])
    image += rng.normal(0, 0.03, image.shape)
    return np.clip(image, 0, 1).astype(np.float32), mask.astype(np.int64)


@dataclass
class SyntheticSite(torch.utils.data.Dataset):
    """A site's images: ``dataset[i] -> (image [3, S, S] ImageNet-normalized float32, mask [S, S])``."""

    name: str
    class_probs: np.ndarray
    num_images: int
    image_size: int = 64
    seed: int = 0
    num_classes: int = 6

    def __post_init__(self):
        self.textures = class_textures(self.num_classes, self.seed)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.num_images:
            raise IndexError(f"{self.name}: image {i} out of range ({self.num_images})")
        site_key = int.from_bytes(self.name.encode()[:8].ljust(8, b"\0"), "little")
        rng = np.random.default_rng([self.seed, site_key, i])
        image, mask = render_scene(rng, self.textures, self.class_probs, self.image_size)
        return torch.from_numpy((image - IMAGENET_MEAN) / IMAGENET_STD), torch.from_numpy(mask)


def synthetic_federation(num_sites: int = 3, num_classes: int = 6, images_per_site: int = 64, *,
                         alpha: float | None = 0.5, site_classes: list[list[int]] | None = None,
                         class_probs: list[np.ndarray] | None = None,
                         eval_images: int = 32, image_size: int = 64, seed: int = 0
                         ) -> tuple[dict[str, SyntheticSite], SyntheticSite]:
    """Label-skewed sites and a shared evaluation set with every class.

    ``class_probs`` gives each site's class distribution; ``site_classes`` gives each site its
    classes (uniform among them); otherwise each site's class distribution is Dirichlet(``alpha``)
    (``alpha=None``: IID, uniform everywhere).
    """
    if num_sites < 1 or num_classes < 1 or images_per_site < 1:
        raise ValueError("synthetic_federation: num_sites, num_classes and images_per_site must be >= 1")
    rng = np.random.default_rng(seed)
    probs = []
    for s in range(num_sites):
        if class_probs is not None:
            p = np.asarray(class_probs[s], dtype=np.float64)
        elif site_classes is not None:
            p = np.zeros(num_classes)
            p[site_classes[s]] = 1.0
        elif alpha is None:
            p = np.ones(num_classes)
        else:
            p = rng.dirichlet(np.full(num_classes, float(alpha)))
        probs.append(p / p.sum())
    common = dict(image_size=image_size, seed=seed, num_classes=num_classes)
    sites = {f"site{s}": SyntheticSite(f"site{s}", probs[s], images_per_site, **common) for s in range(num_sites)}
    evaluation = SyntheticSite("eval", np.full(num_classes, 1.0 / num_classes), eval_images, **common)
    return sites, evaluation
