"""Every public transformation and alias through the same checks, as Optax tests its optimisers.

jit, dtype kept (bf16 in, bf16 out), `optax.inject_hyperparams`, `optax.MultiSteps`,
`optax.apply_if_finite`, inside `optax.masked` / `optax.multi_transform` / `optax.partition`, a
state whose structure, shapes and dtypes survive updates (also with params and gradients of
different dtypes) and a `lax.cond`; and every mask and layout spec on trees with None leaves
(Equinox), on `nn.scan`-stacked layers (against the same layers unrolled) and on plain Dense layers
with attention-like names.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import orthax
from tests.helpers import (
    NEWTON_SCHULZ_5,
    assert_trees_close_relative,
    assert_trees_equal,
    condition_number,
    eps,
    iteration_tol,
    polar_reference,
    polar_tol,
    random_matrix,
)

LR = 1e-2


def _kernels(mask):
  return orthax.masks.kernels if mask == "kernels" else mask


# The factories below take the authors' mask (every floating leaf with ndim >= 2) unless given
# another. It is named by a string, not given as a callable, so that `optax.inject_hyperparams`
# does not take it for a schedule.
def muon_kernels(learning_rate, weight_decay, mask="kernels", layout=None
                 ) -> optax.GradientTransformation:
  return orthax.muon(learning_rate, weight_decay=weight_decay, layout=layout, mask=_kernels(mask))


def speedrun_kernels(learning_rate, weight_decay, mask="kernels", layout=None
                     ) -> optax.GradientTransformation:
  return orthax.speedrun_muon(learning_rate, weight_decay=weight_decay, layout=layout,
                              mask=_kernels(mask))


def cautious_kernels(weight_decay, mask="kernels") -> optax.GradientTransformation:
  return orthax.add_cautious_decayed_weights(weight_decay, _kernels(mask))


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
    "normalise_neurons": (orthax.normalise_neurons, {}),
    "normalise_neurons_longer": (orthax.normalise_neurons, dict(beta2=0.9, axis="longer")),
    "add_cautious_decayed_weights": (cautious_kernels, dict(weight_decay=0.1)),
    # The authors' mask (ndim >= 2) to the NorMuon branch (the tree has no `kernel` for the
    # default hidden_matrices), the bias to Adam.
    "speedrun_muon": (speedrun_kernels, dict(learning_rate=LR, weight_decay=0.1)),
    "muon": (muon_kernels, dict(learning_rate=LR, weight_decay=0.1)),
    "muon_momentum": (orthax.muon_momentum, dict(beta=0.9)),
}
NAMES = sorted(TRANSFORMATIONS)


def build(name: str) -> optax.GradientTransformation:
  factory, kwargs = TRANSFORMATIONS[name]
  return factory(**kwargs)


def tree(seed: int, dtype=jnp.float32) -> dict:
  rng = np.random.default_rng(seed)
  shapes = {"dense": (6, 4), "conv": (3, 3, 2, 4), "bias": (4,)}
  return {k: jnp.asarray(random_matrix(rng, s), dtype) for k, s in shapes.items()}


def float32_rtol(matrices) -> float:
  """Bound on any float32 update's error against exact arithmetic, relative to its norm, when the
  matrices orthogonalised are `matrices`: the SVD's polar factor (`polar_tol`) or five
  Newton-Schulz steps (`iteration_tol`) at their largest condition number and longest side;
  a factor 2 covers the optimiser's few elementwise operations around it (momentum, Adam's
  division, LARS's trust ratio, weight decay), each one round-off."""
  matrices = [np.asarray(m, np.float64) for m in matrices]
  kappa = max(condition_number(m) for m in matrices)
  s_min = min(float(np.linalg.svd(m, compute_uv=False)[-1] / np.linalg.norm(m)) for m in matrices)
  dim = max(max(m.shape) for m in matrices)
  newton_schulz = NEWTON_SCHULZ_5
  return 2 * max(polar_tol(kappa, dim), iteration_tol(newton_schulz, dim, s_min))


def tree_matrices(g: dict) -> list:
  """The matrices `tree(seed)` holds: the dense kernel, the conv kernel as 18 x 4 (`Layout()`)
  or 9 x 8 (its other reading)."""
  return [g["dense"], g["conv"].reshape(18, 4), g["conv"].reshape(9, 8)]


def two_steps(g1, g2) -> list:
  """The gradients of two steps and what the optimisers orthogonalise from them: their mean
  (`optax.MultiSteps`), a momentum buffer g2 + beta g1 and Nesterov's g2 + beta (g2 + beta g1),
  at the momenta used here (0.9, 0.95)."""
  combined = [jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)]
  for beta in (0.9, 0.95):
    combined += [jax.tree.map(lambda a, b, beta=beta: b + beta * a, g1, g2),
                 jax.tree.map(lambda a, b, beta=beta: b + beta * (b + beta * a), g1, g2)]
  return [g1, g2, *combined]


# Two float32 computations of the same update (jit and eager, wrapped and plain, one step or two)
# are each within float32_rtol of the exact one, so within twice that of each other.
RTOL = 2 * float32_rtol([m for g in two_steps(tree(1), tree(2)) for m in tree_matrices(g)])


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


# The spec-taking transformations, built with a mask and a layout. The aliases take them through
# `orthogonaliser=`; `orthogonalise` takes a mask only, `muon_momentum` neither.
ALIASES = ("orthogonal_sgd", "orthogonal_adam", "orthogonal_adamw", "orthogonal_lars")
MASK_ONLY = ("orthogonalise", "add_cautious_decayed_weights")
LAYOUT_TAKERS = [name for name in NAMES if name not in (*MASK_ONLY, "muon_momentum")]


def build_with(name: str, mask=None, layout=None) -> optax.GradientTransformation:
  """build(name) with `mask` and `layout` in place of its defaults."""
  factory, kwargs = TRANSFORMATIONS[name]
  kwargs = dict(kwargs)
  if name in ALIASES:
    kwargs["orthogonaliser"] = orthax.orthogonalise_components(
        kwargs.pop("method"), mask=mask, layout=layout)
    if name == "orthogonal_lars":  # Its trust ratio, per layer.
      kwargs["layout"] = layout
  elif name in MASK_ONLY:
    kwargs["mask"] = mask
  elif name in ("muon", "speedrun_muon"):  # `layout` in place of their default attention views.
    return factory(**kwargs, mask=mask, layout=layout)
  elif name != "muon_momentum":
    kwargs.update(mask=mask, layout=layout)
  return factory(**kwargs)


def equinox_tree(seed: int) -> dict:
  """tree(seed) as `eqx.filter(model, eqx.is_array)` gives it: None for every non-array field."""
  return {**tree(seed), "activation": None, "norm": {"eps": None, "axis": None}}


# Specs that mean the defaults (every floating leaf with ndim >= 2, `Layout()`), each given as
# users give them for an Equinox model: trees made by jax.tree.map keep its None nodes.
SPECS = {
    "mask_tree": lambda p: dict(mask=jax.tree.map(lambda x: x.ndim >= 2, p)),
    "mask_prefix": lambda p: dict(mask={"dense": True, "conv": True, "bias": False,
                                        "activation": False, "norm": False}),
    "mask_exclude": lambda p: dict(mask=orthax.masks.exclude("nothing_has_this_name")),
    "layout_tree": lambda p: dict(mask=orthax.masks.kernels, layout=jax.tree.map(
        lambda _: orthax.Layout(), p)),
    "layout_by_path": lambda p: dict(mask=orthax.masks.kernels, layout=orthax.layout_by_path(
        {"conv": orthax.Layout()})),
    "attention_layout": lambda p: dict(mask=orthax.masks.kernels, layout=orthax.attention_layout(
        "heads", base=orthax.layout_by_path({"conv": orthax.Layout()}))),
}


def drop_none(t: dict) -> dict:
  return {k: v for k, v in t.items() if v is not None and k != "norm"}


# MASK_ONLY take a mask only and `muon_momentum` no spec: only the specs that reach them.
NONE_CASES = [(name, spec) for name in NAMES for spec in sorted(SPECS)
              if not (name in MASK_ONLY and not spec.startswith("mask"))
              and not (name == "muon_momentum" and spec != "mask_tree")]


@functools.cache
def default_update(name: str) -> dict:
  """build(name)'s update of equinox_tree(1) without its None fields (from equinox_tree(0))."""
  tx, params, grads = build(name), drop_none(equinox_tree(0)), drop_none(equinox_tree(1))
  return jax.jit(tx.update)(grads, tx.init(params), params)[0]


@pytest.mark.parametrize("name,spec", NONE_CASES)
def test_none_leaves_equinox_style(name, spec):
  """Fault 1 (optax #1007, equinox #771): None in the params holds no leaf, in every spec tree.

  The update of an Equinox-style tree is that of the same arrays without the None fields, under
  the defaults."""
  params, grads = equinox_tree(0), equinox_tree(1)
  tx = build_with(name, **SPECS[spec](params))
  updates = jax.jit(tx.update)(grads, tx.init(params), params)[0]
  assert jax.tree.structure(updates) == jax.tree.structure(grads)
  assert updates["activation"] is None and updates["norm"] == {"eps": None, "axis": None}
  # Two float32 computations of the same update (the same arrays, other specs): RTOL.
  assert_trees_close_relative(drop_none(updates), default_update(name), RTOL)
  if name == "orthogonalise_components":
    # Independent truth: float64 SVD, to polar_tol at the gradient's condition number.
    g = grads["dense"]
    np.testing.assert_allclose(updates["dense"], polar_reference(g), rtol=0,
                               atol=polar_tol(condition_number(g), max(np.shape(g))))


LAYERS = 3


def scanned_tree(seed: int) -> dict:
  """An nn.scan-stacked block of a conv and a Dense layer, and an unstacked head."""
  rng = np.random.default_rng(seed)
  shapes = {"blocks": {"Conv_0": {"kernel": (LAYERS, 3, 3, 2, 4), "bias": (LAYERS, 4)},
                       "Dense_0": {"kernel": (LAYERS, 6, 4), "bias": (LAYERS, 4)}},
            "head": {"kernel": (4, 3), "bias": (3,)}}
  return jax.tree.map(lambda s: jnp.asarray(random_matrix(rng, s)), shapes,
                      is_leaf=lambda s: isinstance(s, tuple))


def unstack(t: dict) -> dict:
  """The scanned tree as the same layers unrolled."""
  return {**{f"blocks_{i}": jax.tree.map(lambda x, i=i: x[i], t["blocks"])
             for i in range(LAYERS)}, "head": t["head"]}


def scanned_matrices(t: dict) -> list:
  """Each layer's matrices of a scanned tree: conv kernels as 18 x 4 (and 9 x 8), Dense kernels,
  the head."""
  blocks = t["blocks"]
  return [*(m for i in range(LAYERS) for m in (blocks["Conv_0"]["kernel"][i].reshape(18, 4),
                                                blocks["Conv_0"]["kernel"][i].reshape(9, 8),
                                                blocks["Dense_0"]["kernel"][i])),
          t["head"]["kernel"]]


# Two float32 updates of scanned_tree(1) then (2), batched or layer by layer: twice float32_rtol.
SCANNED_RTOL = 2 * float32_rtol(
    [m for g in two_steps(scanned_tree(1), scanned_tree(2)) for m in scanned_matrices(g)])
SCAN_LAYOUT = orthax.layout_by_path({"blocks": orthax.Layout(batch=0)})
SCAN_MASKS = {"default": None, "kernels": orthax.masks.kernels,
              "conv_kernels": orthax.masks.conv_kernels,
              "hidden_matrices": orthax.masks.hidden_matrices()}


@pytest.mark.parametrize("mask", sorted(SCAN_MASKS))
@pytest.mark.parametrize("name", LAYOUT_TAKERS)
def test_scanned_layers_get_the_unrolled_layers_update(name, mask):
  """Fault 2 (keras #21885, maxtext #4843): every route that picks leaves sees a stacked leaf as
  one layer. `muon` split Muon from AdamW on the raw leaf: stacked biases went to Muon under
  `masks.kernels`, stacked Dense kernels under `masks.conv_kernels`. Two updates of the scanned
  tree are those of the same layers unrolled, to float32 round-off."""
  params, g1, g2 = scanned_tree(0), scanned_tree(1), scanned_tree(2)
  scanned = build_with(name, mask=SCAN_MASKS[mask], layout=SCAN_LAYOUT)
  unrolled = build_with(name, mask=SCAN_MASKS[mask])
  out, expected = [], []
  for tx, view, result in ((scanned, lambda t: t, out), (unrolled, unstack, expected)):
    step = jax.jit(tx.update)
    state = tx.init(view(params))
    for g in (g1, g2):
      updates, state = step(view(g), state, view(params))
      result.append(updates)
  # The same float32 operations on the same matrices, batched or one by one: each within
  # float32_rtol of the exact update, so within SCANNED_RTOL of each other; far below the
  # fault's 0.15.
  for got, want in zip(out, expected, strict=True):
    assert_trees_close_relative(unstack(got), want, SCANNED_RTOL)


def named_like_attention(seed: int) -> dict:
  """Plain Dense layers named as Flax's attention projections: an actor-critic `value` head and
  an MLP whose last layer is `out`, and a `query` layer stacked by nn.scan."""
  rng = np.random.default_rng(seed)
  shapes = {"value": {"kernel": (16, 3), "bias": (3,)}, "out": {"kernel": (16, 4), "bias": (4,)},
            "blocks": {"query": {"kernel": (LAYERS, 6, 4), "bias": (LAYERS, 4)}}}
  return jax.tree.map(lambda s: jnp.asarray(random_matrix(rng, s)), shapes,
                      is_leaf=lambda s: isinstance(s, tuple))


@pytest.mark.parametrize("name", LAYOUT_TAKERS)
def test_dense_layers_with_attention_names_are_plain_matrices(name):
  """Fault 3 (VeOmni #1108, Megatron-LM #5400): a kernel was taken for attention by its name
  alone, and `muon()` raised on a (16, 3) `value` head. A kernel whose one-layer shape has two
  axes is a plain matrix under the 'whole' view, whatever its name: the update is `Layout()`'s."""
  params, grads = named_like_attention(0), named_like_attention(1)
  if name == "speedrun_muon":  # Its own "heads" view of query and key has no heads to split.
    tx = build_with(name, mask=orthax.masks.kernels, layout=SCAN_LAYOUT)
    with pytest.raises(ValueError, match=r"\['query'\]\['kernel'\].*leave its module's name"):
      tx.init(params)
    return
  tx = build_with(name, mask=orthax.masks.kernels,
                  layout=orthax.attention_layout("whole", base=SCAN_LAYOUT))
  plain = build_with(name, mask=orthax.masks.kernels, layout=SCAN_LAYOUT)
  got = jax.jit(tx.update)(grads, tx.init(params), params)[0]
  assert_trees_equal(got, jax.jit(plain.update)(grads, plain.init(params), params)[0])
  if name == "orthogonalise_components":
    # Independent truth: float64 SVD, layer by layer, to polar_tol at each condition number.
    for leaf in (got["value"]["kernel"], got["out"]["kernel"], *got["blocks"]["query"]["kernel"]):
      assert leaf.ndim == 2
    for o, g in ((got["out"]["kernel"], grads["out"]["kernel"]),
                 (got["blocks"]["query"]["kernel"][1], grads["blocks"]["query"]["kernel"][1])):
      np.testing.assert_allclose(o, polar_reference(g), rtol=0,
                                 atol=polar_tol(condition_number(g), max(np.shape(g))))


def test_muon_defaults_run_on_dense_layers_with_attention_names():
  params = {k: v for k, v in named_like_attention(0).items() if k != "blocks"}
  tx = orthax.muon(LR)
  updates = tx.update(params, tx.init(params), params)[0]
  expected = orthax.muon(LR, layout=orthax.Layout())
  assert_trees_equal(updates, expected.update(params, expected.init(params), params)[0])


@pytest.mark.parametrize("view", ["heads", "components"])
def test_a_heads_view_of_a_two_dimensional_kernel_names_the_leaf_and_the_fix(view):
  with pytest.raises(ValueError, match=r"\['out'\]\['kernel'\].*leave its module's name out"):
    orthax.attention_layout(view)(named_like_attention(0))


STATE_DTYPES = {"bf16_params_f32_grads": (jnp.bfloat16, jnp.float32),
                "f32_params_bf16_grads": (jnp.float32, jnp.bfloat16)}


@pytest.mark.parametrize("dtypes", sorted(STATE_DTYPES))
@pytest.mark.parametrize("name", NAMES)
def test_state_types_are_stable_from_init_with_mixed_dtypes(name, dtypes):
  """Fault 4 (DeepSpeed #8483, jaxopt #451): bf16 params and float32 gradients stored Muon's
  momentum (and optax's traces and moments) as bf16 at init and float32 after an update, so a
  jitted step compiled twice. A state keeps init's shapes, dtypes and weak types over updates."""
  params_dtype, grads_dtype = STATE_DTYPES[dtypes]
  tx, params = build(name), tree(0, params_dtype)
  state = tx.init(params)
  types = jax.tree.map(jax.typeof, state)
  step = jax.jit(tx.update)
  for seed in (1, 2, 3):
    updates, state = step(tree(seed, grads_dtype), state, params)
    assert jax.tree.map(jax.typeof, state) == types
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_lars_masks_see_stacked_leaves_as_layers():
  """`orthogonal_lars`'s decay and trust-ratio masks are optax's, but with a layout they read each
  stacked leaf as one layer as well: a stacked bias neither decays nor gets a trust ratio."""
  params, grads = scanned_tree(0), scanned_tree(1)
  masks = dict(weight_decay=0.1, weight_decay_mask=orthax.masks.kernels,
               trust_ratio_mask=orthax.masks.kernels, mask=orthax.masks.conv_kernels)
  scanned = orthax.orthogonal_lars(LR, method="svd", layout=SCAN_LAYOUT, **masks)
  unrolled = orthax.orthogonal_lars(LR, method="svd", **masks)
  got = scanned.update(grads, scanned.init(params), params)[0]
  want = unrolled.update(unstack(grads), unrolled.init(unstack(params)), unstack(params))[0]
  # Tolerance as in test_scanned_layers_get_the_unrolled_layers_update.
  assert_trees_close_relative(unstack(got), want, SCANNED_RTOL)
  # The bias's first step, -lr g: one float32 product, eps / 2 (doubled).
  np.testing.assert_allclose(got["blocks"]["Dense_0"]["bias"],
                             -LR * np.asarray(grads["blocks"]["Dense_0"]["bias"], np.float64),
                             rtol=eps())
