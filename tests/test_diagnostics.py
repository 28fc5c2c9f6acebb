"""The paper's diagnostics against analytic cases."""

import jax.numpy as jnp
import numpy as np
import pytest

import orthax
from orthax import diagnostics


def test_component_cosine_analytic_cases():
  # Orthogonal columns: 0. Identical columns: 1. Opposite columns count as 1 (absolute value).
  np.testing.assert_allclose(diagnostics.component_cosine(jnp.eye(4)), 0.0, atol=1e-7)
  same = jnp.tile(jnp.arange(1.0, 6.0)[:, None], (1, 3))
  np.testing.assert_allclose(diagnostics.component_cosine(same), 1.0, rtol=1e-6)
  np.testing.assert_allclose(
      diagnostics.component_cosine(jnp.stack([same[:, 0], -same[:, 0]], -1)), 1.0, rtol=1e-6)
  # Two pairs at 60 degrees and one orthogonal pair: mean over ordered pairs.
  x = jnp.array([[1.0, 0.5, 0.0], [0.0, np.sqrt(3) / 2, 1.0]])
  expected = (0.5 + 0.0 + np.sqrt(3) / 2) * 2 / 6
  np.testing.assert_allclose(diagnostics.component_cosine(x), expected, rtol=1e-6)


def test_component_cosine_flattens_batch_and_space_and_ignores_dead_units():
  rng = np.random.default_rng(0)
  features = rng.standard_normal((8, 5, 5, 4)).astype(np.float32)
  flat = features.reshape(-1, 4)
  features[..., 3] = 0  # a dead channel
  flat = features.reshape(-1, 4)
  n = flat / np.maximum(np.linalg.norm(flat, axis=0), 1e-30)
  cos = np.abs(n.T @ n)
  expected = (cos.sum() - np.trace(cos)) / 12
  np.testing.assert_allclose(diagnostics.component_cosine(jnp.asarray(features)), expected,
                             rtol=1e-5)
  assert diagnostics.component_cosine(jnp.ones((5, 1))) == 0


def test_random_cosines_fall_below_the_significance_threshold():
  rng = np.random.default_rng(1)
  d = 400
  x = rng.standard_normal((d, 16)).astype(np.float32)
  n = x / np.linalg.norm(x, axis=0)
  cos = np.abs(n.T @ n)[~np.eye(16, dtype=bool)]
  threshold = diagnostics.cosine_significance_threshold(d)
  assert threshold == pytest.approx(0.2)
  assert cos.max() < threshold  # 4 standard deviations: no pair of 120 gets there by chance.
  with pytest.raises(ValueError, match="dimension"):
    diagnostics.cosine_significance_threshold(0)


def test_dead_parameters_counts_exact_zeros():
  grads = {"w": jnp.array([[0.0, 1.0], [0.0, -0.0]]), "b": jnp.array([1e-30, 0.0])}
  assert int(diagnostics.dead_parameters(grads)) == 4


def test_orthogonality_error():
  rng = np.random.default_rng(2)
  g = jnp.asarray(rng.standard_normal((20, 6)), jnp.float32)
  assert float(diagnostics.orthogonality_error(orthax.polar.svd(g))) < 1e-6
  assert float(diagnostics.orthogonality_error(orthax.polar.svd(g).T)) < 1e-6
  # A scaled orthonormal matrix c O has error |c^2 - 1| * sqrt(N) / sqrt(N).
  np.testing.assert_allclose(
      diagnostics.orthogonality_error(2 * orthax.polar.svd(g)), 3.0, rtol=1e-5)
  with pytest.raises(ValueError, match="matrix"):
    diagnostics.orthogonality_error(jnp.ones((2, 3, 4)))
