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

import orthax
import orthax._src.polar
from orthax import polar
from tests.helpers import condition_number, eps, iteration_tol, polar_tol
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
  atol = 1e-5 if name in EXACT else 1e-4
  np.testing.assert_allclose(f(37.0 * g), o, atol=atol)
  np.testing.assert_allclose(f(1e-3 * g), o, atol=atol)
  np.testing.assert_allclose(f(q @ g @ r), q @ o @ r, atol=atol)
  if name in EXACT:
    np.testing.assert_allclose(f(o), o, atol=atol)


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
  np.testing.assert_allclose(o, u[:, :4] @ vt[:4], atol=1e-5)
  assert np.sum(o**2) == pytest.approx(4.0, abs=1e-4)
  # rtol=0 is the paper's U V^T: the 6 directions of round-off come back at full size.
  raw = np.asarray(polar.svd(jnp.asarray(g), rtol=0.0), np.float64)
  assert np.sum(raw**2) == pytest.approx(10.0, abs=1e-3)


@pytest.mark.parametrize("name", EXACT)
def test_rtol_drops_small_directions(name):
  rng = np.random.default_rng(4)
  u, _ = np.linalg.qr(rng.standard_normal((30, 6)))
  v, _ = np.linalg.qr(rng.standard_normal((6, 6)))
  s = np.array([1.0, 0.5, 0.2, 0.05, 0.004, 0.001])
  g = ((u * s) @ v.T).astype(np.float32)
  o = np.asarray(EXACT[name](jnp.asarray(g), rtol=1e-2), np.float64)
  np.testing.assert_allclose(o, u[:, :4] @ v[:, :4].T, atol=1e-5)


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
    assert np.trace(gram, axis1=-2, axis2=-1) == pytest.approx(
        (np.logspace(0, -np.log10(kappa), 32) > 96 * 2**-23).sum(), abs=1e-3)


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
    np.testing.assert_allclose(o[i], reference(g[i]), atol=1e-3 if i in bad else 1e-5)
    alone = np.asarray(polar.eigh(jnp.asarray(g[i])))
    np.testing.assert_allclose(o[i], alone, rtol=0, atol=1e-6)
    if i in bad:
      np.testing.assert_allclose(o[i], exact[i], rtol=0, atol=1e-6)
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
  for method in EXACT.values():
    o = np.asarray(method(jnp.asarray(g)), np.float64)
    np.testing.assert_allclose(o @ np.ones(10), 0, atol=1e-5)
    assert np.sum(o**2) == pytest.approx(9.0, abs=1e-4)


def band(method, steps, p=40, n=16, low=1e-2):
  """Singular values of method(G) where G's normalised singular values span [low, 1] / sqrt(n).

  Also returns the largest off-diagonal entry of U^T O V, which is 0 when O shares G's singular
  vectors."""
  rng = np.random.default_rng(7)
  u, _ = np.linalg.qr(rng.standard_normal((p, n)))
  v, _ = np.linalg.qr(rng.standard_normal((n, n)))
  s = np.logspace(0, np.log10(low), n)
  g = (u * s) @ v.T
  o = np.asarray(method(jnp.asarray(g, jnp.float32), steps=steps), np.float64)
  core = u.T @ o @ v
  off = np.abs(core - np.diag(np.diag(core))).max()
  return np.diag(core), off


@pytest.mark.parametrize(
    "method, steps, lo, hi",
    [(polar.newton_schulz, 5, 0.6, 1.25), (polar.polar_express, 5, 0.86, 1.14),
     (polar.polar_express, 6, 0.995, 1.005), (polar.polar_express, 7, 0.9999, 1.0001)])
def test_approximate_methods_singular_value_band(method, steps, lo, hi):
  sv, off = band(method, steps)
  assert lo <= sv.min() and sv.max() <= hi, (sv.min(), sv.max())
  assert off < 1e-4


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
  np.testing.assert_allclose(
      polar.newton_schulz(jnp.asarray(g, jnp.float32), steps=1), expected, atol=1e-5)
  # Tall input goes through the transpose: the same result, transposed.
  np.testing.assert_allclose(
      polar.newton_schulz(jnp.asarray(g.T, jnp.float32), steps=1), expected.T, atol=1e-5)


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
  np.testing.assert_allclose(o, expected, atol=1e-5)


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
  # The same product in float32 is rank 4 to float32 precision already.
  g32 = x.astype(jnp.float32).T @ d.astype(jnp.float32)
  assert np.sum(np.asarray(polar.svd(g32), np.float64) ** 2) == pytest.approx(4.0, abs=1e-3)


def test_bfloat16_keeps_a_genuine_small_direction():
  """The bfloat16 rule drops rounding, not signal: a direction at 5 % of the largest survives."""
  rng = np.random.default_rng(11)
  u, _ = np.linalg.qr(rng.standard_normal((64, 3)))
  v, _ = np.linalg.qr(rng.standard_normal((16, 3)))
  g = jnp.asarray((u * np.array([1.0, 0.3, 0.05])) @ v.T, jnp.bfloat16)
  assert polar.default_rtol((64, 16), jnp.float32, jnp.bfloat16) == pytest.approx(4 * 2**-7)
  for name, method in EXACT.items():
    o = np.asarray(method(g), np.float64)
    assert np.sum(o**2) == pytest.approx(3.0, abs=0.1), name
    np.testing.assert_allclose(o, u @ v.T, atol=0.05)


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
  np.testing.assert_allclose(out, method(g, rtol=0.01), atol=1e-6)
  assert np.sum(np.asarray(out, np.float64) ** 2) == pytest.approx(2.0, abs=1e-4)
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
