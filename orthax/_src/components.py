"""The component view of a parameter: a stack of P x N matrices, N components of P parameters."""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

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
