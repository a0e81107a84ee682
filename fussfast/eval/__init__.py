"""Evaluation: mIoU and accuracy, Hungarian-matched (unsupervised) or by class identity (supervised)."""

from fussfast.eval.metrics import Scores, confusion_matrix, hungarian_scores, identity_scores, scores

__all__ = ["Scores", "confusion_matrix", "hungarian_scores", "identity_scores", "scores"]
