"""Deprecated: ``fussfast.pipeline`` was split into ``fussfast.features`` (``FeatureSet``,
``extract``, ``weights_digest``) and ``fussfast.tasks`` (``SiteModel``, ``SupervisedModel``).
This alias goes away in 0.3."""

import warnings

from fussfast.features import FeatureSet, extract, weights_digest
from fussfast.tasks import SiteModel, SupervisedModel

warnings.warn("fussfast.pipeline is deprecated: import FeatureSet, extract and weights_digest from "
              "fussfast.features, SiteModel and SupervisedModel from fussfast.tasks", DeprecationWarning, stacklevel=2)

__all__ = ["FeatureSet", "SiteModel", "SupervisedModel", "extract", "weights_digest"]
