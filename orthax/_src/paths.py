"""A leaf's path as plain names, and the patterns that match it (masks, layouts, attention)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import jax


def path_names(key_path) -> tuple[str, ...]:
  """A leaf's path as plain names, without the trailing `.value` of an `nnx.Variable` (so that
  patterns match linen params and `nnx.State` alike, and "value" names no nnx leaf)."""
  names = []
  for key in key_path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
    else:
      names.append(str(key))
  if key_path and isinstance(key_path[-1], jax.tree_util.GetAttrKey) and names[-1] == "value":
    names.pop()
  return tuple(names)


def path_matches(names: tuple[str, ...], patterns: Sequence[str]) -> bool:
  """Whether a pattern equals one of the names on a path or, as a glob, the `/`-joined path."""
  joined = "/".join(names)
  return any(p in names or fnmatch.fnmatchcase(joined, p) for p in patterns)


def map_with_path_names(fn: Callable[[tuple[str, ...], Any], Any], tree: Any) -> Any:
  """tree_map with each leaf's path as a tuple of plain names, e.g. ("params", "Dense_0")."""
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_names(p), x), tree)
