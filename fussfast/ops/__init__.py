"""Public kernels. Each op takes torch tensors (or NumPy/DLPack arrays) on CPU or CUDA, supports
autograd where a gradient exists, and has a pure-torch reference selected by backend="reference"."""

from fussfast.ops.region_pool import region_pool, region_pool_reference

__all__ = ["region_pool", "region_pool_reference"]
