"""Approximate polar factors from matrix products alone: Newton-Schulz and Polar Express.

Both return U f(S) V^T for an odd polynomial f that pushes the singular values of G = U S V^T
towards 1; rectangular matrices are iterated on their small Gram matrix.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from orthax._src.polar_conventions import check_steps, mT, prepare, sym

Array = jax.Array

NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# The matrix-product methods iterate on the small Gram matrix when max(P, N) / min(P, N) is at
# least this. The operation count breaks even at 1.5; where the Gram form is faster in practice
# is recorded in benchmarks/results/gram_iterations.md.
GRAM_MIN_ASPECT = 2.0


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
    x = mT(x)
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
      r = x @ mT(x)
      x = a * x + (b * r + c * (r @ r)) @ x
  return mT(x) if tall else x


def _gram_steps(x: Array, coefficients: np.ndarray) -> Array:
  """The steps of `_odd_polynomial_steps` on a wide (B, M, L) X, M <= L, through the M x M Gram
  matrix R = X X^T ("Gram Newton-Schulz").

  Each step multiplies X on the left by p(R) = a I + b R + c R^2, so after k steps X_k = Q_k X_0
  with Q_k an M x M polynomial in R_0: iterate Q_{k+1} = p_k(R_k) Q_k and
  R_{k+1} = p_k(R_k) R_k p_k(R_k) (symmetrised against round-off), and form Q_K X_0 at the end.
  Two steps cost two M x M x L products and five M x M x M, against four and two on X: fewer
  operations when L > 1.5 M, and half as many as L / M grows.

  Why `_odd_polynomial_steps` restarts from X every two steps: in float32 the Gram matrix squares
  the condition number, and Q_k grows like 1 / sigma on small singular values, so a run through
  from X_0 loses accuracy on ill-conditioned matrices; restarted every two steps the result is as
  close to the float64 iteration's as the plain form's (tests/test_gram_iterations.py checks this
  for 5, 7 and 10 steps; the errors of each form are in benchmarks/results/design_figures.md).
  """
  eye = jnp.eye(x.shape[-2], dtype=x.dtype)
  r = x @ mT(x)
  q = None
  for step, (a, b, c) in enumerate(coefficients):
    p = a * eye + b * r + c * (r @ r)
    q = p if q is None else p @ q
    if step < len(coefficients) - 1:
      r = p @ r @ p
      r = sym(r)
  return x if q is None else q @ x


def newton_schulz(x: Array, *, steps: int = 5, compute_dtype: Any = jnp.float32) -> Array:
  """Approximate polar factor by Muon's quintic Newton-Schulz iteration.

  The coefficients (3.4445, -4.7750, 2.0315) maximise the slope at zero rather than converge:
  after 5 steps singular values in [1e-3, 1] * ||X||_F land in about [0.47, 1.21], not at 1
  (Jordan et al. found this does not hurt training). Only matrix products, so it is fast on
  accelerators.

  A matrix at least `GRAM_MIN_ASPECT` (2) times longer than wide is iterated two steps at a time
  on its min(P, N) square Gram matrix ("Gram Newton-Schulz"): the same result to float32
  round-off (tests/test_gram_iterations.py), in less time on rectangular shapes
  (benchmarks/results/gram_iterations.md). Square matrices keep the plain form.

  Args:
    x: array of shape (..., P, N).
    steps: number of iterations.
    compute_dtype: iterate in at least this dtype (and float32). The result has `x`'s dtype.

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024
  """
  stack, ok, restore = prepare(x, "newton_schulz", compute_dtype)
  if not stack.size:
    return restore(stack)
  steps = check_steps("newton_schulz", steps)
  coefficients = np.tile(np.asarray(NEWTON_SCHULZ_COEFFICIENTS), (steps, 1))
  return restore(_odd_polynomial_steps(stack, coefficients, ok=ok))


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


def polar_express(x: Array, *, steps: int = 5, compute_dtype: Any = jnp.float32) -> Array:
  """Approximate polar factor by the Polar Express iteration (Amsel et al. 2025).

  Like `newton_schulz` it uses only matrix products, but each step has its own minimax-optimal
  coefficients (`polar_express_coefficients`), so the singular values converge to 1: singular
  values in [1e-3, 1] * ||X||_F land in [0.87, 1.13] after 5 steps, [0.998, 1.002] after 6 and
  at 1 to float32 precision after 7 (in exact arithmetic; see the tests). Rectangular matrices are
  iterated on their Gram matrix, as in `newton_schulz`.

  Args:
    x: array of shape (..., P, N).
    steps: number of iterations.
    compute_dtype: as in `newton_schulz`.
  """
  stack, ok, restore = prepare(x, "polar_express", compute_dtype)
  if not stack.size:
    return restore(stack)
  steps = check_steps("polar_express", steps)
  coefficients = np.asarray(polar_express_coefficients(steps))
  return restore(_odd_polynomial_steps(stack, coefficients, ok=ok))
