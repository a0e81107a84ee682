"""Datasets and federated splits: the built-in synthetic scenes, image folders, Cityscapes-27
and COCO-Stuff-27."""

from fussfast.data.datasets import (ImageList, cityscapes27, cityscapes_sites, cocostuff27, dirichlet_split,
                                    folder_federation)
from fussfast.data.synthetic import SyntheticSite, synthetic_federation

__all__ = ["ImageList", "SyntheticSite", "cityscapes27", "cityscapes_sites", "cocostuff27", "dirichlet_split",
           "folder_federation", "synthetic_federation"]
