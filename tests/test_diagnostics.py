"""The paper's diagnostics against analytic cases.

Tolerances: `cosine_tol` bounds float32's error in `component_cosine`, and
`orthogonality_tol` (tests/helpers.py) in `orthogonality_error`; the exact cases are exact in
float32 too.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import orthax
from orthax import diagnostics
from tests.helpers import condition_number, eps, orthogonality_tol, polar_tol, round_off


def cosine_tol(m: int, n: int) -> float:
  """Bound on float32's error in `component_cosine` of (M, N) features. Each column is divided by
  its norm (round_off(M), and eps for the division), each |cos| is then a length-M dot product of
  two of them (round_off(M) more): 3 round_off(M) + 2 eps, absolute since |cos| <= 1. The mean
  sums N^2 of them (round_off(N^2) of a sum up to N^2) and subtracts the trace (about N): what
  is left, N (N - 1) times the mean, keeps at most N / (N - 1) times as much relative error."""
  return (3 * round_off(m) + 2 * eps() + round_off(n * n)) * n / (n - 1)


def test_component_cosine_analytic_cases():
  # Orthogonal columns: exactly 0 (unit columns, products of 0 and 1, a sum of ones less its
  # trace). Identical columns: 1. Opposite columns count as 1 (absolute value).
  assert float(diagnostics.component_cosine(jnp.eye(4))) == 0.0
  same = jnp.tile(jnp.arange(1.0, 6.0)[:, None], (1, 3))
  np.testing.assert_allclose(diagnostics.component_cosine(same), 1.0, rtol=0,
                             atol=cosine_tol(5, 3))
  np.testing.assert_allclose(
      diagnostics.component_cosine(jnp.stack([same[:, 0], -same[:, 0]], -1)), 1.0, rtol=0,
      atol=cosine_tol(5, 2))
  # Two pairs at 60 degrees and one orthogonal pair: mean over ordered pairs.
  x = jnp.array([[1.0, 0.5, 0.0], [0.0, np.sqrt(3) / 2, 1.0]])
  expected = (0.5 + 0.0 + np.sqrt(3) / 2) * 2 / 6
  # eps more for the entries' own rounding (sqrt(3) / 2 in float32).
  np.testing.assert_allclose(diagnostics.component_cosine(x), expected, rtol=0,
                             atol=cosine_tol(2, 3) + eps())


def test_component_cosine_flattens_batch_and_space_and_ignores_dead_units():
  rng = np.random.default_rng(0)
  features = rng.standard_normal((8, 5, 5, 4)).astype(np.float32)
  features[..., 3] = 0  # a dead channel
  flat = features.reshape(-1, 4).astype(np.float64)
  n = flat / np.maximum(np.linalg.norm(flat, axis=0), 1e-30)
  cos = np.abs(n.T @ n)
  expected = (cos.sum() - np.trace(cos)) / 12
  np.testing.assert_allclose(diagnostics.component_cosine(jnp.asarray(features)), expected,
                             rtol=0, atol=cosine_tol(200, 4))
  assert diagnostics.component_cosine(jnp.ones((5, 1))) == 0


def test_random_cosines_fall_below_the_significance_threshold():
  rng = np.random.default_rng(1)
  d = 400
  x = rng.standard_normal((d, 16)).astype(np.float32)
  n = x / np.linalg.norm(x, axis=0)
  cos = np.abs(n.T @ n)[~np.eye(16, dtype=bool)]
  threshold = diagnostics.cosine_significance_threshold(d)
  assert threshold == 4 / 20  # 4 / sqrt(400), exact in float64 as 4 / 20 is.
  assert cos.max() < threshold  # 4 standard deviations: no pair of 120 gets there by chance.
  with pytest.raises(ValueError, match="dimension"):
    diagnostics.cosine_significance_threshold(0)


def test_dead_parameters_counts_exact_zeros():
  grads = {"w": jnp.array([[0.0, 1.0], [0.0, -0.0]]), "b": jnp.array([1e-30, 0.0])}
  assert int(diagnostics.dead_parameters(grads)) == 4


def test_orthogonality_error():
  rng = np.random.default_rng(2)
  g = jnp.asarray(rng.standard_normal((20, 6)), jnp.float32)
  o = orthax.polar.svd(g)
  o64 = np.asarray(o, np.float64)
  # O's spectral error is at most polar_tol, so ||O^T O - I||_F / sqrt(N) <= ||O^T O - I||_2 is
  # at most twice it and its square.
  factor = polar_tol(condition_number(g), 20)
  tol = orthogonality_tol(o64.shape, 2 * factor + factor**2, np.abs(o64).max())
  assert float(diagnostics.orthogonality_error(o)) < tol
  assert float(diagnostics.orthogonality_error(o.T)) < tol
  # A scaled orthonormal matrix c O has error |c^2 - 1| * sqrt(N) / sqrt(N): 3 for c = 2, with
  # 4 times O^T O's error (2 O is exact).
  np.testing.assert_allclose(
      diagnostics.orthogonality_error(2 * o), 3.0, rtol=0,
      atol=orthogonality_tol(o64.shape, 4 * (2 * factor + factor**2), 2 * np.abs(o64).max()))
  with pytest.raises(ValueError, match="matrix"):
    diagnostics.orthogonality_error(jnp.ones((2, 3, 4)))
