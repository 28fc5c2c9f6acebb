"""Exact polar factor by the QR-based dynamically weighted Halley iteration (QDWH).

Each step is X <- X (a I + b X^T X)(I + c X^T X)^-1 with weights (a, b, c) chosen for the current
lower bound l on the singular values of X (scaled so that they lie in [l, 1]); six steps take
l = float32's eps to 1 (Nakatsukasa, Bai and Gygi). While c is large the step is formed from a QR
factorisation of [sqrt(c) X; I], which is backward stable; afterwards from a Cholesky
factorisation of I + c X^T X, which needs only the N x N matrix. Everything else is matrix
products, so a stack of matrices is one batched program, with no loop over its matrices, on
every backend but CPU (where, as for the other exact methods, each matrix is its own LAPACK call).

The weights depend only on the starting bound, which is fixed before tracing: the number of
steps is static, so there is no data-dependent loop either.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from orthax._src.lapack_threads import each, single_thread_cpu_lapack
from orthax._src.polar_conventions import mT, prepare_exact, tall_by_platform
from orthax._src.polar_derivative import with_polar_derivative

Array = jax.Array

# A step is formed from a QR factorisation while its weight c exceeds this (Nakatsukasa and
# Higham's choice): the Cholesky form's error grows with c.
CHOLESKY_MAX_WEIGHT = 100.0


@functools.cache
def qdwh_weights(lower: float, eps: float) -> tuple[tuple[float, float, float], ...]:
  """The dynamically weighted Halley weights (a, b, c) that take singular values in [lower, 1]
  to within `eps` of 1, one triple per step, in float64."""
  steps: list[tuple[float, float, float]] = []
  low = lower
  while low < 1 - eps and len(steps) < 20:
    l2 = low * low
    d = (4 * (1 - l2) / (l2 * l2)) ** (1 / 3)
    a = math.sqrt(1 + d) + math.sqrt(8 - 4 * d + 8 * (2 - l2) / (l2 * math.sqrt(1 + d))) / 2
    b = (a - 1) ** 2 / 4
    c = a + b - 1
    steps.append((a, b, c))
    low = min(1.0, low * (a + b * l2) / (1 + c * l2))
  return tuple(steps)


def _qr_step(x: Array, a: float, b: float, c: float) -> Array:
  """X (a I + b X^T X)(I + c X^T X)^-1 = (b / c) X + (a - b / c) Q1 Q2^T, [sqrt(c) X; I] = Q R."""
  n = x.shape[-1]
  q, _ = jnp.linalg.qr(jnp.concatenate([math.sqrt(c) * x, jnp.eye(n, dtype=x.dtype)], axis=-2))
  q1, q2 = q[..., :-n, :], q[..., -n:, :]
  return (b / c) * x + ((a - b / c) / math.sqrt(c)) * (q1 @ mT(q2))


def _cholesky_step(x: Array, a: float, b: float, c: float) -> Array:
  """The same step through the Cholesky factor L of I + c X^T X: X (L L^T)^-1 by two solves."""
  n = x.shape[-1]
  chol = jnp.linalg.cholesky(c * (mT(x) @ x) + jnp.eye(n, dtype=x.dtype))
  z = jax.lax.linalg.triangular_solve(chol, x, left_side=False, lower=True, transpose_a=True)
  z = jax.lax.linalg.triangular_solve(chol, z, left_side=False, lower=True)
  return (b / c) * x + (a - b / c) * z


def _iterate(g: Array, lower: float) -> Array:
  """The QDWH polar factor of a tall P x N matrix `g` (finite), all of whose singular values
  above `lower * ||g||_F` converge; a zero matrix gives zero."""
  norm = jnp.linalg.norm(g)
  x = g / jnp.where(norm > 0, norm, 1)  # Singular values in [0, 1].
  eps = float(jnp.finfo(g.dtype).eps)
  for a, b, c in qdwh_weights(lower, eps):
    x = (_qr_step if c > CHOLESKY_MAX_WEIGHT else _cholesky_step)(x, a, b, c)
  return x


def _projector(x: Array, g: Array, tol: Any) -> Array:
  """W_K W_K^T, W_K the eigenvectors of H = X^T G (X the iterate, G's polar factor on the kept
  directions) whose eigenvalues, G's singular values, are above `tol` times the largest."""
  h = mT(x) @ g
  lam, w = jnp.linalg.eigh((h + mT(h)) / 2)
  keep = (lam > tol * lam[..., -1:]).astype(x.dtype)
  return (w * keep[..., None, :]) @ mT(w)


def _needs_drop(x: Array, g: Array, tol: Any) -> Array:
  """Whether H = X^T G may have an eigenvalue at or below `tol * max(S)` (a zero matrix has
  nothing to drop): unless H's Cholesky factorisation after a shift by `tol * ||H||_F` (at least
  `tol * max(S)`) succeeds."""
  h = mT(x) @ g
  h = (h + mT(h)) / 2
  size = jnp.linalg.norm(h, axis=(-2, -1), keepdims=True)
  chol = jnp.linalg.cholesky(h - tol * size * jnp.eye(h.shape[-1], dtype=h.dtype))
  return ~jnp.all(jnp.isfinite(chol), axis=(-2, -1)) & (size[..., 0, 0] > 0)


def _refined(o: Array, ok: Array) -> Array:
  """One Newton-Schulz refinement O (3 I - O^T O) / 2, its small factor NaN where not `ok`."""
  n = o.shape[-1]
  k = 1.5 * jnp.eye(n, dtype=o.dtype) - 0.5 * (mT(o) @ o)
  return o @ (k * jnp.where(ok, 1, jnp.nan).astype(o.dtype)[..., None, None])


def _qdwh_each(g: Array, tol: Any, ok: Array, lower: float) -> Array:
  """CPU: one matrix at a time; only a matrix with directions to drop is eigendecomposed."""
  single_thread_cpu_lapack()

  def one(g: Array, ok: Array) -> Array:
    x = _iterate(g, lower)
    return jax.lax.cond(_needs_drop(x, g, tol),
                        lambda: _refined(x @ _projector(x, g, tol), ok),
                        lambda: _refined(x, ok))

  return each(one, g, ok)


def _qdwh_batched(g: Array, tol: Any, ok: Array, lower: float) -> Array:
  """Other backends: the whole stack at once; the eigendecompositions only when a matrix of the
  stack has directions to drop (a `lax.cond` under `vmap` would run both branches always)."""
  x = jax.vmap(functools.partial(_iterate, lower=lower))(g)
  return jax.lax.cond(jnp.any(_needs_drop(x, g, tol)),
                      lambda: _refined(x @ _projector(x, g, tol), ok),
                      lambda: _refined(x, ok))


def qdwh(x: Array, *, rtol: float | Array | None = None, compute_dtype: Any = jnp.float32) -> Array:
  """Exact polar factor by the QDWH iteration: matrix products and batched factorisations.

  The same polar factor as `svd`, with its conventions and derivative, computed without an SVD:
  a fixed number of QR- and Cholesky-based steps, then, only for a stack in which some matrix
  has directions at or below the tolerance, a small symmetric eigendecomposition of H = O^T G
  (whose eigenvalues are G's singular values) to drop them. The iteration converges for singular
  values above sqrt(min(P, N)) eps max(S), so `rtol` below that (such as 0.0) acts as that.

  Args:
    x: array of shape (..., P, N).
    rtol: as in `svd`.
    compute_dtype: as in `svd`.

  Returns:
    The polar factor, equal to `svd(x, rtol=rtol)` to float32 precision, with `svd`'s derivative.

  References:
    Nakatsukasa, Bai, Gygi, `Optimizing Halley's iteration for computing the matrix polar
    decomposition <https://doi.org/10.1137/090774999>`_, 2010
  """
  stack, ok, restore, tol = prepare_exact(x, "qdwh", compute_dtype, rtol)
  if not stack.size:
    return restore(stack)
  k = min(stack.shape[-2:])
  eps = float(jnp.finfo(stack.dtype).eps)
  floor = math.sqrt(k) * eps
  # The singular values kept are above tol * max(S) >= tol * ||G||_F / sqrt(k).
  lower = max(floor, float(tol) if isinstance(tol, (int, float)) else 0.0) / math.sqrt(k)
  tol = jnp.maximum(tol, floor) if isinstance(tol, jax.Array) else max(tol, floor)

  def polar(x: Array, ok: Array, *traced_tol: Array) -> Array:
    t = traced_tol[0] if traced_tol else tol
    return tall_by_platform(x, cpu=functools.partial(_qdwh_each, tol=t, ok=ok, lower=lower),
                            default=functools.partial(_qdwh_batched, tol=t, ok=ok, lower=lower))

  return restore(with_polar_derivative(polar, stack, ok, *((tol,) if isinstance(tol, jax.Array)
                                                           else ())))

