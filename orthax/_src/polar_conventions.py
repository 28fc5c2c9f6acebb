"""The conventions every polar method shares, and the preparation step that applies them.

- A zero matrix maps to zero, and any non-finite entry makes the whole matrix NaN (so that
  `optax.apply_if_finite` can skip the step); no decomposition ever sees a non-finite entry
  (LAPACK's SVD loops forever on one);
- each matrix is first scaled by the power of two that puts its largest entry in [0.5, 1): exact,
  and no result changes (the polar factor is scale-invariant), but Gram matrices and Frobenius
  norms of very large or very small entries no longer overflow to inf or underflow to 0;
- exact methods drop the directions whose singular value is at or below `rtol * max(S)` (the
  numerical null space); `rtol=None` means `max(max(P, N) * eps, sqrt(min(P, N)) * eps_data)`
  (see `default_rtol`);
- matrices are decomposed in at least float32 (`compute_dtype`, default float32, may raise it);
- P < N, P = N and N = 1 all work; the wide case is handled through its transpose.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def mT(x: Array) -> Array:
  """The matrix transpose of a (..., P, N) array."""
  return jnp.swapaxes(x, -1, -2)


def sym(x: Array) -> Array:
  """The symmetric part (X + X^T) / 2 of a (..., N, N) array."""
  return (x + mT(x)) / 2


def matmul(a: Array, b: Array) -> Array:
  """a @ b in the full precision of its dtype on every backend (`Precision.HIGHEST`): an
  accelerator's default float32 product (TF32 on recent GPUs, one bfloat16 pass on TPU) would
  leave the exact methods far from float32 round-off."""
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def check_rtol(rtol: Any) -> Array | bool:
  """Raises unless a concrete `rtol` is None or a number in [0, 1); for a traced one (e.g. from
  `optax.inject_hyperparams` under `jax.jit`) returns whether it is, for the result to use."""
  if rtol is None:
    return True
  if isinstance(rtol, jax.core.Tracer):
    return (rtol >= 0) & (rtol < 1)
  try:
    value = float(rtol) if not isinstance(rtol, (bool, str)) and np.ndim(rtol) == 0 else None
  except (TypeError, ValueError):
    value = None
  if value is None or not 0 <= value < 1:
    raise ValueError(f"rtol must be None or a number in [0, 1), got {rtol=}.")
  return True


def check_steps(name: str, steps: Any) -> int:
  """The iteration count as a Python int; it sets the program's structure, so it is static."""
  if isinstance(steps, jax.Array):
    raise ValueError(
        f"{name}(steps=...) sets the number of iterations, which must be known when tracing; got "
        f"the array {steps=}. Pass a Python int; with optax.inject_hyperparams, name it static: "
        "inject_hyperparams(..., static_args=('steps',)).")
  if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
    raise ValueError(f"{name}(steps=...) must be an integer >= 1, got {steps=}.")
  return int(steps)


def default_rtol(shape: tuple[int, ...], compute_dtype: Any, data_dtype: Any = None) -> float:
  """The tolerance `rtol=None` stands for: max(max(P, N) eps, sqrt(min(P, N)) eps_data).

  The first term is `numpy.linalg.matrix_rank`'s: round-off of the decomposition itself, in the
  compute dtype. The second is the data's own rounding: a gradient computed in bfloat16 carries
  an error E with |E_ij| <= eps_data |G_ij| / 2, so ||E||_2 <= ||E||_F <= eps_data ||G||_F / 2
  <= sqrt(min(P, N)) eps_data max(S) / 2; a direction below that bound may be rounding alone, and
  U V^T would give it full size. For float32 data the first term is the larger, so the rule is
  numpy's; for bfloat16 data and a 64 x 16 matrix it is 0.031: every direction above 3.1 % of
  the largest survives. `data_dtype` defaults to `compute_dtype`.
  """
  p, n = shape[-2], shape[-1]
  data_dtype = compute_dtype if data_dtype is None else data_dtype
  return max(max(p, n) * float(jnp.finfo(compute_dtype).eps),
             math.sqrt(min(p, n)) * float(jnp.finfo(data_dtype).eps))


def tolerance(rtol: Any, stack: Array, data_dtype: Any) -> tuple[Any, Array | bool]:
  """`rtol` checked and resolved for a prepared stack: (the tolerance, whether it is valid).

  `None` becomes `default_rtol` of the stack's shape, its compute dtype and the data's dtype; a
  concrete invalid `rtol` raises; a traced one is returned with whether it lies in [0, 1), for the
  method to make its result NaN where not.
  """
  valid = check_rtol(rtol)
  if rtol is None:
    rtol = default_rtol(stack.shape, stack.dtype, data_dtype)
  return rtol, valid


def _unit_scale(biggest: Array) -> tuple[Array, Array]:
  """Two powers of two whose product puts `biggest` (finite, >= 0) in [0.5, 1); 1 for zero.

  Two factors, since a single 2^k need not be representable (k up to 149 in float32).
  """
  _, exponent = jnp.frexp(biggest)
  first = -exponent // 2
  one = jnp.ones((), biggest.dtype)
  return jnp.ldexp(one, first), jnp.ldexp(one, -exponent - first)


def scale_to_unit(x: Array) -> Array:
  """Each (B, P, N) matrix times the power of two that puts its largest |entry| in [0.5, 1).

  Exact (a power of two; XLA flushes subnormals to zero anyway); zero stays zero.
  """
  first, second = _unit_scale(jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True))
  return x * first * second


class Prepared(NamedTuple):
  """A (..., P, N) array made ready for a method (`prepare`)."""

  stack: Array  # (B, P, N): finite, each matrix scaled to unit size, in the compute dtype.
  ok: Array  # (B,) bool: False where the matrix had a non-finite entry.
  restore: Callable[[Array], Array]  # A (B, P, N) result back to the input's shape and dtype.


def prepare(x: Array, name: str, compute_dtype: Any) -> Prepared:
  """Checks `x` and applies the conventions above: the step every polar method starts with.

  The stack holds `x`'s matrices in at least float32 and `compute_dtype`, a matrix with a
  non-finite entry zeroed (and `ok` False for it), each scaled by `scale_to_unit`. A method must
  make the results of matrices that are not `ok` all NaN. Each method puts the NaN into a small
  factor or its first scaling, not into its P x N result: an elementwise step on that result would
  be one more kernel to compile per shape group, fused into each leaf's slice of it.

  An empty `x` gives an empty stack, and `restore` then returns `x` itself.
  """
  if x.ndim < 2:
    raise ValueError(f"{name} expects an array of shape (..., P, N), got {x.shape=}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} expects a floating array, got {x.dtype=}.")
  batch = x.shape[:-2]
  # LAPACK has no half-precision kernels: decompose in at least float32.
  dtype = jnp.promote_types(jnp.promote_types(x.dtype, compute_dtype), jnp.float32)
  flat = x.reshape((-1,) + x.shape[-2:]).astype(dtype)
  if flat.size == 0:
    return Prepared(flat, jnp.ones(flat.shape[:1], bool), lambda out: x)
  # One reduction finds both the scale and the non-finite matrices: NaN counts as inf (XLA's
  # CPU max need not propagate NaN). The result is `scale_to_unit` of the zeroed stack.
  biggest = jnp.max(jnp.where(jnp.isnan(flat), jnp.inf, jnp.abs(flat)), axis=(-2, -1),
                    keepdims=True)
  finite = jnp.isfinite(biggest)
  first, second = _unit_scale(jnp.where(finite, biggest, 0))
  flat = jnp.where(finite, flat, 0) * first * second

  def restore(out: Array) -> Array:
    return out.reshape(batch + x.shape[-2:]).astype(x.dtype)

  return Prepared(flat, finite[:, 0, 0], restore)


class PreparedExact(NamedTuple):
  """A (..., P, N) array made ready for an exact method (`prepare_exact`)."""

  stack: Array  # As in `Prepared`.
  ok: Array  # As in `Prepared`, and False everywhere where a traced `rtol` is invalid.
  restore: Callable[[Array], Array]  # As in `Prepared`.
  tol: Any  # The resolved tolerance (`tolerance`): a Python number or an array.


def prepare_exact(x: Array, name: str, compute_dtype: Any, rtol: Any) -> PreparedExact:
  """`prepare`, then `tolerance`: the step every exact method starts with. A concrete invalid
  `rtol` raises; a traced one's validity is folded into `ok`. An empty `x` is returned as it is
  (by `restore`) with no check of `rtol`, and `tol` None."""
  stack, ok, restore = prepare(x, name, compute_dtype)
  if not stack.size:
    return PreparedExact(stack, ok, restore, None)
  tol, valid = tolerance(rtol, stack, x.dtype)
  return PreparedExact(stack, ok & valid, restore, tol)


def tall_by_platform(x: Array, *, cpu: Callable[[Array], Array],
                     default: Callable[[Array], Array]) -> Array:
  """`cpu` on a CPU backend, `default` elsewhere, each given the stack with P >= N: a wide stack
  goes through its transpose (its polar factor is the transpose of its transpose's)."""
  wide = x.shape[-2] < x.shape[-1]
  o = jax.lax.platform_dependent(mT(x) if wide else x, cpu=cpu, default=default)
  return mT(o) if wide else o
