"""Exact polar factor by the dynamically weighted Halley iteration (QDWH), Cholesky steps only.

Each step is X <- X (a I + b X^T X)(I + c X^T X)^-1 with weights (a, b, c) chosen for a lower
bound l on the singular values of X, scaled so that they lie in [l, 1] (Nakatsukasa, Bai and
Gygi). Every step is formed from the Cholesky factorisation of I + c X^T X, which needs only the
N x N matrix, and two triangular solves; everything else is matrix products. So a stack of
matrices is one batched program on every backend but CPU (where, as for the other exact methods,
each matrix is its own LAPACK call), with no QR factorisation (which GPU solver libraries may run
one matrix at a time: benchmarks/results/qdwh.md).

Why the weight c is capped (`CHOLESKY_MAX_WEIGHT`): the step's scalar map
x (a + b x^2) / (1 + c x^2) takes [0, 1] into [0, 1], so the singular values of every iterate
stay in [0, 1], and I + c X^T X has its eigenvalues in [1, 1 + c]: its condition number is at
most 1 + c. The Cholesky factorisation and the solves then err by at most about (1 + c) times a
backward-stable step's round-off, a fixed factor when c is bounded. The optimal weights for a
small bound have c growing like l^(-4/3) (above 10^9 at float32's eps), which is why QDWH starts
with QR-based steps; here a step whose optimal c exceeds the cap takes instead the weights of
the smallest larger bound whose c is at the cap (`capped_weights`). Those weights still take
every singular value in [l, 1] to [f(l), 1], growing small ones by about a factor a per step,
so float32's eps reaches 1 in eight steps instead of six. tests/test_polar_qdwh.py checks, in
float64 arithmetic, that the weights take [lower, 1] to within eps of 1 and [0, 1] into [0, 1]
with c at most the cap at every step, and the factor's accuracy against numpy's float64 U V^T.

The weights depend only on the starting bound, which is fixed before tracing: the number of
steps is static, so there is no data-dependent loop either. Every matrix product runs at
`Precision.HIGHEST`: an accelerator's default float32 product (TF32 on recent GPUs, one bfloat16
pass on TPU) would leave the route far from float32-exact.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from orthax._src.lapack_threads import each, single_thread_cpu_lapack
from orthax._src.polar_conventions import matmul, mT, prepare_exact, sym, tall_by_platform
from orthax._src.polar_derivative import with_polar_derivative
from orthax._src.polar_drop import projector

Array = jax.Array

# The largest weight c of a step (Nakatsukasa and Higham form steps by Cholesky factorisation
# once c is at most this): I + c X^T X then has condition number at most 1 + c.
CHOLESKY_MAX_WEIGHT = 100.0


def dwh_weights(low: float) -> tuple[float, float, float]:
  """The optimal weights (a, b, c) of one dynamically weighted Halley step for singular values
  in [low, 1], 0 < low <= 1, in float64: the map x (a + b x^2) / (1 + c x^2) is at most 1 on
  [0, 1] and its least value on [low, 1] is at low, as large as it can be."""
  l2 = low * low
  d = (4 * (1 - l2) / (l2 * l2)) ** (1 / 3)
  a = math.sqrt(1 + d) + math.sqrt(8 - 4 * d + 8 * (2 - l2) / (l2 * math.sqrt(1 + d))) / 2
  b = (a - 1) ** 2 / 4
  return a, b, a + b - 1


@functools.cache
def _cap_bound(cap: float) -> float:
  """The smallest bound whose optimal weight c is at most `cap` (c decreases as the bound
  grows, to 3 at 1), by bisection in float64; `cap` at least 3."""
  lo, hi = 0.0, 1.0
  for _ in range(100):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if dwh_weights(mid)[2] > cap else (lo, mid)
  return hi


@functools.cache
def capped_weights(lower: float, eps: float, cap: float = CHOLESKY_MAX_WEIGHT
                   ) -> tuple[tuple[float, float, float], ...]:
  """The weights (a, b, c) of the steps that take singular values in [lower, 1] to within `eps`
  of 1 with c <= `cap` at every step, one triple per step, in float64.

  A step with bound l takes the optimal weights of max(l, l_cap), l_cap the smallest bound whose
  c is at most `cap`: its map is increasing on [0, l_cap], so the least value on [l, 1] is still
  at l, and the next bound is the image of l.
  """
  if not 0 < lower <= 1 or not 0 < eps < 1 or cap < 3:
    raise ValueError(f"capped_weights needs 0 < lower <= 1, 0 < eps < 1 and cap >= 3, got "
                     f"{lower=}, {eps=}, {cap=}.")
  steps: list[tuple[float, float, float]] = []
  low = lower
  while low < 1 - eps:
    a, b, c = dwh_weights(max(low, _cap_bound(cap)))
    steps.append((a, b, c))
    low = min(1.0, low * (a + b * low * low) / (1 + c * low * low))
  return tuple(steps)


def _cholesky_step(x: Array, a: float, b: float, c: float) -> Array:
  """X (a I + b X^T X)(I + c X^T X)^-1 = (b / c) X + (a - b / c) X (L L^T)^-1, L the Cholesky
  factor of I + c X^T X, by two triangular solves."""
  n = x.shape[-1]
  chol = jnp.linalg.cholesky(c * matmul(mT(x), x) + jnp.eye(n, dtype=x.dtype))
  z = jax.lax.linalg.triangular_solve(chol, x, left_side=False, lower=True, transpose_a=True)
  z = jax.lax.linalg.triangular_solve(chol, z, left_side=False, lower=True)
  return (b / c) * x + (a - b / c) * z


def _iterate(g: Array, lower: float) -> Array:
  """The QDWH polar factor of a tall P x N matrix `g` (finite), all of whose singular values
  above `lower * ||g||_F` converge; a zero matrix gives zero."""
  norm = jnp.linalg.norm(g)
  x = g / jnp.where(norm > 0, norm, 1)  # Singular values in [0, 1].
  eps = float(jnp.finfo(g.dtype).eps)
  for a, b, c in capped_weights(lower, eps):
    x = _cholesky_step(x, a, b, c)
  return x


def _needs_drop(x: Array, g: Array, tol: Any) -> Array:
  """Whether H = X^T G may have an eigenvalue at or below `tol * max(S)` (a zero matrix has
  nothing to drop): unless H's Cholesky factorisation after a shift by `tol * ||H||_F` (at least
  `tol * max(S)`) succeeds."""
  h = sym(matmul(mT(x), g))
  size = jnp.linalg.norm(h, axis=(-2, -1), keepdims=True)
  chol = jnp.linalg.cholesky(h - tol * size * jnp.eye(h.shape[-1], dtype=h.dtype))
  return ~jnp.all(jnp.isfinite(chol), axis=(-2, -1)) & (size[..., 0, 0] > 0)


def _refined(o: Array, ok: Array) -> Array:
  """One Newton-Schulz refinement O (3 I - O^T O) / 2, its small factor NaN where not `ok`."""
  n = o.shape[-1]
  k = 1.5 * jnp.eye(n, dtype=o.dtype) - 0.5 * matmul(mT(o), o)
  return matmul(o, k * jnp.where(ok, 1, jnp.nan).astype(o.dtype)[..., None, None])


def _qdwh_each(g: Array, tol: Any, ok: Array, lower: float) -> Array:
  """CPU: one matrix at a time; only a matrix with directions to drop is eigendecomposed."""
  single_thread_cpu_lapack()

  def one(g: Array, ok: Array) -> Array:
    x = _iterate(g, lower)
    return jax.lax.cond(_needs_drop(x, g, tol),
                        lambda: _refined(matmul(x, projector(x, g, tol)), ok),
                        lambda: _refined(x, ok))

  return each(one, g, ok)


def _qdwh_batched(g: Array, tol: Any, ok: Array, lower: float) -> Array:
  """Other backends: the whole stack at once; the eigendecompositions only when a matrix of the
  stack has directions to drop (a `lax.cond` under `vmap` would run both branches always)."""
  x = jax.vmap(functools.partial(_iterate, lower=lower))(g)
  return jax.lax.cond(jnp.any(_needs_drop(x, g, tol)),
                      lambda: _refined(matmul(x, projector(x, g, tol)), ok),
                      lambda: _refined(x, ok))


def qdwh(x: Array, *, rtol: float | Array | None = None, compute_dtype: Any = jnp.float32) -> Array:
  """Exact polar factor by the QDWH iteration: matrix products and batched factorisations.

  The same polar factor as `svd`, with its conventions and derivative, computed without an SVD:
  a fixed number of Cholesky-based steps (at most eight in float32; see the module docstring),
  then, only for a stack in which some matrix has directions at or below the tolerance, a small
  symmetric eigendecomposition of H = O^T G (whose eigenvalues are G's singular values) to drop
  them, and one Newton-Schulz refinement. The iteration converges for singular values above
  sqrt(min(P, N)) eps max(S), so `rtol` below that (such as 0.0) acts as that. Every matrix
  product is at `Precision.HIGHEST`.

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

