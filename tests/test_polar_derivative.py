"""The exact methods' derivative: the polar factor's, against float64 central finite differences.

Each test runs in float64 inside `tests.helpers.float64()` (`jax.enable_x64(True)`), which
leaves the global setting alone.
Finite differences with step h have error O(h^2) (third derivatives of size O(1 / s_min^2)) plus
O(eps_64 / h); with h = 1e-5 both are far below the 1e-5 asked of the derivative.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import orthax
from orthax import polar
from tests.helpers import float64

EXACT = {"svd": polar.svd, "eigh": polar.eigh, "qdwh": polar.qdwh, "auto": polar.auto}
STEP = 1e-5


def finite_difference_gradient(f, g: np.ndarray) -> np.ndarray:
  """d f / d g_ij by central differences, entry by entry."""
  grad = np.zeros_like(g)
  for index in np.ndindex(g.shape):
    e = np.zeros_like(g)
    e[index] = STEP
    grad[index] = (float(f(g + e)) - float(f(g - e))) / (2 * STEP)
  return grad


def check_gradient(method, g: np.ndarray, **options) -> np.ndarray:
  """jax.grad of sum(W * method(g)) for a random W, against finite differences; returns it."""
  weights = np.random.default_rng(1).standard_normal(g.shape)

  def loss(g):
    return jnp.sum(weights * method(jnp.asarray(g), **options))

  grad = np.asarray(jax.jit(jax.grad(loss))(g))
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, finite_difference_gradient(jax.jit(loss), g), atol=1e-5)
  return grad


def with_singular_values(rng, p, n, s):
  u, _ = np.linalg.qr(rng.standard_normal((p, len(s))))
  v, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
  return (u * np.asarray(s)) @ v.T


@pytest.mark.parametrize("name", EXACT)
def test_gradient_at_repeated_singular_values(name):
  with float64():
    check_gradient(EXACT[name], 2 * np.eye(6, 3))  # G = 2 [I; 0]: every singular value is 2.


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("shape", [(6, 3), (3, 6), (4, 4)])
def test_gradient_at_a_generic_matrix(name, shape):
  with float64():
    g = np.random.default_rng(0).standard_normal(shape)
    check_gradient(EXACT[name], g)


@pytest.mark.parametrize("name", EXACT)
def test_gradient_with_a_repeated_pair_of_a_square_matrix(name):
  with float64():
    g = with_singular_values(np.random.default_rng(2), 4, 4, [1.0, 1.0, 0.5, 2.0])
    check_gradient(EXACT[name], g)


@pytest.mark.parametrize("name", EXACT)
def test_gradient_at_zero_is_zero(name):
  """Documented: nothing is kept at a zero matrix, so the derivative is zero (not NaN)."""
  with float64():
    grad = jax.grad(lambda g: jnp.sum(EXACT[name](g)))(jnp.zeros((5, 3)))
    np.testing.assert_array_equal(grad, np.zeros((5, 3)))


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("shape", [(6, 3), (3, 6), (4, 4)])
def test_gradient_of_a_rank_deficient_matrix_is_the_truncated_factors(name, shape):
  """Documented: with the dropped singular values zero, the derivative of U_K V_K^T itself.

  With rtol = 1e-3, a perturbation of size h = 1e-5 leaves the dropped directions below the
  tolerance, so the finite differences are those of the truncated factor too.
  """
  with float64():
    g = with_singular_values(np.random.default_rng(3), *shape, [1.0, 0.7])  # Rank 2.
    grad = check_gradient(EXACT[name], g, rtol=1e-3)
    # Not the gradient of the full-rank factor: the null directions' terms are there.
    assert np.abs(grad).max() > 0.1


def test_jvp_matches_finite_differences_in_a_direction():
  with float64():
    rng = np.random.default_rng(4)
    g, d = rng.standard_normal((2, 8, 5))
    out, tangent = jax.jvp(polar.svd, (jnp.asarray(g),), (jnp.asarray(d),))
    difference = (polar.svd(g + STEP * d) - polar.svd(g - STEP * d)) / (2 * STEP)
    np.testing.assert_allclose(tangent, difference, atol=1e-5)
    np.testing.assert_allclose(out, polar.svd(g))


def test_tangent_of_a_non_finite_matrix_is_nan():
  g = jnp.ones((2, 4, 3)).at[0, 1, 1].set(jnp.inf)
  _, tangent = jax.jvp(polar.svd, (g,), (jnp.ones_like(g),))
  assert bool(jnp.all(jnp.isnan(tangent[0]))) and bool(jnp.all(jnp.isfinite(tangent[1])))


def test_gradient_under_jit_with_a_traced_rtol():
  """`optax.inject_hyperparams` passes rtol as a traced array."""
  g = jnp.asarray(np.random.default_rng(5).standard_normal((6, 3)), jnp.float32)
  for method in EXACT.values():
    grad = jax.jit(jax.grad(lambda g, r, m=method: jnp.sum(m(g, rtol=r) ** 3)))(g, 0.01)
    expected = jax.grad(lambda g, m=method: jnp.sum(m(g, rtol=0.01) ** 3))(g)
    np.testing.assert_allclose(grad, expected, atol=1e-4)


@pytest.mark.parametrize("gradient", ["zero", "repeated"])
def test_hypergradient_through_the_transformation_is_finite(gradient):
  """Differentiating an update with respect to the gradient (meta-learning) gives no NaN."""
  g = {"w": jnp.zeros((6, 3)) if gradient == "zero" else 2 * jnp.eye(6, 3), "b": jnp.ones(3)}
  opt = orthax.orthogonalise_components()
  state = opt.init(g)

  def loss(g):
    updates, _ = opt.update(g, state)
    return sum(jnp.sum(jnp.sin(u)) for u in jax.tree.leaves(updates))

  for leaf in jax.tree.leaves(jax.jit(jax.grad(loss))(g)):
    assert bool(jnp.all(jnp.isfinite(leaf)))
