"""The paper's diagnostics of components: cosine similarity, dead parameters, orthogonality."""

from orthax._src.diagnostics import component_cosine as component_cosine
from orthax._src.diagnostics import cosine_significance_threshold as cosine_significance_threshold
from orthax._src.diagnostics import dead_parameters as dead_parameters
from orthax._src.diagnostics import orthogonality_error as orthogonality_error

__all__ = [
    "component_cosine",
    "cosine_significance_threshold",
    "dead_parameters",
    "orthogonality_error",
]
