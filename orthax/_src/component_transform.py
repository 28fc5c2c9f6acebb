"""One matrix function over the component matrices of the selected leaves, one stack per shape."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from orthax._src import components as components_lib
from orthax._src import sharding as sharding_lib
from orthax._src.components import LayoutSpec, MaskSpec

Array = jax.Array
MatrixFn = Callable[[Array], Array]
"""A method as a function: a (B, P, N) stack of matrices to a (B, P, N) stack."""


def _takes_compute_dtype(fn: Callable) -> bool:
  """Whether `fn` decides its own precision (orthax's methods do: see `orthax.polar`)."""
  try:
    return "compute_dtype" in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def _finite_only(fn: MatrixFn) -> MatrixFn:
  """`fn` that never sees a matrix with a non-finite entry; such a matrix's result is all NaN.

  A user's method may call LAPACK, whose SVD never returns on inf or NaN; orthax's own methods
  guard themselves as well (`orthax.polar`)."""

  def guarded(x: Array) -> Array:
    finite = jnp.all(jnp.isfinite(x), axis=(-2, -1), keepdims=True)
    return jnp.where(finite, fn(jnp.where(finite, x, 0)), jnp.nan)

  return guarded


def component_transform(
    matrix_fn: MatrixFn,
    *,
    mask: MaskSpec,
    layout: LayoutSpec,
    compute_dtype: Any,
    step_scale: Callable[[int, int], float] | None = None,
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
    check_shapes: bool = False,
    guard: bool = True,
) -> optax.GradientTransformation:
  """Applies `matrix_fn` to the (B, P, N) component matrices of the leaves that `mask` selects.

  Leaves whose matrices share (P, N) and dtype are stacked and transformed in one call, so a
  model with many layers of a few shapes compiles to a few batched decompositions. A `matrix_fn`
  that takes `compute_dtype` gets each stack in its gradient's own dtype (so that it can take
  its tolerance from the data's precision); any other gets it cast to at least `compute_dtype`.
  With a `mesh`, the matrices are dealt out to its devices. Every update has its gradient's
  sharding. `guard=False` leaves out `_finite_only` for a `matrix_fn` that guards itself.
  """
  fn: MatrixFn
  if _takes_compute_dtype(matrix_fn):
    own_precision: Callable[..., Array] = matrix_fn
    fn = functools.partial(own_precision, compute_dtype=compute_dtype)

    def stack_dtype(dtype):
      return dtype
  else:
    fn = matrix_fn

    def stack_dtype(dtype):
      return jnp.promote_types(dtype, compute_dtype)

  guarded = _finite_only(fn) if guard else fn

  apply: Callable[..., list[Array]]
  if mesh is None:
    apply = lambda stacks, specs: [guarded(x) for x in stacks]  # noqa: E731
  else:
    apply = sharding_lib.distribute(guarded, mesh)

  def plan(tree: Any) -> tuple[list[str], list[components_lib.MatrixView | None]]:
    """Per leaf: its path, and its matrix view or None when it passes through unchanged."""
    return components_lib.matrix_views(tree, mask, layout)

  def check(stack: Array, names: list[str]) -> None:
    got = jax.eval_shape(fn, stack)
    if getattr(got, "shape", None) != stack.shape:
      raise ValueError(
          f"The method returned {getattr(got, 'shape', type(got).__name__)} for the (B, P, N) = "
          f"{stack.shape} stack of {', '.join(names)}; a method must map each (B, P, N) array "
          "to one of the same shape.")

  def init_fn(params):
    plan(params)  # Validates mask and layout against the params now rather than at first update.
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    paths, all_views = plan(updates)
    views = {i: view for i, view in enumerate(all_views) if view is not None and leaves[i].size}
    groups: dict[tuple, list[int]] = {}
    for i, view in views.items():
      groups.setdefault((view.shape[1:], jnp.dtype(leaves[i].dtype)), []).append(i)
    out = list(leaves)
    stacks = []
    specs = []
    for (_, dtype), members in groups.items():
      specs.append(sharding_lib.stack_spec([(leaves[i], views[i]) for i in members], mesh))
      parts = [sharding_lib.matrices(leaves[i], views[i], specs[-1], mesh)
               .astype(stack_dtype(dtype)) for i in members]
      stacks.append(parts[0] if len(parts) == 1 else jnp.concatenate(parts))
      if check_shapes:
        check(stacks[-1], [paths[i] for i in members])
    for key, spec, result in zip(groups, specs, apply(stacks, specs), strict=True):
      (p, n), _ = key
      if step_scale is not None:
        result = result * step_scale(p, n)
      members = groups[key]
      sizes = [views[i].shape[0] for i in members]
      for i, part in zip(members, jnp.split(result, np.cumsum(sizes)[:-1]), strict=True):
        update = sharding_lib.restore(part, views[i], leaves[i].shape, spec, mesh)
        out[i] = sharding_lib.like(update.astype(leaves[i].dtype), leaves[i])
    return jax.tree_util.tree_unflatten(treedef, out), state

  return optax.GradientTransformation(init_fn, update_fn)
