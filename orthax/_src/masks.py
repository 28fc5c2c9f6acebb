"""Ready masks: callables params -> pytree of bools, for the `mask` argument of orthax."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from orthax._src.components import default_mask, is_mask_leaf
from orthax._src.paths import map_with_path_names, path_matches
from orthax._src.tree_specs import reject_step_count, resolve_tree

Mask = Callable[[Any], Any]


def kernels(params: Any) -> Any:
  """Every floating leaf with ndim >= 2: conv and dense kernels, embeddings (the default)."""
  reject_step_count(params, "orthax.masks.kernels")
  return jax.tree.map(default_mask, params)


def conv_kernels(params: Any) -> Any:
  """Floating leaves with ndim >= 3: convolution kernels only (the paper's Table 5 variant).

  Dense kernels (2-D) and the classifier are left to the optimiser alone. Inside orthax's
  transformations a leaf stacked by `nn.scan` is seen as one layer (its layout's batch axes
  removed), so a scanned Dense kernel is 2-D there, as unrolled; called on a params tree
  directly, this counts every axis.
  """
  reject_step_count(params, "orthax.masks.conv_kernels")
  return jax.tree.map(lambda x: default_mask(x) and x.ndim >= 3, params)


def exclude(*patterns: str, base: Mask = kernels) -> Mask:
  """`base` (default `kernels`) minus the leaves whose path matches any of `patterns`.

  `base` is a mask callable or tree as `mask=` takes it (a prefix tree, None nodes and
  `optax.MaskedNode` placeholders included); the result has the params' structure.

  A pattern matches a leaf when it equals one of the names on the leaf's path (e.g.
  `"Embed_0"`, `"head"`) or, as a shell glob, the whole path joined by `/` (e.g.
  `"decoder/*/kernel"`).

  Examples:
    >>> import jax.numpy as jnp, orthax
    >>> params = {"body": {"kernel": jnp.ones((3, 4))}, "head": {"kernel": jnp.ones((4, 2))}}
    >>> orthax.masks.exclude("head")(params)
    {'body': {'kernel': True}, 'head': {'kernel': False}}
  """
  if not patterns or not all(isinstance(p, str) and p for p in patterns):
    raise ValueError(
        f"exclude(*patterns) needs one or more non-empty strings, got {patterns!r}; for example "
        "orthax.masks.exclude('Embed_0', 'head').")

  def mask(params: Any) -> Any:
    reject_step_count(params, f"orthax.masks.exclude{patterns!r}")
    chosen = resolve_tree(base, params, "base mask", default_mask, is_mask_leaf)
    excluded = jax.tree.leaves(
        map_with_path_names(lambda names, _: path_matches(names, patterns), params))
    return jax.tree.unflatten(jax.tree.structure(params), [
        bool(c) and not e for c, e in zip(chosen, excluded, strict=True)])

  return mask
