"""Polar factors of stacks of matrices: the methods by name, and `auto`'s choice among them.

The polar factor of G = U S V^T (thin SVD) is O = U V^T, the (semi-)orthonormal matrix nearest to
G in Frobenius norm. Exact methods (`svd`, `eigh`, `qdwh`) return it to float32 round-off;
approximate ones (`newton_schulz`, `polar_express`) return U f(S) V^T for an odd polynomial f
that pushes the singular values towards 1 using only matrix products. Every method is a pure
function from (..., P, N) to (..., P, N) that starts with the same preparation
(`polar_conventions.prepare`).

Modules: `polar_conventions` (checks, dtype, scaling, non-finite matrices, `rtol`),
`polar_exact` (`svd`, `eigh`), `polar_qdwh` (`qdwh`), `polar_derivative` (the exact methods'
derivative), `polar_iterative` (`newton_schulz`, `polar_express`), `lapack_threads` (CPU LAPACK
threading).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from orthax._src.lapack_threads import single_thread_cpu_lapack as single_thread_cpu_lapack
from orthax._src.polar_conventions import check_rtol as check_rtol
from orthax._src.polar_conventions import check_steps as check_steps
from orthax._src.polar_conventions import default_rtol as default_rtol
from orthax._src.polar_conventions import scale_to_unit as scale_to_unit
from orthax._src.polar_exact import eigh as eigh
from orthax._src.polar_exact import svd as svd
from orthax._src.polar_iterative import newton_schulz as newton_schulz
from orthax._src.polar_iterative import polar_express as polar_express
from orthax._src.polar_iterative import polar_express_coefficients as polar_express_coefficients
from orthax._src.polar_qdwh import qdwh as qdwh

Array = jax.Array


class Measured(NamedTuple):
  """Where a rule comes from a measurement: the device, the date and the command that made it."""

  device: str
  date: str
  command: str
  results: str  # The file under benchmarks/results/ that holds the figures.


class Modelled(NamedTuple):
  """Where a rule comes from reasoning, not a measurement on the backend: the reasoning."""

  reasoning: str


class AutoRule(NamedTuple):
  """`auto`'s choice on one backend, and its source (`Measured` or `Modelled`)."""

  method: str  # The exact method (`svd`, `qdwh`) for shapes below `eigh_aspect`.
  eigh_aspect: float  # `eigh` when max(P, N) / min(P, N) is at least this (inf: never).
  source: Measured | Modelled


_BATCHED = Modelled(
    "qdwh: the exact route that lowers to one batched program per shape group, Cholesky steps, "
    "triangular solves and products at HIGHEST precision, and the drop step's eigh, with no SVD "
    "and no QR (cuda: potrf and syevd, both batched on cuSOLVER >= 11.7.1; tpu: no SVD's QDWH "
    "plus eigh), and as close to float64 U V^T as svd or closer on every family tested; not yet "
    "timed on a device (benchmarks/results/qdwh.md)")
_UNEXAMINED = Modelled(
    "svd: exact at every shape with no conditioning limit; this backend's solver calls have not "
    "been examined for qdwh (benchmarks/results/qdwh.md)")

AUTO_RULES: dict[str, AutoRule] = {
    "cpu": AutoRule("svd", 2.0, Measured(
        device="x86_64, 2 cores, jax 0.10.2", date="2026-11-28",
        command="python -m benchmarks.suite", results="benchmarks/results/matrix_methods.md")),
    "cuda": AutoRule("qdwh", math.inf, _BATCHED),
    "rocm": AutoRule("svd", math.inf, _UNEXAMINED),
    "tpu": AutoRule("qdwh", math.inf, _BATCHED),
}
"""`auto`'s rule per backend (JAX platform name), each with its source.

A backend without a row gets `svd` for every shape: exact, with no conditioning limit and no
fallback, so it never pays for a second decomposition. Measure with `python -m benchmarks.suite`
and add or change a row to change that.
"""


def auto(x: Array, *, rtol: Any = None, compute_dtype: Any = jnp.float32) -> Array:
  """The fast exact polar factor for this backend and shape: `eigh`, `svd` or `qdwh`.

  Chosen per platform at lowering time from `AUTO_RULES` and per shape at trace time: `eigh`
  when the matrix is at least `AUTO_RULES[platform].eigh_aspect` times longer than it is wide,
  else the rule's `method`; `svd` on a platform without a rule.

  Args:
    x: array of shape (..., P, N).
    rtol: as in `svd`.
    compute_dtype: as in `svd`.
  """
  ratio = max(x.shape[-2:]) / max(1, min(x.shape[-2:]))
  # One callable per method: `lax.platform_dependent` traces each distinct callable, and joins
  # platforms that share one.
  methods = {name: functools.partial(EXACT[name], rtol=rtol, compute_dtype=compute_dtype)
             for name in EXACT}

  def pick(method: str, eigh_aspect: float) -> Callable[[Array], Array]:
    return methods["eigh" if ratio >= eigh_aspect else method]

  per_platform = {platform: pick(rule.method, rule.eigh_aspect)
                  for platform, rule in AUTO_RULES.items()}
  return jax.lax.platform_dependent(x, default=pick("svd", math.inf), **per_platform)


EXACT: dict[str, Callable[..., Array]] = {"svd": svd, "eigh": eigh, "qdwh": qdwh}


METHODS: dict[str, Callable[..., Array]] = {
    "auto": auto,
    "svd": svd,
    "eigh": eigh,
    "qdwh": qdwh,
    "newton_schulz": newton_schulz,
    "polar_express": polar_express,
}
