"""Public kernels. Each op takes torch tensors (or NumPy/DLPack arrays) on CPU or CUDA, supports
autograd where a gradient exists, and has a pure-torch reference selected by backend="reference"."""

from fussfast.ops.back_ce import back_ce, back_ce_reference
from fussfast.ops.cluster import cluster_assign, cluster_assign_reference, cluster_labels
from fussfast.ops.correlation import correlation_loss, correlation_loss_reference
from fussfast.ops.kmeans import KMeansResult, kmeans, kmeans_reference
from fussfast.ops.maximin import maximin, maximin_reference
from fussfast.ops.region_pool import region_pool, region_pool_reference

__all__ = [
    "back_ce",
    "back_ce_reference",
    "cluster_assign",
    "cluster_assign_reference",
    "cluster_labels",
    "correlation_loss",
    "correlation_loss_reference",
    "KMeansResult",
    "kmeans",
    "kmeans_reference",
    "maximin",
    "maximin_reference",
    "region_pool",
    "region_pool_reference",
]
