"""The matrix methods against numpy's float64 SVD, analytic cases and invariances."""

import os
import subprocess
import sys
import textwrap

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export  # A submodule: jax 0.7 needs it imported.

import orthax
import orthax._src.polar
from orthax import polar
from tests.helpers import condition_number, eps, iteration_tol, polar_tol, round_off
from tests.test_gram_iterations import SCHEDULES, iterate64

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXACT = {"svd": polar.svd, "eigh": polar.eigh, "qdwh": polar.qdwh, "auto": polar.auto}
APPROXIMATE = {"newton_schulz": polar.newton_schulz, "polar_express": polar.polar_express}
ALL = {**EXACT, **APPROXIMATE}


def reference(g: np.ndarray) -> np.ndarray:
  """U V^T of each matrix of g, in float64."""
  u, _, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  return u @ vt


def conditioned(rng, p, n, kappa, batch=()):
  """Random (batch..., p, n) float32 matrices with singular values log-spaced in [1/kappa, 1]."""
  k = min(p, n)
  u, _ = np.linalg.qr(rng.standard_normal(batch + (p, k)))
  v, _ = np.linalg.qr(rng.standard_normal(batch + (n, k)))
  s = np.logspace(0, -np.log10(kappa), k)
  return ((u * s[..., None, :]) @ np.swapaxes(v, -1, -2)).astype(np.float32)


def tol_of(name: str, g: np.ndarray) -> float:
  """Bound on float32's error in method `name` on g (spectral, so every entry): polar_tol at g's
  condition number for the exact methods, iteration_tol (default 5 steps) over g's
  Frobenius-normalised singular values for the iterations."""
  g = np.asarray(g, np.float64)
  dim = max(g.shape[-2:])
  if name in EXACT:
    return polar_tol(condition_number(g), dim)
  s = np.linalg.svd(g, compute_uv=False)
  s_min = float(np.min(s[..., -1] / np.linalg.norm(s, axis=-1)))
  schedule = "newton_schulz" if name == "newton_schulz" else "polar_express-5"
  return iteration_tol(SCHEDULES[schedule], dim, s_min)


def orthonormality_error(o: np.ndarray) -> float:
  o = np.asarray(o, np.float64)
  small = o if o.shape[-2] >= o.shape[-1] else np.swapaxes(o, -1, -2)
  gram = np.swapaxes(small, -1, -2) @ small
  return float(np.abs(gram - np.eye(gram.shape[-1])).max())


SHAPES = [(7, 3), (3, 7), (5, 5), (6, 1), (1, 6), (1, 1), (64, 16), (2, 3, 20, 8)]


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("shape", SHAPES)
def test_exact_methods_match_numpy(name, shape):
  rng = np.random.default_rng(0)
  g = conditioned(rng, shape[-2], shape[-1], kappa=10.0, batch=shape[:-2])
  o = EXACT[name](jnp.asarray(g))
  assert o.shape == g.shape and o.dtype == jnp.float32
  bound = polar_tol(condition_number(g), max(shape[-2:]))
  np.testing.assert_allclose(o, reference(g), atol=bound)
  assert orthonormality_error(o) < 2 * bound  # O^T O - I = dO^T U + U^T dO + dO^T dO


@hypothesis.settings(max_examples=20, deadline=None, derandomize=True)
@hypothesis.given(
    p=st.integers(1, 48), n=st.integers(1, 48), log_kappa=st.floats(0, 3),
    method=st.sampled_from(sorted(EXACT)), seed=st.integers(0, 2**16))
def test_exact_methods_property(p, n, log_kappa, method, seed):
  """Error within float32 round-off times the condition number, over shapes and conditioning."""
  kappa = 10.0**log_kappa
  g = conditioned(np.random.default_rng(seed), p, n, kappa)
  o = np.asarray(EXACT[method](jnp.asarray(g)), np.float64)
  bound = polar_tol(condition_number(g), max(p, n))
  assert np.abs(o - reference(g)).max() < bound
  assert orthonormality_error(o) < 2 * bound


@pytest.mark.parametrize("name", ALL)
def test_invariances(name):
  """O(c G) = O(G) for c > 0, O(Q G R) = Q O(G) R for orthogonal Q and R, O(O(G)) = O(G)."""
  rng = np.random.default_rng(1)
  g = conditioned(rng, 24, 8, kappa=4.0)
  q, _ = np.linalg.qr(rng.standard_normal((24, 24)))
  r, _ = np.linalg.qr(rng.standard_normal((8, 8)))
  def f(x):
    return np.asarray(ALL[name](jnp.asarray(x, jnp.float32)), np.float64)
  o = f(g)
  # Both sides are float32 computations, each within `tol` of the method in exact arithmetic on
  # its input; rounding 37 G, 1e-3 G or Q G R to float32 (eps / 2 per entry, below the round-off
  # `tol` allows) moves that by at most one `tol` more.
  tol = tol_of(name, g)
  np.testing.assert_allclose(f(37.0 * g), o, rtol=0, atol=3 * tol)
  np.testing.assert_allclose(f(1e-3 * g), o, rtol=0, atol=3 * tol)
  np.testing.assert_allclose(f(q @ g @ r), q @ o @ r, rtol=0, atol=3 * tol)
  if name in EXACT:
    # The polar factor of O is U V^T of O's SVD, which is max |s_i - 1| from O (numpy measures
    # it), and f(O) is within polar_tol at O's condition number of that.
    s = np.linalg.svd(o, compute_uv=False)
    np.testing.assert_allclose(f(o), o, rtol=0,
                               atol=polar_tol(s[0] / s[-1], 24) + np.abs(s - 1).max())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 1), (3, 2, 2)])
def test_zero_maps_to_zero(name, shape):
  o = ALL[name](jnp.zeros(shape))
  np.testing.assert_array_equal(o, np.zeros(shape))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_gives_nan_for_that_matrix_only(name, bad):
  g = conditioned(np.random.default_rng(2), 6, 4, kappa=3.0, batch=(2,))
  g[0, 1, 2] = bad
  o = np.asarray(ALL[name](jnp.asarray(g)))
  assert np.isnan(o[0]).all()
  assert np.isfinite(o[1]).all()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_entry_anywhere_in_any_matrix_is_found(name, bad):
  """The non-finite matrices are found by the same max |entry| reduction that scales them (NaN
  counted as inf): an entry at the start, the end or inside, of the first, a middle or the last
  matrix of a stack, under jit, makes exactly that matrix NaN; entries near the float32 maximum
  do not."""
  rng = np.random.default_rng(3)
  method = jax.jit(ALL[name])
  huge = np.float32(np.finfo(np.float32).max)
  for shape in [(1, 40, 24), (5, 40, 24), (3, 24, 40)]:
    base = conditioned(rng, *shape[1:], kappa=3.0, batch=shape[:1])
    base[:, 0, 0] = huge  # Finite, but its Gram or Frobenius norm would overflow unscaled.
    base[:, -1, -1] = -huge
    for b in sorted({0, shape[0] // 2, shape[0] - 1}):
      for i, j in [(0, 0), (shape[1] - 1, shape[2] - 1), (shape[1] // 2, 7)]:
        g = base.copy()
        g[b, i, j] = bad
        o = np.asarray(method(jnp.asarray(g)))
        for k in range(shape[0]):
          assert (np.isnan(o[k]).all() if k == b else np.isfinite(o[k]).all()), (shape, b, i, j)
    np.testing.assert_array_equal(np.isfinite(np.asarray(method(jnp.asarray(base)))), True)


@pytest.mark.parametrize("name", EXACT)
def test_rank_deficient_gradient_keeps_only_its_directions(name):
  """The issue's case: a rank-4 512 x 10 gradient, as a dense layer gets at batch 4."""
  rng = np.random.default_rng(3)
  g = (rng.standard_normal((512, 4)) @ rng.standard_normal((4, 10))).astype(np.float32)
  o = np.asarray(EXACT[name](jnp.asarray(g)), np.float64)
  u, s, vt = np.linalg.svd(g.astype(np.float64), full_matrices=False)
  # The kept directions' factor moves by at most 3 ||dG|| / s_4 (s_5 = 0): polar_tol at s_1 / s_4.
  tol = polar_tol(s[0] / s[3], 512)
  np.testing.assert_allclose(o, u[:, :4] @ vt[:4], rtol=0, atol=tol)
  # | ||O + dO||_F^2 - 4 | <= 2 ||O||_F ||dO||_F + ||dO||_F^2, dO of rank at most 8.
  frobenius = np.sqrt(8) * tol
  assert abs(np.sum(o**2) - 4.0) <= 2 * 2 * frobenius + frobenius**2
  # rtol=0 is the paper's U V^T: the 6 directions of round-off come back at full size.
  # ||U V^T||_F^2 = tr(U^T U V^T V) is within 10 (||E|| + ||F|| + ||E|| ||F||) of 10, where E =
  # U^T U - I and F = V^T V - I are at most round_off(512) for a backward-stable SVD; the float32
  # product U V^T adds at most round_off(10) ||U||_F ||V||_F = 10 round_off(10) in the Frobenius
  # norm, so 2 sqrt(10) times that to the square.
  raw = np.asarray(polar.svd(jnp.asarray(g), rtol=0.0), np.float64)
  e = round_off(512)
  assert abs(np.sum(raw**2) - 10.0) <= 10 * (2 * e + e**2) + 2 * np.sqrt(10) * 10 * round_off(10)


@pytest.mark.parametrize("name", EXACT)
def test_rtol_drops_small_directions(name):
  rng = np.random.default_rng(4)
  u, _ = np.linalg.qr(rng.standard_normal((30, 6)))
  v, _ = np.linalg.qr(rng.standard_normal((6, 6)))
  s = np.array([1.0, 0.5, 0.2, 0.05, 0.004, 0.001])
  g = ((u * s) @ v.T).astype(np.float32)
  o = np.asarray(EXACT[name](jnp.asarray(g), rtol=1e-2), np.float64)
  # Wedin: the kept directions' factor moves by at most 3 ||dG|| / (0.05 - 0.004), polar_tol at
  # kappa 1 / 0.046.
  np.testing.assert_allclose(o, u[:, :4] @ v[:, :4].T, rtol=0, atol=polar_tol(1 / 0.046, 30))


def test_eigh_is_exact_on_ill_conditioned_input():
  """Beyond the Gram route's accuracy, eigh hands the stack to svd: never a blown-up result."""
  rng = np.random.default_rng(5)
  for kappa in [1e2, 1e4, 1e6]:
    g = conditioned(rng, 96, 32, kappa=kappa, batch=(3,))
    o = np.asarray(polar.eigh(jnp.asarray(g)), np.float64)
    # numpy's polar factor on the directions above 1e-2 of the largest singular value, where a
    # perturbation of G by float32 round-off moves O by at most polar_tol(1e2).
    u, s, vt = np.linalg.svd(g.astype(np.float64), full_matrices=False)
    for i in range(3):
      big = s[i] > 1e-2 * s[i, 0]
      core = u[i][:, big].T @ o[i] @ vt[i][big].T
      np.testing.assert_allclose(core, np.eye(int(big.sum())), atol=polar_tol(1e2, 96))
    # Directions below rtol = max(P, N) * eps are dropped, so O^T O is a projection.
    gram = np.swapaxes(o, -1, -2) @ o
    # O = U V^T with U and V orthonormal to round-off: polar_tol at kappa 1, doubled for O^T O.
    np.testing.assert_allclose(gram @ gram, gram, atol=2 * polar_tol(1.0, 96))
    # Its trace is the number of directions kept, to 32 diagonal entries of that bound.
    assert np.trace(gram, axis1=-2, axis2=-1) == pytest.approx(
        (np.logspace(0, -np.log10(kappa), 32) > 96 * 2**-23).sum(), abs=32 * 2 * polar_tol(1.0, 96))


@pytest.mark.parametrize("shape", [(96, 32), (32, 96)])
@pytest.mark.parametrize("bad", [[2], [0, 4], []])
def test_eigh_falls_back_per_matrix_on_mixed_stacks(shape, bad):
  """Each matrix of a stack gets what it would get alone: the Gram route if it is
  well-conditioned, else the SVD, whatever its neighbours are."""
  rng = np.random.default_rng(10)
  g = np.stack([conditioned(rng, *shape, kappa=1e4 if i in bad else 10.0) for i in range(5)])
  o = np.asarray(polar.eigh(jnp.asarray(g)))
  wide = shape[0] < shape[1]  # eigh decomposes the transpose of a wide matrix
  exact = np.asarray(polar.svd(jnp.asarray(np.swapaxes(g, 1, 2) if wide else g)))
  exact = np.swapaxes(exact, 1, 2) if wide else exact
  for i in range(5):
    # Every route is held to polar_tol; two float32 results (stacked and alone, eigh's and svd's)
    # to twice it. The Gram route on a matrix at kappa 1e4 is off by O(1) (its Gram is at 1e8,
    # beyond float32): far outside polar_tol(1e4, 96) ~ 0.07.
    tol = polar_tol(condition_number(g[i]), max(shape))
    np.testing.assert_allclose(o[i], reference(g[i]), rtol=0, atol=tol)
    # That bound is loose at 1e4, so also: on the directions above 1e-2 of the largest singular
    # value, U^T O V = I to polar_tol at 1e2 (as in test_eigh_is_exact_on_ill_conditioned_input).
    u, s, vt = np.linalg.svd(g[i].astype(np.float64), full_matrices=False)
    big = s > 1e-2 * s[0]
    core_tol = polar_tol(min(condition_number(g[i]), 1e2), max(shape))

    def core(x, u=u, vt=vt, big=big):
      return u[:, big].T @ x @ vt[big].T

    np.testing.assert_allclose(core(o[i]), np.eye(int(big.sum())), rtol=0, atol=core_tol)
    alone = np.asarray(polar.eigh(jnp.asarray(g[i])))
    np.testing.assert_allclose(o[i], alone, rtol=0, atol=2 * tol)
    np.testing.assert_allclose(core(o[i]), core(alone), rtol=0, atol=2 * core_tol)
    if i in bad:
      np.testing.assert_allclose(o[i], exact[i], rtol=0, atol=2 * tol)
      np.testing.assert_allclose(core(o[i]), core(exact[i]), rtol=0, atol=2 * core_tol)
    else:  # the Gram route, not the SVD: close to it, but not bit for bit
      assert not np.array_equal(o[i], exact[i])


def test_eigh_decomposes_only_the_inaccurate_matrices_by_svd():
  """On CPU each matrix's SVD sits behind its own lax.cond inside the loop over the stack."""
  jaxpr = str(jax.make_jaxpr(polar.eigh)(jnp.ones((5, 96, 32))))
  assert "scan" in jaxpr and "cond" in jaxpr and "svd" in jaxpr


def test_classifier_gradient_null_direction_is_dropped():
  """Softmax cross-entropy gradients sum to zero over classes: G 1 = 0, so U V^T has a noise
  direction there; the default rtol removes it and keeps every other direction."""
  rng = np.random.default_rng(6)
  h = rng.standard_normal((64, 32)).astype(np.float32)
  logits = rng.standard_normal((64, 10))
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  g = (h.T @ (probs - np.eye(10)[rng.integers(0, 10, 64)])).astype(np.float32)
  # The polar factor O of the 9 kept directions has O 1 = 0; float32's dO is within polar_tol at
  # their condition number, so |dO 1| <= sqrt(10) polar_tol per entry, and | ||O + dO||_F^2 - 9 |
  # <= 2 ||O||_F ||dO||_F + ||dO||_F^2 with dO of rank at most 18.
  s = np.linalg.svd(g.astype(np.float64), compute_uv=False)
  tol = polar_tol(s[0] / s[8], 32)
  frobenius = np.sqrt(18) * tol
  for method in EXACT.values():
    o = np.asarray(method(jnp.asarray(g)), np.float64)
    np.testing.assert_allclose(o @ np.ones(10), 0, rtol=0, atol=np.sqrt(10) * tol)
    assert abs(np.sum(o**2) - 9.0) <= 2 * 3 * frobenius + frobenius**2


def band(method, steps, p=40, n=16, low=1e-2):
  """Singular values of method(G) where G's singular values span [low, 1] (log-spaced).

  Also returns the largest off-diagonal entry of U^T O V, which is 0 when O shares G's singular
  vectors, and the singular values in exact arithmetic: the composed polynomial, in float64, at
  G's Frobenius-normalised singular values, and the smallest of those."""
  rng = np.random.default_rng(7)
  u, _ = np.linalg.qr(rng.standard_normal((p, n)))
  v, _ = np.linalg.qr(rng.standard_normal((n, n)))
  s = np.logspace(0, np.log10(low), n)
  g = (u * s) @ v.T
  o = np.asarray(method(jnp.asarray(g, jnp.float32), steps=steps), np.float64)
  core = u.T @ o @ v
  off = np.abs(core - np.diag(np.diag(core))).max()
  exact = s / np.linalg.norm(s)
  for a, b, c in coefficients_of(method, steps):
    exact = a * exact + b * exact**3 + c * exact**5
  return np.diag(core), off, exact, s[-1] / np.linalg.norm(s)


def coefficients_of(method, steps: int) -> np.ndarray:
  if method is polar.newton_schulz:
    return np.tile(SCHEDULES["newton_schulz"][:1], (steps, 1))
  return np.asarray(polar.polar_express_coefficients(steps))


@pytest.mark.parametrize(
    "method, steps, lo, hi",
    [(polar.newton_schulz, 5, 0.6, 1.25), (polar.polar_express, 5, 0.86, 1.14),
     (polar.polar_express, 6, 0.995, 1.005), (polar.polar_express, 7, 0.9999, 1.0001)])
def test_approximate_methods_singular_value_band(method, steps, lo, hi):
  """The composed polynomial keeps every singular value in [lo, hi] (float64); float32's are
  within iteration_tol of it, and its singular vectors G's (off-diagonal entries of U^T O V)."""
  sv, off, exact, s_min = band(method, steps)
  assert lo <= exact.min() and exact.max() <= hi, (exact.min(), exact.max())
  tol = iteration_tol(coefficients_of(method, steps), 40, s_min)
  np.testing.assert_allclose(sv, exact, rtol=0, atol=tol)
  assert off < tol


@pytest.mark.parametrize("steps", [3, 4, 5, 6, 7, 8, 10])
def test_polar_express_schedule(steps):
  """The composed polynomials, in float64: positive on (0, 1], converging towards 1."""
  x = np.logspace(-3, 0, 2000)
  y = x.copy()
  for a, b, c in polar.polar_express_coefficients(steps):
    y = a * y + b * y**3 + c * y**5
    assert (y > 0).all()
  expected = {3: 0.9, 4: 0.6, 5: 0.14, 6: 2e-3, 7: 1e-6, 8: 1e-9, 10: 1e-9}[steps]
  assert np.abs(y - 1).max() < expected


def test_newton_schulz_is_muons_iteration():
  """One step from a Frobenius-normalised matrix, by hand with Muon's coefficients."""
  rng = np.random.default_rng(8)
  g = rng.standard_normal((5, 12))  # wide, so no transpose
  x = g / np.linalg.norm(g)
  a = x @ x.T
  expected = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
  s = np.linalg.svd(g, compute_uv=False)
  tol = iteration_tol(SCHEDULES["newton_schulz"][:1], 12, s[-1] / np.linalg.norm(s))
  np.testing.assert_allclose(
      polar.newton_schulz(jnp.asarray(g, jnp.float32), steps=1), expected, rtol=0, atol=tol)
  # Tall input goes through the transpose: the same result, transposed.
  np.testing.assert_allclose(
      polar.newton_schulz(jnp.asarray(g.T, jnp.float32), steps=1), expected.T, rtol=0, atol=tol)


@pytest.mark.parametrize("name", ALL)
def test_bf16_and_jit(name):
  """bfloat16 in, bfloat16 out, and the value: the float64 result for the same (bfloat16)
  numbers, to one bfloat16 rounding of the output (eps / 2 of its largest entry, doubled) plus
  float32's bound for the computation itself."""
  g = conditioned(np.random.default_rng(9), 12, 4, kappa=3.0)
  g16 = jnp.asarray(g, jnp.bfloat16)
  o = jax.jit(ALL[name])(g16)
  assert o.dtype == jnp.bfloat16
  g64 = np.asarray(g16, np.float64)
  if name in EXACT:
    expected, bound = reference(g64), polar_tol(condition_number(g64), 12)
  else:
    coefficients = SCHEDULES["newton_schulz" if name == "newton_schulz" else "polar_express-5"]
    s = np.linalg.svd(g64, compute_uv=False)
    expected = iterate64(g64, coefficients)
    bound = iteration_tol(coefficients, 12, s[-1] / np.linalg.norm(s))
  np.testing.assert_allclose(np.asarray(o, np.float64), expected,
                             atol=eps(jnp.bfloat16) * np.abs(expected).max() + bound)


def test_auto_chooses_by_shape():
  """On CPU, tall matrices take the Gram route, square ones the SVD."""
  def lowered(shape):
    return jax.jit(polar.auto).lower(jnp.ones(shape)).as_text()
  assert "syevd" in lowered((64, 8)) and "syevd" in lowered((8, 64))
  assert "syevd" not in lowered((8, 8)) and "gesdd" in lowered((8, 8))


def test_input_validation():
  with pytest.raises(ValueError, match="shape"):
    polar.svd(jnp.ones(3))
  with pytest.raises(ValueError, match="floating"):
    polar.eigh(jnp.ones((3, 2), jnp.int32))


def test_public_names():
  assert set(orthax.polar.__all__) == {
      "AUTO_RULES", "AutoRule", "Measured", "Modelled", "auto", "default_rtol", "eigh",
      "newton_schulz", "polar_express", "polar_express_coefficients", "qdwh",
      "single_thread_cpu_lapack", "svd"}


# Faults from public bug reports (issue #12), and the rest of their kinds.

INF_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, optax
    import orthax
    for shape in [(64, 8), (3, 3), (16, 16)]:
      g = jnp.ones(shape).at[1, 2].set(jnp.inf)
      for name in ["auto", "svd", "eigh"]:
        tx = orthax.orthogonalise_components(name)
        out = jax.jit(tx.update)({"w": g}, tx.init({"w": g}))[0]["w"]
        assert bool(jnp.all(jnp.isnan(out))), (shape, name)
        direct = getattr(orthax.polar, name)(g)
        assert bool(jnp.all(jnp.isnan(direct))), (shape, name)
      # A user's method that calls LAPACK itself is guarded by the transformation.
      tx = orthax.orthogonalise_components(
          lambda x: jnp.linalg.svd(x, full_matrices=False)[0] @ jnp.linalg.svd(
              x, full_matrices=False)[2])
      out = jax.jit(tx.update)({"w": g}, tx.init({"w": g}))[0]["w"]
      assert bool(jnp.all(jnp.isnan(out))), shape
    # eigh's own fallback to svd (an ill-conditioned matrix next to one with inf) is guarded too.
    rng = np.random.default_rng(0)
    ill = (rng.standard_normal((64, 8)) * np.logspace(0, -6, 8)).astype(np.float32)
    stack = jnp.stack([jnp.asarray(ill), jnp.ones((64, 8)).at[0, 0].set(-jnp.inf)])
    out = orthax.polar.eigh(stack)
    assert bool(jnp.all(jnp.isnan(out[1]))) and bool(jnp.all(jnp.isfinite(out[0])))
    # apply_if_finite skips the step.
    params = {"w": jnp.zeros((64, 8))}
    tx = optax.apply_if_finite(optax.chain(orthax.orthogonalise(), optax.sgd(0.1)), 3)
    updates, state = jax.jit(tx.update)({"w": jnp.ones((64, 8)).at[1, 2].set(jnp.inf)},
                                        tx.init(params), params)
    assert int(state.notfinite_count) == 1 and not bool(jnp.any(updates["w"]))
    print("finished")
""")


def test_inf_gradient_gives_nan_at_once_instead_of_hanging_lapack():
  """Fault 1: LAPACK's SVD loops forever on inf; no decomposition may see a non-finite entry.

  Before: a (64, 8) gradient of ones with one +inf, through orthogonalise_components("auto")
  (also "svd", "eigh"; also (3, 3), (16, 16)), never returned on CPU. After: all-NaN at once.
  Runs in a subprocess with a time limit, so a regression fails instead of hanging the suite.
  """
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  try:
    result = subprocess.run([sys.executable, "-c", INF_SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
  except subprocess.TimeoutExpired:
    pytest.fail("an update of a gradient holding inf did not return within 300 s")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("finished")


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_huge_and_tiny_finite_matrices_give_the_polar_factor(name, scale):
  """Fault 1's kind, finite input: the Gram (eigh) or the Frobenius norm (newton_schulz,
  polar_express) of entries ~1e20 overflowed to inf (NaN, or a zero update), and of ~1e-30
  underflowed to 0; each matrix is now scaled exactly by a power of two first."""
  g = conditioned(np.random.default_rng(10), 24, 8, kappa=4.0)
  expected = np.asarray(ALL[name](jnp.asarray(g)))
  o = np.asarray(ALL[name](jnp.asarray(g * scale, jnp.float32)))
  # Two float32 computations, each within `tol`; rounding G * scale moves the exact result by at
  # most one `tol` more (eps / 2 per entry).
  np.testing.assert_allclose(o, expected, rtol=0, atol=3 * tol_of(name, g))
  np.testing.assert_allclose(o, reference(g) if name in EXACT else iterate64(
      g.astype(np.float64), SCHEDULES["newton_schulz" if name == "newton_schulz"
                                      else "polar_express-5"]), rtol=0, atol=2 * tol_of(name, g))


def test_bfloat16_round_off_directions_are_dropped():
  """Fault 4: a rank-4 gradient x^T d computed in bfloat16 had ||U V^T||_F^2 = 16.0, not 4: the
  default tolerance came from float32, not from the data's precision."""
  x = jax.random.normal(jax.random.key(0), (4, 64), jnp.bfloat16)
  d = jax.random.normal(jax.random.key(1), (4, 16), jnp.bfloat16)
  g = x.T @ d
  assert g.dtype == jnp.bfloat16
  for name, method in EXACT.items():
    o = np.asarray(method(g), np.float64)
    assert abs(np.sum(o**2) - 4.0) < 0.5, name
  # The same product in float32 is rank 4 to float32 precision already: the 4 directions kept
  # are orthonormal to polar_tol at their own condition number, 4 diagonal entries of O^T O.
  g32 = x.astype(jnp.float32).T @ d.astype(jnp.float32)
  s = np.linalg.svd(np.asarray(g32, np.float64), compute_uv=False)
  tol = polar_tol(s[0] / s[3], 64)
  assert np.sum(np.asarray(polar.svd(g32), np.float64) ** 2) == pytest.approx(
      4.0, abs=4 * (2 * tol + tol**2))


def test_bfloat16_keeps_a_genuine_small_direction():
  """The bfloat16 rule drops rounding, not signal: a direction at 5 % of the largest survives."""
  rng = np.random.default_rng(11)
  u, _ = np.linalg.qr(rng.standard_normal((64, 3)))
  v, _ = np.linalg.qr(rng.standard_normal((16, 3)))
  g = jnp.asarray((u * np.array([1.0, 0.3, 0.05])) @ v.T, jnp.bfloat16)
  assert polar.default_rtol((64, 16), jnp.float32, jnp.bfloat16) == pytest.approx(4 * 2**-7)
  # bfloat16's rounding dG moves the rank-3 factor by at most 3 ||dG|| / (s_3 - ||dG||) (Li and
  # Sun, with Weyl for s_3), and float32 adds polar_tol at the kept directions' condition number.
  d_g = np.asarray(g, np.float64) - (u * np.array([1.0, 0.3, 0.05])) @ v.T
  norm = np.linalg.norm(d_g, 2)
  tol = 3 * norm / (0.05 - norm) + polar_tol(1.0 / (0.05 - norm), 64)
  for name, method in EXACT.items():
    o = np.asarray(method(g), np.float64)
    assert np.sum(o**2) == pytest.approx(3.0, abs=3 * (2 * tol + tol**2)), name
    np.testing.assert_allclose(o, u @ v.T, rtol=0, atol=tol, err_msg=name)


def test_default_rtol_is_numpys_for_float32():
  for shape in [(64, 16), (3, 3), (1000, 1)]:
    assert polar.default_rtol(shape, jnp.float32, jnp.float32) == max(shape) * 2.0**-23
  # Float32 data decomposed in float64 keeps float32's rounding bound, not float64's eps.
  assert polar.default_rtol((64, 16), jnp.float64, jnp.float32) == 4 * 2.0**-23


@pytest.mark.parametrize("name", EXACT)
def test_rtol_may_be_a_traced_array(name):
  """Fault 3's kind at the matrix level: rtol as an array, traced under jit."""
  rng = np.random.default_rng(12)
  u, _ = np.linalg.qr(rng.standard_normal((20, 3)))
  v, _ = np.linalg.qr(rng.standard_normal((3, 3)))
  g = jnp.asarray((u * np.array([1.0, 0.5, 0.005])) @ v.T, jnp.float32)
  method = EXACT[name]
  out = jax.jit(lambda g, r: method(g, rtol=r))(g, jnp.asarray(0.01))
  # Two float32 results, each within Wedin's bound on the kept directions (the gap to the
  # dropped one, 0.5 - 0.005): polar_tol at kappa 1 / 0.495. | ||O + dO||_F^2 - 2 | <=
  # 2 ||O||_F ||dO||_F + ||dO||_F^2, dO of rank at most 4.
  kept = polar_tol(1 / 0.495, 20)
  np.testing.assert_allclose(out, method(g, rtol=0.01), rtol=0, atol=2 * kept)
  frobenius = 2 * kept
  assert abs(np.sum(np.asarray(out, np.float64) ** 2) - 2.0) <= (
      2 * np.sqrt(2) * frobenius + frobenius**2)
  # A traced rtol cannot be checked when traced; out of range it makes the result NaN.
  assert bool(jnp.all(jnp.isnan(jax.jit(lambda g, r: method(g, rtol=r))(g, jnp.asarray(1.5)))))
  with pytest.raises(ValueError, match="rtol"):
    method(g, rtol=1.5)


def test_steps_must_be_static():
  with pytest.raises(ValueError, match="static_args"):
    polar.newton_schulz(jnp.ones((4, 3)), steps=jnp.asarray(5))


def test_auto_rules_say_where_they_come_from():
  """Each row is measured (device, date, command, results file) or modelled (the reasoning)."""
  for platform, rule in polar.AUTO_RULES.items():
    assert isinstance(rule, polar.AutoRule), platform
    source = rule.source
    assert isinstance(source, (polar.Measured, polar.Modelled)), platform
    assert all(isinstance(field, str) and field for field in source), platform
    if isinstance(source, polar.Measured):
      assert os.path.exists(os.path.join(ROOT, source.results)), source.results
      assert source.command.startswith("python -m benchmarks."), source.command


def test_auto_uses_svd_on_a_platform_without_a_rule(monkeypatch):
  """An unlisted backend gets svd at every shape (documented), not eigh at every shape."""
  monkeypatch.setattr(orthax._src.polar, "AUTO_RULES", {})
  text = jax.jit(lambda x: polar.auto(x)).lower(jnp.ones((64, 8))).as_text()  # A fresh trace.
  assert "syevd" not in text and "gesdd" in text


@pytest.mark.parametrize("method", ["auto", "svd", "eigh", "qdwh"])
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_exact_methods_and_their_derivative_multiply_at_highest_precision(platform, method):
  """Lowered for an accelerator (no device needed), every matrix product of an exact method and
  of its derivative (`jax.jvp`) carries HIGHEST precision: the default is TF32 on recent GPUs and
  one bfloat16 pass on TPU, about 1e-3 relative, far from the float32 round-off these methods
  state."""
  spec = jax.ShapeDtypeStruct((3, 40, 12), jnp.float32)
  fn = getattr(polar, method)
  for f, args in ((fn, (spec,)), (lambda g, t: jax.jvp(fn, (g,), (t,)), (spec, spec))):
    text = export.export(jax.jit(f), platforms=[platform])(*args).mlir_module()
    dots = [line for line in text.splitlines() if "stablehlo.dot_general" in line]
    assert dots
    assert all("precision = [HIGHEST, HIGHEST]" in line for line in dots), [
        line for line in dots if "HIGHEST" not in line]
