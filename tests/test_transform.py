"""Tests of orthogonalise_components, normalise, normalise_components and the aliases."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import orthax
from tests.helpers import (
    assert_orthonormal_columns,
    assert_trees_allclose,
    assert_trees_equal,
    polar_reference,
    random_matrix,
)

EXACT = ("svd", "eigh", "auto")
ALL_METHODS = ("svd", "eigh", "newton_schulz", "polar_express")
LR, WD = 1e-2, 5e-4


def make_params(seed: int = 0) -> dict:
  """A Dense kernel (in, out), a Conv kernel (kh, kw, in, out), biases and a BatchNorm scale."""
  rng = np.random.default_rng(seed)
  shapes = {
      "Dense_0": {"kernel": (12, 5), "bias": (5,)},
      "Conv_0": {"kernel": (3, 3, 2, 4), "bias": (4,)},
      "BatchNorm_0": {"scale": (4,), "bias": (4,)},
  }
  return jax.tree.map(lambda s: jnp.asarray(random_matrix(rng, s)), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def update(tx: optax.GradientTransformation, grads, params=None):
  return tx.update(grads, tx.init(grads if params is None else params), params)[0]


def count_primitives(jaxpr, name: str) -> int:
  """Occurrences of primitive `name` in `jaxpr` and every jaxpr nested in it (scan, cond, jit).

  Walks the structure rather than the printed text: printing shares one copy of repeated jitted
  sub-jaxprs, so text counts would hide ungrouped calls.
  """
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == name
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if hasattr(sub, "eqns"):
          count += count_primitives(getattr(sub, "jaxpr", sub), name)
  return count


# Values.


@pytest.mark.parametrize("method", EXACT)
def test_kernels_become_polar_factors_of_their_component_matrix(method):
  grads = make_params()
  out = update(orthax.orthogonalise_components(method=method), grads)
  np.testing.assert_allclose(out["Dense_0"]["kernel"], polar_reference(grads["Dense_0"]["kernel"]),
                             atol=1e-5)
  conv = polar_reference(np.reshape(grads["Conv_0"]["kernel"], (3 * 3 * 2, 4)))
  np.testing.assert_allclose(out["Conv_0"]["kernel"], conv.reshape(3, 3, 2, 4), atol=1e-5)
  for layer, name in [("Dense_0", "bias"), ("Conv_0", "bias"), ("BatchNorm_0", "scale"),
                      ("BatchNorm_0", "bias")]:
    assert_trees_equal(out[layer][name], grads[layer][name])


def test_batch_layout_orthogonalises_each_stacked_layer():
  g = random_matrix(np.random.default_rng(1), (3, 6, 4))
  out = update(orthax.orthogonalise_components("svd", layout=orthax.Layout(batch=0)), {"w": g})
  for layer in range(3):
    np.testing.assert_allclose(out["w"][layer], polar_reference(g[layer]), atol=1e-5)
  # Without the batch axis the stack is one (3 * 6, 4) matrix.
  whole = update(orthax.orthogonalise_components("svd"), {"w": g})["w"]
  np.testing.assert_allclose(whole, polar_reference(g.reshape(18, 4)).reshape(3, 6, 4), atol=1e-5)


def dense_general_polar(g: np.ndarray) -> np.ndarray:
  """(embed, heads, head_dim) with heads as components: polar of (embed * head_dim, heads)."""
  embed, heads, head_dim = g.shape
  matrix = np.transpose(g, (0, 2, 1)).reshape(embed * head_dim, heads)
  return np.transpose(polar_reference(matrix).reshape(embed, head_dim, heads), (0, 2, 1))


def test_components_layout_makes_heads_the_columns():
  g = random_matrix(np.random.default_rng(2), (4, 3, 2))
  out = update(orthax.orthogonalise_components("svd", layout=orthax.Layout(components=1)),
               {"w": g})["w"]
  assert out.shape == g.shape
  np.testing.assert_allclose(out, dense_general_polar(g), atol=1e-5)
  # Each head's embed * head_dim block is a unit vector, and the heads are orthogonal.
  heads = np.transpose(np.asarray(out), (0, 2, 1)).reshape(8, 3)
  assert_orthonormal_columns(heads)


@pytest.mark.parametrize("as_callable", [False, True])
def test_layout_as_pytree_or_callable(as_callable):
  rng = np.random.default_rng(3)
  grads = {"stacked": random_matrix(rng, (3, 6, 4)), "heads": random_matrix(rng, (4, 3, 2)),
           "dense": random_matrix(rng, (7, 3)), "bias": random_matrix(rng, (3,))}
  layouts = {"stacked": orthax.Layout(batch=0), "heads": orthax.Layout(components=1),
             "dense": None, "bias": None}
  layout = (lambda params: layouts) if as_callable else layouts
  out = update(orthax.orthogonalise_components("svd", layout=layout), grads)
  for layer in range(3):
    np.testing.assert_allclose(out["stacked"][layer], polar_reference(grads["stacked"][layer]),
                               atol=1e-5)
  np.testing.assert_allclose(out["heads"], dense_general_polar(grads["heads"]), atol=1e-5)
  np.testing.assert_allclose(out["dense"], polar_reference(grads["dense"]), atol=1e-5)
  np.testing.assert_array_equal(out["bias"], grads["bias"])


# Grouping.


@pytest.mark.parametrize("method", ["svd", "eigh"])
def test_grouped_leaves_match_one_at_a_time(method):
  rng = np.random.default_rng(4)
  grads = {f"layer_{i}": random_matrix(rng, (6, 4)) for i in range(4)}
  grads["stacked"] = random_matrix(rng, (2, 6, 4))  # Joins the group with a batch layout.
  grads["other"] = random_matrix(rng, (5, 3))
  layout = {k: orthax.Layout(batch=0) if k == "stacked" else None for k in grads}
  tx = orthax.orthogonalise_components(method, layout=layout)
  together = update(tx, grads)
  for name, g in grads.items():
    alone = update(orthax.orthogonalise_components(method, layout=layout[name]), {name: g})
    np.testing.assert_allclose(together[name], alone[name], atol=1e-6, err_msg=name)


@pytest.mark.parametrize("method,primitive", [("svd", "svd"), ("eigh", "eigh")])
def test_same_shape_leaves_share_one_decomposition(method, primitive):
  rng = np.random.default_rng(5)
  tx = orthax.orthogonalise_components(method)

  def count(shapes):
    grads = {f"w{i}": jnp.asarray(random_matrix(rng, s)) for i, s in enumerate(shapes)}
    jaxpr = jax.make_jaxpr(lambda g: tx.update(g, optax.EmptyState())[0])(grads)
    return count_primitives(jaxpr.jaxpr, primitive)

  one = count([(6, 4)])
  assert one > 0
  assert count([(6, 4)] * 10) == one
  # The count does see separate calls: ten shapes, ten groups.
  assert count([(6 + i, 4) for i in range(10)]) == 10 * one


# Optax conventions.


@pytest.mark.parametrize("method", ALL_METHODS)
def test_jit_matches_eager(method):
  grads = make_params()
  tx = orthax.orthogonalise_components(method)
  state = tx.init(grads)
  eager = tx.update(grads, state)[0]
  jitted = jax.jit(tx.update)(grads, state)[0]
  assert_trees_allclose(jitted, eager, atol=1e-5)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dtype_is_kept(method, dtype):
  grads = jax.tree.map(lambda x: x.astype(dtype), make_params())
  out = update(orthax.orthogonalise_components(method), grads)
  assert jax.tree.map(lambda x: x.dtype, out) == jax.tree.map(lambda x: x.dtype, grads)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_state_is_empty_and_stable(method):
  grads = make_params()
  tx = orthax.orthogonalise_components(method)
  state = tx.init(grads)
  assert isinstance(state, optax.EmptyState)
  _, new_state = jax.jit(tx.update)(grads, state)
  assert new_state == state


def test_chain_with_sgd_momentum_steps():
  params = make_params(0)
  tx = optax.chain(orthax.orthogonalise(), optax.sgd(LR, momentum=0.9))
  state = tx.init(params)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  for seed in (1, 2):
    grads = make_params(seed)
    updates, new_state = step(grads, state, params)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert jax.tree.map(jnp.shape, new_state) == jax.tree.map(jnp.shape, state)
    params, state = optax.apply_updates(params, updates), new_state
  # The momentum buffer holds the sum of the (orthogonalised) updates' directions.
  trace = state[1][0].trace
  expected = 0.9 * polar_reference(make_params(1)["Dense_0"]["kernel"]) + polar_reference(
      make_params(2)["Dense_0"]["kernel"])
  np.testing.assert_allclose(trace["Dense_0"]["kernel"], expected, atol=1e-5)


def test_inject_hyperparams_learning_rate_changes_the_step():
  params, grads = make_params(0), make_params(1)
  tx = optax.inject_hyperparams(orthax.orthogonal_sgd)(
      learning_rate=LR, momentum=0.9, weight_decay=WD)
  state = tx.init(params)
  step = jax.jit(tx.update)
  first, _ = step(grads, state, params)
  state.hyperparams["learning_rate"] = jnp.asarray(2 * LR)
  doubled, _ = step(grads, state, params)
  assert_trees_allclose(doubled, jax.tree.map(lambda u: 2 * u, first), rtol=1e-6)
  np.testing.assert_allclose(
      first["Dense_0"]["kernel"],
      -LR * (polar_reference(grads["Dense_0"]["kernel"]) + WD * params["Dense_0"]["kernel"]),
      atol=1e-6)


def test_multi_steps_orthogonalises_the_mean_gradient():
  params, g1, g2 = make_params(0), make_params(1), make_params(2)
  inner = optax.chain(orthax.orthogonalise("svd"), optax.sgd(LR, momentum=0.9))
  tx = optax.MultiSteps(inner, every_k_schedule=2)
  state = tx.init(params)
  step = jax.jit(tx.update)
  first, state = step(g1, state, params)
  assert all(not jnp.any(u) for u in jax.tree.leaves(first))
  second, _ = step(g2, state, params)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  expected, _ = inner.update(mean, inner.init(params), params)
  assert_trees_allclose(second, expected, atol=1e-6)


def test_masked():
  grads = make_params()
  mask = {"Dense_0": {"kernel": True, "bias": False}, "Conv_0": {"kernel": False, "bias": False},
          "BatchNorm_0": {"scale": False, "bias": False}}
  out = update(optax.masked(orthax.orthogonalise("svd"), mask), grads)
  np.testing.assert_allclose(out["Dense_0"]["kernel"], polar_reference(grads["Dense_0"]["kernel"]),
                             atol=1e-5)
  np.testing.assert_array_equal(out["Conv_0"]["kernel"], grads["Conv_0"]["kernel"])
  np.testing.assert_array_equal(out["Dense_0"]["bias"], grads["Dense_0"]["bias"])


def test_multi_transform():
  grads = make_params()
  labels = {"Dense_0": {"kernel": "s", "bias": "s"}, "Conv_0": {"kernel": "o", "bias": "s"},
            "BatchNorm_0": {"scale": "s", "bias": "s"}}
  tx = optax.multi_transform({"o": orthax.orthogonalise("svd"), "s": optax.identity()}, labels)
  out = update(tx, grads)
  conv = polar_reference(np.reshape(grads["Conv_0"]["kernel"], (18, 4))).reshape(3, 3, 2, 4)
  np.testing.assert_allclose(out["Conv_0"]["kernel"], conv, atol=1e-5)
  np.testing.assert_array_equal(out["Dense_0"]["kernel"], grads["Dense_0"]["kernel"])


@pytest.mark.parametrize("method", ALL_METHODS)
def test_nan_in_a_kernel_makes_its_whole_update_nan(method):
  grads = make_params()
  grads["Dense_0"]["kernel"] = grads["Dense_0"]["kernel"].at[2, 3].set(jnp.nan)
  grads["Dense_1"] = {"kernel": make_params(1)["Dense_0"]["kernel"]}  # Same group, finite.
  out = update(orthax.orthogonalise_components(method), grads)
  assert jnp.all(jnp.isnan(out["Dense_0"]["kernel"]))
  assert jnp.all(jnp.isfinite(out["Dense_1"]["kernel"]))
  assert jnp.all(jnp.isfinite(out["Conv_0"]["kernel"]))


def test_apply_if_finite_skips_a_nan_step():
  params = make_params(0)
  tx = optax.apply_if_finite(
      optax.chain(orthax.orthogonalise(), optax.sgd(LR, momentum=0.9)), max_consecutive_errors=3)
  state = tx.init(params)
  step = jax.jit(tx.update)
  updates, state = step(make_params(1), state, params)
  params = optax.apply_updates(params, updates)
  assert int(state.notfinite_count) == 0
  bad = make_params(2)
  bad["Conv_0"]["kernel"] = bad["Conv_0"]["kernel"].at[0, 0, 0, 0].set(jnp.nan)
  updates, state = step(bad, state, params)
  assert_trees_equal(optax.apply_updates(params, updates), params)
  assert int(state.notfinite_count) == 1
  assert int(state.total_notfinite) == 1


# The aliases.


def test_orthogonal_sgd_adds_decay_after_orthogonalising():
  params, grads = make_params(0), make_params(1)
  out = update(orthax.orthogonal_sgd(LR, momentum=0.9, weight_decay=WD), grads, params)
  dense, conv = params["Dense_0"]["kernel"], params["Conv_0"]["kernel"]
  np.testing.assert_allclose(
      out["Dense_0"]["kernel"], -LR * (polar_reference(grads["Dense_0"]["kernel"]) + WD * dense),
      atol=1e-7)
  conv_polar = polar_reference(np.reshape(grads["Conv_0"]["kernel"], (18, 4))).reshape(conv.shape)
  np.testing.assert_allclose(out["Conv_0"]["kernel"], -LR * (conv_polar + WD * conv), atol=1e-7)
  for layer, name in [("Dense_0", "bias"), ("BatchNorm_0", "scale")]:
    np.testing.assert_allclose(
        out[layer][name], -LR * (grads[layer][name] + WD * params[layer][name]), rtol=1e-6)


def test_orthogonal_adamw_decay_is_decoupled():
  params, grads = make_params(0), make_params(1)
  eps = 1e-8
  out = update(orthax.orthogonal_adamw(LR, eps=eps, weight_decay=WD), grads, params)
  # Adam's first step is g / (|g| + eps); decoupled decay is added after it, unnormalised.
  polar = polar_reference(grads["Dense_0"]["kernel"])
  np.testing.assert_allclose(
      out["Dense_0"]["kernel"],
      -LR * (polar / (np.abs(polar) + eps) + WD * params["Dense_0"]["kernel"]), atol=1e-7)
  bias = np.asarray(grads["Dense_0"]["bias"])
  np.testing.assert_allclose(
      out["Dense_0"]["bias"],
      -LR * (bias / (np.abs(bias) + eps) + WD * params["Dense_0"]["bias"]), atol=1e-7)


def test_orthogonal_adam_decay_goes_through_adam():
  params, grads = make_params(0), make_params(1)
  out = update(orthax.orthogonal_adam(LR, weight_decay=0.5), grads, params)
  coupled = polar_reference(grads["Dense_0"]["kernel"]) + 0.5 * params["Dense_0"]["kernel"]
  np.testing.assert_allclose(out["Dense_0"]["kernel"], -LR * coupled / (np.abs(coupled) + 1e-8),
                             atol=1e-6)


ALIASES = {
    "sgd": (lambda: orthax.orthogonal_sgd(LR, momentum=0.9, nesterov=True, weight_decay=WD),
            lambda: optax.chain(orthax.orthogonalise(), optax.add_decayed_weights(WD),
                                optax.sgd(LR, momentum=0.9, nesterov=True))),
    "adam": (lambda: orthax.orthogonal_adam(LR, b2=0.99, weight_decay=WD),
             lambda: optax.chain(orthax.orthogonalise(), optax.add_decayed_weights(WD),
                                 optax.adam(LR, b2=0.99))),
    "adamw": (lambda: orthax.orthogonal_adamw(LR, weight_decay=WD),
              lambda: optax.chain(orthax.orthogonalise(), optax.adamw(LR, weight_decay=WD))),
    "lars": (lambda: orthax.orthogonal_lars(LR, weight_decay=WD, mask=orthax.masks.conv_kernels),
             lambda: optax.chain(orthax.orthogonalise(mask=orthax.masks.conv_kernels),
                                 optax.lars(LR, weight_decay=WD))),
}


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_alias_equals_its_hand_built_chain(name):
  alias, chain = (make() for make in ALIASES[name])
  params = make_params(0)

  def run(tx):
    p, state = params, tx.init(params)
    step = jax.jit(tx.update)
    for seed in (1, 2):
      updates, state = step(make_params(seed), state, p)
      p = optax.apply_updates(p, updates)
    return p

  result = run(alias)
  assert_trees_allclose(result, run(chain), atol=1e-7)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(result))
  assert not jnp.allclose(result["Conv_0"]["kernel"], params["Conv_0"]["kernel"])


# Flax.


class LinenNet(nn.Module):

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.Conv(4, (3, 3), strides=2)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x)
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_linen_params():
  model = LinenNet()
  x = jnp.asarray(random_matrix(np.random.default_rng(6), (8, 6, 6, 2)))
  labels = jnp.arange(8) % 3
  variables = model.init(jax.random.key(0), x, train=False)
  params = variables["params"]

  def loss(params):
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                            train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grads = jax.grad(loss)(params)
  tx = orthax.orthogonalise()
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  assert_orthonormal_columns(updates["Conv_0"]["kernel"].reshape(3 * 3 * 2, 4))
  assert_orthonormal_columns(updates["Dense_0"]["kernel"])  # (36, 3)
  for layer, name in [("Conv_0", "bias"), ("BatchNorm_0", "scale"), ("BatchNorm_0", "bias"),
                      ("Dense_0", "bias")]:
    assert_trees_equal(updates[layer][name], grads[layer][name])
  new = optax.apply_updates(params, updates)
  assert jax.tree.structure(new) == jax.tree.structure(params)


class NnxNet(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(2, 4, (3, 3), strides=2, rngs=rngs)
    self.linear = nnx.Linear(36, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv(x))
    return self.linear(x.reshape(x.shape[0], -1))


def test_nnx_state():
  model = NnxNet(nnx.Rngs(0))
  x = jnp.asarray(random_matrix(np.random.default_rng(7), (8, 6, 6, 2)))
  labels = jnp.arange(8) % 3
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params):
    logits = nnx.merge(graphdef, params, rest)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grads = jax.grad(loss)(params)
  assert isinstance(grads, nnx.State)
  tx = optax.chain(orthax.orthogonalise(), optax.sgd(0.5))
  state = tx.init(params)
  updates, _ = tx.update(grads, state, params)
  assert isinstance(updates, nnx.State)
  conv = np.asarray(updates["conv"]["kernel"][...]).reshape(18, 4)
  assert_orthonormal_columns(-2 * conv)
  assert_orthonormal_columns(-2 * np.asarray(updates["linear"]["kernel"][...]))
  for layer in ("conv", "linear"):
    np.testing.assert_array_equal(updates[layer]["bias"][...], -0.5 * grads[layer]["bias"][...])
  nnx.update(model, optax.apply_updates(params, updates))
  np.testing.assert_allclose(model.linear.kernel[...] - params["linear"]["kernel"][...],
                             updates["linear"]["kernel"][...], atol=1e-6)


# Edge cases.


@pytest.mark.parametrize("method", ALL_METHODS)
def test_zero_gradient_gives_zero_update(method):
  grads = jax.tree.map(jnp.zeros_like, make_params())
  out = update(orthax.orthogonalise_components(method), grads)
  assert_trees_equal(out, grads)


@pytest.mark.parametrize("method", EXACT)
@pytest.mark.parametrize("shape", [(3, 7), (5, 5), (6, 1), (1, 6)], ids=str)
def test_wide_square_and_single_column(method, shape):
  g = random_matrix(np.random.default_rng(8), shape)
  out = update(orthax.orthogonalise_components(method), {"w": g})["w"]
  np.testing.assert_allclose(out, polar_reference(g), atol=1e-5)


@pytest.mark.parametrize("method", ["newton_schulz", "polar_express"])
def test_approximate_methods_on_wide_square_and_single_column(method):
  rng = np.random.default_rng(8)
  grads = {str(s): random_matrix(rng, s) for s in [(3, 7), (5, 5), (6, 1), (1, 6)]}
  out = update(orthax.orthogonalise_components(method), grads)
  for name, g in grads.items():
    assert out[name].shape == g.shape
    assert jnp.all(jnp.isfinite(out[name]))
    # A rank-one matrix has one singular value, which both iterations take close to 1.
    if 1 in g.shape:
      np.testing.assert_allclose(jnp.linalg.norm(out[name]), 1.0, atol=0.35)


# normalise and normalise_components.


def test_normalise_gives_each_matrix_unit_frobenius_norm():
  grads = make_params()
  grads["Zero"] = {"kernel": jnp.zeros((4, 3))}
  out = update(orthax.normalise(), grads)
  for layer in ("Dense_0", "Conv_0"):
    np.testing.assert_allclose(jnp.linalg.norm(out[layer]["kernel"]), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        out[layer]["kernel"],
        grads[layer]["kernel"] / np.linalg.norm(np.asarray(grads[layer]["kernel"])), rtol=1e-6)
    assert_trees_equal(out[layer]["bias"], grads[layer]["bias"])
  assert_trees_equal(out["Zero"], grads["Zero"])
  assert_trees_equal(out["BatchNorm_0"], grads["BatchNorm_0"])


def test_normalise_with_batch_layout_normalises_each_matrix():
  g = random_matrix(np.random.default_rng(9), (3, 6, 4))
  out = update(orthax.normalise(layout=orthax.Layout(batch=0)), {"w": g})["w"]
  np.testing.assert_allclose(jnp.linalg.norm(out, axis=(1, 2)), np.ones(3), rtol=1e-6)


def test_normalise_components_gives_each_column_unit_norm():
  grads = make_params()
  grads["Conv_0"]["kernel"] = grads["Conv_0"]["kernel"].at[..., 2].set(0.0)
  out = update(orthax.normalise_components(), grads)
  conv = np.asarray(out["Conv_0"]["kernel"]).reshape(18, 4)
  np.testing.assert_allclose(np.linalg.norm(conv, axis=0), [1, 1, 0, 1], rtol=1e-6)
  assert not np.any(conv[:, 2])
  dense = np.asarray(grads["Dense_0"]["kernel"])
  np.testing.assert_allclose(out["Dense_0"]["kernel"], dense / np.linalg.norm(dense, axis=0),
                             rtol=1e-6)
  assert_trees_equal(out["BatchNorm_0"], grads["BatchNorm_0"])
  assert_trees_equal(out["Dense_0"]["bias"], grads["Dense_0"]["bias"])


# step_scale.


@pytest.mark.parametrize("step_scale", [None, "muon", "rms"])
def test_step_scale(step_scale):
  rng = np.random.default_rng(10)
  grads = {"tall": random_matrix(rng, (12, 5)), "wide": random_matrix(rng, (3, 7)),
           "conv": random_matrix(rng, (3, 3, 2, 4)), "bias": random_matrix(rng, (4,))}
  out = update(orthax.orthogonalise_components("svd", step_scale=step_scale), grads)
  for name, (p, n) in {"tall": (12, 5), "wide": (3, 7), "conv": (18, 4)}.items():
    factor = {None: 1.0, "muon": math.sqrt(max(1, n / p)),
              "rms": 0.2 * math.sqrt(max(p, n))}[step_scale]
    expected = factor * polar_reference(grads[name].reshape(p, n)).reshape(grads[name].shape)
    np.testing.assert_allclose(out[name], expected, atol=1e-5, err_msg=name)
  np.testing.assert_array_equal(out["bias"], grads["bias"])


# compute_dtype.


@pytest.mark.parametrize("method", ["svd", "newton_schulz"])
def test_bfloat16_leaf_is_computed_in_float32(method):
  grads16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), make_params())
  grads32 = jax.tree.map(lambda x: x.astype(jnp.float32), grads16)
  tx = orthax.orthogonalise_components(method, compute_dtype=jnp.float32)
  out16, out32 = update(tx, grads16), update(tx, grads32)
  assert_trees_equal(out16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), out32))
