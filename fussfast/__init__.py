"""fussfast: fast kernels for federated unsupervised semantic segmentation."""

from fussfast._info import build_info, cuda_available
from fussfast import ops

__all__ = ["build_info", "cuda_available", "ops", "__version__"]
__version__ = build_info()["version"]
