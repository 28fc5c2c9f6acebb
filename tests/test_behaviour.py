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
from orthax._src import polar as polar_src
from tests.helpers import (
    assert_trees_close_relative,
    assert_trees_equal,
    condition_number,
    eps,
    iteration_tol,
    polar_tol,
    random_matrix,
)

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
}
NAMES = sorted(TRANSFORMATIONS)


def build(name: str) -> optax.GradientTransformation:
  factory, kwargs = TRANSFORMATIONS[name]
  return factory(**kwargs)


def tree(seed: int, dtype=jnp.float32) -> dict:
  rng = np.random.default_rng(seed)
  shapes = {"dense": (6, 4), "conv": (3, 3, 2, 4), "bias": (4,)}
  return {k: jnp.asarray(random_matrix(rng, s), dtype) for k, s in shapes.items()}


def float32_rtol() -> float:
  """Bound on any float32 update's error against exact arithmetic, relative to its norm, for
  the gradients `tree(1)`: the SVD's polar factor (`polar_tol`) or five Newton-Schulz steps
  (`iteration_tol`) over its matrices (the dense kernel, the conv kernel as 18 x 4 or 9 x 8);
  a factor 2 covers the optimiser's few elementwise operations around it (momentum, Adam's
  division, LARS's trust ratio, weight decay), each one round-off."""
  g = tree(1)
  matrices = [g["dense"], g["conv"].reshape(18, 4), g["conv"].reshape(9, 8)]
  kappa = max(condition_number(m) for m in matrices)
  s_min = min(float(np.linalg.svd(m, compute_uv=False)[-1] / np.linalg.norm(m)) for m in matrices)
  newton_schulz = np.tile(polar_src.NEWTON_SCHULZ_COEFFICIENTS, (5, 1))
  return 2 * max(polar_tol(kappa, 18), iteration_tol(newton_schulz, 18, s_min))


# Two float32 computations of the same update (jit and eager, wrapped and plain) are each within
# float32_rtol of the exact one, so within twice that of each other.
RTOL = 2 * float32_rtol()


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
  assert_trees_close_relative(jitted, eager, RTOL)
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
  # The values: the float32 update of the same (bfloat16) numbers, to bfloat16's precision. The
  # bfloat16 optimiser rounds at most 4 times (its moments, weight decay, the update), each by
  # eps / 2 of the leaf: 2 eps in all, far above float32's round-off.
  f32 = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)  # noqa: E731
  expected = jax.jit(tx.update)(f32(grads), tx.init(f32(params)), f32(params))[0]
  assert_trees_close_relative(updates, expected, 2 * eps(jnp.bfloat16) + RTOL)


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_gives_the_same_update(name):
  factory, kwargs = TRANSFORMATIONS[name]
  params, grads = tree(0), tree(1)
  plain = build(name)
  injected = optax.inject_hyperparams(factory)(**kwargs)
  expected = jax.jit(plain.update)(grads, plain.init(params), params)[0]
  state = injected.init(params)
  got, new_state = jax.jit(injected.update)(grads, state, params)
  assert_trees_close_relative(got, expected, RTOL)
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
  assert_trees_close_relative(second, expected, RTOL)


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
  assert_trees_close_relative(part(updates), expected, RTOL)
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
  assert_trees_close_relative(taken, jax.jit(tx.update)(grads, state, params)[0], RTOL)
  assert not any(bool(jnp.any(u)) for u in jax.tree.leaves(skipped))
  assert_same_state_type(taken_state, state)
  assert_trees_equal(skipped_state, state)
