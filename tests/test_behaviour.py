"""Every public transformation and alias through the same checks, as Optax tests its optimisers.

jit, dtype kept (bf16 in, bf16 out), `optax.inject_hyperparams`, `optax.MultiSteps`,
`optax.apply_if_finite`, inside `optax.masked` / `optax.multi_transform` / `optax.partition`, and a
state whose structure, shapes and dtypes survive an update and a `lax.cond`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import orthax
from tests.helpers import assert_trees_allclose, assert_trees_equal, random_matrix

LR = 1e-2

# name: (factory, keyword arguments). Exact methods use "svd", which compiles fastest.
TRANSFORMATIONS = {
    "orthogonalise_components": (orthax.orthogonalise_components, dict(method="svd", rtol=0.01)),
    "orthogonalise_components_ns": (orthax.orthogonalise_components,
                                    dict(method="newton_schulz", step_scale="muon")),
    "orthogonalise": (orthax.orthogonalise, dict(method="svd")),
    "normalise": (orthax.normalise, {}),
    "normalise_components": (orthax.normalise_components, {}),
    "orthogonal_sgd": (orthax.orthogonal_sgd,
                       dict(learning_rate=LR, momentum=0.9, weight_decay=5e-4, method="svd")),
    "orthogonal_adam": (orthax.orthogonal_adam,
                        dict(learning_rate=LR, weight_decay=0.1, method="svd")),
    "orthogonal_adamw": (orthax.orthogonal_adamw,
                         dict(learning_rate=LR, weight_decay=0.1, method="svd")),
    "orthogonal_lars": (orthax.orthogonal_lars,
                        dict(learning_rate=LR, weight_decay=5e-4, method="svd")),
    "normalise_neurons": (orthax.normalise_neurons, {}),
    "normalise_neurons_longer": (orthax.normalise_neurons, dict(beta2=0.9, axis="longer")),
    "add_cautious_decayed_weights": (orthax.add_cautious_decayed_weights, dict(weight_decay=0.1)),
    # mask=True: every leaf to the NorMuon branch (the tree has no `kernel` for the default).
    "speedrun_muon": (orthax.speedrun_muon,
                      dict(learning_rate=LR, weight_decay=0.1, adam_weight_decay=0.1, mask=True)),
}
NAMES = sorted(TRANSFORMATIONS)


def build(name: str) -> optax.GradientTransformation:
  factory, kwargs = TRANSFORMATIONS[name]
  return factory(**kwargs)


def tree(seed: int, dtype=jnp.float32) -> dict:
  rng = np.random.default_rng(seed)
  shapes = {"dense": (6, 4), "conv": (3, 3, 2, 4), "bias": (4,)}
  return {k: jnp.asarray(random_matrix(rng, s), dtype) for k, s in shapes.items()}


def assert_same_state_type(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  assert jax.tree.map(jnp.shape, a) == jax.tree.map(jnp.shape, b)
  assert jax.tree.map(jnp.result_type, a) == jax.tree.map(jnp.result_type, b)


@pytest.mark.parametrize("name", NAMES)
def test_jit_matches_eager_and_state_is_stable(name):
  tx, params, grads = build(name), tree(0), tree(1)
  state = tx.init(params)
  eager, eager_state = tx.update(grads, state, params)
  jitted, jitted_state = jax.jit(tx.update)(grads, state, params)
  assert_trees_allclose(jitted, eager, atol=1e-6)
  assert_same_state_type(jitted_state, state)
  assert_same_state_type(eager_state, state)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(jitted))


@pytest.mark.parametrize("name", NAMES)
def test_dtype_is_kept(name):
  tx, params, grads = build(name), tree(0, jnp.bfloat16), tree(1, jnp.bfloat16)
  state = tx.init(params)
  updates, new_state = jax.jit(tx.update)(grads, state, params)
  assert jax.tree.map(jnp.result_type, updates) == jax.tree.map(jnp.result_type, grads)
  assert_same_state_type(new_state, state)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_gives_the_same_update(name):
  factory, kwargs = TRANSFORMATIONS[name]
  params, grads = tree(0), tree(1)
  plain = build(name)
  injected = optax.inject_hyperparams(factory)(**kwargs)
  expected = jax.jit(plain.update)(grads, plain.init(params), params)[0]
  state = injected.init(params)
  got, new_state = jax.jit(injected.update)(grads, state, params)
  assert_trees_allclose(got, expected, atol=1e-6)
  assert_same_state_type(new_state, state)


@pytest.mark.parametrize("name", NAMES)
def test_multi_steps_transforms_the_mean_gradient(name):
  tx, params, g1, g2 = build(name), tree(0), tree(1), tree(2)
  multi = optax.MultiSteps(tx, every_k_schedule=2)
  step = jax.jit(multi.update)
  state = multi.init(params)
  first, state = step(g1, state, params)
  assert not any(bool(jnp.any(u)) for u in jax.tree.leaves(first))
  second, _ = step(g2, state, params)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  expected = jax.jit(tx.update)(mean, tx.init(params), params)[0]
  assert_trees_allclose(second, expected, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_apply_if_finite_skips_a_nan_step(name):
  tx = optax.apply_if_finite(build(name), max_consecutive_errors=3)
  params, grads = tree(0), tree(1)
  grads["conv"] = grads["conv"].at[0, 0, 0, 0].set(jnp.inf)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  assert_trees_equal(optax.apply_updates(params, updates), params)
  assert int(state.notfinite_count) == 1


def wrapped(kind: str, tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """tx on "dense" and "bias" only, through an optax wrapper that hides "conv" from it."""
  labels = {"dense": "o", "conv": "s", "bias": "o"}
  if kind == "masked":
    return optax.masked(tx, {"dense": True, "conv": False, "bias": True})
  if kind == "multi_transform":
    return optax.multi_transform({"o": tx, "s": optax.identity()}, labels)
  return optax.partition({"o": tx, "s": optax.identity()}, labels)


@pytest.mark.parametrize("kind", ["masked", "multi_transform", "partition"])
@pytest.mark.parametrize("name", NAMES)
def test_inside_optax_wrappers(name, kind):
  tx, params, grads = build(name), tree(0), tree(1)
  outer = wrapped(kind, tx)
  updates, _ = jax.jit(outer.update)(grads, outer.init(params), params)
  part = lambda t: {"dense": t["dense"], "bias": t["bias"]}  # noqa: E731
  expected = jax.jit(tx.update)(part(grads), tx.init(part(params)), part(params))[0]
  assert_trees_allclose(part(updates), expected, atol=1e-6)
  np.testing.assert_array_equal(updates["conv"], grads["conv"])


@pytest.mark.parametrize("name", NAMES)
def test_state_is_stable_under_lax_cond(name):
  """Both branches of a cond must return the same state type: an update, or a skipped step."""
  tx, params, grads = build(name), tree(0), tree(1)
  state = tx.init(params)

  @jax.jit
  def step(take, grads, state):
    return jax.lax.cond(
        take, lambda: tx.update(grads, state, params),
        lambda: (jax.tree.map(jnp.zeros_like, grads), state))

  taken, taken_state = step(True, grads, state)
  skipped, skipped_state = step(False, grads, state)
  assert_trees_allclose(taken, jax.jit(tx.update)(grads, state, params)[0], atol=1e-6)
  assert not any(bool(jnp.any(u)) for u in jax.tree.leaves(skipped))
  assert_same_state_type(taken_state, state)
  assert_trees_equal(skipped_state, state)
