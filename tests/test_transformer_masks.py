"""orthax.masks.hidden_matrices on real linen and nnx transformers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import orthax
from tests.helpers import condition_number, polar_reference, polar_tol, random_matrix

VOCAB, EMBED, HEADS, LAYERS, LENGTH = 11, 8, 2, 2, 5


class Block(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    x = x + nn.MultiHeadDotProductAttention(num_heads=HEADS, name="attn")(nn.LayerNorm()(x))
    h = nn.Dense(4 * EMBED, name="up")(nn.LayerNorm()(x))
    return x + nn.Dense(EMBED, name="down")(nn.gelu(h)), None


class LinenGPT(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(VOCAB, EMBED, name="wte")(tokens)
    x = x + self.param("wpe", nn.initializers.normal(0.02), (LENGTH, EMBED))
    stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                    length=LAYERS)
    x = stack(name="blocks")(x, None)[0]
    return nn.Dense(VOCAB, name="lm_head")(nn.LayerNorm(name="ln_f")(x))


class NnxGPT(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.wte = nnx.Embed(VOCAB, EMBED, rngs=rngs)
    self.wpe = nnx.Embed(LENGTH, EMBED, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(HEADS, EMBED, decode=False, rngs=rngs)
    self.up = nnx.Linear(EMBED, 4 * EMBED, rngs=rngs)
    self.norm = nnx.LayerNorm(EMBED, rngs=rngs)
    self.lm_head = nnx.Linear(EMBED, VOCAB, rngs=rngs)


def selected(mask_tree) -> set[str]:
  """'a/b/c' of the leaves a mask tree selects (an nnx Variable's trailing .value dropped)."""
  out = set()
  for path, chosen in jax.tree_util.tree_flatten_with_path(mask_tree)[0]:
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if isinstance(path[-1], jax.tree_util.GetAttrKey):
      names.pop()
    if chosen:
      out.add("/".join(names))
  return out


LINEN_HIDDEN = {f"blocks/{m}/kernel" for m in ("attn/query", "attn/key", "attn/value", "attn/out",
                                               "up", "down")}
NNX_HIDDEN = {f"{m}/kernel" for m in ("attn/query", "attn/key", "attn/value", "attn/out", "up")}


def linen_params():
  return jax.eval_shape(LinenGPT().init, jax.random.key(0),
                        jnp.ones((1, LENGTH), jnp.int32))["params"]


def test_linen_hidden_matrices():
  params = linen_params()
  assert params["blocks"]["attn"]["query"]["bias"].shape == (LAYERS, HEADS, EMBED // HEADS)
  mask = orthax.masks.hidden_matrices()(params)
  assert jax.tree.structure(mask) == jax.tree.structure(params)
  assert selected(mask) == LINEN_HIDDEN
  # The default rule (ndim >= 2) would take embeddings, the head and the attention biases.
  default = selected(orthax.masks.kernels(params))
  assert {"wte/embedding", "wpe", "lm_head/kernel", "blocks/attn/query/bias"} <= default


def test_nnx_hidden_matrices():
  state = nnx.state(NnxGPT(nnx.Rngs(0)), nnx.Param)
  assert selected(orthax.masks.hidden_matrices()(state)) == NNX_HIDDEN
  assert selected(orthax.masks.hidden_matrices(head=())(state)) == NNX_HIDDEN | {"lm_head/kernel"}


def test_head_patterns():
  params = linen_params()
  assert selected(orthax.masks.hidden_matrices(head="down")(params)) == (
      LINEN_HIDDEN - {"blocks/down/kernel"} | {"lm_head/kernel"})
  assert selected(orthax.masks.hidden_matrices(head=("lm_head", "blocks/attn/*/kernel"))(params)) \
      == {"blocks/up/kernel", "blocks/down/kernel"}
  with pytest.raises(ValueError, match="non-empty patterns"):
    orthax.masks.hidden_matrices(head=("",))


def test_mask_leaves_the_rest_untouched():
  """Every leaf the mask leaves out comes back bit for bit; every one it selects is
  orthogonalised (the MLP kernels per layer: numpy's polar factor)."""
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(random_matrix(rng, s.shape)), linen_params())
  tx = orthax.orthogonalise_components(
      mask=orthax.masks.hidden_matrices(),
      layout=orthax.attention_layout(
          "heads", base=orthax.layout_by_path({"blocks": orthax.Layout(batch=0)})))
  out = tx.update(params, tx.init(params))[0]
  for path, leaf in jax.tree_util.tree_flatten_with_path(out)[0]:
    name = "/".join(str(k.key) for k in path)
    given = params
    for k in path:
      given = given[k.key]
    if name in LINEN_HIDDEN:
      assert np.linalg.norm(np.asarray(leaf) - np.asarray(given)) > 0.1 * np.linalg.norm(given)
    else:
      np.testing.assert_array_equal(leaf, given, err_msg=name)
  for name in ("up", "down"):
    for layer in range(LAYERS):
      g = params["blocks"][name]["kernel"][layer]
      np.testing.assert_allclose(out["blocks"][name]["kernel"][layer], polar_reference(g),
                                 atol=polar_tol(condition_number(g), max(g.shape)), err_msg=name)
