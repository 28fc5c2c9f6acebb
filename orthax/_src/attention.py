"""Ready views of Flax attention parameters: per head, heads as components, or whole projections.

Flax's attention (`flax.linen.MultiHeadDotProductAttention`, `flax.nnx.MultiHeadAttention`) keeps
its projections as `DenseGeneral` / `LinearGeneral` kernels: query, key and value (embed, heads,
head_dim), out (heads, head_dim, embed). Which matrices an orthogonaliser should see in them is a
choice: Muon orthogonalises each projection whole, a NanoGPT speedrun record and Dion
orthogonalise heads (or pairs of heads) on their own, and the paper's components can be the heads.

A kernel is taken for attention by its name and its shape: a `kernel` in a module so named, with
three axes as one layer. A 2-D kernel is a plain matrix whatever its name.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

from orthax._src.components import Layout, is_layout_leaf, one_layer
from orthax._src.paths import path_names
from orthax._src.tree_specs import reject_step_count, resolve_tree

VIEWS = ("whole", "heads", "components")
INPUT_PROJECTIONS = ("query", "key", "value")
OUTPUT_PROJECTIONS = ("out",)


def _projection(key_path, inputs: Sequence[str], outputs: Sequence[str]) -> str | None:
  """'input' for a query/key/value kernel, 'output' for an out kernel, else None."""
  names = path_names(key_path)
  if len(names) < 2 or names[-1] != "kernel":
    return None
  if names[-2] in inputs:
    return "input"
  if names[-2] in outputs:
    return "output"
  return None


def _check_projections(inputs: Sequence[str], outputs: Sequence[str], caller: str) -> None:
  for what, names in (("inputs", inputs), ("outputs", outputs)):
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
      raise ValueError(
          f"{caller}({what}=...) must be a sequence of module names such as ('query', 'key'), "
          f"got {names!r}.")
  if set(inputs) & set(outputs):
    raise ValueError(
        f"{caller}: {sorted(set(inputs) & set(outputs))} named both as inputs and as outputs; "
        "a projection is one or the other.")


def _is_attention_shape(shape: tuple[int, ...]) -> bool:
  """Whether a kernel named as a projection has an attention kernel's shape: three axes (embed,
  heads, head_dim) or (heads, head_dim, embed), after any leading axes that stack layers. A 2-D
  kernel (an actor-critic `value` head, an MLP's `out` layer, a fused projection) is a plain
  matrix."""
  return len(shape) >= 3


def _no_heads_error(role: str, shape: tuple[int, ...], path: str, caller: str) -> ValueError:
  expected = ("(..., embed, heads, head_dim)" if role == "input"
              else "(..., heads, head_dim, embed)")
  return ValueError(
      f"{caller}: {path} is named as an attention {role} kernel, {expected}, but has {shape=} "
      "(as one layer) and so no heads axis to split. If it is not attention (a value head, an "
      "MLP's out layer), leave its module's name out of inputs and outputs; if it is a fused "
      "projection, use view 'whole' or give it a heads axis (DenseGeneral).")


def _view_layout(view: str, role: str, ndim: int) -> Layout:
  """The Layout of an attention kernel of `ndim` axes, the leading ndim - 3 being a layer stack."""
  stack = tuple(range(ndim - 3))
  heads = ndim - 3 if role == "output" else ndim - 2
  if view == "whole":
    # Inputs: P = embed, N = heads * head_dim. Output: P = heads * head_dim, N = embed.
    components = (ndim - 2, ndim - 1) if role == "input" else ndim - 1
    return Layout(components=components, batch=stack)
  if view == "heads":
    # Inputs: per head (embed, head_dim). Output: per head (head_dim, embed).
    return Layout(components=ndim - 1, batch=stack + (heads,))
  return Layout(components=heads, batch=stack)  # "components": N = heads.


def attention_layout(
    view: str,
    *,
    inputs: Sequence[str] = INPUT_PROJECTIONS,
    outputs: Sequence[str] = OUTPUT_PROJECTIONS,
    base: Any = None,
) -> Callable[[Any], Any]:
  """A layout callable that views every Flax attention kernel as `view` says.

  Which matrices to orthogonalise in multi-head attention is a modelling choice that the default
  `Layout()` gets wrong for query, key and value: it would make head_dim the components and every
  (embed, head) pair a parameter. This picks one of three views of every attention kernel, found by
  its path (a leaf named `kernel` in a module named in `inputs` or `outputs`) and its shape (three
  or more axes, after removing those that `base` marks as a layer stack), so it works on linen
  `params` dicts and on `nnx.State`. Leading axes beyond the kernel's three, such as the layer axis
  that `nn.scan` or `nnx.scan` / `nnx.vmap` add, stack independent matrices. Other leaves get
  `base`'s layout, and so does a 2-D kernel so named (an actor-critic `value` head, an MLP layer
  named `out`) under `"whole"`, whose whole view is the plain matrix; `"heads"` and
  `"components"` raise a ValueError on it, naming the leaf. Where orthax cannot tell: a stacked
  2-D kernel so named, (layers, in, out), with no stack axis in `base`, is taken for an attention
  kernel.

  The three views, for an input kernel (embed, heads, head_dim) and an output kernel
  (heads, head_dim, embed):

  - `"whole"`: each projection is one matrix, as Muon (and `optax.contrib.muon` with dimension
    numbers) treats it: input P = embed, N = heads * head_dim; output P = heads * head_dim,
    N = embed.
  - `"heads"`: each head's matrix on its own: input (embed, head_dim), output (head_dim, embed),
    as the NanoGPT speedrun and Dion split them. Wrap the optimiser in `orthax.group_heads` to
    take groups of g consecutive heads instead of single heads.
  - `"components"`: the heads are the paper's components, N = heads: every parameter that belongs
    to a head is one column, P = embed * head_dim (input and output alike).

  Args:
    view: `"whole"`, `"heads"` or `"components"`.
    inputs: names of the modules whose kernels are (embed, heads, head_dim): Flax's
      `("query", "key", "value")`.
    outputs: names of the modules whose kernels are (heads, head_dim, embed): Flax's `("out",)`.
    base: the layout of every other leaf, as `orthogonalise_components(layout=...)` takes it:
      None (the default `Layout()`), an `orthax.Layout`, a pytree of them or a callable such as
      `orthax.layout_by_path({"layers": orthax.Layout(batch=0)})`.

  Returns:
    A callable params -> pytree of `orthax.Layout` (None where `base` gives None), for the
    `layout` argument of `orthax.orthogonalise_components` and `orthax.muon`.

  Examples:
    >>> import jax.numpy as jnp, orthax
    >>> params = {"query": {"kernel": jnp.ones((16, 4, 8)), "bias": jnp.ones((4, 8))},
    ...           "out": {"kernel": jnp.ones((4, 8, 16)), "bias": jnp.ones(16)}}
    >>> layout = orthax.attention_layout("heads")(params)
    >>> layout["query"]["kernel"], layout["out"]["kernel"], layout["query"]["bias"]
    (Layout(components=2, batch=(1,)), Layout(components=2, batch=(0,)), None)
    >>> tx = orthax.orthogonalise_components(
    ...     "svd", mask=orthax.masks.hidden_matrices(), layout=orthax.attention_layout("heads"))

  References:
    Ahn et al., `Dion: Distributed Orthonormalized Updates <https://arxiv.org/abs/2504.05295>`_,
    2025
  """
  if view not in VIEWS:
    raise ValueError(
        f"attention_layout(view=...) must be one of {VIEWS}: 'whole' (each projection one "
        "matrix, as Muon), 'heads' (each head on its own) or 'components' (heads as the paper's "
        f"components); got {view!r}.")
  _check_projections(inputs, outputs, "attention_layout")

  def layout(params: Any) -> Any:
    reject_step_count(params, f"attention_layout({view!r})")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    chosen = resolve_tree(base, params, "base layout", lambda _: None, is_layout_leaf)
    out = []
    for (key_path, leaf), base_layout in zip(flat, chosen, strict=True):
      role = _projection(key_path, inputs, outputs)
      shape = tuple(getattr(leaf, "shape", ()))
      layer = tuple(getattr(one_layer(leaf, base_layout), "shape", ()))
      if role is not None and not _is_attention_shape(layer) and view != "whole":
        raise _no_heads_error(role, layer, jax.tree_util.keystr(key_path), "attention_layout")
      if role is None or not _is_attention_shape(layer):
        out.append(base_layout)  # Not attention by shape; a 2-D kernel's whole view is itself.
        continue
      stack = set(range(len(shape) - 3))
      batch = set(_batch_axes(base_layout, shape))
      if not batch <= stack:
        raise ValueError(
            f"attention_layout: the base layout of {jax.tree_util.keystr(key_path)} of {shape=} "
            f"stacks axes {sorted(batch)}, but an attention kernel's stack axes lead (here "
            f"{sorted(stack)}). Stack the leading axes in base=, or leave the module's name out "
            "of inputs and outputs.")
      out.append(_view_layout(view, role, len(shape)))
    return jax.tree_util.tree_unflatten(treedef, out)

  return layout


def _batch_axes(layout: Layout | None, shape: tuple[int, ...]) -> tuple[int, ...]:
  if layout is None:
    return ()
  batch = (layout.batch,) if isinstance(layout.batch, int) else tuple(layout.batch)
  return tuple(axis % len(shape) for axis in batch if -len(shape) <= axis < len(shape))


def _grouped_shape(role: str, shape: tuple[int, ...], group: int, path: str) -> tuple[int, ...]:
  """Shape with (heads, head_dim) as (heads / group, group * head_dim)."""
  heads_axis = len(shape) - (2 if role == "input" else 3)
  heads, head_dim = shape[heads_axis], shape[heads_axis + 1]
  if heads % group:
    raise ValueError(
        f"group_heads(group={group}): {path} of shape {shape} has {heads} heads, which do not "
        f"split into groups of {group}; choose a group size that divides {heads}.")
  return (shape[:heads_axis] + (heads // group, group * head_dim) + shape[heads_axis + 2:])


def group_heads(
    transformation: optax.GradientTransformation,
    group: int,
    *,
    inputs: Sequence[str] = INPUT_PROJECTIONS,
    outputs: Sequence[str] = OUTPUT_PROJECTIONS,
) -> optax.GradientTransformation:
  """Runs `transformation` with every `group` consecutive attention heads merged into one head.

  A NanoGPT speedrun record orthogonalised query and key in pairs of heads. A
  `Layout` can only permute a kernel's axes, not split one, so this reshapes instead: every
  attention kernel (found by path as in `attention_layout`, with three or more axes: a 2-D kernel
  so named is left alone, and `group_heads`, which sees no layout, takes a stacked 2-D kernel so
  named for an attention kernel) has its (heads, head_dim) axes viewed
  as (heads / group, group * head_dim) while `transformation` runs (its params, updates and state
  all see that shape), and its updates are reshaped back. Heads h = k * group, ..., k * group +
  group - 1 form group k. Inside, `attention_layout("heads")` then orthogonalises each group's
  matrix, input (embed, group * head_dim) and output (group * head_dim, embed), and
  `attention_layout("components")` makes the groups the components.

  Args:
    transformation: the transformation to run on grouped kernels, e.g.
      `orthax.orthogonalise_components(layout=orthax.attention_layout("heads"))` or a whole
      optimiser such as `orthax.muon(...)`.
    group: heads per group, >= 1; it must divide every grouped kernel's number of heads.
    inputs: as in `attention_layout`; give `("query", "key")` to group only those.
    outputs: as in `attention_layout`; give `()` to leave the out kernel as it is.

  Returns:
    An `optax.GradientTransformation` with `transformation`'s state.

  Examples:
    >>> import jax.numpy as jnp, optax, orthax
    >>> tx = orthax.group_heads(orthax.orthogonalise_components(
    ...     "svd", layout=orthax.attention_layout("heads")), 2)
    >>> grads = {"query": {"kernel": jnp.ones((16, 4, 8))}}
    >>> tx.update(grads, tx.init(grads))[0]["query"]["kernel"].shape
    (16, 4, 8)
  """
  if isinstance(group, bool) or not isinstance(group, numbers.Integral) or group < 1:
    raise ValueError(f"group_heads(group=...) must be an integer >= 1, got {group=}.")
  if not isinstance(transformation, optax.GradientTransformation):
    raise ValueError(
        "group_heads(transformation, ...) must be given an optax.GradientTransformation such as "
        f"orthax.orthogonalise_components(...), got {transformation!r}.")
  _check_projections(inputs, outputs, "group_heads")
  group = int(group)

  def grouped(tree: Any) -> Any:
    def reshape(key_path, x):
      role = _projection(key_path, inputs, outputs)
      if role is None or group == 1 or not _is_attention_shape(tuple(x.shape)):
        return x  # A 2-D kernel has no heads to group, whatever its name.
      shape = _grouped_shape(role, tuple(x.shape), group, jax.tree_util.keystr(key_path))
      return x.reshape(shape)
    return jax.tree_util.tree_map_with_path(reshape, tree)

  def init_fn(params):
    return transformation.init(grouped(params))

  def update_fn(updates, state, params=None):
    params = None if params is None else grouped(params)
    new, state = transformation.update(grouped(updates), state, params)
    return jax.tree.map(lambda n, u: n.reshape(u.shape), new, updates), state

  return optax.GradientTransformation(init_fn, update_fn)
