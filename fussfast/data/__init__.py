"""Datasets and federated splits: the built-in synthetic scenes, image folders, Cityscapes-27
and COCO-Stuff-27."""

from fussfast.data.datasets import (CITY_SPLITS, ImageList, cityscapes27, cityscapes_sites, cocostuff27,
                                    dirichlet_split, folder_federation)
from fussfast.data.synthetic import SyntheticSite, synthetic_federation

DATA_KINDS = ("synthetic", "folder", "cityscapes", "cocostuff27")
CROPS = ("center", "five")  # training images: resize + centre crop, or five-crop

__all__ = ["CITY_SPLITS", "CROPS", "DATA_KINDS", "ImageList", "SyntheticSite", "cityscapes27", "cityscapes_sites",
           "cocostuff27", "dirichlet_split", "folder_federation", "synthetic_federation"]
