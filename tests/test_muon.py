"""orthax.muon: optax.contrib.muon's updates with Newton-Schulz; other methods and layouts."""

from __future__ import annotations

import inspect

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import orthax
from tests.helpers import (
  NEWTON_SCHULZ_5,
  assert_trees_close_relative,
  assert_trees_equal,
  condition_number,
  eps,
  iteration_tol,
  muon_matrices,
  polar_reference,
  polar_tol,
  two_muons_tol,
)

VOCAB, EMBED, HEADS, HEAD_DIM, LAYERS, LENGTH = 24, 16, 4, 8, 2, 6


class Block(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    x = x + nn.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=HEADS * HEAD_DIM,
                                            name="attn")(nn.LayerNorm(name="ln_1")(x))
    h = nn.Dense(4 * EMBED, name="up")(nn.LayerNorm(name="ln_2")(x))
    return x + nn.Dense(EMBED, name="down")(nn.gelu(h)), None


class GPT(nn.Module):
  """Token and position embeddings, nn.scan-stacked blocks, an unstacked attention, a head."""

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(VOCAB, EMBED, name="wte")(tokens)
    x = x + self.param("wpe", nn.initializers.normal(0.02), (LENGTH, EMBED))
    stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                    length=LAYERS)
    x = stack(name="blocks")(x, None)[0]
    x = x + nn.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=HEADS * HEAD_DIM,
                                            name="attn")(x)
    return nn.Dense(VOCAB, name="lm_head")(x)


# The reference, optax.contrib.muon, gained dimension numbers and a separate Adam learning rate
# after the optax floor (0.2.5); the floor run (make test-floors) skips the comparisons there.
MuonDimensionNumbers = getattr(optax.contrib, "MuonDimensionNumbers", None)
needs_reference = pytest.mark.skipif(
    MuonDimensionNumbers is None
    or "adam_learning_rate" not in inspect.signature(optax.contrib.muon).parameters,
    reason=f"optax {optax.__version__}'s contrib.muon predates the reference this test needs")


def gpt_params():
  return GPT().init(jax.random.key(0), jnp.ones((1, LENGTH), jnp.int32))["params"]


def dimension_numbers(params):
  """optax.contrib.muon's spec of the same matrices: projections whole, stacks vmapped."""

  def spec(path, x):
    names = [k.key for k in path]
    if names[-1] != "kernel" or names[0] == "lm_head":
      return None
    lead = x.ndim - (3 if names[-2] in ("query", "key", "value", "out") else 2)
    if names[-2] in ("query", "key", "value"):
      return MuonDimensionNumbers(lead, (lead + 1, lead + 2))
    if names[-2] == "out":
      return MuonDimensionNumbers((lead, lead + 1), lead + 2)
    return MuonDimensionNumbers(lead, lead + 1)

  return jax.tree_util.tree_map_with_path(spec, params)


LAYOUT = orthax.attention_layout("whole", base=orthax.layout_by_path(
    {"blocks": orthax.Layout(batch=0)}))


def gradients(params, seed):
  keys = jax.random.split(jax.random.key(seed), len(jax.tree.leaves(params)))
  leaves, treedef = jax.tree.flatten(params)
  return jax.tree.unflatten(
      treedef,
      [0.3 * jax.random.normal(k, x.shape) + 0.1 * x for k, x in zip(keys, leaves, strict=True)])


def run_both(reference, tx, params, steps):
  """Updates of two optimisers fed the same gradients; each keeps its own params."""

  @jax.jit
  def step(p1, s1, p2, s2, seed):
    g = gradients(p1, seed)
    u1, s1 = reference.update(g, s1, p1)
    u2, s2 = tx.update(g, s2, p2)
    return optax.apply_updates(p1, u1), s1, optax.apply_updates(p2, u2), s2, u1, u2

  p1 = p2 = params
  s1, s2 = reference.init(params), tx.init(params)
  history = []
  for t in range(steps):
    p1, s1, p2, s2, u1, u2 = step(p1, s1, p2, s2, t)
    history.append((u1, u2))
  return history, p1, p2


@needs_reference
@pytest.mark.parametrize("nesterov", [True, False])
def test_newton_schulz_reproduces_optax_contrib_muon(nesterov):
  """Each matrix of each update is optax.contrib.muon's, in the spectral norm, to the bound on
  two float32 runs of Muon's 5 Newton-Schulz steps (`helpers.two_muons_tol`; a 1 % error is
  0.0068 lr scale at least, as the update's norm is >= 0.68 lr scale, over twice this bound);
  AdamW's leaves bit for bit."""
  params = gpt_params()
  assert params["blocks"]["attn"]["query"]["kernel"].shape == (LAYERS, EMBED, HEADS, HEAD_DIM)
  kwargs = dict(beta=0.9, weight_decay=0.1, nesterov=nesterov, adam_b2=0.98,
                adam_weight_decay=0.01, adam_learning_rate=3e-3)
  schedule = optax.linear_schedule(0.02, 0.01, 5)
  specs = dimension_numbers(params)
  reference = optax.contrib.muon(schedule, muon_weight_dimension_numbers=specs, **kwargs)
  tx = orthax.muon(schedule, mask=orthax.masks.hidden_matrices(), layout=LAYOUT, **kwargs)

  @jax.jit
  def step(p, s1, s2, seed):  # Both fed the same gradients and params: no drift between them.
    g = gradients(p, seed)
    u1, s1 = reference.update(g, s1, p)
    u2, s2 = tx.update(g, s2, p)
    return optax.apply_updates(p, u1), s1, s2, u1, u2

  p, s1, s2 = params, reference.init(params), tx.init(params)
  for t in range(5):
    p_before = p
    p, s1, s2, u1, u2 = step(p, s1, s2, t)
    flat = jax.tree_util.tree_flatten_with_path(u1)[0]
    for (path, e), a, spec, x in zip(
        flat, jax.tree.leaves(u2), jax.tree.leaves(specs, is_leaf=lambda s: s is None or
                                                   isinstance(s, MuonDimensionNumbers)),
        jax.tree.leaves(p_before), strict=True):
      if spec is None:  # The same partition: AdamW's leaves agree bit for bit.
        np.testing.assert_array_equal(a, e, err_msg=f"step {t}: {jax.tree_util.keystr(path)}")
        continue
      tol = two_muons_tol(t, float(schedule(t)), kwargs["weight_decay"], muon_matrices(x, spec))
      for i, (am, em) in enumerate(zip(muon_matrices(a, spec), muon_matrices(e, spec),
                                       strict=True)):
        distance = np.linalg.norm(am - em, 2)
        assert distance <= tol, (t, jax.tree_util.keystr(path), i, distance, tol)


@needs_reference
def test_defaults_match_optax_muon_on_two_dimensional_leaves():
  """optax's default split (every 2-D leaf) through a mask; no attention, so Layout()."""
  params = {"embed": jnp.ones((VOCAB, EMBED)), "dense": {"kernel": jnp.ones((EMBED, 40)),
                                                         "bias": jnp.ones(40)},
            "head": {"kernel": jnp.ones((40, VOCAB))}}
  reference = optax.contrib.muon(0.02)
  tx = orthax.muon(0.02, mask=lambda p: jax.tree.map(lambda x: x.ndim == 2, p))
  history, _, _ = run_both(reference, tx, params, steps=3)
  # Two float32 runs of Muon's 5 Newton-Schulz steps on matrices of longer side at most 40, each
  # within iteration_tol of the exact iteration in the spectral norm (times lr and Muon's scale).
  # The update's spectral norm is at least 0.68 of that: 5 steps take the largest normalised
  # singular value (>= 1 / sqrt(40)) to [0.68, 1.13] (the polynomial, in float64).
  for u1, u2 in history:
    assert_close_spectral(u2, u1, 2 * iteration_tol(NEWTON_SCHULZ_5, 40) / 0.68)


def assert_close_spectral(actual, expected, rtol):
  """Each leaf within rtol of the expected one relative to its spectral norm (a vector's 2-norm):
  the norm iteration_tol bounds. Relative to the Frobenius norm, as assert_trees_close_relative
  does, a 1 % error in a (16, 40) update would pass: its Frobenius norm is up to 4 times it."""
  flat = jax.tree_util.tree_flatten_with_path(expected)[0]
  for (path, e), a in zip(flat, jax.tree.leaves(actual), strict=True):
    e, a = np.asarray(e, np.float64), np.asarray(a, np.float64)
    assert np.linalg.norm(a - e, 2) <= rtol * np.linalg.norm(e, 2), jax.tree_util.keystr(path)


def test_first_step_with_svd_per_head_is_the_scaled_polar_factor():
  """One argument swaps in the exact polar factor and per-head matrices."""
  params = gpt_params()
  grads = gradients(params, 0)
  tx = orthax.muon(0.1, method="svd", layout=orthax.attention_layout(
      "heads", base=orthax.layout_by_path({"blocks": orthax.Layout(batch=0)})))
  updates = tx.update(grads, tx.init(params), params)[0]
  # Step 1's Nesterov momentum is a multiple of the gradient; U V^T does not see the scale. The
  # bound: polar_tol, once more for the rounding of that multiple (eps / 2 per entry), and eps for
  # the products by lr and Muon's scale.
  query, g = updates["attn"]["query"]["kernel"], np.asarray(grads["attn"]["query"]["kernel"])
  for h in range(HEADS):  # (embed, head_dim) = (16, 8): Muon's scale sqrt(max(1, 8 / 16)) = 1.
    np.testing.assert_allclose(query[:, h], -0.1 * polar_reference(g[:, h]), rtol=0,
                               atol=0.1 * (2 * polar_tol(condition_number(g[:, h]), 16) + eps()))
  up, g = updates["blocks"]["up"]["kernel"], np.asarray(grads["blocks"]["up"]["kernel"])
  for layer in range(LAYERS):  # (16, 64): scale sqrt(64 / 16) = 2.
    np.testing.assert_allclose(up[layer], -0.2 * polar_reference(g[layer]), rtol=0,
                               atol=0.2 * (2 * polar_tol(condition_number(g[layer]), 64) + eps()))
  # Embeddings, biases and the head went to AdamW (Nesterov): its first step is
  # -lr * (1 + b1 / (1 + b1)) * g / (|g| + eps). In float32: about 16 roundings of eps / 2, and
  # b1 = 0.9, b2 = 0.999 rounded to float32 put its bias corrections off by eps / (1 - b) relative
  # each (b rounds by eps / 2; 1 - b keeps no more digits), v's through a square root (half).
  g = np.asarray(grads["lm_head"]["kernel"], np.float64)
  np.testing.assert_allclose(updates["lm_head"]["kernel"],
                             -0.1 * (1 + 0.9 / 1.9) * g / (np.abs(g) + 1e-8),
                             rtol=(8 + 1 / (1 - 0.9) + 0.5 / (1 - 0.999)) * eps())


def test_mask_and_layout_as_pytrees():
  """Trees with the full params' structure work inside the partition too."""
  params = gpt_params()
  grads = gradients(params, 1)
  by_callable = orthax.muon(0.02, method="polar_express", mask=orthax.masks.hidden_matrices(),
                            layout=LAYOUT)
  by_tree = orthax.muon(0.02, method="polar_express",
                        mask=orthax.masks.hidden_matrices()(params), layout=LAYOUT(params))
  assert_trees_equal(by_tree.update(grads, by_tree.init(params), params)[0],
                     by_callable.update(grads, by_callable.init(params), params)[0])


def orthogonalised_matrices(tree) -> list[np.ndarray]:
  """The matrices muon orthogonalises in test_group_heads_and_inject_hyperparams, from a tree
  of gradients or updates: query and key heads in pairs (embed, 2 head_dim), value heads
  (embed, head_dim), out heads (head_dim, embed), the MLP's up and down kernels, per layer."""
  matrices = []
  for attn, stacked in ((tree["blocks"]["attn"], True), (tree["attn"], False)):
    def layers(name, attn=attn, stacked=stacked):
      x = np.asarray(attn[name]["kernel"], np.float64)
      return x if stacked else x[None]
    for name in ("query", "key"):
      k = layers(name)
      matrices += [k[i, :, 2 * p:2 * p + 2].reshape(EMBED, 2 * HEAD_DIM)
                   for i in range(len(k)) for p in range(HEADS // 2)]
    v, o = layers("value"), layers("out")
    matrices += [v[i, :, h] for i in range(len(v)) for h in range(HEADS)]
    matrices += [o[i, h] for i in range(len(o)) for h in range(HEADS)]
  for name in ("up", "down"):
    matrices += list(np.asarray(tree["blocks"][name]["kernel"], np.float64))
  return matrices


def test_group_heads_and_inject_hyperparams():
  """Injected or not, muon on pairs of heads gives each pair's (embed, 2 head_dim) query and key
  matrix its polar factor. The layout callable is static: optax.inject_hyperparams calls every
  other callable with the step count, and orthax's layouts and masks then raise."""
  params = gpt_params()
  grads = gradients(params, 2)
  layout = orthax.attention_layout(
      "heads", base=orthax.layout_by_path({"blocks": orthax.Layout(batch=0)}))

  def grouped(tx):
    return orthax.group_heads(tx, 2, inputs=("query", "key"), outputs=())

  with pytest.raises(ValueError, match="static_args"):
    grouped(optax.inject_hyperparams(orthax.muon)(0.1, method="svd", layout=layout)).init(params)
  plain = grouped(orthax.muon(0.1, method="svd", layout=layout))
  injected = grouped(optax.inject_hyperparams(orthax.muon, static_args=("layout",))(
      learning_rate=0.1, method="svd", layout=layout))
  state = injected.init(params)
  updates, state = jax.jit(injected.update)(grads, state, params)
  # The orthogonalised matrices: two float32 runs of the same SVDs, each within polar_tol of the
  # exact factor (step 1's momentum is a multiple of the gradient, so at the gradient's
  # condition number), relative to the update's spectral norm (lr times Muon's scale): twice it.
  # (AdamW's leaves differ more: injected, its b1 and b2 are float32 arrays, so 1 - b2 ** t is
  # computed in float32.)
  expected = jax.jit(plain.update)(grads, plain.init(params), params)[0]
  for i, (a, e, g) in enumerate(zip(*map(orthogonalised_matrices, (updates, expected, grads)),
                                    strict=True)):
    tol = 2 * polar_tol(condition_number(g), max(g.shape)) * np.linalg.norm(e, 2)
    assert np.linalg.norm(a - e, 2) <= tol, (i, np.linalg.norm(a - e, 2), tol)
  for path in [("attn", "query"), ("attn", "key"), ("blocks", "attn", "query"),
               ("blocks", "attn", "key")]:
    g, u = grads, updates
    for key in path:
      g, u = g[key], u[key]
    g = np.asarray(g["kernel"], np.float64).reshape((-1, EMBED, HEADS, HEAD_DIM))
    u = np.asarray(u["kernel"]).reshape(g.shape)
    for layer, pair in np.ndindex(g.shape[0], HEADS // 2):
      # Step 1's Nesterov momentum is a multiple of the gradient; Muon's scale is 1 for a square
      # (16, 16) matrix.
      block = g[layer, :, 2 * pair:2 * pair + 2].reshape(EMBED, 2 * HEAD_DIM)
      np.testing.assert_allclose(
          u[layer, :, 2 * pair:2 * pair + 2].reshape(EMBED, 2 * HEAD_DIM),
          -0.1 * polar_reference(block),
          atol=0.1 * polar_tol(condition_number(block), EMBED), rtol=0, err_msg=str(path))
  state.hyperparams["learning_rate"] = jnp.asarray(0.0)
  updates, _ = jax.jit(injected.update)(grads, state, params)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))


class NnxLM(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.wte = nnx.Embed(VOCAB, EMBED, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(HEADS, EMBED, decode=False, rngs=rngs)
    self.lm_head = nnx.Linear(EMBED, VOCAB, rngs=rngs)

  def __call__(self, tokens):
    x = self.wte(tokens)
    return self.lm_head(x + self.attn(x))


# flax < 0.12's nnx.Optimizer fails on any optax.masked state (its MaskedNode leaves), plain optax
# included; orthax.muon's Muon/AdamW split is such a state.
OLD_NNX_OPTIMIZER = tuple(int(v) for v in flax.__version__.split(".")[:2]) < (0, 12)


@pytest.mark.skipif(OLD_NNX_OPTIMIZER, reason=f"flax {flax.__version__}: nnx.Optimizer cannot hold "
                    "an optax.masked state before flax 0.12")
def test_nnx_optimizer_with_per_head_polar_express():
  model = NnxLM(nnx.Rngs(0))
  tx = orthax.muon(0.02, method="polar_express", layout=orthax.attention_layout("heads"))
  optimizer = nnx.Optimizer(model, optax.MultiSteps(tx, every_k_schedule=1), wrt=nnx.Param)
  tokens = jnp.arange(2 * LENGTH).reshape(2, LENGTH) % VOCAB

  @nnx.jit
  def step(model, optimizer):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(tokens), tokens).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(4)]
  assert losses[-1] < losses[0], losses


def test_bfloat16_in_bfloat16_out():
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), gpt_params())
  grads = jax.tree.map(lambda x: x.astype(jnp.bfloat16), gradients(gpt_params(), 3))
  tx = orthax.muon(0.02, layout=LAYOUT)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert {u.dtype for u in jax.tree.leaves(updates)} == {jnp.dtype(jnp.bfloat16)}
  # The values: the float32 update of the same numbers, to bfloat16's precision (at most 4
  # roundings of eps / 2: momentum, Adam's moments, the update) plus twice float32's bound.
  f32 = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)  # noqa: E731
  expected = tx.update(f32(grads), tx.init(f32(params)), f32(params))[0]
  assert_trees_close_relative(
      updates, expected, 2 * eps(jnp.bfloat16) + 2 * iteration_tol(NEWTON_SCHULZ_5, 4 * EMBED))


def test_errors():
  with pytest.raises(ValueError, match=r"beta=1\.0"):
    orthax.muon(0.02, beta=1.0)
  with pytest.raises(ValueError, match="method must be one of"):
    orthax.muon(0.02, method="qr")
