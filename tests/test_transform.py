"""Tests of orthogonalise_components, normalise, normalise_components and the aliases.

Compiling an update costs 0.3-1 s on CPU, so tests share compiled updates (`jitted_update`) and
one params structure (`make_params`) where they can.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import orthax
from orthax._src import polar_iterative as polar_src
from tests.helpers import (
  NEWTON_SCHULZ_5,
  assert_orthonormal_columns,
  assert_trees_close_relative,
  assert_trees_equal,
  condition_number,
  eps,
  iteration_tol,
  polar_reference,
  polar_tol,
  random_matrix,
  round_off,
)
from tests.test_gram_iterations import iterate64

EXACT = ("svd", "eigh", "auto")
APPROXIMATE = ("newton_schulz", "polar_express")
ALL_METHODS = ("svd", "eigh", "newton_schulz", "polar_express")
LR, WD = 1e-2, 5e-4
CONV_SHAPE, CONV_MATRIX = (3, 3, 2, 4), (18, 4)
UNSELECTED = [("Dense_0", "bias"), ("Conv_0", "bias"), ("BatchNorm_0", "scale"),
              ("BatchNorm_0", "bias")]


def make_params(seed: int = 0, dtype=jnp.float32) -> dict:
  """Dense kernels (in, out), a Conv kernel (kh, kw, in, out), biases and a BatchNorm scale.

  Dense_1 has Dense_0's shape, so the two are orthogonalised in one stacked call.
  """
  rng = np.random.default_rng(seed)
  shapes = {
      "Dense_0": {"kernel": (12, 5), "bias": (5,)},
      "Dense_1": {"kernel": (12, 5)},
      "Conv_0": {"kernel": CONV_SHAPE, "bias": (4,)},
      "BatchNorm_0": {"scale": (4,), "bias": (4,)},
  }
  return jax.tree.map(lambda s: jnp.asarray(random_matrix(rng, s), dtype), shapes,
                      is_leaf=lambda x: isinstance(x, tuple))


def conv_polar(kernel) -> np.ndarray:
  return polar_reference(np.reshape(kernel, CONV_MATRIX)).reshape(CONV_SHAPE)


def matrix(x) -> np.ndarray:
  """A kernel as its (inputs, components) matrix in float64: (3, 3, 2, 4) becomes (18, 4)."""
  x = np.asarray(x, np.float64)
  return x.reshape(-1, x.shape[-1])


# Tolerances (tests/helpers.py): one float32 computation of a method on a matrix is within
# `bound` of the exact result in the spectral norm, so in every entry; two float32 computations of
# the same quantity (eager and jit, grouped and alone) are within the sum of their bounds.
COEFFICIENTS = {"newton_schulz": NEWTON_SCHULZ_5,
                "polar_express": np.asarray(orthax.polar.polar_express_coefficients(5))}


def bound(method: str, g, steps: int = 5) -> float:
  """polar_tol at g's condition number for the exact methods; iteration_tol over g's
  Frobenius-normalised singular values for the iterations (`steps` steps)."""
  g = np.asarray(g, np.float64)
  if method not in APPROXIMATE:
    return polar_tol(condition_number(g), max(g.shape[-2:]))
  s = np.linalg.svd(g, compute_uv=False)
  s_min = float(np.min(s[..., -1] / np.linalg.norm(s, axis=-1)))
  coefficients = (np.tile(polar_src.NEWTON_SCHULZ_COEFFICIENTS, (steps, 1))
                  if method == "newton_schulz" else orthax.polar.polar_express_coefficients(steps))
  return iteration_tol(coefficients, max(g.shape[-2:]), s_min)


def kept_kappa(g) -> float:
  """The condition number of the directions the default rtol keeps (singular values above
  max(P, N) eps of the largest): the polar factor of those is what the exact methods return."""
  s = np.linalg.svd(np.asarray(g, np.float64), compute_uv=False)
  kept = s[s > max(np.shape(g)) * eps() * s[0]]
  return float(kept[0] / kept[-1])


def assert_polar_factor(out, g, scale: float = 1.0) -> None:
  """out is scale * U V^T of the matrix g: within scale * (polar_tol + eps), the eps for the
  rounding of the product by scale."""
  np.testing.assert_allclose(np.asarray(out, np.float64), scale * polar_reference(g), rtol=0,
                             atol=scale * (bound("svd", g) + eps()))


def normalise_tol(n: int) -> float:
  """Relative error of x / ||x|| in float32, x of n entries: the norm's round_off(n), and the
  division's rounding (eps / 2, doubled)."""
  return round_off(n) + eps()


@functools.cache
def jitted_update(method: str = "auto", **options):
  """`orthogonalise_components(method, **options).update` under jit, compiled once per tree."""
  return jax.jit(orthax.orthogonalise_components(method, **options).update)


def update(tx: optax.GradientTransformation, grads, params=None):
  """The jitted first update of `tx` on `grads`."""
  return jax.jit(tx.update)(grads, tx.init(grads if params is None else params), params)[0]


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
  out, _ = jitted_update(method)(grads, optax.EmptyState())
  for layer in ("Dense_0", "Dense_1", "Conv_0"):
    assert_polar_factor(matrix(out[layer]["kernel"]), matrix(grads[layer]["kernel"]))
  for layer, name in UNSELECTED:
    assert_trees_equal(out[layer][name], grads[layer][name])


def test_eager_matches_jit():
  """Two float32 computations of U V^T, each within polar_tol of numpy's, so within twice it of
  each other; the leaves left alone pass through bit for bit."""
  grads = make_params()
  eager, _ = orthax.orthogonalise_components("svd").update(grads, optax.EmptyState())
  jitted = jitted_update("svd")(grads, optax.EmptyState())[0]
  for layer in ("Dense_0", "Dense_1", "Conv_0"):
    g = matrix(grads[layer]["kernel"])
    assert_polar_factor(matrix(eager[layer]["kernel"]), g)
    np.testing.assert_allclose(matrix(eager[layer]["kernel"]), matrix(jitted[layer]["kernel"]),
                               rtol=0, atol=2 * bound("svd", g), err_msg=layer)
  for layer, name in UNSELECTED:
    assert_trees_equal(eager[layer][name], grads[layer][name])


@pytest.mark.parametrize("method", APPROXIMATE)
def test_approximate_methods_apply_the_matrix_function_under_jit(method):
  grads = make_params()
  out, _ = jitted_update(method)(grads, optax.EmptyState())
  matrix_fn = jax.jit(getattr(orthax.polar, method))
  # The transformation and the matrix function are two float32 runs of the iteration, each within
  # iteration_tol of the float64 iteration.
  for layer in ("Dense_0", "Dense_1", "Conv_0"):
    g = matrix(grads[layer]["kernel"])
    o = matrix(out[layer]["kernel"])
    np.testing.assert_allclose(o, iterate64(g, COEFFICIENTS[method]), rtol=0,
                               atol=bound(method, g), err_msg=layer)
    np.testing.assert_allclose(o, matrix_fn(jnp.asarray(g, jnp.float32)), rtol=0,
                               atol=2 * bound(method, g), err_msg=layer)
  for layer, name in UNSELECTED:
    assert_trees_equal(out[layer][name], grads[layer][name])


def test_batch_layout_orthogonalises_each_stacked_layer():
  g = random_matrix(np.random.default_rng(1), (3, 6, 4))
  out = update(orthax.orthogonalise_components("svd", layout=orthax.Layout(batch=0)), {"w": g})
  for layer in range(3):
    assert_polar_factor(out["w"][layer], g[layer])
  # Without the batch axis the stack is one (3 * 6, 4) matrix.
  whole = update(orthax.orthogonalise_components("svd"), {"w": g})["w"]
  assert_polar_factor(np.reshape(whole, (18, 4)), g.reshape(18, 4))


def heads_matrix(g) -> np.ndarray:
  """(embed, heads, head_dim) with heads as components: the (embed * head_dim, heads) matrix."""
  embed, heads, head_dim = np.shape(g)
  return np.transpose(np.asarray(g, np.float64), (0, 2, 1)).reshape(embed * head_dim, heads)


def dense_general_polar(g: np.ndarray) -> np.ndarray:
  """(embed, heads, head_dim) with heads as components: polar of (embed * head_dim, heads)."""
  embed, heads, head_dim = g.shape
  return np.transpose(polar_reference(heads_matrix(g)).reshape(embed, head_dim, heads), (0, 2, 1))


def test_components_layout_makes_heads_the_columns():
  g = random_matrix(np.random.default_rng(2), (4, 3, 2))
  out = update(orthax.orthogonalise_components("svd", layout=orthax.Layout(components=1)),
               {"w": g})["w"]
  assert out.shape == g.shape
  tol = bound("svd", heads_matrix(g))
  np.testing.assert_allclose(out, dense_general_polar(g), rtol=0, atol=tol)
  # Each head's embed * head_dim block is a unit vector, and the heads are orthogonal:
  # O^T O - I = dO^T U + U^T dO + dO^T dO.
  assert_orthonormal_columns(heads_matrix(out), atol=2 * tol + tol**2)


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
    assert_polar_factor(out["stacked"][layer], grads["stacked"][layer])
  np.testing.assert_allclose(out["heads"], dense_general_polar(grads["heads"]), rtol=0,
                             atol=bound("svd", heads_matrix(grads["heads"])))
  assert_polar_factor(out["dense"], grads["dense"])
  np.testing.assert_array_equal(out["bias"], grads["bias"])


# Grouping.


@pytest.mark.parametrize("method", ["svd", "eigh"])
def test_grouped_leaves_match_one_at_a_time(method):
  rng = np.random.default_rng(4)
  grads = {f"layer_{i}": random_matrix(rng, (6, 4)) for i in range(3)}
  grads["stacked"] = random_matrix(rng, (2, 6, 4))  # Joins the (6, 4) group through its layout.
  grads["other"] = random_matrix(rng, (5, 3))
  layout = {k: orthax.Layout(batch=0) if k == "stacked" else None for k in grads}
  together, _ = jax.jit(orthax.orthogonalise_components(method, layout=layout).update)(
      grads, optax.EmptyState())

  def alone(g):  # Always the key "w", so each shape compiles once.
    return jitted_update(method)({"w": g}, optax.EmptyState())[0]["w"]

  # Grouped and alone are two float32 computations of U V^T: within twice polar_tol.
  for name in ("layer_0", "layer_1", "layer_2", "other"):
    np.testing.assert_allclose(together[name], alone(grads[name]), rtol=0,
                               atol=2 * bound(method, grads[name]), err_msg=name)
    assert_polar_factor(together[name], grads[name])
  for layer in range(2):
    np.testing.assert_allclose(together["stacked"][layer], alone(grads["stacked"][layer]), rtol=0,
                               atol=2 * bound(method, grads["stacked"][layer]))


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
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dtype_is_kept(method, dtype):
  grads = make_params(dtype=dtype)
  out, _ = jitted_update(method)(grads, optax.EmptyState())
  assert jax.tree.map(lambda x: x.dtype, out) == jax.tree.map(lambda x: x.dtype, grads)
  # The values: the float32 update of the same numbers, to one rounding of the output in dtype
  # (eps / 2, doubled) plus twice float32's bound (each float32 computation within it).
  f32 = jax.tree.map(lambda x: x.astype(jnp.float32), grads)
  matrices = [f32["Dense_0"]["kernel"], f32["Conv_0"]["kernel"].reshape(CONV_MATRIX)]
  kappa = max(condition_number(m) for m in matrices)
  s_min = min(float(np.linalg.svd(m, compute_uv=False)[-1] / np.linalg.norm(m)) for m in matrices)
  bound = (polar_tol(kappa, 18) if method in EXACT else iteration_tol(
      np.tile(polar_src.NEWTON_SCHULZ_COEFFICIENTS, (5, 1)) if method == "newton_schulz"
      else orthax.polar.polar_express_coefficients(5), 18, s_min))
  expected = jitted_update(method)(f32, optax.EmptyState())[0]
  assert_trees_close_relative(out, expected, eps(dtype) + 2 * bound)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_state_is_empty_and_stable(method):
  grads = make_params()
  tx = orthax.orthogonalise_components(method)
  state = tx.init(grads)
  assert isinstance(state, optax.EmptyState)
  _, new_state = jitted_update(method)(grads, state)
  assert new_state == state


def test_chain_with_sgd_momentum_steps():
  params = make_params(0)
  tx = optax.chain(orthax.orthogonalise("svd"), optax.sgd(LR, momentum=0.9))
  state = tx.init(params)
  step = jax.jit(tx.update)
  for seed in (1, 2):
    updates, new_state = step(make_params(seed), state, params)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert jax.tree.map(jnp.shape, new_state) == jax.tree.map(jnp.shape, state)
    assert jax.tree.map(jnp.result_type, new_state) == jax.tree.map(jnp.result_type, state)
    params, state = optax.apply_updates(params, updates), new_state
  # The momentum buffer accumulates the orthogonalised gradients.
  trace = state[1][0].trace
  g1, g2 = (make_params(seed)["Dense_0"]["kernel"] for seed in (1, 2))
  expected = 0.9 * polar_reference(g1) + polar_reference(g2)
  # Each U V^T within polar_tol; the trace's product and sum round entries of size <= 1.9.
  np.testing.assert_allclose(trace["Dense_0"]["kernel"], expected, rtol=0,
                             atol=0.9 * bound("svd", g1) + bound("svd", g2) + 2 * eps())


def test_inject_hyperparams_learning_rate_changes_the_step():
  params, grads = make_params(0), make_params(1)
  tx = optax.inject_hyperparams(orthax.orthogonal_sgd)(
      learning_rate=LR, momentum=0.9, weight_decay=WD, method="svd")
  state = tx.init(params)
  step = jax.jit(tx.update)
  first, _ = step(grads, state, params)
  state.hyperparams["learning_rate"] = jnp.asarray(2 * LR, jnp.float32)
  doubled, _ = step(grads, state, params)
  # Exact: the learning rate is one factor of each entry, -lr * (momentum trace), and doubling a
  # float32 factor (2 LR rounds to twice LR's float32) doubles the rounded product exactly.
  assert_trees_equal(doubled, jax.tree.map(lambda u: 2 * u, first))
  g, p = grads["Dense_0"]["kernel"], params["Dense_0"]["kernel"]
  # U V^T within polar_tol; the decay, the sum and the product by -lr each round an entry of size
  # at most 1 + wd |p| by eps / 2.
  np.testing.assert_allclose(
      first["Dense_0"]["kernel"], -LR * (polar_reference(g) + WD * np.asarray(p, np.float64)),
      rtol=0, atol=LR * (bound("svd", g) + 2 * eps() * (1 + WD * np.abs(p).max())))


def test_multi_steps_orthogonalises_the_mean_gradient():
  params, g1, g2 = make_params(0), make_params(1), make_params(2)
  tx = optax.MultiSteps(optax.chain(orthax.orthogonalise("svd"), optax.sgd(LR)),
                        every_k_schedule=2)
  state = tx.init(params)
  step = jax.jit(tx.update)
  first, state = step(g1, state, params)
  assert not any(bool(jnp.any(u)) for u in jax.tree.leaves(first))
  second, _ = step(g2, state, params)
  mean = (matrix(g1["Dense_0"]["kernel"]) + matrix(g2["Dense_0"]["kernel"])) / 2
  # U V^T of the float32 running mean, whose rounding (relative eps per entry, so at most
  # sqrt(5) eps of ||G||) moves it by less than one more polar_tol; then the product by -lr.
  np.testing.assert_allclose(second["Dense_0"]["kernel"], -LR * polar_reference(mean), rtol=0,
                             atol=LR * (2 * bound("svd", mean) + eps()))
  # The bias: acc + (g2 - acc) / 2 and the product by -lr, three roundings of eps / 2 each, of
  # entries at most |g1| + |g2|.
  b1, b2 = (np.asarray(g["Dense_0"]["bias"], np.float64) for g in (g1, g2))
  error = np.abs(np.asarray(second["Dense_0"]["bias"], np.float64) + LR * (b1 + b2) / 2)
  assert np.all(error <= 2 * eps() * LR * (np.abs(b1) + np.abs(b2))), error


def test_masked():
  grads = make_params()
  mask = jax.tree.map(lambda _: False, grads)
  mask["Dense_0"]["kernel"] = True
  out = update(optax.masked(orthax.orthogonalise("svd"), mask), grads)
  assert_polar_factor(out["Dense_0"]["kernel"], grads["Dense_0"]["kernel"])
  for layer, name in [("Dense_1", "kernel"), ("Conv_0", "kernel"), ("Dense_0", "bias")]:
    np.testing.assert_array_equal(out[layer][name], grads[layer][name])


def test_multi_transform():
  grads = make_params()
  labels = jax.tree.map(lambda _: "s", grads)
  labels["Conv_0"]["kernel"] = "o"
  tx = optax.multi_transform({"o": orthax.orthogonalise("svd"), "s": optax.identity()}, labels)
  out = update(tx, grads)
  assert_polar_factor(matrix(out["Conv_0"]["kernel"]), matrix(grads["Conv_0"]["kernel"]))
  np.testing.assert_array_equal(out["Dense_0"]["kernel"], grads["Dense_0"]["kernel"])


@pytest.mark.parametrize("method", ALL_METHODS)
def test_nan_in_a_kernel_makes_its_whole_update_nan(method):
  grads = make_params()
  grads["Dense_0"]["kernel"] = grads["Dense_0"]["kernel"].at[2, 3].set(jnp.nan)
  out, _ = jitted_update(method)(grads, optax.EmptyState())
  assert jnp.all(jnp.isnan(out["Dense_0"]["kernel"]))
  # Dense_1 is in the same stacked call and stays finite: two float32 computations of its update.
  np.testing.assert_allclose(out["Dense_1"]["kernel"],
                             jitted_update(method)(make_params(), optax.EmptyState())[0]["Dense_1"]
                             ["kernel"], rtol=0, atol=2 * bound(method, grads["Dense_1"]["kernel"]))
  assert jnp.all(jnp.isfinite(out["Conv_0"]["kernel"]))


def test_apply_if_finite_skips_a_nan_step():
  params = make_params(0)
  tx = optax.apply_if_finite(
      optax.chain(orthax.orthogonalise("svd"), optax.sgd(LR, momentum=0.9)),
      max_consecutive_errors=3)
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


# The aliases: each equals its optax.chain, and the first update matches a hand computation.


def sgd_first_update(params, o, wd):
  """SGD with momentum starts with the gradient: -lr (U V^T + wd p), -lr (g + wd p) for biases
  (`o`: `orthogonalised(grads)`)."""
  return jax.tree.map(lambda o, p: -LR * (o + wd * p), o, float64_tree(params))


def float64_tree(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def orthogonalised(grads, shift: float = 0.0):
  """The gradients in float64 with each kernel replaced by U V^T + shift (entrywise)."""
  out = float64_tree(grads)
  for dense in ("Dense_0", "Dense_1"):
    out[dense]["kernel"] = polar_reference(grads[dense]["kernel"]) + shift
  out["Conv_0"]["kernel"] = conv_polar(grads["Conv_0"]["kernel"]) + shift
  return out


def adam_first_update(params, o, wd):
  """Adam's first step is x / (|x| + eps); L2 decay is inside x."""
  return jax.tree.map(lambda o, p: -LR * (o + wd * p) / (np.abs(o + wd * p) + 1e-8),
                      o, float64_tree(params))


def adamw_first_update(params, o, wd):
  """Decoupled decay: added after Adam's normalisation, never normalised."""
  return jax.tree.map(lambda o, p: -LR * (o / (np.abs(o) + 1e-8) + wd * p),
                      o, float64_tree(params))


def assert_first_update(actual, params, grads, first_update, b2: float | None = None) -> None:
  """Each hand computation is monotone in each entry of U V^T, which float32 gets within
  polar_tol of (spectral, so every entry); eps more covers the rounding of the decay added to it.
  So the update lies between the hand computations at U V^T - shift and U V^T + shift, to the
  rounding of the float32 steps after it (decay, Adam's moments and bias corrections, square
  root, division, learning rate: at most 16 roundings of eps / 2 of the leaf's largest entry).
  Adam's (b2 given) float32 b1 = 0.9 and b2 make its bias corrections off by eps / (1 - b)
  relative (b rounds by eps / 2; 1 - b keeps no more digits), v's through a square root (half)."""
  shift = max(bound("svd", matrix(grads[layer]["kernel"]))
              for layer in ("Dense_0", "Dense_1", "Conv_0")) + eps()
  low, high = (first_update(params, orthogonalised(grads, s)) for s in (-shift, shift))
  flat = jax.tree_util.tree_flatten_with_path(actual)[0]
  for (path, a), lo, hi in zip(flat, jax.tree.leaves(low), jax.tree.leaves(high), strict=True):
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    relative = 8 + (0 if b2 is None else 1 / (1 - 0.9) + 0.5 / (1 - b2))
    margin = relative * eps() * np.abs(hi).max()
    a = np.asarray(a, np.float64)
    assert np.all((lo - margin <= a) & (a <= hi + margin)), (
        jax.tree_util.keystr(path), np.max(np.maximum(lo - margin - a, a - hi - margin)))


# Adam's decays are large enough that coupled and decoupled first steps differ by far more than
# the tolerance (wd * p ~ 0.1 against updates of size 1). All but the first use method="svd",
# which compiles faster than the default "auto" (both branches of it).
ALIASES = {
    "sgd": (lambda: orthax.orthogonal_sgd(LR, momentum=0.9, weight_decay=WD),
            lambda: optax.chain(orthax.orthogonalise(), optax.add_decayed_weights(WD),
                                optax.sgd(LR, momentum=0.9)),
            functools.partial(sgd_first_update, wd=WD)),
    "sgd_nesterov": (
        lambda: orthax.orthogonal_sgd(LR, momentum=0.9, nesterov=True, weight_decay=WD,
                                      method="svd"),
        lambda: optax.chain(orthax.orthogonalise("svd"), optax.add_decayed_weights(WD),
                            optax.sgd(LR, momentum=0.9, nesterov=True)),
        None),
    "adam": (lambda: orthax.orthogonal_adam(LR, b2=0.99, weight_decay=0.1, method="svd"),
             lambda: optax.chain(orthax.orthogonalise("svd"), optax.add_decayed_weights(0.1),
                                 optax.adam(LR, b2=0.99)),
             functools.partial(adam_first_update, wd=0.1)),
    "adamw": (lambda: orthax.orthogonal_adamw(LR, weight_decay=0.1, method="svd"),
              lambda: optax.chain(orthax.orthogonalise("svd"), optax.adamw(LR, weight_decay=0.1)),
              functools.partial(adamw_first_update, wd=0.1)),
    "adamw_decay_mask": (
        lambda: orthax.orthogonal_adamw(LR, weight_decay=0.1, method="svd",
                                        weight_decay_mask=orthax.masks.conv_kernels),
        lambda: optax.chain(orthax.orthogonalise("svd"),
                            optax.adamw(LR, weight_decay=0.1, mask=orthax.masks.conv_kernels)),
        None),
    "lars": (lambda: orthax.orthogonal_lars(LR, weight_decay=WD, method="svd",
                                            mask=orthax.masks.conv_kernels),
             lambda: optax.chain(orthax.orthogonalise("svd", mask=orthax.masks.conv_kernels),
                                 optax.lars(LR, weight_decay=WD)),
             None),
    "sgd_orthogonaliser": (
        lambda: orthax.orthogonal_sgd(
            LR, momentum=0.9, weight_decay=WD,
            orthogonaliser=orthax.orthogonalise_components("svd", rtol=0.5,
                                                           mask=orthax.masks.conv_kernels)),
        lambda: optax.chain(
            orthax.orthogonalise_components("svd", rtol=0.5, mask=orthax.masks.conv_kernels),
            optax.add_decayed_weights(WD), optax.sgd(LR, momentum=0.9)),
        None),
}


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "lars"])
def test_alias_rejects_orthogonaliser_with_method_or_mask(name):
  alias = getattr(orthax, f"orthogonal_{name}")
  ortho = orthax.orthogonalise_components("svd")
  with pytest.raises(ValueError, match="either orthogonaliser"):
    alias(LR, method="svd", orthogonaliser=ortho)
  with pytest.raises(ValueError, match="either orthogonaliser"):
    alias(LR, mask=orthax.masks.conv_kernels, orthogonaliser=ortho)
  with pytest.raises(ValueError, match="GradientTransformation"):
    alias(LR, orthogonaliser="svd")


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_alias_equals_its_hand_built_chain(name):
  make_alias, make_chain, first_update = ALIASES[name]
  params = make_params(0)

  def run(tx):
    p, state, updates = params, tx.init(params), []
    step = jax.jit(tx.update)
    for seed in (1, 2):
      u, state = step(make_params(seed), state, p)
      p = optax.apply_updates(p, u)
      updates.append(u)
    return updates

  alias_updates = run(make_alias())
  # The alias is its chain: the same program (jaxpr), so the same bits on any one machine.
  alias, chain, grads = make_alias(), make_chain(), make_params(1)
  assert str(jax.make_jaxpr(alias.update)(grads, alias.init(params), params)) == str(
      jax.make_jaxpr(chain.update)(grads, chain.init(params), params))
  assert_trees_equal(alias_updates, run(make_chain()))
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(alias_updates))
  assert bool(jnp.any(alias_updates[1]["Conv_0"]["kernel"]))
  if first_update is not None:
    assert_first_update(alias_updates[0], params, grads, first_update,
                        {"adam": 0.99, "adamw": 0.999}.get(name))


def test_adam_and_adamw_decay_differ():
  """Guards the hand computations above: coupled and decoupled decay are told apart."""
  params, o = make_params(0), orthogonalised(make_params(1))
  coupled, decoupled = adam_first_update(params, o, 0.1), adamw_first_update(params, o, 0.1)
  assert np.max(np.abs(coupled["Dense_0"]["kernel"] - decoupled["Dense_0"]["kernel"])) > 1e-4


# Flax.


class LinenNet(nn.Module):
  """Conv, BatchNorm, a hidden Dense layer and a classifier."""

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.Conv(4, (3, 3), strides=2)(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x.reshape(x.shape[0], -1))
    x = nn.tanh(nn.Dense(6)(x))  # Not relu: a dead unit would make its gradient column zero.
    return nn.Dense(3)(x)


def assert_classifier_update(o, g) -> None:
  """A softmax classifier's gradient G has G 1 = 0 (its logits' gradients sum to zero per
  example), so the default rtol drops that direction: O^T O = I - 1 1^T / N, not I; to twice
  polar_tol at the kept directions' condition number (and its square)."""
  o = np.asarray(o, np.float64)
  n = o.shape[1]
  tol = polar_tol(kept_kappa(g), max(np.shape(g)))
  np.testing.assert_allclose(o.T @ o, np.eye(n) - np.ones((n, n)) / n, rtol=0,
                             atol=2 * tol + tol**2)


def assert_orthonormal_update(o, g) -> None:
  """O^T O = I for the polar factor of a full-rank kernel gradient g (any shape, components
  last): O^T O - I = dO^T U + U^T dO + dO^T dO with ||dO|| <= polar_tol."""
  tol = polar_tol(kept_kappa(matrix(g)), max(matrix(g).shape))
  assert_orthonormal_columns(matrix(o), atol=2 * tol + tol**2)


def test_linen_params():
  model = LinenNet()
  x = jnp.asarray(random_matrix(np.random.default_rng(6), (8, 6, 6, 2)))
  labels = jnp.arange(8) % 3
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
  params = variables["params"]

  def loss(params):
    logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                            train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grads = jax.jit(jax.grad(loss))(params)
  # The default method: on CPU "auto" takes every kernel here through eigh's rank-aware path.
  updates = update(orthax.orthogonalise(), grads, params)
  assert_orthonormal_update(updates["Conv_0"]["kernel"], grads["Conv_0"]["kernel"])  # (18, 4)
  assert_orthonormal_update(updates["Dense_0"]["kernel"], grads["Dense_0"]["kernel"])  # (36, 6)
  assert_classifier_update(updates["Dense_1"]["kernel"], grads["Dense_1"]["kernel"])  # (6, 3)
  for layer, name in [("Conv_0", "bias"), ("BatchNorm_0", "scale"), ("BatchNorm_0", "bias"),
                      ("Dense_0", "bias"), ("Dense_1", "bias")]:
    assert_trees_equal(updates[layer][name], grads[layer][name])


class NnxNet(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(2, 4, (3, 3), strides=2, rngs=rngs)
    self.hidden = nnx.Linear(36, 6, rngs=rngs)
    self.classifier = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv(x))
    x = nnx.tanh(self.hidden(x.reshape(x.shape[0], -1)))
    return self.classifier(x)


def test_nnx_state():
  model = NnxNet(nnx.Rngs(0))
  x = jnp.asarray(random_matrix(np.random.default_rng(7), (8, 6, 6, 2)))
  labels = jnp.arange(8) % 3
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params):
    logits = nnx.merge(graphdef, params, rest)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grads = jax.jit(jax.grad(loss))(params)
  assert isinstance(grads, nnx.State)
  lr = 0.5
  tx = optax.chain(orthax.orthogonalise("svd"), optax.sgd(lr))
  updates = update(tx, grads, params)
  assert isinstance(updates, nnx.State)
  for layer in ("conv", "hidden"):  # Dividing by -lr = -0.5 is exact.
    assert_orthonormal_update(updates[layer]["kernel"][...] / -lr, grads[layer]["kernel"][...])
  assert_classifier_update(updates["classifier"]["kernel"][...] / -lr,
                           grads["classifier"]["kernel"][...])
  for layer in ("conv", "hidden", "classifier"):
    np.testing.assert_array_equal(updates[layer]["bias"][...], -lr * grads[layer]["bias"][...])
  before = np.asarray(model.hidden.kernel[...])
  nnx.update(model, optax.apply_updates(params, updates))
  # Exact: apply_updates is one float32 addition, correctly rounded like numpy's.
  np.testing.assert_array_equal(model.hidden.kernel[...],
                                before + np.asarray(updates["hidden"]["kernel"][...]))


# Edge cases.


@pytest.mark.parametrize("method", ALL_METHODS)
def test_zero_gradient_gives_zero_update(method):
  grads = jax.tree.map(jnp.zeros_like, make_params())
  out, _ = jitted_update(method)(grads, optax.EmptyState())
  assert_trees_equal(out, grads)


SHAPES = {"wide": (3, 7), "square": (5, 5), "column": (6, 1), "row": (1, 6)}


@pytest.mark.parametrize("method", EXACT + APPROXIMATE)
def test_wide_square_and_single_column(method):
  rng = np.random.default_rng(8)
  grads = {name: random_matrix(rng, shape) for name, shape in SHAPES.items()}
  out = update(orthax.orthogonalise_components(method), grads)
  for name, g in grads.items():
    assert out[name].shape == g.shape
    if method in EXACT:
      assert_polar_factor(out[name], g)
    else:  # The float64 iteration, to its float32 bound.
      np.testing.assert_allclose(out[name], iterate64(np.asarray(g, np.float64),
                                                      COEFFICIENTS[method]), rtol=0,
                                 atol=bound(method, g), err_msg=name)
  if method in APPROXIMATE:  # Rank one: a single singular value, taken near 1 by both.
    for name in ("column", "row"):
      np.testing.assert_allclose(jnp.linalg.norm(out[name]), 1.0, atol=0.35)


# normalise and normalise_components.


def test_normalise_gives_each_matrix_unit_frobenius_norm():
  grads = make_params()
  grads["Dense_1"]["kernel"] = jnp.zeros_like(grads["Dense_1"]["kernel"])
  out = update(orthax.normalise(), grads)
  for layer in ("Dense_0", "Conv_0"):
    kernel = np.asarray(grads[layer]["kernel"], np.float64)
    o = np.asarray(out[layer]["kernel"], np.float64)
    np.testing.assert_allclose(np.linalg.norm(o), 1.0, rtol=normalise_tol(kernel.size))
    np.testing.assert_allclose(o, kernel / np.linalg.norm(kernel), rtol=normalise_tol(kernel.size))
  assert_trees_equal(out["Dense_1"], grads["Dense_1"])
  for layer, name in UNSELECTED:
    assert_trees_equal(out[layer][name], grads[layer][name])


def test_normalise_with_batch_layout_normalises_each_matrix():
  g = random_matrix(np.random.default_rng(9), (3, 6, 4))
  out = np.asarray(update(orthax.normalise(layout=orthax.Layout(batch=0)), {"w": g})["w"],
                   np.float64)
  g = np.asarray(g, np.float64)
  np.testing.assert_allclose(np.linalg.norm(out, axis=(1, 2)), np.ones(3), rtol=normalise_tol(24))
  np.testing.assert_allclose(out, g / np.linalg.norm(g, axis=(1, 2), keepdims=True),
                             rtol=normalise_tol(24))


def test_normalise_components_gives_each_column_unit_norm():
  grads = make_params()
  grads["Conv_0"]["kernel"] = grads["Conv_0"]["kernel"].at[..., 2].set(0.0)
  out = update(orthax.normalise_components(), grads)
  conv = matrix(out["Conv_0"]["kernel"])
  np.testing.assert_allclose(np.linalg.norm(conv, axis=0), [1, 1, 0, 1], rtol=normalise_tol(18))
  assert not np.any(conv[:, 2])
  dense = matrix(grads["Dense_0"]["kernel"])
  np.testing.assert_allclose(out["Dense_0"]["kernel"], dense / np.linalg.norm(dense, axis=0),
                             rtol=normalise_tol(12))
  for layer, name in UNSELECTED:
    assert_trees_equal(out[layer][name], grads[layer][name])


# step_scale.


@pytest.mark.parametrize("step_scale", [None, "muon", "rms"])
def test_step_scale(step_scale):
  rng = np.random.default_rng(10)
  grads = {"tall": random_matrix(rng, (12, 5)), "wide": random_matrix(rng, (3, 7)),
           "conv": random_matrix(rng, CONV_SHAPE), "bias": random_matrix(rng, (4,))}
  out = update(orthax.orthogonalise_components("svd", step_scale=step_scale), grads)
  for name, (p, n) in {"tall": (12, 5), "wide": (3, 7), "conv": CONV_MATRIX}.items():
    factor = {None: 1.0, "muon": math.sqrt(max(1, n / p)),
              "rms": 0.2 * math.sqrt(max(p, n))}[step_scale]
    assert_polar_factor(np.reshape(out[name], (p, n)), grads[name].reshape(p, n), factor)
  np.testing.assert_array_equal(out["bias"], grads["bias"])


# compute_dtype.


@pytest.mark.parametrize("method", ["svd", "newton_schulz"])
def test_bfloat16_leaf_is_computed_in_float32(method):
  grads16 = make_params(dtype=jnp.bfloat16)
  grads32 = jax.tree.map(lambda x: x.astype(jnp.float32), grads16)
  tx = jitted_update(method)  # compute_dtype=jnp.float32 is the default.
  out16, out32 = tx(grads16, optax.EmptyState())[0], tx(grads32, optax.EmptyState())[0]
  assert_trees_equal(out16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), out32))


# A method is any callable (B, P, N) -> (B, P, N).


def test_a_bound_orthax_method_equals_its_name_and_options():
  grads = make_params()
  by_name = update(orthax.orthogonalise_components("svd", rtol=0.5), grads)
  by_callable = update(orthax.orthogonalise_components(
      functools.partial(orthax.polar.svd, rtol=0.5)), grads)
  assert_trees_equal(by_callable, by_name)


def test_a_users_method_gets_stacks_in_the_compute_dtype():
  seen = []

  def flip(x):
    seen.append((x.shape, x.dtype))
    return -x

  grads = make_params(dtype=jnp.bfloat16)
  out = update(orthax.orthogonalise_components(flip), grads)
  # Dense_0 and Dense_1 share a shape: one (2, 12, 5) stack; the conv kernel is (1, 18, 4).
  assert set(seen) == {((1, 18, 4), jnp.dtype(jnp.float32)), ((2, 12, 5), jnp.dtype(jnp.float32))}
  for layer in ("Dense_0", "Dense_1", "Conv_0"):
    assert_trees_equal(out[layer]["kernel"], -grads[layer]["kernel"])
  for layer, name in UNSELECTED:
    assert_trees_equal(out[layer][name], grads[layer][name])


def test_a_method_of_the_wrong_shape_fails_at_trace_time_naming_the_leaf():
  tx = orthax.orthogonalise_components(lambda x: x[..., :1])
  grads = make_params()
  with pytest.raises(ValueError, match=r"\['Conv_0'\]\['kernel'\].*same shape"):
    jax.jit(tx.update)(grads, tx.init(grads))


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "lars"])
def test_aliases_take_a_callable_method(name):
  alias = getattr(orthax, f"orthogonal_{name}")
  method = functools.partial(orthax.polar.svd, rtol=0.5)
  params, grads = make_params(0), make_params(1)
  by_callable = update(alias(LR, method=method), grads, params)
  by_orthogonaliser = update(
      alias(LR, orthogonaliser=orthax.orthogonalise_components("svd", rtol=0.5)), grads, params)
  assert_trees_equal(by_callable, by_orthogonaliser)


# Faults from public bug reports (issue #12).


def three_directions(p: int = 20) -> tuple[np.ndarray, np.ndarray]:
  """A (p, 3) gradient with singular values 1, 0.5, 0.005, and its rank-2 polar factor."""
  rng = np.random.default_rng(20)
  u, _ = np.linalg.qr(rng.standard_normal((p, 3)))
  v, _ = np.linalg.qr(rng.standard_normal((3, 3)))
  return ((u * np.array([1.0, 0.5, 0.005])) @ v.T).astype(np.float32), u[:, :2] @ v[:, :2].T


@pytest.mark.parametrize("method", EXACT)
def test_inject_hyperparams_rtol(method):
  """Fault 3: inject_hyperparams(orthogonalise_components)(method="svd", rtol=0.01) failed at init
  ("rtol must be None or a number in [0, 1), got rtol=Array(0.01...)"). Now it gives the static
  rtol's update, rank 2, under jit, and the injected rtol can be changed."""
  g, rank_two = three_directions()
  grads = {"w": jnp.asarray(g), "b": jnp.ones(3)}
  tx = optax.inject_hyperparams(orthax.orthogonalise_components)(method=method, rtol=0.01)
  state = tx.init(grads)
  step = jax.jit(tx.update)
  out, state = step(grads, state)
  static = update(orthax.orthogonalise_components(method, rtol=0.01), grads)
  # The kept directions' factor moves by at most 3 ||dG|| / (0.5 - 0.005) (Wedin's bound with
  # the gap to the dropped direction, polar_tol's factor 3): polar_tol at kappa 1 / 0.495.
  kept = polar_tol(1 / 0.495, 20)
  np.testing.assert_allclose(out["w"], static["w"], rtol=0, atol=2 * kept)
  np.testing.assert_allclose(out["w"], rank_two, rtol=0, atol=kept)
  state.hyperparams["rtol"] = jnp.asarray(1e-3, jnp.float32)
  out, _ = step(grads, state)
  # All three kept: | ||O + dO||_F^2 - 3 | <= 2 ||O||_F ||dO||_F + ||dO||_F^2, where dO has rank
  # at most 6 and spectral norm at most polar_tol at kappa 200.
  frobenius = np.sqrt(6) * polar_tol(200, 20)
  assert abs(np.sum(np.asarray(out["w"], np.float64) ** 2) - 3) <= (
      2 * np.sqrt(3) * frobenius + frobenius**2)


def test_inject_hyperparams_steps_must_be_static():
  """steps sets the program's structure: injected as an array it is refused, naming the fix."""
  grads = make_params()
  with pytest.raises(ValueError, match="static_args"):
    optax.inject_hyperparams(orthax.orthogonalise_components)(
        method="newton_schulz", steps=3).init(grads)
  tx = optax.inject_hyperparams(orthax.orthogonalise_components, static_args=("steps",))(
      method="newton_schulz", steps=3)
  out = jax.jit(tx.update)(grads, tx.init(grads))[0]
  # Two float32 runs of 3 Newton-Schulz steps.
  np.testing.assert_allclose(out["Dense_0"]["kernel"],
                             orthax.polar.newton_schulz(grads["Dense_0"]["kernel"], steps=3),
                             rtol=0, atol=2 * bound("newton_schulz", grads["Dense_0"]["kernel"], 3))


def test_bfloat16_gradient_keeps_only_its_rank():
  """Fault 4: a rank-4 bf16 gradient x^T d gave ||U V^T||_F^2 = 16.0 (float32: 4.0), because the
  tolerance came from the float32 compute dtype; now within 0.5 of 4, for every exact method."""
  x = jax.random.normal(jax.random.key(0), (4, 64), jnp.bfloat16)
  d = jax.random.normal(jax.random.key(1), (4, 16), jnp.bfloat16)
  grads = {"w": x.T @ d}
  for method in EXACT:
    out = update(orthax.orthogonalise_components(method), grads)["w"]
    assert out.dtype == jnp.bfloat16
    assert abs(float(jnp.sum(out.astype(jnp.float32) ** 2)) - 4.0) < 0.5, method


WRAPPED_LAYOUT = {"Dense_0": {"kernel": orthax.Layout(), "bias": None},
                  "Dense_1": {"kernel": orthax.Layout()},
                  "Conv_0": {"kernel": orthax.Layout(components=-1), "bias": None},
                  "BatchNorm_0": {"scale": None, "bias": None}}
WRAPPED_MASK = {"Dense_0": {"kernel": True, "bias": False}, "Dense_1": {"kernel": True},
                "Conv_0": {"kernel": True, "bias": False},
                "BatchNorm_0": {"scale": False, "bias": False}}


def optax_wrapper(kind: str, inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` on Dense_0 and Conv_0; the wrapper hides Dense_1 (a subtree) and BatchNorm_0."""
  if kind == "masked":
    return optax.masked(inner, {"Dense_0": True, "Dense_1": False, "Conv_0": True,
                                "BatchNorm_0": False})
  labels = {"Dense_0": {"kernel": "o", "bias": "o"}, "Dense_1": {"kernel": "s"},
            "Conv_0": {"kernel": "o", "bias": "o"}, "BatchNorm_0": {"scale": "s", "bias": "s"}}
  return getattr(optax, kind)({"o": inner, "s": optax.identity()}, labels)


@pytest.mark.parametrize("kind", ["masked", "multi_transform", "partition"])
@pytest.mark.parametrize("spec", ["layout", "mask"])
def test_mask_and_layout_trees_inside_optax_wrappers(spec, kind):
  """Fault 5: a mask or layout pytree failed at init inside optax.masked / multi_transform
  ("The layout tree does not match the params"): the wrapper hands over MaskedNode placeholders.
  Now it gives the callable form's update."""
  grads = make_params()
  tree = WRAPPED_LAYOUT if spec == "layout" else WRAPPED_MASK
  as_tree = optax_wrapper(kind, orthax.orthogonalise_components("svd", **{spec: tree}))
  if spec == "layout":
    as_callable = orthax.orthogonalise_components(
        "svd", layout=orthax.layout_by_path({"Conv_0": orthax.Layout(components=-1)}))
  else:
    as_callable = orthax.orthogonalise_components("svd", mask=orthax.masks.kernels)
  expected = update(optax_wrapper(kind, as_callable), grads)
  out = update(as_tree, grads)
  assert_trees_equal(out, expected)
  assert_polar_factor(matrix(out["Conv_0"]["kernel"]), matrix(grads["Conv_0"]["kernel"]))
  assert_trees_equal(out["Dense_1"], grads["Dense_1"])


def test_a_wrong_tree_inside_a_wrapper_still_names_the_mismatch():
  tx = optax.masked(orthax.orthogonalise_components("svd", mask={"Dense_0": True}),
                    {"Dense_0": True, "Dense_1": False, "Conv_0": True, "BatchNorm_0": False})
  with pytest.raises(ValueError, match="mask tree does not match"):
    tx.init(make_params())


@pytest.mark.parametrize("method", ALL_METHODS)
def test_huge_finite_gradient_is_orthogonalised(method):
  """Fault 1's kind, finite input: entries ~1e20 overflowed the Gram or the norm (NaN or a zero
  update); the update is that of the same gradient at unit scale."""
  grads = make_params()
  big = jax.tree.map(lambda g: g * 1e20, grads)
  out, expected = update(orthax.orthogonalise_components(method), big), jitted_update(method)(
      grads, optax.EmptyState())[0]
  # Two float32 computations of one update, each within `bound`; the rounding of g * 1e20 (eps / 2
  # per entry, below the round-off the bound allows for) moves it by at most one bound more.
  for layer in ("Dense_0", "Dense_1", "Conv_0"):
    np.testing.assert_allclose(matrix(out[layer]["kernel"]), matrix(expected[layer]["kernel"]),
                               rtol=0, atol=3 * bound(method, matrix(grads[layer]["kernel"])),
                               err_msg=layer)


@pytest.mark.parametrize("build", [orthax.normalise, orthax.normalise_components])
@pytest.mark.parametrize("scale", [1e20, 1e-25])
def test_normalise_huge_and_tiny_gradients(build, scale):
  """The norm of entries ~1e20 overflowed to inf (a zero update) and of ~1e-25 underflowed to 0
  (the gradient passed through unnormalised)."""
  grads = make_params()
  out = update(build(), jax.tree.map(lambda g: g * scale, grads))
  expected = update(build(), grads)
  # Two float32 normalisations, each within normalise_tol, and the rounding of g * scale (eps / 2
  # per entry, as much in its norm).
  for layer in ("Dense_0", "Conv_0"):
    n = grads[layer]["kernel"].size
    np.testing.assert_allclose(out[layer]["kernel"], expected[layer]["kernel"],
                               rtol=2 * normalise_tol(n) + eps())


@pytest.mark.parametrize("build", [orthax.normalise, orthax.normalise_components])
def test_normalise_inf_gives_nan_for_that_matrix(build):
  grads = make_params()
  grads["Dense_0"]["kernel"] = grads["Dense_0"]["kernel"].at[0, 0].set(jnp.inf)
  out = update(build(), grads)
  assert bool(jnp.all(jnp.isnan(out["Dense_0"]["kernel"])))
  assert bool(jnp.all(jnp.isfinite(out["Dense_1"]["kernel"])))
