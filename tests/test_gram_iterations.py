"""The Gram form of the matrix-product methods against the plain form, float64 and numpy's SVD.

Errors are spectral norms (the worst direction). Tolerances are `helpers.iteration_tol`: float32
round-off per step times how much the remaining steps amplify it, over the singular values the
input has. That gain is large where small singular values are driven towards 1 (about 1.4e4 for
10 Polar Express steps at condition number 1e6, against 60 for a random Gaussian matrix), so
the bound is too; each form, and so their difference, is held to it against the float64
iteration.
"""

import hypothesis
import hypothesis.strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from orthax import polar
from orthax._src import polar_iterative as polar_src
from tests.helpers import NEWTON_SCHULZ_5, iteration_tol, round_off

SCHEDULES = {
    "newton_schulz": NEWTON_SCHULZ_5,
    "polar_express-5": np.asarray(polar.polar_express_coefficients(5)),
    "polar_express-7": np.asarray(polar.polar_express_coefficients(7)),
    "polar_express-10": np.asarray(polar.polar_express_coefficients(10)),
}


def conditioned(rng, p, n, kappa, batch=3):
  """(batch, p, n) float64 matrices with singular values log-spaced over [1/kappa, 1]."""
  k = min(p, n)
  u, _ = np.linalg.qr(rng.standard_normal((batch, p, k)))
  v, _ = np.linalg.qr(rng.standard_normal((batch, n, k)))
  return (u * np.logspace(0, -np.log10(kappa), k)) @ np.swapaxes(v, -1, -2)


def tol(g, coefficients):
  """`iteration_tol` for g's smallest Frobenius-normalised singular value and longer side."""
  s = np.linalg.svd(g, compute_uv=False)
  s_min = float(np.min(s[..., -1] / np.linalg.norm(s, axis=-1)))
  return iteration_tol(coefficients, max(g.shape[-2:]), s_min)


def iterate64(g, coefficients):
  """The plain iteration of `_odd_polynomial_steps` in float64."""
  tall = g.shape[-2] > g.shape[-1]
  x = np.swapaxes(g, -1, -2) if tall else g
  x = x / np.linalg.norm(x, axis=(-2, -1), keepdims=True)
  for a, b, c in coefficients:
    r = x @ np.swapaxes(x, -1, -2)
    x = a * x + (b * r + c * (r @ r)) @ x
  return np.swapaxes(x, -1, -2) if tall else x


def spectral(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b, ord=2, axis=(-2, -1)).max())


def both_forms(g, coefficients):
  x = jnp.asarray(g, jnp.float32)
  return [np.asarray(polar_src._odd_polynomial_steps(x, coefficients, gram=gram), np.float64)
          for gram in (False, True)]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("kappa", [None, 1e2, 1e6])
@pytest.mark.parametrize("aspect", [1, 2, 4, 9])
@pytest.mark.parametrize("wide", [False, True])
def test_gram_form_matches_plain_form(schedule, kappa, aspect, wide):
  rng = np.random.default_rng(aspect)
  n = 16
  g = rng.standard_normal((3, aspect * n, n)) if kappa is None else conditioned(
      rng, aspect * n, n, kappa)
  if wide:
    g = np.swapaxes(g, -1, -2)
  plain, gram = both_forms(g, SCHEDULES[schedule])
  exact = iterate64(g, SCHEDULES[schedule])
  bound = tol(g, SCHEDULES[schedule])
  assert spectral(gram, exact) < bound and spectral(plain, exact) < bound
  assert spectral(gram, plain) < 2 * bound  # Each within the bound of the float64 iteration.


@pytest.mark.parametrize("aspect", [1, 2, 4, 9])
@pytest.mark.parametrize("wide", [False, True])
def test_gram_form_gives_numpys_polar_factor(aspect, wide):
  """Polar Express with 7 steps converges where every singular value is above 1e-3 of the
  Frobenius norm (there within 1e-8 of 1 in exact arithmetic, test_polar's schedule test): both
  forms are then U V^T to the iteration's float32 bound."""
  rng = np.random.default_rng(10 + aspect)
  g = conditioned(rng, aspect * 16, 16, kappa=1e2)
  if wide:
    g = np.swapaxes(g, -1, -2)
  u, _, vt = np.linalg.svd(g, full_matrices=False)
  bound = 1e-8 + tol(g, SCHEDULES["polar_express-7"])
  for o in both_forms(g, SCHEDULES["polar_express-7"]):
    assert spectral(o, u @ vt) < bound


@pytest.mark.parametrize("aspect", [2, 9])
def test_gram_form_on_ill_conditioned_input_is_exact_on_converged_directions(aspect):
  """With condition number 1e6 the smallest directions never converge, in either form; on those
  above 1e-2 of the largest singular value, U^T O V is the identity to the iteration's float32
  bound over those singular values."""
  rng = np.random.default_rng(20 + aspect)
  g = conditioned(rng, aspect * 32, 32, kappa=1e6)
  u, s, vt = np.linalg.svd(g, full_matrices=False)
  big = s[0] > 1e-2
  s_min = 1e-2 / np.linalg.norm(s[0])  # Frobenius-normalised
  bound = 1e-8 + iteration_tol(SCHEDULES["polar_express-7"], aspect * 32, s_min)
  for o in both_forms(g, SCHEDULES["polar_express-7"]):
    core = np.swapaxes(u[..., big], -1, -2) @ o @ np.swapaxes(vt[..., big, :], -1, -2)
    assert np.abs(core - np.eye(int(big.sum()))).max() < bound


def test_gram_form_needs_its_restarts():
  """Run through from X_0 without restarting, the Gram form drifts far beyond round-off on
  ill-conditioned input; restarting every two steps is what keeps it at the plain form's."""
  g = conditioned(np.random.default_rng(30), 144, 16, kappa=1e6)
  coefficients = SCHEDULES["polar_express-7"]
  x = jnp.asarray(np.swapaxes(g, -1, -2), jnp.float32)
  x = x / jnp.linalg.norm(x, axis=(-2, -1), keepdims=True)
  unrestarted = np.swapaxes(np.asarray(polar_src._gram_steps(x, coefficients), np.float64), -1, -2)
  assert spectral(unrestarted, iterate64(g, coefficients)) > 1e-3


@hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
@hypothesis.given(
    p=st.integers(1, 40), n=st.integers(1, 40), log_kappa=st.floats(0, 6),
    schedule=st.sampled_from(sorted(SCHEDULES)), seed=st.integers(0, 2**16))
def test_gram_form_round_off_is_the_plain_forms(p, n, log_kappa, schedule, seed):
  """The Gram form's error is within 3 times the plain form's, plus a floor for when the plain
  form happens to be very accurate: each step's round-off, unamplified (K round_off(dim))."""
  g = conditioned(np.random.default_rng(seed), p, n, 10.0**log_kappa, batch=2)
  plain, gram = both_forms(g, SCHEDULES[schedule])
  exact = iterate64(g, SCHEDULES[schedule])
  floor = len(SCHEDULES[schedule]) * round_off(max(p, n))
  assert spectral(gram, exact) < 3 * spectral(plain, exact) + floor


@pytest.mark.parametrize("method", [polar.newton_schulz, polar.polar_express])
def test_methods_take_the_gram_form_from_the_threshold_on(method, monkeypatch):
  calls = []

  def spy(x, coefficients):
    calls.append(x.shape)
    return gram_steps(x, coefficients)

  gram_steps = polar_src._gram_steps
  monkeypatch.setattr(polar_src, "_gram_steps", spy)
  n = 4
  p = int(np.ceil(polar_src.GRAM_MIN_ASPECT * n))
  for shape, expected in [((p, n), True), ((n, p), True), ((p - 1, n), False), ((n, n), False)]:
    calls.clear()
    method(jnp.ones((2, *shape)))
    assert bool(calls) == expected, shape
