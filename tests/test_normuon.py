"""orthax.normalise_neurons (NorMuon) against a numpy reference; inside orthax.muon."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import orthax
from tests.helpers import (
  condition_number,
  eps,
  polar_reference,
  polar_tol,
  random_matrix,
  round_off,
)

BETA2, EPS = 0.9, 1e-10


def reference(matrices: list[np.ndarray], axis: str) -> list[np.ndarray]:
  """NorMuon's normalisation of a sequence of (P, N) updates, step by step, in float64."""
  nu, out = None, []
  for m in matrices:
    m = np.asarray(m, np.float64)
    p, n = m.shape
    per_column = axis == "components" or n >= p
    mean_square = np.mean(m**2, axis=0 if per_column else 1, keepdims=True)
    nu = (1 - BETA2) * mean_square if nu is None else BETA2 * nu + (1 - BETA2) * mean_square
    scaled = m / (np.sqrt(nu) + EPS)
    out.append(scaled * np.linalg.norm(m) / np.linalg.norm(scaled))
  return out


# float32 round-off of a few elementwise operations and two norms per entry, with a margin of
# about 100 eps = 1.2e-5 over it.
RTOL = 1e-5


@pytest.mark.parametrize("axis", ["components", "longer"])
def test_matches_numpy_over_steps(axis):
  rng = np.random.default_rng(0)
  # tall dense, wide dense, a conv (3 * 3 * 2 = 18 parameters, 4 filters) and a stack of two
  # (4, 6) layers on axis 0; the bias passes through.
  shapes = {"tall": (6, 4), "wide": (3, 5), "conv": (3, 3, 2, 4), "stack": (2, 4, 6), "bias": (4,)}
  layout = {k: orthax.Layout(batch=0) if k == "stack" else None for k in shapes}
  tx = orthax.normalise_neurons(BETA2, axis=axis, layout=layout)
  steps = [{k: jnp.asarray(random_matrix(rng, s)) for k, s in shapes.items()} for _ in range(3)]
  state = tx.init(steps[0])
  got = []
  for u in steps:
    out, state = jax.jit(tx.update)(u, state)
    got.append(out)
  as_matrices = {"tall": lambda x: x, "wide": lambda x: x, "conv": lambda x: x.reshape(18, 4)}
  for name, view in as_matrices.items():
    expected = reference([view(np.asarray(u[name])) for u in steps], axis)
    for t in range(3):
      np.testing.assert_allclose(view(np.asarray(got[t][name])), expected[t], rtol=RTOL,
                                 atol=RTOL * np.abs(expected[t]).max(), err_msg=f"{name} {t}")
  for layer in range(2):
    expected = reference([np.asarray(u["stack"][layer]) for u in steps], axis)
    for t in range(3):
      np.testing.assert_allclose(got[t]["stack"][layer], expected[t], rtol=RTOL,
                                 atol=RTOL * np.abs(expected[t]).max())
  for t in range(3):
    np.testing.assert_array_equal(got[t]["bias"], steps[t]["bias"])
  # The moment's shape: (B, 1, N) per component, (B, P, 1) along a longer P.
  per_row = (1, 6, 1) if axis == "longer" else (1, 1, 4)
  assert state.nu["tall"].shape == per_row
  assert state.nu["stack"].shape == (2, 1, 6)
  assert isinstance(state.nu["bias"], optax.MaskedNode)


def test_zero_update_stays_zero_and_dtype_is_kept():
  tx = orthax.normalise_neurons()
  u = {"w": jnp.zeros((4, 3), jnp.bfloat16)}
  out, state = tx.update(u, tx.init(u))
  assert out["w"].dtype == jnp.bfloat16 and not jnp.any(out["w"])
  assert state.nu["w"].dtype == jnp.float32


def test_first_muon_step_moves_every_neuron_equally():
  """Step 1's moment is the update's own: every neuron (output unit) gets the same norm, and the
  matrix keeps Muon's norm, sqrt(max(1, N / P)) * ||U V^T||_F = 2 * sqrt(8)."""
  rng = np.random.default_rng(1)
  params = {"hidden": {"kernel": jnp.asarray(random_matrix(rng, (8, 32)))}}
  grads = {"hidden": {"kernel": jnp.asarray(random_matrix(rng, (8, 32)))}}
  tx = orthax.muon(1.0, method="svd", mask=True, normuon_beta2=0.95)
  update = -np.asarray(tx.update(grads, tx.init(params), params)[0]["hidden"]["kernel"],
                       np.float64)
  norms = np.linalg.norm(update, axis=0)
  # Each column over its own root mean square (round_off(8), halved by the square root, and a
  # division), then the matrix rescaled by ||M||_F / ||scaled||_F (two norms of 256 entries, a
  # division and a product). ||M||_F is Muon's 2 sqrt(8) to U V^T's error: polar_tol in each of
  # at most 16 directions, once more for the rounding of step 1's multiple of the gradient.
  tol = polar_tol(condition_number(grads["hidden"]["kernel"]), 32)
  np.testing.assert_allclose(norms, np.full(32, 2 * np.sqrt(8) / np.sqrt(32)),
                             rtol=2 * np.sqrt(2) * tol + round_off(8) + 2 * round_off(256)
                             + 4 * eps())
  # Without NorMuon the same step is the scaled polar factor, whose columns differ in norm.
  plain = orthax.muon(1.0, method="svd", mask=True)
  expected = 2 * polar_reference(grads["hidden"]["kernel"])
  # U V^T to polar_tol, once more for the rounding of step 1's multiple of the gradient; Muon's
  # scale 2 is exact.
  np.testing.assert_allclose(
      -np.asarray(plain.update(grads, plain.init(params), params)[0]["hidden"]["kernel"]),
      expected, rtol=0, atol=2 * (2 * tol + eps()))
  assert np.ptp(np.linalg.norm(expected, axis=0)) > 0.1


def test_errors():
  with pytest.raises(ValueError, match="axis=.... must be one of"):
    orthax.normalise_neurons(axis="rows")
