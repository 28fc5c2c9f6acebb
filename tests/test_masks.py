"""orthax.masks on a real Flax linen params tree."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import orthax
from tests.helpers import (
  assert_trees_equal,
  condition_number,
  polar_reference,
  polar_tol,
  stable_id,
)


class Net(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=True)(x)
    x = nn.Conv(4, (3, 3))(x)
    x = nn.Dense(5)(x.reshape(x.shape[0], -1))
    return nn.Dense(3)(x)


def linen_params() -> dict:
  """Net's params: the real linen tree, filled with random values (no compilation needed)."""
  shapes = jax.eval_shape(Net().init, jax.random.key(0), jnp.ones((1, 4, 4, 2)))["params"]
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)


def selected(mask_tree) -> set[str]:
  """'Layer/name' of the leaves a mask tree selects."""
  return {"/".join(k.key for k in path)
          for path, chosen in jax.tree_util.tree_flatten_with_path(mask_tree)[0] if chosen}


KERNELS = {"Conv_0/kernel", "Conv_1/kernel", "Dense_0/kernel", "Dense_1/kernel"}


def test_linen_tree_is_as_expected():
  params = linen_params()
  assert set(params) == {"BatchNorm_0", "Conv_0", "Conv_1", "Dense_0", "Dense_1"}
  assert params["Conv_1"]["kernel"].shape == (3, 3, 4, 4)


def test_kernels():
  params = linen_params()
  mask = orthax.masks.kernels(params)
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  assert selected(mask) == KERNELS


def test_conv_kernels():
  assert selected(orthax.masks.conv_kernels(linen_params())) == {"Conv_0/kernel", "Conv_1/kernel"}


@pytest.mark.parametrize("patterns,expected", [
    (("Dense_1",), KERNELS - {"Dense_1/kernel"}),
    (("Dense_1", "Conv_0"), {"Conv_1/kernel", "Dense_0/kernel"}),
    (("Dense_*/kernel",), {"Conv_0/kernel", "Conv_1/kernel"}),
    (("*_1/*",), {"Conv_0/kernel", "Dense_0/kernel"}),
    (("kernel",), set()),
    (("Dense",), KERNELS),  # A name must match whole: Dense is no layer here.
    (("Dense_1/bias",), KERNELS),  # Excluding an unselected leaf changes nothing.
], ids=stable_id)
def test_exclude(patterns, expected):
  assert selected(orthax.masks.exclude(*patterns)(linen_params())) == expected


def test_exclude_from_another_base():
  mask = orthax.masks.exclude("Conv_1", base=orthax.masks.conv_kernels)
  assert selected(mask(linen_params())) == {"Conv_0/kernel"}


def test_conv_kernels_mask_leaves_dense_kernels_untouched():
  grads = linen_params()
  tx = orthax.orthogonalise_components("svd", mask=orthax.masks.conv_kernels)
  out, _ = jax.jit(tx.update)(grads, tx.init(grads))
  for conv, fan_in in (("Conv_0", 18), ("Conv_1", 36)):
    kernel = grads[conv]["kernel"]
    matrix = np.reshape(kernel, (fan_in, 4))
    expected = polar_reference(matrix).reshape(kernel.shape)
    np.testing.assert_allclose(out[conv]["kernel"], expected, rtol=0,
                               atol=polar_tol(condition_number(matrix), fan_in))
  for layer in ("Dense_0", "Dense_1", "BatchNorm_0"):
    assert_trees_equal(out[layer], grads[layer])
  for conv in ("Conv_0", "Conv_1"):
    assert_trees_equal(out[conv]["bias"], grads[conv]["bias"])


def test_exclude_mask_in_a_chain():
  grads = linen_params()
  tx = optax.chain(orthax.orthogonalise("svd", mask=orthax.masks.exclude("Dense_1")),
                   optax.sgd(1.0))
  out, _ = jax.jit(tx.update)(grads, tx.init(grads))
  np.testing.assert_array_equal(out["Dense_1"]["kernel"], -grads["Dense_1"]["kernel"])
  g = grads["Dense_0"]["kernel"]  # sgd(1.0) negates: exact.
  np.testing.assert_allclose(out["Dense_0"]["kernel"], -polar_reference(g), rtol=0,
                             atol=polar_tol(condition_number(g), max(g.shape)))


def test_patterns_match_nnx_state_as_linen_params():
  """nnx.State paths end in `.value`; patterns see the same names as on linen params."""
  from flax import nnx
  state = nnx.state(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Param)

  def selected(mask_fn, tree):
    flat = jax.tree_util.tree_flatten_with_path(mask_fn(tree))[0]
    return {name for path, chosen in flat if chosen
            for name in ("bias", "kernel") if name in jax.tree_util.keystr(path)}

  assert selected(orthax.masks.exclude("value"), state) == {"kernel"}  # No leaf is "value".
  assert selected(orthax.masks.exclude("kernel"), state) == set()
  everything = lambda p: jax.tree.map(lambda _: True, p)  # noqa: E731
  assert selected(orthax.masks.exclude("*/kernel", base=everything), {"dense": state}) == {"bias"}
