"""The exact methods' derivative: the polar factor's, against float64 central finite differences.

Each test runs in float64 inside `tests.helpers.float64()` (`jax.enable_x64(True)`), which
leaves the global setting alone.
Central differences with step h are compared with the derivative to `finite_difference_tol`:
their truncation error (h^2 / 6 times a third derivative, bounded by Cauchy's estimate on the
ball where the polar factor is analytic) plus their round-off (float64 values divided by h).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import orthax
from orthax import polar
from tests.helpers import assert_trees_close_relative, condition_number, float64, polar_tol

EXACT = {"svd": polar.svd, "eigh": polar.eigh, "qdwh": polar.qdwh, "auto": polar.auto}
STEP = 1e-5


def finite_difference_tol(g: np.ndarray, scale: float, rtol: float = 0.0,
                          direction_norm: float = 1.0) -> float:
  """Bound on |central difference - derivative| of t -> f(g + t D), |f| <= scale wherever the
  polar factor's entries are <= 1, ||D||_2 = direction_norm, in float64.

  The polar factor (of the directions kept, with singular values above rtol s_max) is analytic
  while the perturbation's norm stays below s_min, the smallest kept singular value: on the
  ball of radius r = s_min / (2 ||D||) in t, Cauchy's estimate bounds |f^(3)| by 3! M / r^3,
  with M = 2 scale (a margin of 2 for the factor's growth off the real axis). Truncation:
  h^2 / 6 |f^(3)| = h^2 M / r^3. Round-off: each f in float64 is off by at most
  scale polar_tol(kappa, dim, float64), divided by h. The derivative's own float64 error,
  polar_tol kappa scale / s_min, is added too.
  """
  s = np.linalg.svd(g, compute_uv=False)
  kept = s[s > rtol * s[0]]
  s_min, kappa, dim = kept[-1], kept[0] / kept[-1], max(g.shape)
  r = s_min / (2 * direction_norm)
  truncation = STEP**2 * 2 * scale / r**3
  round_off = scale * polar_tol(kappa, dim, np.float64) * (1 / STEP + kappa / s_min)
  return float(truncation + round_off)


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
  # Each entry is the derivative in the direction e_ij (norm 1); |sum(W * O)| <= ||W||_F ||O||_F
  # and ||O||_F <= sqrt(min(P, N)).
  scale = np.linalg.norm(weights) * np.sqrt(min(g.shape))
  tol = finite_difference_tol(g, scale, rtol=options.get("rtol", 0.0))
  np.testing.assert_allclose(grad, finite_difference_gradient(jax.jit(loss), g), rtol=0,
                             atol=tol)
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
    # Each entry of O is a function of size <= 1, in the direction d.
    tol = finite_difference_tol(g, 1.0, direction_norm=np.linalg.norm(d, 2))
    np.testing.assert_allclose(tangent, difference, rtol=0, atol=tol)
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
    # Two float32 derivatives: each within polar_tol (the factor's error) times kappa (the
    # derivative's sensitivity, 1 / s_min relative to ||G||) of the exact one, relative to its
    # norm.
    kappa = condition_number(g)
    assert_trees_close_relative(grad, expected, 2 * kappa * polar_tol(kappa, 6))


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
