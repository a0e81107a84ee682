"""Evaluation: Hungarian-matched mIoU and accuracy (per-client and global reports follow)."""

from fussfast.eval.metrics import Scores, confusion_matrix, hungarian_scores

__all__ = ["Scores", "confusion_matrix", "hungarian_scores"]
