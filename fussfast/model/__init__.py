"""Models: the cluster probe (the frozen backbone and segmentation head follow)."""

from fussfast.model.probe import ClusterProbe

__all__ = ["ClusterProbe"]
