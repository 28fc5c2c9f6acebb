"""orthax.qk_clip against numpy, through optax's wrappers, and on the example GPT's real logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import orthax
from tests.helpers import eps, random_matrix, round_off

TAU = 10.0
EMBED, HEADS, HEAD_DIM, LAYERS = 6, 3, 2, 2


def attention_tree(rng, dtype=jnp.float32) -> dict:
  """One attention module with biases, one nn.scan-style stack of two without, and a Dense."""
  def projection(*lead, bias=True):
    leaf = {"kernel": random_matrix(rng, (*lead, EMBED, HEADS, HEAD_DIM))}
    if bias:
      leaf["bias"] = random_matrix(rng, (*lead, HEADS, HEAD_DIM))
    return leaf
  tree = {"attn": {name: projection() for name in ("query", "key", "value")},
          "stack": {"attn": {name: projection(LAYERS, bias=False) for name in ("query", "key")}},
          "dense": {"kernel": random_matrix(rng, (EMBED, 4))}}
  return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


MAX_LOGITS = {"attn": jnp.array([5.0, 40.0, 10.0]),  # head 1 is 4x over: scaled by 1/2
              "stack/attn": jnp.array([[20.0, 1.0, -3.0], [10.5, 90.0, 0.0]])}


def reference(params, updates) -> dict:
  """The new params x + u with each clipped head's query and key times sqrt(tau / S), float64."""
  new = jax.tree.map(lambda x, u: np.asarray(x, np.float64) + np.asarray(u, np.float64),
                     params, updates)
  for module, logits in (("attn", MAX_LOGITS["attn"]), ("stack", MAX_LOGITS["stack/attn"])):
    scale = np.sqrt(TAU / np.maximum(np.asarray(logits, np.float64), TAU))  # 1 at or below tau
    for name in ("query", "key"):
      node = new["attn"][name] if module == "attn" else new["stack"]["attn"][name]
      node["kernel"] = node["kernel"] * scale[..., None, :, None]
      if "bias" in node:
        node["bias"] = node["bias"] * scale[..., :, None]
  return new


def check(params, updates, got, rtol) -> None:
  """x + got against the float64 reference, each leaf to rtol relative to its largest entry and
  the params' (the update is (x + u) s - x: its roundings are relative to |x + u| and |x|)."""
  expected = reference(params, updates)
  new = jax.tree.map(lambda x, u: np.asarray(x, np.float64) + np.asarray(u, np.float64),
                     params, got)
  flat = jax.tree_util.tree_flatten_with_path(expected)[0]
  for (path, e), n, x in zip(flat, jax.tree.leaves(new), jax.tree.leaves(params), strict=True):
    scale = np.abs(e).max() + np.abs(np.asarray(x, np.float64)).max()
    np.testing.assert_allclose(n, e, rtol=rtol, atol=rtol * scale,
                               err_msg=jax.tree_util.keystr(path))


def test_matches_numpy_and_leaves_the_rest_alone():
  rng = np.random.default_rng(0)
  params, updates = attention_tree(rng), attention_tree(rng)
  tx = orthax.qk_clip(TAU)
  got, _ = jax.jit(tx.update)(updates, tx.init(params), params, max_logits=MAX_LOGITS)
  # float32: x + u, sqrt(tau / S), the product and the subtraction of x, 2.5 eps; margin 2.
  check(params, updates, got, rtol=5 * eps())
  # Value, the Dense layer and every head at or below the threshold: the update as it came.
  np.testing.assert_array_equal(got["attn"]["value"]["kernel"], updates["attn"]["value"]["kernel"])
  np.testing.assert_array_equal(got["dense"]["kernel"], updates["dense"]["kernel"])
  for head in (0, 2):
    np.testing.assert_array_equal(got["attn"]["query"]["kernel"][:, head],
                                  updates["attn"]["query"]["kernel"][:, head])
  np.testing.assert_array_equal(got["stack"]["attn"]["key"]["kernel"][0, :, 1:],
                                updates["stack"]["attn"]["key"]["kernel"][0, :, 1:])


def test_bfloat16_jit_inject_hyperparams_and_chain():
  rng = np.random.default_rng(1)
  params, grads = attention_tree(rng, jnp.bfloat16), attention_tree(rng, jnp.bfloat16)
  tx = optax.chain(optax.sgd(0.1), optax.inject_hyperparams(orthax.qk_clip)(threshold=TAU))
  state = tx.init(params)
  got, new_state = jax.jit(tx.update)(grads, state, params, max_logits=MAX_LOGITS)
  assert jax.tree.map(jnp.result_type, got) == jax.tree.map(jnp.result_type, grads)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  updates = jax.tree.map(lambda g: -0.1 * np.asarray(g, np.float64), grads)
  # bfloat16: the update is rounded once (2^-8 relative), and x + u' against x + u again.
  check(params, updates, got, rtol=2**-7)
  # An injected threshold above every logit clips nothing.
  state[1].hyperparams["threshold"] = jnp.asarray(1e3)
  unclipped = jax.jit(tx.update)(grads, state, params, max_logits=MAX_LOGITS)[0]
  np.testing.assert_array_equal(unclipped["attn"]["query"]["kernel"],
                                (-0.1 * grads["attn"]["query"]["kernel"]).astype(jnp.bfloat16))


def test_multi_steps_clips_on_the_emitting_step():
  rng = np.random.default_rng(2)
  params, g1, g2 = attention_tree(rng), attention_tree(rng), attention_tree(rng)
  multi = optax.MultiSteps(optax.chain(optax.sgd(0.1), orthax.qk_clip(TAU)), every_k_schedule=2)
  step = jax.jit(multi.update)
  state = multi.init(params)
  first, state = step(g1, state, params, max_logits=MAX_LOGITS)
  assert not any(bool(jnp.any(u)) for u in jax.tree.leaves(first))
  second, _ = step(g2, state, params, max_logits=MAX_LOGITS)
  mean_step = jax.tree.map(lambda a, b: -0.1 * (np.asarray(a, np.float64) + np.asarray(b)) / 2,
                           g1, g2)
  # As above, with the mean of two gradients and the rate (1.5 eps more); margin 2.
  check(params, mean_step, second, rtol=8 * eps())


# An examples test: the example GPT needs flax.nnx.List, newer than the floors resolve.
@pytest.mark.examples
def test_example_gpt_logits_fall_to_the_threshold():
  """On the example GPT: with a zero step, the clipped params' largest logit per head on the same
  tokens is min(S_h, tau) (q . k scales by exactly gamma_h), measured by the example's helper."""
  from examples.shakespeare_char.model import GPT, logits_and_max_attention_logits

  model = GPT(11, context=8, layers=2, heads=2, width=8, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  params = jax.tree.map(lambda x: 30 * x, params)  # logits of order 1e-2 become order 10
  tokens = jnp.arange(16).reshape(2, 8) % 11

  def max_logits(params):
    return logits_and_max_attention_logits(nnx.merge(graphdef, params), tokens)[1]

  before = max_logits(params)
  assert set(before) == {"blocks/0/attention", "blocks/1/attention"}
  tau = float(np.median(np.concatenate([np.asarray(v) for v in before.values()])))
  tx = optax.chain(optax.sgd(0.0), orthax.qk_clip(tau))
  updates, _ = tx.update(params, tx.init(params), params, max_logits=before)
  after = max_logits(optax.apply_updates(params, updates))
  # Each score q . k / sqrt(d) of head h, from x = LayerNorm(residual) with ||x|| <= sqrt(width)
  # max|scale| (no bias): |q| <= ||x|| ||W_q,h||_F =: A_h, |k| <= B_h likewise, and its float32
  # error is at most (2 round_off(width) + round_off(d) + eps) A_h B_h / sqrt(d) (the products
  # x W, the sum over d, the division). Before and after each have that error (after's q and k
  # are scaled by sqrt(gamma) <= 1), plus after's rounded weights (eps / 2 each, for q and k)
  # and gamma's own rounding (2 eps of tau); the max over positions moves by no more.
  flat = {jax.tree_util.keystr(path): np.asarray(x, np.float64)
          for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  head_dim = 4
  coefficient = 2 * (2 * round_off(8) + round_off(head_dim) + eps()) + eps()
  for name, logits in before.items():
    block = f"['blocks'][{name.split('/')[1]}]"
    x_norm = np.sqrt(8) * np.abs(flat[f"{block}['attention_norm']['scale'].value"]).max()
    a, b = (x_norm * np.linalg.norm(flat[f"{block}['attention']['{w}']['kernel'].value"],
                                    axis=(0, 2)) for w in ("query", "key"))
    tol = coefficient * a * b / np.sqrt(head_dim) + 2 * eps() * tau
    error = np.abs(np.asarray(after[name], np.float64) - np.minimum(logits, tau))
    assert np.all(error <= tol), (name, error, tol)
  assert any(bool(jnp.any(v > tau)) for v in before.values())


def test_errors():
  rng = np.random.default_rng(3)
  params = attention_tree(rng)
  tx = orthax.qk_clip(TAU)
  with pytest.raises(ValueError, match="max_logits="):
    tx.update(params, tx.init(params), params)
  with pytest.raises(ValueError, match=r"needs \(3,\)"):
    tx.update(params, tx.init(params), params, max_logits={"attn": jnp.ones(2)})
  with pytest.raises(ValueError, match="no 'query' and 'key' kernels"):
    tx.update(params, tx.init(params), params, max_logits={"blocks/9/attn": jnp.ones(3)})
  with pytest.raises(ValueError, match="module name"):
    orthax.qk_clip(query="")
