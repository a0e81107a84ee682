"""Models: the frozen backbone (DINO, DINOv2, SAM) and its LoRA adapters, the segmentation heads,
kNN positives, the cluster probe."""

from fussfast.model.backbone import (BACKBONES, PRECISIONS, FrozenBackbone, load_weights, patch_size_of,
                                     resolve_head_precision, resolve_precision)
from fussfast.model.head import KNN_WIDTH, SegmentationHead, SupervisedHead, draw_positives, knn_table
from fussfast.model.lora import LORA_TARGETS, LoRA
from fussfast.model.probe import ClusterProbe

__all__ = ["BACKBONES", "KNN_WIDTH", "LORA_TARGETS", "PRECISIONS", "ClusterProbe", "FrozenBackbone", "LoRA",
           "SegmentationHead", "SupervisedHead", "draw_positives", "knn_table", "load_weights", "patch_size_of",
           "resolve_head_precision", "resolve_precision"]
