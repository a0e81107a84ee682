"""Public kernels. Each op takes torch tensors (or NumPy/DLPack arrays) on CPU or CUDA, supports
autograd where a gradient exists, and has a pure-torch reference (fussfast.ops.reference, also
exported as ``<op>_reference``) selected by backend="reference"."""

from fussfast.ops.back_ce import back_ce
from fussfast.ops.bilinear_sample import bilinear_sample
from fussfast.ops.cluster import cluster_assign, cluster_labels
from fussfast.ops.correlation import correlation_loss
from fussfast.ops.kmeans import KMeansResult, kmeans
from fussfast.ops.maximin import maximin
from fussfast.ops.reference import back_ce as back_ce_reference
from fussfast.ops.reference import bilinear_sample as bilinear_sample_reference
from fussfast.ops.reference import cluster_assign as cluster_assign_reference
from fussfast.ops.reference import correlation_loss as correlation_loss_reference
from fussfast.ops.reference import kmeans as kmeans_reference
from fussfast.ops.reference import maximin as maximin_reference
from fussfast.ops.reference import region_pool as region_pool_reference
from fussfast.ops.region_pool import region_pool

__all__ = [
    "back_ce",
    "back_ce_reference",
    "bilinear_sample",
    "bilinear_sample_reference",
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
