"""attention_layout and group_heads on real linen and nnx attention parameters."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import orthax
from tests.helpers import assert_trees_equal, condition_number, polar_reference, polar_tol

EMBED, HEADS, HEAD_DIM, LAYERS = 8, 4, 4, 3
INPUTS = ("query", "key", "value")


class Block(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    attention = nn.MultiHeadDotProductAttention(
        num_heads=HEADS, qkv_features=HEADS * HEAD_DIM, name="attn")
    return x + attention(x), None


class Stacked(nn.Module):
  @nn.compact
  def __call__(self, x):
    stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                    length=LAYERS)
    return stack(name="layers")(x, None)[0]


def nnx_attention(rngs: nnx.Rngs) -> nnx.MultiHeadAttention:
  return nnx.MultiHeadAttention(num_heads=HEADS, in_features=EMBED,
                                qkv_features=HEADS * HEAD_DIM, decode=False, rngs=rngs)


def linen_tree():
  model = nn.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=HEADS * HEAD_DIM)
  return model.init(jax.random.key(0), jnp.ones((1, 3, EMBED)))["params"]


def linen_stacked_tree():
  return Stacked().init(jax.random.key(0), jnp.ones((1, 3, EMBED)))["params"]


def nnx_tree():
  return nnx.state(nnx_attention(nnx.Rngs(0)), nnx.Param)


def nnx_stacked_tree():
  @nnx.split_rngs(splits=LAYERS)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def create(rngs):
    return nnx_attention(rngs)
  return nnx.state(create(nnx.Rngs(0)), nnx.Param)


TREES = {"linen": linen_tree, "linen_scan": linen_stacked_tree, "nnx": nnx_tree,
         "nnx_vmap": nnx_stacked_tree}


def random_like(tree, seed=1):
  """A gradient tree with the params' structure and Gaussian entries."""
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(
      treedef, [jnp.asarray(rng.standard_normal(x.shape), jnp.float32) for x in leaves])


def attention_leaves(tree):
  """(projection name, leaf name) -> array, for the attention leaves of a linen or nnx tree."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    if names[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
      names.pop()
    out[tuple(names[-2:])] = np.asarray(x, np.float64)
  return out


class Polar:
  """polar_reference that also keeps the largest polar_tol of the blocks it was given: the bound
  on float32's error in every entry of the expected update."""

  def __init__(self):
    self.tol = 0.0

  def __call__(self, block: np.ndarray) -> np.ndarray:
    self.tol = max(self.tol, polar_tol(condition_number(block), max(block.shape)))
    return polar_reference(block)


def reference(kernel: np.ndarray, projection: str, view: str, group: int = 1
              ) -> tuple[np.ndarray, float]:
  """The expected update of one attention kernel, block by block with a numpy SVD, and the
  bound on float32's error in it."""
  polar_reference = Polar()
  stacked = kernel.reshape((-1,) + kernel.shape[-3:])
  out = np.zeros_like(stacked)
  for layer, k in enumerate(stacked):
    if projection != "out":  # (embed, heads, head_dim)
      if view == "whole":
        out[layer] = polar_reference(k.reshape(EMBED, -1)).reshape(k.shape)
      elif view == "components":  # Column h: head h's (embed, head_dim) block.
        o = polar_reference(k.transpose(0, 2, 1).reshape(-1, HEADS))
        out[layer] = o.reshape(EMBED, HEAD_DIM, HEADS).transpose(0, 2, 1)
      else:
        for h in range(0, HEADS, group):
          block = k[:, h:h + group, :].reshape(EMBED, group * HEAD_DIM)
          out[layer][:, h:h + group, :] = polar_reference(block).reshape(EMBED, group, HEAD_DIM)
    else:  # (heads, head_dim, embed)
      if view == "whole":
        out[layer] = polar_reference(k.reshape(-1, EMBED)).reshape(k.shape)
      elif view == "components":  # Column h: head h's (head_dim, embed) block.
        o = polar_reference(k.reshape(HEADS, -1).T)
        out[layer] = o.T.reshape(k.shape)
      else:
        for h in range(0, HEADS, group):
          block = k[h:h + group].reshape(group * HEAD_DIM, EMBED)
          out[layer][h:h + group] = polar_reference(block).reshape(group, HEAD_DIM, EMBED)
  return out.reshape(kernel.shape), polar_reference.tol


def test_trees_are_as_expected():
  for name, make in TREES.items():
    leaves = attention_leaves(make())
    lead = (LAYERS,) if name in ("linen_scan", "nnx_vmap") else ()
    assert leaves[("query", "kernel")].shape == lead + (EMBED, HEADS, HEAD_DIM), name
    assert leaves[("query", "bias")].shape == lead + (HEADS, HEAD_DIM), name
    assert leaves[("out", "kernel")].shape == lead + (HEADS, HEAD_DIM, EMBED), name


@pytest.mark.parametrize("tree", sorted(TREES))
@pytest.mark.parametrize("view,group", [("whole", 1), ("heads", 1), ("components", 1),
                                        ("heads", 2), ("components", 2), ("heads", 4)])
def test_each_block_is_the_polar_factor_of_its_gradient_block(tree, view, group):
  params = TREES[tree]()
  grads = random_like(params)
  tx = orthax.orthogonalise_components(
      "svd", mask=orthax.masks.hidden_matrices(), layout=orthax.attention_layout(view))
  if group > 1:
    tx = orthax.group_heads(tx, group)
  out = jax.jit(tx.update)(grads, tx.init(params))[0]
  assert jax.tree.structure(out) == jax.tree.structure(grads)
  got, given = attention_leaves(out), attention_leaves(grads)
  for projection in INPUTS + ("out",):
    kernel = given[(projection, "kernel")]
    if view == "components" and group > 1:  # The groups are the components.
      expected, tol = grouped_components_reference(kernel, projection, group)
    else:
      expected, tol = reference(kernel, projection, view, group)
    np.testing.assert_allclose(got[(projection, "kernel")], expected, rtol=0, atol=tol,
                               err_msg=projection)
    np.testing.assert_array_equal(got[(projection, "bias")], given[(projection, "bias")])


def grouped_components_reference(kernel: np.ndarray, projection: str, group: int
                                  ) -> tuple[np.ndarray, float]:
  """Groups of `group` heads as the components: column j is group j's parameters."""
  polar_reference = Polar()
  stacked = kernel.reshape((-1,) + kernel.shape[-3:])
  out = np.zeros_like(stacked)
  groups = HEADS // group
  for layer, k in enumerate(stacked):
    if projection != "out":
      columns = k.reshape(EMBED, groups, group * HEAD_DIM).transpose(0, 2, 1).reshape(-1, groups)
      o = polar_reference(columns).reshape(EMBED, group * HEAD_DIM, groups).transpose(0, 2, 1)
    else:
      o = polar_reference(k.reshape(groups, -1).T).T
    out[layer] = o.reshape(k.shape)
  return out.reshape(kernel.shape), polar_reference.tol


def test_speedrun_pairs_for_query_and_key_only():
  """Query and key in pairs of heads, value and out per head, as the 2026-04-08 record."""
  params = linen_stacked_tree()
  grads = random_like(params)
  tx = orthax.group_heads(
      orthax.orthogonalise_components(
          "svd", mask=orthax.masks.hidden_matrices(), layout=orthax.attention_layout("heads")),
      2, inputs=("query", "key"), outputs=())
  got, given = attention_leaves(tx.update(grads, tx.init(params))[0]), attention_leaves(grads)
  for projection, group in (("query", 2), ("key", 2), ("value", 1), ("out", 1)):
    expected, tol = reference(given[(projection, "kernel")], projection, "heads", group)
    np.testing.assert_allclose(got[(projection, "kernel")], expected, rtol=0, atol=tol,
                               err_msg=projection)


def test_group_heads_passes_state_and_params_through():
  params = nnx_tree()
  grads = random_like(params)
  inner = orthax.orthogonalise_components("svd", layout=orthax.attention_layout("heads"))
  one = orthax.group_heads(inner, 1)
  assert_trees_equal(one.update(grads, one.init(params))[0],
                     inner.update(grads, inner.init(params))[0])
  tx = orthax.group_heads(optax.chain(inner, optax.add_decayed_weights(0.5)), 2)
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  # Against numpy: each pair of heads is one (embed, 2 head_dim) matrix (out: (2 head_dim,
  # embed)), orthogonalised whole, plus the decay of the params, which reach the inner chain.
  for name, heads_axis in (("query", 1), ("key", 1), ("value", 1), ("out", 0)):
    g, x = (np.moveaxis(np.asarray(jax.tree.leaves(t[name]["kernel"])[0]), heads_axis, 0)
            for t in (grads, params))
    got = np.moveaxis(np.asarray(jax.tree.leaves(updates[name]["kernel"])[0]), heads_axis, 0)
    for pair in range(HEADS // 2):
      heads = slice(2 * pair, 2 * pair + 2)
      if heads_axis == 1:  # (heads, embed, head_dim) -> (embed, 2 head_dim)
        matrix = np.concatenate(list(g[heads]), axis=1)
        want = np.stack(np.split(polar_reference(matrix), 2, axis=1))
      else:  # (heads, head_dim, embed) -> (2 head_dim, embed)
        matrix = np.concatenate(list(g[heads]), axis=0)
        want = np.stack(np.split(polar_reference(matrix), 2, axis=0))
      np.testing.assert_allclose(got[heads], want + 0.5 * x[heads], rtol=0,
                                 atol=polar_tol(condition_number(matrix), 2 * EMBED),
                                 err_msg=f"{name} heads {heads}")
  with pytest.raises(ValueError, match="params"):  # Decay needs params: they reach the inner one.
    tx.update(grads, state)


def test_attention_layout_gives_other_leaves_the_base_layout():
  params = {"layers": {"attn": {"query": {"kernel": jnp.ones((2, 8, 4, 4))}},
                       "mlp": {"kernel": jnp.ones((2, 8, 32)), "bias": jnp.ones((2, 32))}},
            "head": {"kernel": jnp.ones((8, 5))}}
  base = orthax.layout_by_path({"mlp": orthax.Layout(batch=0)})
  layout = orthax.attention_layout("whole", base=base)(params)
  assert layout["layers"]["attn"]["query"]["kernel"] == orthax.Layout(components=(2, 3), batch=(0,))
  assert layout["layers"]["mlp"]["kernel"] == orthax.Layout(batch=0)
  assert layout["head"]["kernel"] is None
  assert orthax.attention_layout("heads", base=orthax.Layout(batch=0))(params)["head"]["kernel"] \
      == orthax.Layout(batch=0)
  tree = jax.tree.map(lambda _: None, params)
  assert orthax.attention_layout("components", base=tree)(params)["head"]["kernel"] is None
  with pytest.raises(ValueError, match="base layout tree does not match"):
    orthax.attention_layout("heads", base={"head": None})(params)


def test_errors():
  with pytest.raises(ValueError, match="'whole'"):
    orthax.attention_layout("per_head")
  with pytest.raises(ValueError, match="both as inputs and as outputs"):
    orthax.attention_layout("heads", inputs=("query", "out"))
  with pytest.raises(ValueError, match="sequence of module names"):
    orthax.attention_layout("heads", inputs="query")
  fused = {"query": {"kernel": jnp.ones((8, 16))}}
  with pytest.raises(ValueError, match=r"\['query'\]\['kernel'\].*shape=\(8, 16\)"):
    orthax.attention_layout("heads")(fused)
  with pytest.raises(ValueError, match="integer >= 1"):
    orthax.group_heads(orthax.orthogonalise_components(), 0)
  with pytest.raises(ValueError, match="GradientTransformation"):
    orthax.group_heads(orthax.attention_layout("heads"), 2)
  tx = orthax.group_heads(orthax.orthogonalise_components(), 3)
  with pytest.raises(ValueError, match="has 4 heads, which do not split into groups of 3"):
    tx.init(linen_tree())
