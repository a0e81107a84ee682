"""Models: the frozen DINO backbone, the segmentation head, kNN positives, the cluster probe."""

from fussfast.model.backbone import BACKBONES, FrozenBackbone, load_weights
from fussfast.model.head import SegmentationHead, draw_positives, knn_table
from fussfast.model.probe import ClusterProbe

__all__ = ["BACKBONES", "ClusterProbe", "FrozenBackbone", "SegmentationHead", "draw_positives", "knn_table",
           "load_weights"]
