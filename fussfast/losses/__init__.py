"""Training objectives built on fussfast.ops: STEGO's correspondence loss (FUSS), FedSeg's
pixel-to-region contrast, and the client terms of MOON and distillation."""

from fussfast.losses.client_terms import DISTILL_KINDS, code_distill, moon_contrast
from fussfast.losses.correspondence import (PRESETS, CorrespondenceConfig, CorrespondenceLoss, CorrespondenceOutput,
                                            SamplePoints, derangement)
from fussfast.losses.region_contrast import RegionContrast, RegionMemory, balanced_anchors, labels_at

__all__ = ["DISTILL_KINDS", "PRESETS", "CorrespondenceConfig", "CorrespondenceLoss", "CorrespondenceOutput",
           "RegionContrast", "RegionMemory", "SamplePoints", "balanced_anchors", "code_distill", "derangement",
           "labels_at", "moon_contrast"]
