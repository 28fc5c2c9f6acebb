"""Ready masks for `orthax.orthogonalise_components(mask=...)`."""

from orthax._src.masks import conv_kernels as conv_kernels
from orthax._src.masks import exclude as exclude
from orthax._src.masks import kernels as kernels

__all__ = ["conv_kernels", "exclude", "kernels"]
