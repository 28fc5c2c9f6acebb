"""orthax.add_cautious_decayed_weights against numpy; inside orthax.muon."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import orthax
from tests.helpers import condition_number, eps, polar_tol, random_matrix


def reference(u: np.ndarray, x: np.ndarray, weight_decay: float) -> np.ndarray:
  """u + wd * x where u and x agree in sign (zeros agree), in float64."""
  u, x = np.asarray(u, np.float64), np.asarray(x, np.float64)
  return u + weight_decay * np.where(np.sign(u) * np.sign(x) >= 0, x, 0)


def test_matches_numpy_with_zeros_and_tiny_entries():
  rng = np.random.default_rng(0)
  x = random_matrix(rng, (5, 4))
  u = random_matrix(rng, (5, 4))
  u[0, 0], x[1, 1] = 0.0, 0.0
  u[2, 2], x[2, 2] = 1e-30, -1e-30  # opposite signs whose product underflows to -0.0
  got = jax.jit(orthax.add_cautious_decayed_weights(0.1).update)(
      {"w": u}, optax.EmptyState(), {"w": x})[0]["w"]
  expected = reference(u, x, 0.1)
  np.testing.assert_allclose(got, expected, rtol=2 * eps())  # a product and a sum: eps / 2 each
  assert float(got[2, 2]) == np.float32(1e-30)  # not decayed
  assert float(got[0, 0]) == np.float32(0.1) * x[0, 0]  # a zero update agrees: decayed


def test_bfloat16_mask_and_inject_hyperparams():
  rng = np.random.default_rng(1)
  x = {"w": jnp.asarray(random_matrix(rng, (4, 3)), jnp.bfloat16),
       "b": jnp.asarray(random_matrix(rng, (3,)), jnp.bfloat16)}
  u = {"w": jnp.asarray(random_matrix(rng, (4, 3)), jnp.bfloat16),
       "b": jnp.asarray(random_matrix(rng, (3,)), jnp.bfloat16)}
  tx = optax.inject_hyperparams(orthax.add_cautious_decayed_weights)(
      weight_decay=0.5, mask={"w": True, "b": False})
  got, state = jax.jit(tx.update)(u, tx.init(x), x)
  assert got["w"].dtype == jnp.bfloat16
  # bfloat16 keeps 8 bits: one rounding of the result, 2^-8 relative.
  np.testing.assert_allclose(np.asarray(got["w"], np.float64), reference(u["w"], x["w"], 0.5),
                             rtol=2**-8)
  np.testing.assert_array_equal(got["b"], u["b"])
  state.hyperparams["weight_decay"] = jnp.asarray(0.0)
  np.testing.assert_array_equal(jax.jit(tx.update)(u, state, x)[0]["w"], u["w"])


def test_muon_decays_cautiously_in_both_branches():
  """With the same gradients, cautious muon = plain muon without decay, minus lr * wd * x where the
  undecayed step shrinks |x| (the update u = -lr * d has the sign opposite to x)."""
  rng = np.random.default_rng(2)
  params = {"hidden": {"kernel": jnp.asarray(random_matrix(rng, (6, 4)))},
            "bias": jnp.asarray(random_matrix(rng, (4,)))}
  grads = jax.tree.map(lambda x: jnp.asarray(random_matrix(rng, x.shape)), params)
  lr, wd, adam_wd = 0.1, 0.3, 0.2
  plain = orthax.muon(lr, method="svd", mask=orthax.masks.kernels)
  cautious = orthax.muon(lr, method="svd", mask=orthax.masks.kernels, weight_decay=wd,
                         adam_weight_decay=adam_wd, cautious_weight_decay=True)
  state_p, state_c = plain.init(params), cautious.init(params)
  # Two float32 runs on the same gradients, whose momentum is a multiple of g at every step (the
  # gradients repeat), so its condition number is g's. The kernel: lr times each run's polar
  # factor error (polar_tol; Muon's scale is 1 for 6 x 4) and the momentum's and lr's roundings
  # (eps / 2 each, two runs). The bias: Adam's elementwise update, about 8 roundings of eps / 2
  # in each run (the same float32 constants in both), relative to the update. Both: the decay
  # product lr wd x, rounded once or twice (eps |lr wd x|).
  g = np.asarray(grads["hidden"]["kernel"], np.float64)
  kernel = lr * (2 * polar_tol(condition_number(g), 6) + 4 * eps())
  bounds = {("hidden", "kernel"): lambda a, x: kernel + lr * wd * np.abs(x) * eps(),
            ("bias",): lambda a, x: 8 * eps() * np.abs(a) + lr * adam_wd * np.abs(x) * eps()}
  for _ in range(2):
    u0, state_p = plain.update(grads, state_p, params)
    u1, state_c = cautious.update(grads, state_c, params)
    for path, decay in ((("hidden", "kernel"), wd), (("bias",), adam_wd)):
      a, b, x = u0, u1, params
      for k in path:
        a, b, x = a[k], b[k], x[k]
      shrinks = np.sign(np.asarray(a)) * np.sign(np.asarray(x)) <= 0
      expected = np.asarray(a, np.float64) - lr * decay * np.where(shrinks, x, 0)
      error = np.abs(np.asarray(b, np.float64) - expected) - bounds[path](a, x)
      assert np.all(error <= 0), (path, error.max())
      assert shrinks.any() and not shrinks.all()


def test_needs_params():
  tx = orthax.add_cautious_decayed_weights(0.1)
  with pytest.raises(ValueError, match="pass params"):
    tx.update({"w": jnp.ones(2)}, tx.init(None))
