"""Ready masks for `orthax.orthogonalise_components(mask=...)`."""

from orthax._src.masks import conv_kernels as conv_kernels
from orthax._src.masks import exclude as exclude
from orthax._src.masks import kernels as kernels
from orthax._src.transformer_masks import hidden_matrices as hidden_matrices

__all__ = ["conv_kernels", "exclude", "hidden_matrices", "kernels"]
