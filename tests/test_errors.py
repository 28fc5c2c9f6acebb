"""Every argument is validated early, with a ValueError whose message names the argument."""

from __future__ import annotations

import flax.core
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import orthax
from tests.helpers import assert_trees_close_relative, condition_number, polar_tol, stable_id

PARAMS = {"dense": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3)},
          "conv": {"kernel": jnp.ones((3, 3, 2, 4))}}


@pytest.mark.parametrize("kwargs,names", [
    (dict(method="qr"), ["method", "'qr'"]),
    (dict(method="newton_schulz", steps=0), ["steps", "steps=0"]),
    (dict(method="polar_express", steps=2.5), ["steps", "steps=2.5"]),
    (dict(method="newton_schulz", steps=True), ["steps"]),
    (dict(method="svd", steps=3), ["steps", "method='svd'"]),
    (dict(method="auto", steps=3), ["steps", "method='auto'"]),
    (dict(method="newton_schulz", rtol=1e-3), ["rtol", "method='newton_schulz'"]),
    (dict(method="svd", rtol=-1), ["rtol", "rtol=-1"]),
    (dict(method="eigh", rtol=2), ["rtol", "rtol=2"]),
    (dict(method="svd", rtol="small"), ["rtol"]),
    (dict(step_scale="bogus"), ["step_scale", "'bogus'"]),
    (dict(compute_dtype=jnp.int32), ["compute_dtype", "int32"]),
    (dict(compute_dtype="not a dtype"), ["compute_dtype"]),
    (dict(method=lambda x: x, rtol=0.1), ["rtol", "functools.partial"]),
    (dict(method=lambda x: x, steps=2), ["steps", "functools.partial"]),
    (dict(method=3), ["method", "callable"]),
    (dict(method="svd", rtol=jnp.asarray(2.0)), ["rtol"]),
    (dict(method="newton_schulz", steps=jnp.asarray(3)), ["steps", "static_args"]),
    (dict(compute_dtype=jnp.asarray(1.0)), ["compute_dtype", "static_args"]),
], ids=stable_id)
def test_orthogonalise_components_arguments(kwargs, names):
  with pytest.raises(ValueError) as info:
    orthax.orthogonalise_components(**kwargs)
  for name in names:
    assert name in str(info.value)


@pytest.mark.parametrize("kwargs", [
    dict(method="svd", rtol=np.float32(1e-3)),
    dict(method="eigh", rtol=np.float64(1e-3)),
    dict(method="newton_schulz", steps=np.int64(3)),
    dict(method="svd", rtol=jnp.asarray(1e-3)),
], ids=stable_id)
def test_numpy_scalars_and_concrete_arrays_are_accepted(kwargs):
  """rtol is "a number in [0, 1)" and steps "an integer >= 1": numpy scalars are both.

  Fails in orthax 0.1.0 for np.float32 and np.int64, which `_method_fn`'s isinstance checks
  against (int, float) and int reject (np.float64 passes only because it subclasses float).
  They give the update that the same Python number gives.
  """
  plain = {k: v.item() if hasattr(v, "item") else v for k, v in kwargs.items()}
  tx, expected = orthax.orthogonalise_components(**kwargs), orthax.orthogonalise_components(**plain)
  assert isinstance(tx, optax.GradientTransformation)
  grads = jax.tree.map(lambda x: x * jnp.arange(1, x.size + 1).reshape(x.shape) % 7, PARAMS)
  updates = tx.update(grads, tx.init(PARAMS))[0]
  # The same computation, or (rtol as an array) one that rounds differently: each within the
  # polar factor's float32 bound, so within twice that of each other.
  kappa = max(condition_number(g) for g in [grads["dense"]["kernel"],
                                            grads["conv"]["kernel"].reshape(18, 4)])
  assert_trees_close_relative(updates, expected.update(grads, expected.init(PARAMS))[0],
                              2 * polar_tol(kappa, 18))
  assert not np.array_equal(updates["dense"]["kernel"], grads["dense"]["kernel"])


@pytest.mark.parametrize("build", [orthax.normalise, orthax.normalise_components])
def test_normalise_compute_dtype(build):
  with pytest.raises(ValueError, match="compute_dtype"):
    build(compute_dtype=jnp.int32)


@pytest.mark.parametrize("build", [
    lambda: orthax.orthogonalise("bogus"),
    lambda: orthax.orthogonal_sgd(1e-2, method="bogus"),
    lambda: orthax.orthogonal_adam(1e-3, method="bogus"),
    lambda: orthax.orthogonal_adamw(1e-3, method="bogus"),
    lambda: orthax.orthogonal_lars(1e-2, method="bogus"),
])
def test_aliases_check_method_at_build_time(build):
  with pytest.raises(ValueError, match="method"):
    build()


@pytest.mark.parametrize("layout,words", [
    (orthax.Layout(components=4), ["components", "4", "shape=(3, 3, 2, 4)"]),
    (orthax.Layout(components=-5), ["components", "-5"]),
    (orthax.Layout(batch=7), ["batch", "7"]),
    (orthax.Layout(components=-1, batch=3), ["overlap"]),
    (orthax.Layout(components=(0, 1), batch=(1,)), ["overlap"]),
    (orthax.Layout(components=()), ["components", "at least one axis"]),
], ids=stable_id)
def test_bad_layout_raises_at_init_naming_the_parameter(layout, words):
  tx = orthax.orthogonalise_components(layout={"dense": {"kernel": None, "bias": None},
                                               "conv": {"kernel": layout}})
  with pytest.raises(ValueError) as info:
    tx.init(PARAMS)
  message = str(info.value)
  assert "['conv']['kernel']" in message
  for word in words:
    assert word in message


@pytest.mark.parametrize("layout", [
    orthax.Layout(components=(3, -1)),  # Axis 3 twice: -1 is axis 3 of a 4-D kernel.
    orthax.Layout(components=-1, batch=(0, 0)),
], ids=stable_id)
def test_layout_repeating_an_axis_raises_at_init_naming_the_parameter(layout):
  """A repeated axis is no valid layout; it must be caught with the others, at init.

  Fails in orthax 0.1.0: `components._axes` sorts the axes but keeps duplicates, `init` passes,
  and the first `update` dies in `jnp.transpose` with a TypeError that names no parameter.
  """
  tx = orthax.orthogonalise_components(layout={"dense": {"kernel": None, "bias": None},
                                               "conv": {"kernel": layout}})
  with pytest.raises(ValueError, match=r"\['conv'\]\['kernel'\]"):
    tx.init(PARAMS)


def test_one_layout_for_every_leaf_names_the_leaf_it_does_not_fit():
  # Axis 2 exists in the conv kernel but not in the dense one; the 1-D bias is not selected.
  with pytest.raises(ValueError, match=r"\['dense'\]\['kernel'\].*batch axis 2.*\(4, 3\)"):
    orthax.orthogonalise_components(layout=orthax.Layout(batch=2)).init(PARAMS)


def test_mask_with_a_different_key_names_the_first_mismatch():
  mask = {"dense": {"kernel": True, "bias": False}, "conv": {"weights": True}}
  with pytest.raises(ValueError) as info:
    orthax.orthogonalise_components(mask=mask).init(PARAMS)
  message = str(info.value)
  assert "mask" in message
  assert "['conv']['kernel']" in message and "['conv']['weights']" in message


def test_mask_lacking_a_leaf_names_it():
  mask = {"dense": {"kernel": True}, "conv": {"kernel": True}}
  with pytest.raises(ValueError) as info:
    orthax.orthogonalise_components(mask=mask).init(PARAMS)
  message = str(info.value)
  assert "mask" in message and "['dense']['bias']" in message


def test_mask_lacking_the_last_leaf_names_it():
  mask = {"dense": {"kernel": True, "bias": False}}
  with pytest.raises(ValueError) as info:
    orthax.orthogonalise_components(mask=mask).init(PARAMS)
  assert "['conv']['kernel']" in str(info.value)


def test_mask_from_a_callable_is_checked_too():
  with pytest.raises(ValueError, match="mask"):
    orthax.orthogonalise_components(mask=lambda params: {"dense": True}).init(PARAMS)


def test_layout_tree_mismatch_names_the_layout():
  with pytest.raises(ValueError, match=r"layout tree does not match.*\['conv'\]\['kernel'\]"):
    orthax.orthogonalise_components(layout={"dense": {"kernel": None, "bias": None}}).init(PARAMS)


@pytest.mark.parametrize("mask,params", [
    ((True, False), [jnp.ones((4, 3)), jnp.ones(3)]),
    (flax.core.freeze({"w": True, "b": False}), {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}),
], ids=["tuple_for_list", "frozendict_for_dict"])
def test_mask_with_same_paths_but_other_containers_raises_value_error(mask, params):
  """Same key paths, different node types: the trees still differ, and the error must say so.

  Fails with IndexError in orthax 0.1.0: `components._mismatch` finds no differing path and
  then indexes one past the end of the (equally long) path lists.
  """
  with pytest.raises(ValueError, match="mask"):
    orthax.orthogonalise_components(mask=mask).init(params)


def test_mask_selecting_an_integer_leaf_raises():
  params = {"kernel": jnp.ones((4, 3)), "step": jnp.zeros((2, 2), jnp.int32)}
  with pytest.raises(ValueError, match=r"\['step'\].*int32"):
    orthax.orthogonalise_components(mask=True).init(params)


def test_mask_selecting_a_scalar_raises():
  params = {"kernel": jnp.ones((4, 3)), "temperature": jnp.ones(())}
  with pytest.raises(ValueError, match=r"\['temperature'\].*scalar"):
    orthax.orthogonalise_components(mask={"kernel": True, "temperature": True}).init(params)


@pytest.mark.parametrize("patterns", [(), ("",), ("head", 3)], ids=stable_id)
def test_exclude_needs_patterns(patterns):
  with pytest.raises(ValueError, match="exclude"):
    orthax.masks.exclude(*patterns)


def test_alias_rejects_a_callable_method_beside_an_orthogonaliser():
  with pytest.raises(ValueError, match="either orthogonaliser"):
    orthax.orthogonal_sgd(1e-2, method=orthax.polar.svd,
                          orthogonaliser=orthax.orthogonalise_components())


def test_layout_tree_with_a_non_layout_value_names_the_leaf():
  with pytest.raises(ValueError, match=r"layout of \['dense'\]\['kernel'\] is 3; give each leaf"):
    orthax.orthogonalise_components(
        layout={"dense": {"kernel": 3, "bias": None}, "conv": None}).init(PARAMS)


def test_spec_with_a_subtree_where_the_params_have_none_names_the_place():
  params = {"kernel": jnp.ones((4, 3)), "activation": None}
  with pytest.raises(ValueError, match=r"mask tree does not match.*\['activation'\].*None"):
    orthax.orthogonalise_components(
        mask={"kernel": True, "activation": {"fn": True}}).init(params)
