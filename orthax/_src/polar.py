"""Polar factors of stacks of matrices: pure functions from (..., P, N) to (..., P, N).

The polar factor of G = U S V^T (thin SVD) is O = U V^T, the (semi-)orthonormal matrix nearest to
G in Frobenius norm. Exact methods (`svd`, `eigh`) return it to float32 round-off; approximate ones
(`newton_schulz`, `polar_express`) return U f(S) V^T for an odd polynomial f that pushes the
singular values towards 1 using only matrix products.

Conventions shared by every method:
- a zero matrix maps to zero, and any non-finite entry makes the whole matrix NaN (so that
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

import functools
import inspect
import math
import numbers
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Largest condition number for which the Gram route of `eigh` is trusted; beyond it `eigh` falls
# back to `svd` for that matrix. At kappa = 50 its error is ~1e-5 (float32, measured).
EIGH_MAX_CONDITION = 50.0
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# The matrix-product methods iterate on the small Gram matrix when max(P, N) / min(P, N) is at
# least this: faster on every shape measured from P / N = 2 on, not on square ones; nothing was
# measured in between, where the operation count breaks even at 1.5
# (benchmarks/results/gram_iterations.md).
GRAM_MIN_ASPECT = 2.0


def _mT(x: Array) -> Array:
  return jnp.swapaxes(x, -1, -2)


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


def _default_rtol(x: Array, rtol: Any, data_dtype: Any = None) -> Any:
  """`rtol` itself (a float or an array), or the default tolerance for `x` (see default_rtol)."""
  if rtol is None:
    return default_rtol(x.shape, x.dtype, data_dtype)
  return rtol


@functools.cache
def single_thread_cpu_lapack() -> None:
  """Runs the OpenBLAS that jaxlib's CPU LAPACK kernels call (SciPy's) on one thread.

  XLA already runs independent decompositions on its own thread pool; a multi-threaded OpenBLAS
  under it oversubscribes the cores, and its spinning workers stalled whole updates for seconds
  (benchmarks/README.md; tests/test_cpu_hazards.py). orthax calls this once, before its first CPU
  decomposition, so it is on by default; call it yourself to get the same setting for other code
  (e.g. a benchmark's other LAPACK users). Only libraries shipped inside SciPy's wheel are
  changed. The environment variable ORTHAX_LAPACK_THREADS sets another thread count, or `keep`
  to change nothing. Later calls do nothing.
  """
  setting = os.environ.get("ORTHAX_LAPACK_THREADS", "1")
  if setting == "keep":
    return
  try:
    import scipy
    import scipy.linalg.cython_lapack  # noqa: F401  Loads the library jaxlib will call.
    import threadpoolctl
  except ImportError:
    return
  scipy_root = os.path.dirname(os.path.dirname(os.path.abspath(scipy.__file__)))
  controller = threadpoolctl.ThreadpoolController()
  for lib in controller.select(user_api="blas").lib_controllers:
    path = os.path.abspath(lib.filepath or "")
    if os.path.relpath(path, scipy_root).startswith("scipy"):
      lib.set_num_threads(int(setting))


def _map_matrices(fn: Callable, *xs: Array):
  """Applies a LAPACK-backed `fn` to matrix b of each (B, ...) stack in `xs`, for every b; the
  first stack holds finite matrices.

  The caller guarantees finiteness (`_flat` zeroes a matrix with a non-finite entry before any
  method sees it): LAPACK's SVD never returns on inf or NaN.

  On CPU each matrix is its own LAPACK call, in a `lax.map` loop (none for a stack of one: its
  slicing and writing back would be kernels of their own). A batched call would let jaxlib
  (0.10 and older) split the batch over XLA's CPU thread pool and block a pool thread waiting for
  it; a few such calls running at once in one program exhaust the pool and deadlock (ResNet-50's
  21 shape groups hung: tests/test_cpu_hazards.py). Other backends get the batched call.
  """
  if jax.default_backend() == "cpu":
    single_thread_cpu_lapack()
  return jax.lax.platform_dependent(*xs, cpu=functools.partial(_each, fn), default=jax.vmap(fn))


def _each(fn: Callable, *xs: Array):
  """`fn` on matrix b of each (B, ...) stack in `xs`, one b at a time, in a `lax.map` loop; no
  loop for a stack of one (its slicing and writing back would be kernels of their own)."""
  if xs[0].shape[0] == 1:
    return jax.tree.map(lambda o: o[None], fn(*(x[0] for x in xs)))
  return jax.lax.map(lambda xs: fn(*xs), xs)


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


def _flat(fn: Callable[..., Array]) -> Callable[..., Array]:
  """Lifts fn on a (B, P, N) stack to any (..., P, N) array, following the module's conventions.

  The wrapped function also takes `compute_dtype` (decompose in at least this and float32) and,
  where fn takes `rtol` or `steps`, checks them and resolves `rtol=None` from the precision of
  `x` itself (the data) before `x` is cast to the compute dtype.

  fn gets finite matrices and `ok`, (B,) bool, False for a matrix that had a non-finite entry
  (or for an invalid traced `rtol`); it must make those matrices' results all NaN. Each method
  puts the NaN into a small factor or its first scaling, not into its P x N result: an
  elementwise step on that result would be one more kernel to compile per shape group, fused
  into each leaf's slice of it (benchmarks/README.md, issue 13).
  """
  signature = inspect.signature(fn)

  @functools.wraps(fn)
  def wrapped(x: Array, *args, compute_dtype: Any = jnp.float32, **kwargs) -> Array:
    if x.ndim < 2:
      raise ValueError(f"{fn.__name__} expects an array of shape (..., P, N), got {x.shape=}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"{fn.__name__} expects a floating array, got {x.dtype=}.")
    batch = x.shape[:-2]
    # LAPACK has no half-precision kernels: decompose in at least float32.
    dtype = jnp.promote_types(jnp.promote_types(x.dtype, compute_dtype), jnp.float32)
    flat = x.reshape((-1,) + x.shape[-2:]).astype(dtype)
    if flat.shape[0] == 0 or flat.shape[1] == 0 or flat.shape[2] == 0:
      return x
    # One reduction finds both the scale and the non-finite matrices: NaN counts as inf (XLA's
    # CPU max need not propagate NaN). The result is `scale_to_unit` of the zeroed stack.
    biggest = jnp.max(jnp.where(jnp.isnan(flat), jnp.inf, jnp.abs(flat)), axis=(-2, -1),
                      keepdims=True)
    finite = jnp.isfinite(biggest)
    first, second = _unit_scale(jnp.where(finite, biggest, 0))
    flat = jnp.where(finite, flat, 0) * first * second
    ok = finite[:, 0, 0]
    if "steps" in kwargs:
      kwargs["steps"] = check_steps(fn.__name__, kwargs["steps"])
    if "rtol" in signature.parameters:
      ok = ok & check_rtol(kwargs.get("rtol"))
      kwargs["rtol"] = _default_rtol(flat, kwargs.get("rtol"), x.dtype)
    out = fn(flat, *args, ok=ok, **kwargs)
    return out.reshape(batch + x.shape[-2:]).astype(x.dtype)

  wrapped.__signature__ = signature.replace(parameters=[  # type: ignore[attr-defined]
      *(p for name, p in signature.parameters.items() if name != "ok"),
      inspect.Parameter("compute_dtype", inspect.Parameter.KEYWORD_ONLY, default=jnp.float32)])
  return wrapped


def _svd_polar(x: Array, tol: float | Array, decompose: Callable, ok: Array) -> Array:
  """U V^T from `decompose` (a thin SVD), dropping directions at or below `tol * max(S)`; all
  NaN where `ok` is False."""
  u, s, vt = decompose(x)
  keep = s > tol * s[..., :1]
  mask = jnp.where(ok[..., None], keep.astype(vt.dtype), jnp.nan)
  return u @ (mask[..., :, None] * vt)  # Masks the small factor: no P x N kernel.


_thin_svd = functools.partial(jnp.linalg.svd, full_matrices=False)


@_flat
def svd(x: Array, *, ok: Array, rtol: float | Array | None = None) -> Array:
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
    retained directions.
  """
  tol = _default_rtol(x, rtol)
  # Each matrix's product U (mask V^T) inside the loop: one P x N write-back per matrix, not U's,
  # S's and V^T's.
  return _map_matrices(lambda x, ok: _svd_polar(x, tol, _thin_svd, ok), x, ok)


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
  a = _mT(g) @ g
  lam, v = decompose(_finite(a))
  lam_max = lam[..., -1:]
  keep = lam > (rtol * rtol) * lam_max
  b = g @ v
  c = _mT(b) @ b
  norms = jnp.sqrt(jnp.diagonal(c, axis1=-2, axis2=-1))
  keep = keep & (norms > 0)
  d = jnp.where(keep, 1 / jnp.where(keep, norms, 1), 0)
  mu, w = decompose(d[..., :, None] * c * d[..., None, :])
  # Kept columns are unit vectors and nearly orthogonal, so mu is ~1 there and exactly 0 on the
  # dropped ones.
  inv_sqrt = jnp.where(mu > 0.5, jax.lax.rsqrt(jnp.where(mu > 0.5, mu, 1)), 0)
  k = ((d[..., :, None] * w * inv_sqrt[..., None, :]) @ _mT(w)) @ _mT(v)
  k = jnp.where(ok[..., None, None], k, jnp.nan)
  # Every ill-conditioned direction is dropped anyway when rtol > 1 / EIGH_MAX_CONDITION (rtol
  # may be a traced array: optax.inject_hyperparams).
  well_conditioned = (lam >= lam_max / EIGH_MAX_CONDITION**2) | (rtol > 1 / EIGH_MAX_CONDITION)
  finite = jnp.isfinite(jnp.diagonal(a, axis1=-2, axis2=-1))
  accurate = jnp.all(well_conditioned & finite, axis=-1)
  return b @ k, accurate


def _eigh_each(g: Array, tol: float | Array, ok: Array) -> Array:
  """CPU: one matrix at a time, the Gram route and, only where it is inaccurate, an SVD.

  Each matrix is its own LAPACK call on CPU anyway (see `_map_matrices`), so a `lax.cond` per
  matrix costs nothing, and an ill-conditioned matrix costs one SVD, not its whole stack's. The
  N x N kernels of a loop body are also shared by every shape group with the same N. `g` is
  finite (`_flat` hands every method finite matrices), so the SVD takes it as it is.
  """
  single_thread_cpu_lapack()

  def one(g: Array, ok: Array) -> Array:
    o, accurate = _gram_polar(g, tol, ok)
    return jax.lax.cond(accurate, lambda: o, lambda: _svd_polar(g, tol, _thin_svd, ok))

  return _each(one, g, ok)


def _eigh_batched(g: Array, tol: float | Array, ok: Array) -> Array:
  """Other backends: the whole stack at once; where any matrix is inaccurate, one SVD of the
  stack replaces those matrices (a `lax.cond` under `vmap` would run both routes always)."""
  o, accurate = _gram_polar(g, tol, ok)

  def fix():
    exact = _svd_polar(g, tol, jax.vmap(_thin_svd), ok)
    return jnp.where(accurate[:, None, None], o, exact)

  return jax.lax.cond(jnp.all(accurate), lambda: o, fix)


def _finite(x: Array) -> Array:
  """`x` with non-finite entries zeroed: LAPACK is never handed them (`_flat` makes such a
  matrix's result NaN)."""
  return jnp.where(jnp.isfinite(x), x, 0)


@_flat
def eigh(x: Array, *, ok: Array, rtol: float | None = None) -> Array:
  """Exact polar factor from eigendecompositions of the small Gram matrix.

  Why: on CPU two symmetric eigendecompositions of N x N Gram matrices plus a few matrix products
  take a fraction of the time of an SVD of a tall P x N matrix, and more at square shapes, where
  `auto` therefore keeps `svd` (measured: benchmarks/README.md). Squaring the matrix squares its
  condition number, so the Gram route is used only where it is accurate (condition number up to
  `EIGH_MAX_CONDITION`, or every ill-conditioned direction below `rtol`); every other matrix is
  decomposed by `svd` instead, in the same call. On CPU that costs one SVD per such matrix; on
  other backends one SVD of the stack, when it holds any such matrix.

  Args:
    x: array of shape (..., P, N).
    rtol: as in `svd`.

  Returns:
    The polar factor, equal to `svd(x, rtol=rtol)` to float32 precision.
  """
  tol = _default_rtol(x, rtol)
  wide = x.shape[-2] < x.shape[-1]
  g = _mT(x) if wide else x
  o = jax.lax.platform_dependent(g, cpu=functools.partial(_eigh_each, tol=tol, ok=ok),
                                 default=functools.partial(_eigh_batched, tol=tol, ok=ok))
  return _mT(o) if wide else o


def _odd_polynomial_steps(x: Array, coefficients: np.ndarray, *, gram: bool | None = None,
                          ok: Array | None = None) -> Array:
  """Applies X <- a X + (b A + c A^2) X with A = X X^T, per row of `coefficients`.

  X is normalised by its Frobenius norm first, so every singular value starts in [0, 1]; a
  matrix whose `ok` is False (default: none) is made NaN there, and stays NaN. Works
  on the side with fewer rows (the transpose trick), so A is min(P, N) square. `gram` picks the
  form: every step on X (False), or two steps at a time through the Gram matrix (True,
  `_gram_steps`); None picks Gram when max(P, N) >= GRAM_MIN_ASPECT * min(P, N).
  """
  tall = x.shape[-2] > x.shape[-1]
  if tall:
    x = _mT(x)
  norm = jnp.linalg.norm(x, axis=(-2, -1), keepdims=True)
  norm = jnp.where(norm > 0, norm, 1)  # No epsilon: the result is exactly scale-invariant.
  if ok is not None:
    norm = jnp.where(ok[:, None, None], norm, jnp.nan)
  x = x / norm
  if gram is None:
    gram = x.shape[-1] >= GRAM_MIN_ASPECT * x.shape[-2]
  if gram:
    for start in range(0, len(coefficients), 2):
      x = _gram_steps(x, coefficients[start:start + 2])
  else:
    for a, b, c in coefficients:
      r = x @ _mT(x)
      x = a * x + (b * r + c * (r @ r)) @ x
  return _mT(x) if tall else x


def _gram_steps(x: Array, coefficients: np.ndarray) -> Array:
  """The steps of `_odd_polynomial_steps` on a wide (B, M, L) X, M <= L, through the M x M Gram
  matrix R = X X^T ("Gram Newton-Schulz").

  Each step multiplies X on the left by p(R) = a I + b R + c R^2, so after k steps X_k = Q_k X_0
  with Q_k an M x M polynomial in R_0: iterate Q_{k+1} = p_k(R_k) Q_k and
  R_{k+1} = p_k(R_k) R_k p_k(R_k) (symmetrised against round-off), and form Q_K X_0 at the end.
  Two steps cost two M x M x L products and five M x M x M, against four and two on X: fewer
  operations when L > 1.5 M, and half as many as L / M grows.

  Why `_odd_polynomial_steps` restarts from X every two steps: in float32 the Gram matrix squares
  the condition number, and Q_k grows like 1 / sigma on small singular values. With condition
  number 1e6 and 5 steps, the result run through from X_0 is up to 2.8e-3 (spectral norm) from
  the float64 iteration's, restarted once after step 2 (as Dao-AILab's gram-newton-schulz does)
  up to 7.5e-5, restarted every two steps 2.0e-5, as the plain form's 1.8e-5
  (benchmarks/results/gram_iterations.md). With 7 and 10 Polar Express steps a single restart
  left up to 8e-4 and 1e-2, restarts every two steps the plain form's 1e-4 (one-off measurement
  on 64 to 256 wide matrices, condition numbers 1e3 to 1e6; tests/test_gram_iterations.py checks
  the adopted form for 5, 7 and 10 steps).
  """
  eye = jnp.eye(x.shape[-2], dtype=x.dtype)
  r = x @ _mT(x)
  q = None
  for step, (a, b, c) in enumerate(coefficients):
    p = a * eye + b * r + c * (r @ r)
    q = p if q is None else p @ q
    if step < len(coefficients) - 1:
      r = p @ r @ p
      r = (r + _mT(r)) / 2
  return x if q is None else q @ x


@_flat
def newton_schulz(x: Array, *, ok: Array, steps: int = 5) -> Array:
  """Approximate polar factor by Muon's quintic Newton-Schulz iteration.

  The coefficients (3.4445, -4.7750, 2.0315) maximise the slope at zero rather than converge:
  after 5 steps singular values in [1e-3, 1] * ||X||_F land in about [0.47, 1.21], not at 1
  (Jordan et al. found this does not hurt training). Only matrix products, so it is fast on
  accelerators.

  A matrix at least `GRAM_MIN_ASPECT` (2) times longer than wide is iterated two steps at a time
  on its min(P, N) square Gram matrix ("Gram Newton-Schulz"): the same result to float32
  round-off (both forms within 2e-5 of the float64 iteration, spectral norm) in 0.2x to 0.95x
  of the time, median 0.5x, on ResNet-50's and a width-768 transformer's rectangular shapes and
  at P / N = 2 to 9. Square matrices keep the plain form: there the Gram form took 0.8x to 2.3x
  of its time, median 1.0x (2-core CPU, benchmarks/results/gram_iterations.md).

  Args:
    x: array of shape (..., P, N).
    steps: number of iterations.

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024
  """
  coefficients = np.tile(np.asarray(NEWTON_SCHULZ_COEFFICIENTS), (steps, 1))
  return _odd_polynomial_steps(x, coefficients, ok=ok)


def _minimax_quintic(lo: float, hi: float) -> tuple[np.ndarray, float]:
  """Odd quintic p(x) = a x + b x^3 + c x^5 minimising max |1 - p| on [lo, hi] (Remez)."""
  if hi - lo < 1e-9 * hi:  # Degenerate interval: the contact-order-3 limit, rescaled.
    return np.array([15 / 8 / hi, -10 / 8 / hi**3, 3 / 8 / hi**5]), 0.0
  # Reference points: both ends and the two interior extrema, where 1 - p alternates in sign.
  points = lo + (hi - lo) * np.array([0.0, 0.25, 0.75, 1.0])
  signs = np.array([1.0, -1.0, 1.0, -1.0])
  for _ in range(100):
    system = np.stack([points, points**3, points**5, signs], axis=1)
    a, b, c, err = np.linalg.solve(system, np.ones(4))
    # Interior extrema: roots of p'(x) = a + 3 b x^2 + 5 c x^4 (a quadratic in x^2).
    roots = np.roots([5 * c, 3 * b, a])
    roots = np.sort(np.sqrt(roots[(np.abs(roots.imag) < 1e-12) & (roots.real > 0)].real))
    roots = roots[(roots > lo) & (roots < hi)]
    if len(roots) != 2:
      break
    new = np.array([lo, roots[0], roots[1], hi])
    if np.allclose(new, points, rtol=1e-15, atol=0):
      break
    points = new
  return np.array([a, b, c]), abs(err)


@functools.cache
def polar_express_coefficients(
    steps: int, lower: float = 1e-3, safety: float = 1.01, cushion: float = 0.02
) -> tuple[tuple[float, float, float], ...]:
  """The Polar Express schedule: a minimax-optimal odd quintic for each step.

  Step t takes singular values known to lie in [l, u] to [p(l), max p] with the p that minimises
  max |1 - p| on [max(l, cushion * u), u] (computed in float64 by Remez exchange). For every step
  but the last the polynomial is evaluated at x / safety, which keeps values that round-off pushed
  slightly above u from growing.

  Args:
    steps: number of steps.
    lower: smallest singular value (relative to the Frobenius norm) to bring near 1.
    safety: input margin for round-off, > 1.
    cushion: floor on the interval's lower end relative to its upper end, which keeps the early
      polynomials' slopes moderate.

  Returns:
    `steps` tuples (a, b, c).

  References:
    Amsel, Persson, Musco, Gower, `The Polar Express: Optimal Matrix Sign Methods and Their
    Application to the Muon Algorithm <https://arxiv.org/abs/2505.16932>`_, 2025
  """
  lo, hi = lower, 1.0
  schedule = []
  for t in range(steps):
    coefficients, _ = _minimax_quintic(max(lo, cushion * hi), hi)
    if t < steps - 1:
      coefficients = coefficients / safety ** np.array([1, 3, 5])
    a, b, c = coefficients
    grid = np.linspace(lo, hi, 4097)
    values = a * grid + b * grid**3 + c * grid**5
    lo, hi = float(values[0]), float(np.max(values))
    schedule.append((float(a), float(b), float(c)))
  return tuple(schedule)


@_flat
def polar_express(x: Array, *, ok: Array, steps: int = 5) -> Array:
  """Approximate polar factor by the Polar Express iteration (Amsel et al. 2025).

  Like `newton_schulz` it uses only matrix products, but each step has its own minimax-optimal
  coefficients (`polar_express_coefficients`), so the singular values converge to 1: singular
  values in [1e-3, 1] * ||X||_F land in [0.87, 1.13] after 5 steps, [0.998, 1.002] after 6 and
  at 1 to float32 precision after 7 (in exact arithmetic; see the tests). Rectangular matrices are
  iterated on their Gram matrix, as in `newton_schulz`.

  Args:
    x: array of shape (..., P, N).
    steps: number of iterations.
  """
  return _odd_polynomial_steps(x, np.asarray(polar_express_coefficients(steps)), ok=ok)


class AutoRule(NamedTuple):
  """Where `auto` switches from `svd` to `eigh` on one backend, and what that was measured on."""

  eigh_aspect: float  # `eigh` when max(P, N) / min(P, N) is at least this, else `svd`.
  measured_on: str


AUTO_RULES: dict[str, AutoRule] = {
    "cpu": AutoRule(2.0, "x86_64, 2 cores, jax 0.10.2, 2026-11-28: "
                         "benchmarks/results/matrix_methods.md"),
}
"""`auto`'s rule per backend (JAX platform name), each with the measurement it comes from.

A backend without a row gets `svd` for every shape: exact, with no conditioning limit and no
fallback, so it never pays for a second decomposition; only the unmeasured speed-up of `eigh`
is forgone. Measure with `python -m benchmarks.suite` and add a row to change that.
"""


def auto(x: Array, *, rtol: Any = None, compute_dtype: Any = jnp.float32) -> Array:
  """The fast exact polar factor for this backend and shape: `eigh` or `svd`.

  Chosen per platform at lowering time from `AUTO_RULES` and per shape at trace time: `eigh`
  when the matrix is at least `AUTO_RULES[platform].eigh_aspect` times longer than it is wide,
  else `svd`; `svd` on a platform without a rule.

  Args:
    x: array of shape (..., P, N).
    rtol: as in `svd`.
    compute_dtype: as in `svd`.
  """
  ratio = max(x.shape[-2:]) / max(1, min(x.shape[-2:]))
  # One callable per method: `lax.platform_dependent` traces each distinct callable, and joins
  # platforms that share one.
  methods = {method: functools.partial(method, rtol=rtol, compute_dtype=compute_dtype)
             for method in (eigh, svd)}

  def pick(eigh_aspect: float) -> Callable[[Array], Array]:
    return methods[eigh if ratio >= eigh_aspect else svd]

  per_platform = {platform: pick(rule.eigh_aspect) for platform, rule in AUTO_RULES.items()}
  return jax.lax.platform_dependent(x, default=pick(math.inf), **per_platform)


METHODS: dict[str, Callable[..., Array]] = {
    "auto": auto,
    "svd": svd,
    "eigh": eigh,
    "newton_schulz": newton_schulz,
    "polar_express": polar_express,
}
