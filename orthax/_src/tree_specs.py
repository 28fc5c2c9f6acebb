"""A mask or layout spec matched to the params' leaves: one value, a prefix tree or a callable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _is_masked_node(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _children(x: Any) -> tuple[list[tuple[Any, Any]], Any]:
  """`x`'s children one level down, with their keys, and `x`'s one-level structure."""
  return jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)


def _is_tree_leaf(x: Any) -> bool:
  return x is not None and jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(x))


def _first_leaf(x: Any, path: tuple, is_leaf: Callable | None = None) -> str:
  """The path of the first leaf at or below `x` (at `path`), or `path` itself when it has none."""
  flat = jax.tree_util.tree_flatten_with_path(x, is_leaf=is_leaf)[0]
  return jax.tree_util.keystr(path + (tuple(flat[0][0]) if flat else ()))


def _mismatch(params: Any, spec: Any, path: tuple, what: str,
              is_spec_leaf: Callable[[Any], bool]) -> ValueError:
  where = jax.tree_util.keystr(path) or "the root"
  if _is_tree_leaf(params) or _is_tree_leaf(spec) or params is None or spec is None:
    detail = (f"at {where} the params have {_describe(params)} and the {what} has "
              f"{_describe(spec)}")
  else:
    mine, theirs = _children(params)[0], _children(spec)[0]
    want = [jax.tree_util.keystr(k) for k, _ in mine]
    have = [jax.tree_util.keystr(k) for k, _ in theirs]
    first = next((i for i, (w, h) in enumerate(zip(want, have, strict=False)) if w != h), None)
    if first is not None:
      detail = (f"the first mismatch is at {_first_leaf(mine[first][1], path + mine[first][0])}"
                f" in the params and "
                f"{_first_leaf(theirs[first][1], path + theirs[first][0], is_spec_leaf)} in the "
                f"{what}")
    elif len(want) != len(have):
      longer, name, keys = ((mine, "params", len(have)) if len(want) > len(have)
                            else (theirs, what, len(want)))
      detail = (f"{_first_leaf(longer[keys][1], path + longer[keys][0])} is in the {name} but "
                "not in the other")
    else:
      detail = (f"the paths agree but the containers differ at {where}: params "
                f"{type(params).__name__}, {what} {type(spec).__name__}")
  return ValueError(
      f"The {what} tree does not match the params: {detail}. Give a {what} with the params' "
      f"structure (or a prefix of it), or a callable params -> {what} tree.")


def _describe(x: Any) -> str:
  if hasattr(x, "shape") and hasattr(x, "dtype"):
    return f"an array of shape {tuple(x.shape)}"
  if x is None:
    return "None (no leaf)"
  return f"{type(x).__name__} {x!r}"[:120]


def _match(spec: Any, params: Any, path: tuple, out: list[Any], what: str,
           is_spec_leaf: Callable[[Any], bool]) -> None:
  """Appends to `out` the spec's value for each leaf of `params`, where `spec` is a prefix of it."""
  if _is_masked_node(params):
    return  # A wrapper's placeholder: no leaf here, whatever the spec says.
  if is_spec_leaf(spec):
    out.extend([spec] * len(jax.tree_util.tree_leaves(params)))
    return
  if _is_tree_leaf(params) and _is_tree_leaf(spec):
    out.append(spec)  # Not a spec value: the caller checks what it got.
    return
  if _is_tree_leaf(params) or _is_tree_leaf(spec):
    raise _mismatch(params, spec, path, what, is_spec_leaf)
  mine, structure = _children(params)
  theirs, spec_structure = _children(spec)
  if structure != spec_structure:
    raise _mismatch(params, spec, path, what, is_spec_leaf)
  for (key, child), (_, spec_child) in zip(mine, theirs, strict=True):
    _match(spec_child, child, path + tuple(key), out, what, is_spec_leaf)


def resolve_tree(spec: Any, params: Any, what: str, default: Callable[[Any], Any],
                 is_spec_leaf: Callable[[Any], bool]) -> list[Any]:
  """The per-leaf values of a mask or layout spec, in the params' leaf order.

  `spec` is None (use `default(leaf)`), a single spec leaf for every parameter, a pytree of spec
  leaves with the params' structure, or a callable params -> one of those. A spec tree matches
  the params as optax matches a mask: it may be a prefix of the params (one value at a subtree
  covers all its leaves); a None node in the params (Equinox's `eqx.filter(model,
  eqx.is_array)` leaves None for every non-array field) holds no leaf, so the spec's None or
  single value there is ignored; and wrappers such as `optax.masked` and `optax.multi_transform`
  hand over params in which the leaves (or whole subtrees) they leave out are
  `optax.MaskedNode` placeholders, where likewise the spec's value is ignored.
  """
  leaves = jax.tree_util.tree_leaves(params)
  if callable(spec) and not is_spec_leaf(spec):
    spec = spec(params)
  if spec is None:
    return [default(x) for x in leaves]
  values: list[Any] = []
  _match(spec, params, (), values, what, is_spec_leaf)
  return values


def reject_step_count(params: Any, caller: str) -> None:
  """Raises a ValueError when a mask or layout callable is given a step count, not params.

  `optax.inject_hyperparams` takes every callable argument for a schedule and calls it with the
  step count, a scalar integer array, passing on what it returns: one mask or layout value for
  every leaf, silently not the one asked for.
  """
  if (isinstance(params, (jax.Array, np.ndarray)) and params.shape == ()
      and jnp.issubdtype(params.dtype, jnp.integer)):
    raise ValueError(
        f"{caller} was called on a scalar integer array, not on params: optax.inject_hyperparams "
        "calls every callable argument with the step count, taking it for a schedule. List "
        "the mask and layout arguments in static_args, e.g. optax.inject_hyperparams("
        "orthax.muon, static_args=('layout', 'mask'))(learning_rate=0.02, layout=...).")
