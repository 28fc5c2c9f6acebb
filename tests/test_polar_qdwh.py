"""`polar.qdwh` against numpy's float64 polar factor, next to `svd` on the same matrices."""

import re

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export  # A submodule: jax 0.7 needs it imported.

from orthax import polar
from orthax._src import polar_qdwh
from tests import helpers

EPS32 = 2.0**-23
EPS64 = 2.0**-52
CAP = polar_qdwh.CHOLESKY_MAX_WEIGHT


def halley_step(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
  return x * (a + b * x**2) / (1 + c * x**2)


@pytest.mark.parametrize("lower, eps, most_steps", [
    (EPS32, EPS32, 8), (1e-6, EPS32, 8), (1e-3, EPS32, 8), (EPS64, EPS64, 15)])
def test_capped_weights_take_every_singular_value_to_one(lower, eps, most_steps):
  """In float64 arithmetic, on a grid: every step has c <= CHOLESKY_MAX_WEIGHT, maps [0, 1] into
  [0, 1] (so the iterate's singular values stay at most 1 and I + c X^T X has condition number
  at most 1 + c <= 1 + cap), and maps [l, 1] into [f(l), 1] (the next bound); after all steps
  every singular value in [lower, 1] is within eps of 1. The step counts: a capped step
  multiplies a small bound by about a = 19.1 until it reaches the cap's bound 0.048, then at
  most three optimal steps reach 1 (so eight from float32's eps, the module docstring's count,
  and fifteen from float64's)."""
  weights = polar_qdwh.capped_weights(lower, eps)
  assert 1 <= len(weights) <= most_steps
  rounding = 8 * EPS64  # Float64 evaluation of the scalar maps on the grid.
  y = np.linspace(0, 1, 20001)  # Any singular value of the Frobenius-normalised input.
  x = np.geomspace(lower, 1, 20001)  # The ones that must converge.
  low = lower
  for a, b, c in weights:
    assert c <= CAP
    assert y.min() >= 0 and y.max() <= 1 + rounding
    kappa = (1 + c * y.max() ** 2) / (1 + c * y.min() ** 2)  # Of I + c X^T X.
    assert kappa <= (1 + CAP) * (1 + 2 * rounding)
    next_low = float(halley_step(np.float64(low), a, b, c))
    y, x = halley_step(y, a, b, c), halley_step(x, a, b, c)
    assert x.min() >= next_low * (1 - rounding), (a, b, c)
    low = next_low
  assert y.min() >= 0 and y.max() <= 1 + rounding
  np.testing.assert_allclose(x, 1, atol=eps + rounding, rtol=0)


def test_capped_weights_are_dwh_weights_once_c_is_below_the_cap():
  """From a bound whose optimal c is already at most the cap, the steps are the optimal DWH
  steps; below it, the first step's c is exactly the cap (the weights of the cap's bound)."""
  low = 0.5
  assert polar_qdwh.dwh_weights(low)[2] <= CAP
  weights = polar_qdwh.capped_weights(low, EPS32)
  assert weights[0] == polar_qdwh.dwh_weights(low)
  first = polar_qdwh.capped_weights(EPS32, EPS32)[0]
  np.testing.assert_allclose(first[2], CAP, rtol=1e-12)
  assert polar_qdwh.dwh_weights(EPS32)[2] > 1e9  # What an uncapped first step would take.


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


KINDS = ["random", "kappa 1e3", "kappa 1e5", "kappa 1e7", "rank 2", "clustered"]


def spectral_errors(g: np.ndarray, rtol: float | None) -> tuple[dict[str, float], float]:
  """Spectral distance of `svd`'s and `qdwh`'s float32 factors of each matrix of `g` to numpy's
  float64 factor with the same drop (the largest over a stack), and the float32 bound
  `helpers.polar_tol` for the condition number over the kept directions (the largest)."""
  stack = g.reshape((-1,) + g.shape[-2:])
  errors = {}
  for name in ("svd", "qdwh"):
    o = np.asarray(getattr(polar, name)(jnp.asarray(g, jnp.float32), rtol=rtol), np.float64)
    o = o.reshape(stack.shape)
    errors[name] = 0.0
    for g_b, o_b in zip(stack, o, strict=True):
      cut = polar.default_rtol(g.shape, jnp.float32) if rtol is None else rtol
      errors[name] = max(errors[name], np.linalg.norm(o_b - truncated_reference(g_b, cut), 2))
  kappa = 1.0
  for g_b in stack:
    s = np.linalg.svd(g_b, compute_uv=False)
    cut = polar.default_rtol(g.shape, jnp.float32) if rtol is None else rtol
    kappa = max(kappa, s[0] / s[s > cut * s[0]][-1] if s[0] > 0 else 1.0)
  return errors, helpers.polar_tol(kappa, max(g.shape[-2:]))


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)])
@pytest.mark.parametrize("kind", KINDS)
def test_qdwh_is_as_accurate_as_svd_on_each_family(kind, shape):
  """Each family, tall, wide and square, at a tolerance in a gap of the singular values (so that
  both methods keep the same directions): the spectral distance to numpy's float64 U V^T is at
  most 4 times `svd`'s (a margin for the two methods' different round-off constants) or the
  float32 bound of a backward-stable method, 3 kappa round_off(max(P, N)) (`helpers.polar_tol`),
  kappa over the kept directions. Kappa 1e7's smallest directions lie below float32's tolerance
  and are dropped by both."""
  g = family(np.random.default_rng(1), kind, *shape).astype(np.float32).astype(np.float64)
  errors, bound = spectral_errors(g, gap_rtol(g))
  assert errors["qdwh"] <= max(4 * errors["svd"], bound), (errors, bound)


@pytest.mark.parametrize("shape", [(40, 12), (12, 40)])
def test_qdwh_on_a_stack_of_families(shape):
  """One stack of a random, an ill-conditioned (kappa 1e3), a rank-2 and a clustered matrix at
  the default tolerance (the rank-2 matrix's zero directions are dropped, the others kept): the
  same bound as above, matrix by matrix, and the batched drop step runs with a mixed stack."""
  rng = np.random.default_rng(2)
  g = np.stack([family(rng, kind, *shape) for kind in ("random", "kappa 1e3", "rank 2",
                                                       "clustered")])
  g = g.astype(np.float32).astype(np.float64)
  errors, bound = spectral_errors(g, None)
  assert errors["qdwh"] <= max(4 * errors["svd"], bound), (errors, bound)


def lowered(platform: str, shape: tuple[int, ...]) -> str:
  spec = jax.ShapeDtypeStruct(shape, jnp.float32)
  return export.export(jax.jit(polar.qdwh), platforms=[platform])(spec).mlir_module()


@pytest.mark.parametrize("shape", [(3, 40, 12), (12, 40)])
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_every_product_is_at_highest_precision(platform, shape):
  """Lowered for an accelerator (no device needed), every dot_general of `qdwh` (iteration, drop
  step and refinement) carries HIGHEST precision: the default would be TF32 on recent GPUs and
  one bfloat16 pass on TPU. For cuda, the only solver calls are the batched Cholesky (`potrf`)
  and the drop step's `syevd`: no QR factorisation, which cuSOLVER loops over the batch."""
  text = lowered(platform, shape)
  dots = [line for line in text.splitlines() if "stablehlo.dot_general" in line]
  assert dots
  for line in dots:
    assert "precision = [HIGHEST, HIGHEST]" in line, line
  if platform == "cuda":
    targets = set(re.findall(r"stablehlo\.custom_call @(\w+)", text))
    # The batched Cholesky: cuSOLVER's FFI call (jax >= 0.8), or XLA's own op before.
    assert "cusolver_potrf_ffi" in targets or "stablehlo.cholesky" in text
    assert targets <= {"cusolver_potrf_ffi", "cusolver_syevd_ffi"}, targets
