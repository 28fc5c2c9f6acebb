"""Polar factors of (..., P, N) arrays: the matrix methods behind orthax's transformations."""

from orthax._src.polar import eigh as eigh
from orthax._src.polar import newton_schulz as newton_schulz
from orthax._src.polar import polar_express as polar_express
from orthax._src.polar import polar_express_coefficients as polar_express_coefficients
from orthax._src.polar import svd as svd
from orthax._src.transform import auto as auto

__all__ = ["auto", "eigh", "newton_schulz", "polar_express", "polar_express_coefficients", "svd"]
