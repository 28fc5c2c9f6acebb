"""The component view of a parameter: a stack of P x N matrices, N components of P parameters."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from orthax._src.paths import map_with_path_names, path_matches
from orthax._src.tree_specs import reject_step_count, resolve_tree

Array = jax.Array


class Layout(NamedTuple):
  """Which axes of a parameter are its components and which stack independent matrices.

  The paper views a layer as N components (conv filters, dense units, attention heads) of P
  parameters each and orthogonalises the P x N matrix whose columns are the components.

  Attributes:
    components: the axis or axes that index components; N is the product of their sizes.
      Default: the last axis, Flax's output axis (Dense (in, out), Conv (kh, kw, in, out)).
    batch: the axis or axes that index independent matrices, such as the leading layer axis of
      parameters stacked by `nn.scan` or `nnx.vmap`, or heads to orthogonalise one by one.
      Default: none.

  Every other axis holds a component's parameters; P is the product of their sizes.

  Examples:
    >>> import orthax
    >>> orthax.Layout()                           # Dense (in, out), Conv (kh, kw, in, out)
    Layout(components=-1, batch=())
    >>> orthax.Layout(batch=0)                    # nn.scan-stacked Dense (layers, in, out)
    Layout(components=-1, batch=0)
    >>> orthax.Layout(components=1)               # DenseGeneral (embed, heads, head_dim):
    Layout(components=1, batch=())
    >>> # heads are the components, each with embed * head_dim parameters.
  """

  components: int | Sequence[int] = -1
  batch: int | Sequence[int] = ()


MaskSpec = bool | Any | Callable[[Any], Any] | None
"""`mask=`: one bool for every leaf, a pytree of bools with the params' structure (or a prefix of
it: one bool for a whole subtree), a callable params -> such a pytree, or None for
`default_mask`."""
LayoutSpec = Layout | Any | Callable[[Any], Any] | None
"""`layout=`: one `Layout` for every leaf, a pytree of `Layout` (None for the default) with the
params' structure (or a prefix of it), a callable params -> such a pytree, or None for `Layout()`
everywhere."""


def _axes(spec: int | Sequence[int], ndim: int, what: str, shape) -> tuple[int, ...]:
  spec = (spec,) if isinstance(spec, int) else tuple(spec)
  for axis in spec:
    if not isinstance(axis, numbers.Integral) or not -ndim <= axis < ndim:
      raise ValueError(
          f"Layout {what} axis {axis!r} is out of range for a parameter of {shape=}; use axes "
          f"in [-{ndim}, {ndim}).")
  axes = tuple(sorted(axis % ndim for axis in spec))
  if len(set(axes)) != len(axes):
    raise ValueError(f"Layout {what} names an axis twice: {spec} for a parameter of {shape=}.")
  return axes


class MatrixView(NamedTuple):
  """A parameter's (B, P, N) view, and how to undo it."""

  shape: tuple[int, int, int]
  permutation: tuple[int, ...]
  permuted_shape: tuple[int, ...]

  def matrices(self, x: Array) -> Array:
    return jnp.transpose(x, self.permutation).reshape(self.shape)

  def restore(self, m: Array) -> Array:
    inverse = tuple(sorted(range(len(self.permutation)), key=self.permutation.__getitem__))
    return m.reshape(self.permuted_shape).transpose(inverse)


def matrix_view(shape: Sequence[int], layout: Layout) -> MatrixView:
  """The (B, P, N) view of an array of `shape` under `layout`, validating the layout."""
  shape = tuple(shape)
  ndim = len(shape)
  if ndim == 0:
    raise ValueError("A scalar parameter has no components; leave it out of the mask.")
  components = _axes(layout.components, ndim, "components", shape)
  batch = _axes(layout.batch, ndim, "batch", shape)
  if not components:
    raise ValueError(f"Layout(components=...) must name at least one axis, got {layout=}.")
  if set(components) & set(batch):
    raise ValueError(
        f"Layout axes overlap: components {components} and batch {batch} for {shape=}; an axis "
        "is either a component axis or a batch axis.")
  params = tuple(a for a in range(ndim) if a not in components and a not in batch)
  permutation = batch + params + components
  sizes = [math.prod(shape[a] for a in group) for group in (batch, params, components)]
  return MatrixView((sizes[0], sizes[1], sizes[2]), permutation,
                    tuple(shape[a] for a in permutation))


def default_mask(x: Any) -> bool:
  """The authors' rule: every floating parameter with two or more dimensions.

  The transformations apply it (and any mask callable) to each leaf as one layer, without the
  axes that the leaf's layout marks as stacking layers (see `one_layer`).
  """
  return bool(
      hasattr(x, "ndim") and x.ndim >= 2 and jnp.issubdtype(jnp.result_type(x), jnp.floating))


def one_layer(x: Any, layout: Layout | None) -> Any:
  """`x` as a mask sees it: with the layout's batch axes, which only stack layers, removed.

  An nn.scan-stacked bias (layers, features) is then a 1-D bias and a stacked Dense kernel
  (layers, in, out) a 2-D kernel, exactly as in the same model unrolled. Returns `x` itself when
  the layout has no batch axes (or names axes `x` lacks: the layout check reports that), else a
  `jax.ShapeDtypeStruct` of one layer.
  """
  if layout is None or not hasattr(x, "shape"):
    return x
  try:
    batch = _axes(layout.batch, len(x.shape), "batch", x.shape)
  except ValueError:
    return x
  if not batch:
    return x
  shape = tuple(size for axis, size in enumerate(x.shape) if axis not in batch)
  return jax.ShapeDtypeStruct(shape, jnp.result_type(x))


def select(mask: MaskSpec, layout: LayoutSpec, tree: Any) -> tuple[list[Any], list[bool]]:
  """Per leaf of `tree`: its `Layout` (None for the default) and whether `mask` selects it.

  The mask sees each leaf as one layer (`one_layer`): the axes that the leaf's layout marks as
  stacking layers do not count. Every route that decides what to orthogonalise (the
  transformations, `orthax.muon`'s split from AdamW) goes through here, so that they agree.
  """
  treedef: Any  # jax's PyTreeDef, whose stub the type checker cannot resolve.
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  leaves = [x for _, x in flat]
  layouts = resolve_tree(layout, tree, "layout", lambda _: None, is_layout_leaf)
  for (path, _), value in zip(flat, layouts, strict=True):
    if not is_layout_leaf(value):
      raise ValueError(
          f"The layout of {jax.tree_util.keystr(path)} is {value!r}; give each leaf an "
          "orthax.Layout, or None for the default.")
  layers = jax.tree_util.tree_unflatten(
      treedef, [one_layer(x, lay) for x, lay in zip(leaves, layouts, strict=True)])
  chosen = resolve_tree(mask, layers, "mask", default_mask, is_mask_leaf)
  return layouts, [bool(c) for c in chosen]


def is_mask_leaf(x: Any) -> bool:
  """Whether `x` is one mask value: a bool or a scalar boolean array."""
  return isinstance(x, bool) or (hasattr(x, "dtype") and getattr(x, "shape", None) == ()
                                 and jnp.result_type(x) == jnp.bool_)


def is_layout_leaf(x: Any) -> bool:
  """Whether `x` is one layout value: a `Layout`, or None for the default."""
  return x is None or isinstance(x, Layout)

def layout_by_path(rules: Mapping[str, Layout]) -> Callable[[Any], Any]:
  """A layout callable: the first rule whose pattern matches a leaf's path gives its Layout.

  Patterns match as in `orthax.masks.exclude`: a name on the path, or a glob of the whole path
  joined by `/`. Unmatched leaves get the default `Layout()`.

  Examples:
    >>> import jax.numpy as jnp, orthax
    >>> layout = orthax.layout_by_path({"layers": orthax.Layout(batch=0)})  # an nn.scan stack
    >>> layout({"layers": {"kernel": jnp.ones((4, 8, 8))}, "head": jnp.ones((8, 2))})
    {'head': None, 'layers': {'kernel': Layout(components=-1, batch=0)}}
  """
  for pattern, rule in rules.items():
    if not isinstance(pattern, str) or not isinstance(rule, Layout):
      raise ValueError(
          f"layout_by_path takes a mapping of path patterns to orthax.Layout, got {pattern!r}: "
          f"{rule!r}.")

  def layout(params: Any) -> Any:
    reject_step_count(params, "layout_by_path(...)")

    def pick(names, _):
      return next((r for p, r in rules.items() if path_matches(names, (p,))), None)
    return map_with_path_names(pick, params)

  return layout


def matrix_views(tree: Any, mask: MaskSpec, layout: LayoutSpec
                 ) -> tuple[list[str], list[MatrixView | None]]:
  """Per leaf of `tree`: its path, and its (B, P, N) view, or None where `mask` leaves it out.

  The mask sees each leaf as one layer: the axes that the leaf's layout marks as stacking layers
  do not count (`one_layer`). Raises a ValueError naming the leaf for a selected leaf that is not
  floating or whose layout does not fit it.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  paths, leaves = [jax.tree_util.keystr(p) for p, _ in flat], [x for _, x in flat]
  layouts, selected = select(mask, layout, tree)
  views: list[MatrixView | None] = []
  for path, leaf, chosen, leaf_layout in zip(paths, leaves, selected, layouts, strict=True):
    if not chosen:
      views.append(None)
      continue
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise ValueError(
          f"The mask selects {path} of dtype {jnp.result_type(leaf)}, which is not floating; "
          "leave it out of the mask.")
    try:
      views.append(matrix_view(jnp.shape(leaf), leaf_layout or Layout()))
    except ValueError as e:
      raise ValueError(f"Parameter {path}: {e}") from None
  return paths, views
