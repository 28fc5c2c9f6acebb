"""Layouts on real Flax parameters: nn.scan stacks, DenseGeneral heads, layout_by_path."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import orthax


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
  for layer in range(4):
    expected = orthax.polar.svd(grads["layers"]["Dense_0"]["kernel"][layer])
    np.testing.assert_allclose(stacked[layer], expected, atol=1e-6)
    np.testing.assert_allclose(stacked[layer].T @ stacked[layer], np.eye(8), atol=1e-5)
  # Without the layout, the stack is one (4 * 8, 8) matrix: a different, wrong update.
  flat = orthax.orthogonalise_components("svd").update(grads, tx.init(params))[0]
  assert not np.allclose(flat["layers"]["Dense_0"]["kernel"], stacked, atol=1e-3)
  np.testing.assert_allclose(out["head"]["kernel"], orthax.polar.svd(grads["head"]["kernel"]),
                             atol=1e-6)


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
  np.testing.assert_allclose(np.asarray(out).transpose(0, 2, 1).reshape(96, 4), o, atol=1e-6)
  heads = np.asarray(out).transpose(1, 0, 2).reshape(4, -1)
  np.testing.assert_allclose(heads @ heads.T, np.eye(4), atol=1e-5)


def test_layout_by_path_validates_rules():
  with pytest.raises(ValueError, match="orthax.Layout"):
    orthax.layout_by_path({"layers": 0})
