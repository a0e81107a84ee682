"""The two tasks' local models: ``SiteModel`` (unsupervised, FUSS) and ``SupervisedModel``
(supervised, FedSeg). Both train on cached features and score themselves."""

from fussfast.tasks.base import LocalModel
from fussfast.tasks.supervised import OBJECTIVES, SupervisedModel
from fussfast.tasks.unsupervised import ACTIVE, SiteModel

TASKS = ("unsupervised", "supervised")

__all__ = ["ACTIVE", "LocalModel", "OBJECTIVES", "SiteModel", "SupervisedModel", "TASKS"]
