"""Polar factors of (..., P, N) arrays: the matrix methods behind orthax's transformations.

Each method is a pure function; with its options bound (`functools.partial(orthax.polar.svd,
rtol=1e-2)`) it is a `method=` for `orthax.orthogonalise_components`.
"""

from orthax._src.polar import AUTO_RULES as AUTO_RULES
from orthax._src.polar import AutoRule as AutoRule
from orthax._src.polar import Measured as Measured
from orthax._src.polar import Modelled as Modelled
from orthax._src.polar import auto as auto
from orthax._src.polar import default_rtol as default_rtol
from orthax._src.polar import eigh as eigh
from orthax._src.polar import newton_schulz as newton_schulz
from orthax._src.polar import polar_express as polar_express
from orthax._src.polar import polar_express_coefficients as polar_express_coefficients
from orthax._src.polar import qdwh as qdwh
from orthax._src.polar import single_thread_cpu_lapack as single_thread_cpu_lapack
from orthax._src.polar import svd as svd

__all__ = [
    "AUTO_RULES",
    "AutoRule",
    "Measured",
    "Modelled",
    "auto",
    "default_rtol",
    "eigh",
    "newton_schulz",
    "polar_express",
    "polar_express_coefficients",
    "qdwh",
    "single_thread_cpu_lapack",
    "svd",
]
