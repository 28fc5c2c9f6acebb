"""Layouts on real Flax parameters: nn.scan stacks, DenseGeneral heads, layout_by_path."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import orthax
from tests.helpers import (
    assert_trees_close_relative,
    condition_number,
    float64,
    polar_reference,
    polar_tol,
    round_off,
)


class Block(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    return nn.tanh(nn.Dense(8)(x)), None


class Stacked(nn.Module):
  @nn.compact
  def __call__(self, x):
    stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=4)
    x, _ = stack(name="layers")(x, None)
    return nn.Dense(3, name="head")(x)


def test_nn_scan_stack_is_a_batch_of_matrices():
  model = Stacked()
  params = model.init(jax.random.key(0), jnp.ones((2, 8)))["params"]
  kernel = params["layers"]["Dense_0"]["kernel"]
  assert kernel.shape == (4, 8, 8)
  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, jnp.arange(16.0).reshape(2, 8))
                                     ** 2))(params)
  grads = jax.tree.map(lambda g: g + 0.1 * jax.random.normal(jax.random.key(1), g.shape), grads)
  tx = orthax.orthogonalise_components(
      "svd", layout=orthax.layout_by_path({"layers": orthax.Layout(batch=0)}))
  out = tx.update(grads, tx.init(params))[0]
  stacked = out["layers"]["Dense_0"]["kernel"]
  for layer in range(4):  # Two float32 computations of U V^T: twice polar_tol apart at most.
    g = grads["layers"]["Dense_0"]["kernel"][layer]
    tol = polar_tol(condition_number(g), 8)
    expected = orthax.polar.svd(g)
    np.testing.assert_allclose(stacked[layer], expected, rtol=0, atol=2 * tol)
    np.testing.assert_allclose(stacked[layer], polar_reference(g), rtol=0, atol=tol)
    o = np.asarray(stacked[layer], np.float64)
    np.testing.assert_allclose(o.T @ o, np.eye(8), rtol=0, atol=2 * tol + tol**2)
  # Without the layout, the stack is one (4 * 8, 8) matrix: a different, wrong update.
  flat = orthax.orthogonalise_components("svd").update(grads, tx.init(params))[0]
  # It differs from every layer's polar factor by far more than their bound (tol of the last).
  assert np.abs(np.asarray(flat["layers"]["Dense_0"]["kernel"]) - stacked).max() > 100 * tol
  head = grads["head"]["kernel"]
  np.testing.assert_allclose(out["head"]["kernel"], orthax.polar.svd(head), rtol=0,
                             atol=2 * polar_tol(condition_number(head), max(head.shape)))


def test_dense_general_heads_as_components():
  layer = nn.DenseGeneral(features=(4, 6), axis=-1)  # (embed, heads, head_dim) = (16, 4, 6)
  params = layer.init(jax.random.key(0), jnp.ones((1, 16)))["params"]
  g = jax.random.normal(jax.random.key(2), params["kernel"].shape)
  tx = orthax.orthogonalise_components(
      "svd", layout={"kernel": orthax.Layout(components=1), "bias": None})
  out = tx.update({"kernel": g, "bias": params["bias"]}, tx.init(params))[0]["kernel"]
  # Heads are the columns: each head's (embed, head_dim) block flattened.
  matrix = np.asarray(g).transpose(0, 2, 1).reshape(16 * 6, 4)
  o = np.asarray(orthax.polar.svd(jnp.asarray(matrix)))
  tol = polar_tol(condition_number(matrix), 96)
  np.testing.assert_allclose(np.asarray(out).transpose(0, 2, 1).reshape(96, 4), o, rtol=0,
                             atol=2 * tol)
  heads = np.asarray(out, np.float64).transpose(1, 0, 2).reshape(4, -1)
  np.testing.assert_allclose(heads @ heads.T, np.eye(4), rtol=0, atol=2 * tol + tol**2)


def test_layout_by_path_validates_rules():
  with pytest.raises(ValueError, match="orthax.Layout"):
    orthax.layout_by_path({"layers": 0})


class ConvDenseBlock(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    x = nn.tanh(nn.Conv(8, (3, 3))(x))
    return nn.tanh(nn.Dense(8)(x)), None


class ScannedBlocks(nn.Module):
  @nn.compact
  def __call__(self, x):
    blocks = nn.scan(ConvDenseBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                     length=4)
    return blocks(name="blocks")(x, None)[0]


class UnrolledBlocks(nn.Module):
  @nn.compact
  def __call__(self, x):
    for i in range(4):
      x = ConvDenseBlock(name=f"blocks_{i}")(x, None)[0]
    return x


def unstack(scanned: dict) -> dict:
  """The scanned model's params (or gradients) as the unrolled model's."""
  return {f"blocks_{i}": jax.tree.map(lambda x, i=i: x[i], scanned["blocks"]) for i in range(4)}


def check_same_gradient(scanned_model, unrolled_model, params, x) -> None:
  """The two models are one function: their gradients of sum(y^2), in float64, agree to the bound
  on two float64 backward passes. Each is within (matrix products, 3 per layer forward and back,
  24) x round_off(72) (the conv's contraction, the longest) x the product of the layers' spectral
  norms (how far the forward and backward passes amplify an error; tanh's slope is <= 1) of the
  exact gradient, relative to each leaf's norm."""
  with float64():
    params, x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, x))
    blocks = params["blocks"]
    amplification = np.prod([
        np.linalg.norm(np.asarray(blocks["Conv_0"]["kernel"][i]).reshape(72, 8), 2)
        * np.linalg.norm(np.asarray(blocks["Dense_0"]["kernel"][i]), 2) for i in range(4)])
    rtol = 2 * 24 * round_off(72, np.float64) * max(1.0, float(amplification))

    def loss(model):
      return lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)

    assert_trees_close_relative(unstack(jax.grad(loss(scanned_model))(params)),
                                jax.grad(loss(unrolled_model))(unstack(params)), rtol)


@pytest.mark.parametrize("mask", [None, orthax.masks.kernels, orthax.masks.conv_kernels])
def test_scanned_model_gets_the_unrolled_models_update(mask):
  """Fault 2: nn.scan-stacked biases (4, 8) were orthogonalised: with Layout(batch=0) each layer's
  bias became b / ||b||. The default mask (and orthax.masks) counted the stacking axis as a
  dimension. Now the scanned model's update is the unrolled model's, leaf by leaf: kernels per
  layer, every bias unchanged, a scanned Dense kernel no conv kernel."""
  x = jax.random.normal(jax.random.key(3), (2, 5, 5, 8))
  scanned_model, unrolled_model = ScannedBlocks(), UnrolledBlocks()
  params = scanned_model.init(jax.random.key(0), x)["params"]
  assert params["blocks"]["Conv_0"]["bias"].shape == (4, 8)
  unrolled_params = unrolled_model.init(jax.random.key(0), x)["params"]
  assert jax.tree.structure(unstack(params)) == jax.tree.structure(unrolled_params)

  def loss(model):
    return lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)

  grads = jax.grad(loss(scanned_model))(params)
  check_same_gradient(scanned_model, unrolled_model, params, x)

  scanned_tx = orthax.orthogonalise_components(
      "svd", mask=mask, layout=orthax.layout_by_path({"blocks": orthax.Layout(batch=0)}))
  unrolled_tx = orthax.orthogonalise_components("svd", mask=mask)
  out = jax.jit(scanned_tx.update)(grads, scanned_tx.init(params))[0]
  # The same gradient values through the unrolled model's tree, so the comparison is exact.
  expected = jax.jit(unrolled_tx.update)(unstack(grads), unrolled_tx.init(unstack(params)))[0]
  # Two float32 computations of each kernel's U V^T (stacked and alone): twice polar_tol apart at
  # most; biases pass through bit for bit.
  def close(a, b, g):
    m = np.reshape(np.asarray(g, np.float64), (-1, np.shape(g)[-1]))
    np.testing.assert_allclose(a, b, rtol=0, atol=2 * polar_tol(condition_number(m), max(m.shape)))

  jax.tree.map(close, unstack(out), expected, unstack(grads))
  for layer in ("Conv_0", "Dense_0"):
    np.testing.assert_array_equal(out["blocks"][layer]["bias"], grads["blocks"][layer]["bias"])
  dense_changed = not np.array_equal(out["blocks"]["Dense_0"]["kernel"],
                                     grads["blocks"]["Dense_0"]["kernel"])
  assert dense_changed == (mask is not orthax.masks.conv_kernels)
  conv = np.asarray(out["blocks"]["Conv_0"]["kernel"]).reshape(4, 72, 8)
  for layer in range(4):
    g = np.asarray(grads["blocks"]["Conv_0"]["kernel"][layer], np.float64).reshape(72, 8)
    tol = polar_tol(condition_number(g), 72)
    o = conv[layer].astype(np.float64)
    np.testing.assert_allclose(o.T @ o, np.eye(8), rtol=0, atol=2 * tol + tol**2)
