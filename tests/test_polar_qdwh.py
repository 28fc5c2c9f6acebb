"""`polar.qdwh` against numpy's float64 polar factor, next to `svd` on the same matrices."""

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from orthax import polar
from orthax._src import polar_qdwh

EPS32 = 2.0**-23


def halley(x: np.ndarray, weights) -> np.ndarray:
  for a, b, c in weights:
    x = x * (a + b * x**2) / (1 + c * x**2)
  return x


@pytest.mark.parametrize("lower, eps", [(EPS32, EPS32), (1e-3, EPS32), (2.0**-52, 2.0**-52)])
def test_weights_take_every_singular_value_to_one(lower, eps):
  """The scalar map of the steps takes all of [lower, 1] to within a few eps of 1; at most six
  steps even from double precision's eps (Nakatsukasa, Bai and Gygi's bound)."""
  weights = polar_qdwh.qdwh_weights(lower, eps)
  assert 1 <= len(weights) <= 6
  grid = np.geomspace(lower, 1, 2001)
  np.testing.assert_allclose(halley(grid, weights), 1, atol=4 * eps, rtol=0)


def family(rng, kind: str, p: int, n: int) -> np.ndarray:
  """Singular values of each family: random, ill-conditioned (kappa 1e3, 1e5, 1e7),
  rank-deficient (rank 2) and clustered (all within 1e-3 of 1)."""
  k = min(p, n)
  if kind == "random":
    return rng.standard_normal((p, n))
  s = {"kappa 1e3": np.logspace(0, -3, k), "kappa 1e5": np.logspace(0, -5, k),
       "kappa 1e7": np.logspace(0, -7, k), "rank 2": np.r_[1.0, 0.5, np.zeros(k)][:k],
       "clustered": 1 + 1e-3 * rng.uniform(-1, 1, k)}[kind]
  u, _ = np.linalg.qr(rng.standard_normal((p, k)))
  v, _ = np.linalg.qr(rng.standard_normal((n, k)))
  return (u * s) @ v.T


def gap_rtol(g: np.ndarray) -> float:
  """A tolerance at least the default, halfway (geometrically) between two singular values, so
  that round-off in them cannot move a direction across it (both methods keep the same set)."""
  s = np.linalg.svd(g, compute_uv=False) / np.linalg.norm(g, 2)
  floor = max(polar.default_rtol(g.shape, jnp.float32), np.sqrt(min(g.shape)) * EPS32)
  below = s[s < 4 * floor]
  above = s[s >= 4 * floor]
  if below.size == 0:
    return floor
  return float(np.sqrt(max(below[0], 1e-30) * above[-1]))


def truncated_reference(g: np.ndarray, rtol: float) -> np.ndarray:
  u, s, vt = np.linalg.svd(g, full_matrices=False)
  keep = s > rtol * s[0]
  return (u * keep) @ vt


# Shapes from a fixed set (tall, wide, square, a row, a column, odd sides), not any p x n: each
# new shape compiles both methods again, and the property is about the matrices' spectra (the
# kinds, drawn freely), not their sides.
SHAPES = [(32, 8), (8, 32), (16, 16), (1, 12), (12, 1), (23, 5)]


@hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
@hypothesis.given(
    shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**16),
    kind=st.sampled_from(["random", "kappa 1e3", "kappa 1e5", "kappa 1e7", "rank 2",
                          "clustered"]))
def test_qdwh_is_as_accurate_as_svd(shape, seed, kind):
  """Error against float64 no worse than svd's (with a margin of 4 for the two methods' different
  round-off constants), or within the first-order perturbation bound of a backward-stable method,
  4 sqrt(max(P, N)) eps kappa, kappa over the kept directions: on small ill-conditioned
  matrices LAPACK's SVD is often far more accurate than that bound, QDWH not."""
  p, n = shape
  g = family(np.random.default_rng(seed), kind, p, n).astype(np.float32).astype(np.float64)
  rtol = gap_rtol(g)
  reference = truncated_reference(g, rtol)
  s = np.linalg.svd(g, compute_uv=False)
  kappa = s[0] / s[s > rtol * s[0]][-1] if s[0] > 0 else 1.0
  errors = {}
  for name in ("svd", "qdwh"):
    o = np.asarray(getattr(polar, name)(jnp.asarray(g, jnp.float32), rtol=rtol), np.float64)
    errors[name] = np.abs(o - reference).max()
  bound = 4 * np.sqrt(max(p, n)) * EPS32 * kappa
  assert errors["qdwh"] <= max(4 * errors["svd"], bound), (errors, bound)


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32), (3, 48, 12)])
def test_qdwh_on_a_stack(shape):
  g = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  o = np.asarray(polar.qdwh(jnp.asarray(g)), np.float64)
  u, _, vt = np.linalg.svd(g.astype(np.float64), full_matrices=False)
  np.testing.assert_allclose(o, u @ vt, atol=np.sqrt(max(shape[-2:])) * 10 * EPS32)
