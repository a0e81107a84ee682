"""Datasets and federated splits (the built-in synthetic data; Cityscapes, COCO-Stuff and image
folders follow)."""

from fussfast.data.synthetic import SyntheticSite, synthetic_federation

__all__ = ["SyntheticSite", "synthetic_federation"]
