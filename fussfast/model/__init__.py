"""Models: the frozen DINO backbone, the segmentation heads, kNN positives, the cluster probe."""

from fussfast.model.backbone import (BACKBONES, PRECISIONS, FrozenBackbone, load_weights, resolve_head_precision,
                                     resolve_precision)
from fussfast.model.head import KNN_WIDTH, SegmentationHead, SupervisedHead, draw_positives, knn_table
from fussfast.model.probe import ClusterProbe

__all__ = ["BACKBONES", "KNN_WIDTH", "PRECISIONS", "ClusterProbe", "FrozenBackbone", "SegmentationHead",
           "SupervisedHead", "draw_positives", "knn_table", "load_weights", "resolve_head_precision",
           "resolve_precision"]
