"""Exact polar factors by LAPACK-style decompositions: `svd` and `eigh`.

Both return U V^T of G = U S V^T to float32 round-off, drop the directions at or below
`rtol * max(S)`, and are differentiated by the polar factor's own derivative
(`polar_derivative`), finite at repeated singular values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from orthax._src.lapack_threads import each, map_matrices, single_thread_cpu_lapack
from orthax._src.polar_conventions import matmul, mT, prepare_exact, tall_by_platform
from orthax._src.polar_derivative import with_polar_derivative

Array = jax.Array

# Largest condition number for which the Gram route of `eigh` is trusted; beyond it `eigh` falls
# back to `svd` for that matrix (its error at this limit: benchmarks/results/design_figures.md).
EIGH_MAX_CONDITION = 50.0


def _svd_polar(x: Array, tol: float | Array, decompose: Callable, ok: Array) -> Array:
  """U V^T from `decompose` (a thin SVD), dropping directions at or below `tol * max(S)`; all
  NaN where `ok` is False."""
  u, s, vt = decompose(x)
  keep = s > tol * s[..., :1]
  mask = jnp.where(ok[..., None], keep.astype(vt.dtype), jnp.nan)
  return matmul(u, mask[..., :, None] * vt)  # Masks the small factor: no P x N kernel.


_thin_svd = functools.partial(jnp.linalg.svd, full_matrices=False)


def _traced(tol: Any) -> tuple[Array, ...]:
  """The tolerance as an operand of `with_polar_derivative` if it is an array (it may be traced),
  else nothing: a Python number stays a constant of the program."""
  return (tol,) if isinstance(tol, jax.Array) else ()


def svd(x: Array, *, rtol: float | Array | None = None, compute_dtype: Any = jnp.float32) -> Array:
  """Exact polar factor U V^T by singular value decomposition (the paper's method).

  Args:
    x: array of shape (..., P, N).
    rtol: singular values at or below `rtol * max(S)` are treated as zero and their directions
      dropped. `None` (default) drops only what round-off can explain, `default_rtol`: the
      numerical null space and, for data of low precision (bfloat16), what its rounding may
      have made; `0.0` keeps every direction with a nonzero singular value. A number in [0, 1),
      or an array (possibly traced; outside [0, 1) it makes the result NaN).
    compute_dtype: decompose in at least this dtype (and float32). The result has `x`'s dtype.

  Returns:
    An array like `x` whose matrices have orthonormal columns (P >= N) or rows (P < N) on the
    retained directions. `jax.jvp` and `jax.grad` through it give the polar factor's derivative
    (`orthax._src.polar_derivative`): finite at repeated singular values, and where directions
    are dropped the derivative of the truncated factor with their singular values taken as zero
    (zero for a zero matrix).
  """
  stack, ok, restore, tol = prepare_exact(x, "svd", compute_dtype, rtol)
  if not stack.size:
    return restore(stack)

  def polar(g: Array, ok: Array, *traced_tol: Array) -> Array:
    t = traced_tol[0] if traced_tol else tol
    # Each matrix's product U (mask V^T) inside the loop: one P x N write-back per matrix, not
    # U's, S's and V^T's.
    return map_matrices(lambda g, ok: _svd_polar(g, t, _thin_svd, ok), g, ok)

  return restore(with_polar_derivative(polar, stack, ok, *_traced(tol)))


def _gram_polar(g: Array, rtol: float | Array, ok: Array,
                decompose: Callable = jnp.linalg.eigh) -> tuple[Array, Array]:
  """Polar factor of tall (..., P, N) matrices from two eigendecompositions of N x N Grams.

  Pass 1: G^T G = V diag(lam) V^T. Pass 2: the columns of B = G V are orthogonal in exact
  arithmetic; normalising them (D = diag of their norms) keeps their directions to high relative
  accuracy, unlike scaling by lam^-1/2, and the polar factor of the normalised columns, again
  through a Gram eigendecomposition (of D^-1 B^T B D^-1, near the identity), removes their
  residual non-orthogonality. The result is B K for an N x N matrix K.

  Every step on a P x N matrix is a matrix product (G^T G, G V, B^T B, B K); the rest works on
  N x N matrices. That keeps compile time low: XLA's CPU backend compiles each distinct
  elementwise kernel separately, and kernels on N x N matrices are shared by every shape group
  with the same N.

  `decompose` is the symmetric eigendecomposition to use; where `ok` is False, K is NaN.

  Returns the polar factor and, per matrix, whether the Gram route is accurate for it (not where
  the Gram matrix overflows or is non-finite).
  """
  a = matmul(mT(g), g)
  lam, v = decompose(_finite(a))
  lam_max = lam[..., -1:]
  keep = lam > (rtol * rtol) * lam_max
  b = matmul(g, v)
  c = matmul(mT(b), b)
  norms = jnp.sqrt(jnp.diagonal(c, axis1=-2, axis2=-1))
  keep = keep & (norms > 0)
  d = jnp.where(keep, 1 / jnp.where(keep, norms, 1), 0)
  mu, w = decompose(d[..., :, None] * c * d[..., None, :])
  # Kept columns are unit vectors and nearly orthogonal, so mu is ~1 there and exactly 0 on the
  # dropped ones.
  inv_sqrt = jnp.where(mu > 0.5, jax.lax.rsqrt(jnp.where(mu > 0.5, mu, 1)), 0)
  k = matmul(matmul(d[..., :, None] * w * inv_sqrt[..., None, :], mT(w)), mT(v))
  k = jnp.where(ok[..., None, None], k, jnp.nan)
  # Every ill-conditioned direction is dropped anyway when rtol > 1 / EIGH_MAX_CONDITION (rtol
  # may be a traced array: optax.inject_hyperparams).
  well_conditioned = (lam >= lam_max / EIGH_MAX_CONDITION**2) | (rtol > 1 / EIGH_MAX_CONDITION)
  finite = jnp.isfinite(jnp.diagonal(a, axis1=-2, axis2=-1))
  accurate = jnp.all(well_conditioned & finite, axis=-1)
  return matmul(b, k), accurate



def _eigh_each(g: Array, tol: float | Array, ok: Array) -> Array:
  """CPU: one matrix at a time, the Gram route and, only where it is inaccurate, an SVD.

  Each matrix is its own LAPACK call on CPU anyway (see `_map_matrices`), so a `lax.cond` per
  matrix costs nothing, and an ill-conditioned matrix costs one SVD, not its whole stack's. The
  N x N kernels of a loop body are also shared by every shape group with the same N. `g` is
  finite (`prepare` hands every method finite matrices), so the SVD takes it as it is.
  """
  single_thread_cpu_lapack()

  def one(g: Array, ok: Array) -> Array:
    o, accurate = _gram_polar(g, tol, ok)
    return jax.lax.cond(accurate, lambda: o, lambda: _svd_polar(g, tol, _thin_svd, ok))

  return each(one, g, ok)


def _eigh_batched(g: Array, tol: float | Array, ok: Array) -> Array:
  """Other backends: the whole stack at once; where any matrix is inaccurate, one SVD of the
  stack replaces those matrices (a `lax.cond` under `vmap` would run both routes always)."""
  o, accurate = _gram_polar(g, tol, ok)

  def fix():
    exact = _svd_polar(g, tol, jax.vmap(_thin_svd), ok)
    return jnp.where(accurate[:, None, None], o, exact)

  return jax.lax.cond(jnp.all(accurate), lambda: o, fix)


def _finite(x: Array) -> Array:
  """`x` with non-finite entries zeroed: LAPACK is never handed them (`prepare` makes such a
  matrix's result NaN)."""
  return jnp.where(jnp.isfinite(x), x, 0)


def eigh(x: Array, *, rtol: float | Array | None = None, compute_dtype: Any = jnp.float32) -> Array:
  """Exact polar factor from eigendecompositions of the small Gram matrix.

  Why: on CPU two symmetric eigendecompositions of N x N Gram matrices plus a few matrix products
  can take a fraction of the time of an SVD of a tall P x N matrix, though not at square shapes
  (benchmarks/results/matrix_methods.md). Squaring the matrix squares its
  condition number, so the Gram route is used only where it is accurate (condition number up to
  `EIGH_MAX_CONDITION`, or every ill-conditioned direction below `rtol`); every other matrix is
  decomposed by `svd` instead, in the same call. On CPU that costs one SVD per such matrix; on
  other backends one SVD of the stack, when it holds any such matrix.

  Args:
    x: array of shape (..., P, N).
    rtol: as in `svd`.
    compute_dtype: as in `svd`.

  Returns:
    The polar factor, equal to `svd(x, rtol=rtol)` to float32 precision, with `svd`'s derivative.
  """
  stack, ok, restore, tol = prepare_exact(x, "eigh", compute_dtype, rtol)
  if not stack.size:
    return restore(stack)

  def polar(x: Array, ok: Array, *traced_tol: Array) -> Array:
    t = traced_tol[0] if traced_tol else tol
    return tall_by_platform(x, cpu=functools.partial(_eigh_each, tol=t, ok=ok),
                            default=functools.partial(_eigh_batched, tol=t, ok=ok))

  return restore(with_polar_derivative(polar, stack, ok, *_traced(tol)))
