"""Evaluation: mIoU, Dice and accuracy, Hungarian-matched (unsupervised) or by class identity
(supervised); dense CRF refinement of the predictions (``DenseCRF``)."""

from fussfast.eval.crf import DenseCRF
from fussfast.eval.metrics import (Scores, confusion_matrix, hungarian_scores, identity_scores, mean_scores,
                                   scores)

__all__ = ["DenseCRF", "Scores", "confusion_matrix", "hungarian_scores", "identity_scores", "mean_scores", "scores"]
