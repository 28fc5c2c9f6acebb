"""Gradient transformations that act on each layer's components: orthogonalise and normalise."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from orthax._src import components as components_lib
from orthax._src import polar
from orthax._src import sharding as sharding_lib

Array = jax.Array
MatrixFn = Callable[[Array], Array]  # (B, P, N) -> (B, P, N)

EXACT_METHODS = ("auto", "svd", "eigh")
APPROXIMATE_METHODS = ("newton_schulz", "polar_express")
STEP_SCALES = (None, "muon", "rms")
# `eigh` beats `svd` on CPU from an aspect ratio of about 1.5 (measured: 0.84x the time at 128 x 64,
# 0.26x at 1152 x 128, 2x at square shapes). GPU and TPU use the same rule until measured there.
AUTO_EIGH_ASPECT = {"cpu": 2.0, "cuda": 2.0, "rocm": 2.0, "tpu": 2.0}


def _is_mask_leaf(x: Any) -> bool:
  return isinstance(x, bool) or (hasattr(x, "dtype") and getattr(x, "shape", None) == ()
                                 and jnp.result_type(x) == jnp.bool_)


def _is_layout_leaf(x: Any) -> bool:
  return x is None or isinstance(x, components_lib.Layout)


def _component_transform(
    matrix_fn: MatrixFn,
    *,
    mask: Any,
    layout: Any,
    compute_dtype: Any,
    step_scale: Callable[[int, int], float] | None = None,
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
) -> optax.GradientTransformation:
  """Applies `matrix_fn` to the (B, P, N) component matrices of the leaves that `mask` selects.

  Leaves whose matrices share (P, N) and compute dtype are stacked and transformed in one call,
  so a model with many layers of a few shapes compiles to a few batched decompositions. With a
  `mesh`, the matrices are dealt out to its devices. Every update has its gradient's sharding.
  """
  def apply(stacks: list[Array]) -> list[Array]:
    return [matrix_fn(x) for x in stacks]

  if mesh is not None:
    apply = sharding_lib.distribute(matrix_fn, mesh)

  def plan(tree: Any) -> list[components_lib.MatrixView | None]:
    """Per leaf: its matrix view, or None when the leaf passes through unchanged."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    paths, leaves = [p for p, _ in flat], [x for _, x in flat]
    selected = components_lib.resolve_tree(
        mask, tree, "mask", components_lib.default_mask, _is_mask_leaf)
    layouts = components_lib.resolve_tree(layout, tree, "layout", lambda _: None, _is_layout_leaf)
    views = []
    for key_path, leaf, chosen, leaf_layout in zip(paths, leaves, selected, layouts, strict=True):
      path = jax.tree_util.keystr(key_path)
      if not bool(chosen):
        views.append(None)
        continue
      if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
        raise ValueError(
            f"The mask selects {path} of dtype {jnp.result_type(leaf)}, which is not floating; "
            "leave it out of the mask.")
      try:
        views.append(components_lib.matrix_view(
            jnp.shape(leaf), leaf_layout or components_lib.Layout()))
      except ValueError as e:
        raise ValueError(f"Parameter {path}: {e}") from None
    return views

  def init_fn(params):
    plan(params)  # Validates mask and layout against the params now rather than at first update.
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    views = plan(updates)
    groups: dict[tuple, list[int]] = {}
    for i, (leaf, view) in enumerate(zip(leaves, views, strict=True)):
      if view is not None and leaf.size:
        dtype = jnp.promote_types(leaf.dtype, compute_dtype)
        groups.setdefault((view.shape[1:], dtype), []).append(i)
    out = list(leaves)
    stacks = []
    for (_, dtype), members in groups.items():
      parts = [views[i].matrices(sharding_lib.gather(leaves[i])).astype(dtype) for i in members]
      stacks.append(parts[0] if len(parts) == 1 else jnp.concatenate(parts))
    for key, result in zip(groups, apply(stacks), strict=True):
      (p, n), _ = key
      if step_scale is not None:
        result = result * step_scale(p, n)
      members = groups[key]
      sizes = [views[i].shape[0] for i in members]
      for i, part in zip(members, jnp.split(result, np.cumsum(sizes)[:-1]), strict=True):
        out[i] = sharding_lib.like(views[i].restore(part).astype(leaves[i].dtype), leaves[i])
    return jax.tree_util.tree_unflatten(treedef, out), state

  return optax.GradientTransformation(init_fn, update_fn)


def _check_compute_dtype(compute_dtype: Any) -> None:
  try:
    floating = jnp.issubdtype(compute_dtype, jnp.floating)
  except TypeError:
    floating = False
  if not floating:
    raise ValueError(
        f"compute_dtype must be a floating dtype such as jnp.float32, got {compute_dtype!r}.")


def _method_fn(method: str, rtol: float | None, steps: int | None) -> MatrixFn:
  legal = EXACT_METHODS + APPROXIMATE_METHODS
  if method not in legal:
    raise ValueError(f"method must be one of {legal}, got {method!r}.")
  if method in EXACT_METHODS:
    if steps is not None:
      raise ValueError(
          f"steps applies to the iterative methods {APPROXIMATE_METHODS}; method={method!r} is "
          "exact. Drop steps, or choose an iterative method.")
    if rtol is not None and not (
        isinstance(rtol, numbers.Real) and not isinstance(rtol, bool) and 0 <= rtol < 1):
      raise ValueError(f"rtol must be None or a number in [0, 1), got {rtol=}.")
    rtol = None if rtol is None else float(rtol)
    if method == "auto":
      return lambda x: auto(x, rtol=rtol)
    return lambda x: polar.METHODS[method](x, rtol=rtol)
  if rtol is not None:
    raise ValueError(
        f"rtol (rank-aware truncation) needs an exact method {EXACT_METHODS}; method={method!r} "
        "cannot drop directions. Drop rtol, or choose method='svd' or 'eigh'.")
  steps = 5 if steps is None else steps
  if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
    raise ValueError(f"{method}(steps=...) must be an integer >= 1, got {steps=}.")
  steps = int(steps)
  return lambda x: polar.METHODS[method](x, steps=steps)


def auto(x: Array, *, rtol: float | None = None) -> Array:
  """The fast exact polar factor for this backend and shape: `eigh` or `svd`.

  Chosen per platform at lowering time and per shape at trace time: `eigh` when the matrix is at
  least `AUTO_EIGH_ASPECT[platform]` times longer than it is wide, else `svd`.
  """
  ratio = max(x.shape[-2:]) / max(1, min(x.shape[-2:]))

  def pick(platform: str) -> Callable[[Array], Array]:
    if ratio >= AUTO_EIGH_ASPECT.get(platform, 1.0):
      return lambda x: polar.eigh(x, rtol=rtol)
    return lambda x: polar.svd(x, rtol=rtol)

  per_platform = {p: pick(p) for p in AUTO_EIGH_ASPECT}
  return jax.lax.platform_dependent(x, default=pick("default"), **per_platform)


def _step_scale_fn(step_scale: str | None) -> Callable[[int, int], float] | None:
  if step_scale not in STEP_SCALES:
    raise ValueError(
        f"step_scale must be one of {STEP_SCALES}: None keeps the paper's U V^T, 'muon' scales by "
        f"sqrt(max(1, N / P)), 'rms' by 0.2 * sqrt(max(P, N)); got {step_scale!r}.")
  if step_scale == "muon":
    return lambda p, n: math.sqrt(max(1.0, n / p))
  if step_scale == "rms":
    return lambda p, n: 0.2 * math.sqrt(max(p, n))
  return None


def orthogonalise_components(
    method: str = "auto",
    *,
    mask: Any = None,
    layout: Any = None,
    rtol: float | None = None,
    steps: int | None = None,
    step_scale: str | None = None,
    compute_dtype: Any = jnp.float32,
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
) -> optax.GradientTransformation:
  """Replaces each selected layer's gradient G (P x N, one column per component) by U V^T.

  Tuddenham et al. view a layer as N components (conv filters, dense units, attention heads) of P
  parameters and replace its gradient G = U S V^T by the nearest (semi-)orthonormal matrix
  U V^T, so every direction the gradient spans moves at the same rate and components learn
  distinct features; any first-order optimiser chained after it then uses the result.

  Args:
    method: `'auto'` (default; the fast exact route for the backend and shape), `'svd'` (exact,
      the paper's), `'eigh'` (exact, via the Gram matrix), `'newton_schulz'` (Muon's quintic
      iteration, approximate) or `'polar_express'` (approximate, converging).
    mask: which leaves to orthogonalise: a pytree of bools with the params' structure, a single
      bool, or a callable params -> such a tree (see `orthax.masks`). Default: every floating
      leaf with ndim >= 2, the authors' rule.
    layout: how a leaf is viewed as matrices: an `orthax.Layout` for all leaves, a pytree of
      `Layout` (or None for the default) with the params' structure, or a callable params ->
      such a tree. Default `Layout()`: the last axis indexes components.
    rtol: exact methods only: singular values at or below `rtol * max(S)` are dropped (rank-aware
      update). Default None drops only the numerical null space (`max(P, N) * eps`): there U V^T
      is round-off, not signal, e.g. the direction the softmax classifier's gradient never has.
      At batch size B a dense gradient has rank <= B; the default already drops the rest. (At
      batch 4, orthogonalising BasicCNN's classifier collapsed training even with rtol=0.01;
      orthogonalising conv kernels only did not: examples/README.md.)
    steps: iterations of the approximate methods (default 5).
    step_scale: None (the paper: U V^T as is), `'muon'` (times sqrt(max(1, N / P)), Muon's
      fan-out/fan-in rule) or `'rms'` (times 0.2 * sqrt(max(P, N)), matching AdamW's update RMS).
    compute_dtype: dtype of the decomposition (at least this precise: float64 leaves stay
      float64); updates come back in each leaf's own dtype.
    mesh: a `jax.sharding.Mesh` to split the work over. Default None: under `jax.jit` on a mesh
      every device decomposes every matrix (each needs whole matrices: sharded gradients are
      gathered first). With a mesh, each shape group's matrices are divided among all of the
      mesh's devices, each device decomposes its share, and the results are gathered back: the
      same values for about 1 / devices of the decomposition work per device. Either way each
      update has its gradient's sharding, on meshes of automatic and of explicit axes.

  Returns:
    A stateless `optax.GradientTransformation`.

  Examples:
    >>> import jax.numpy as jnp, optax, orthax
    >>> tx = optax.chain(orthax.orthogonalise_components(method="svd"), optax.sgd(1e-2))
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    >>> grads = {"w": jnp.array([[3.0, 0.0], [0.0, 2.0], [0.0, 0.0]]), "b": jnp.ones(2)}
    >>> updates, _ = orthax.orthogonalise_components().update(grads, optax.EmptyState())
    >>> updates["w"].tolist(), updates["b"].tolist()
    ([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [1.0, 1.0])

  References:
    Tuddenham, Prügel-Bennett, Hare, `Orthogonalising gradients to speed up neural network
    optimisation <https://arxiv.org/abs/2202.07052>`_, 2022
  """
  matrix_fn = _method_fn(method, rtol, steps)
  scale = _step_scale_fn(step_scale)
  _check_compute_dtype(compute_dtype)
  if mesh is not None and not isinstance(
      mesh, (jax.sharding.Mesh, jax.sharding.AbstractMesh)):
    raise ValueError(
        f"mesh must be a jax.sharding.Mesh (e.g. from jax.make_mesh) or None, got {mesh!r}.")
  return _component_transform(
      matrix_fn, mask=mask, layout=layout, compute_dtype=compute_dtype, step_scale=scale,
      mesh=mesh)


def orthogonalise(method: str = "auto", *, mask: Any = None) -> optax.GradientTransformation:
  """The paper's orthogonalisation: `orthogonalise_components` with its defaults.

  Every floating leaf with ndim >= 2 (conv kernels flattened per output filter, dense kernels)
  gets its exact polar factor U V^T; biases and norm parameters pass through unchanged.

  Args:
    method: as in `orthogonalise_components`.
    mask: as in `orthogonalise_components`.

  Examples:
    >>> import optax, orthax
    >>> tx = optax.chain(orthax.orthogonalise(), optax.sgd(1e-2, momentum=0.9))
  """
  return orthogonalise_components(method, mask=mask)


def _safe_normalise(x: Array, axis) -> Array:
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.where(norm > 0, norm, 1)


def normalise(
    *, mask: Any = None, layout: Any = None, compute_dtype: Any = jnp.float32
) -> optax.GradientTransformation:
  """Divides each selected layer's gradient by its Frobenius norm (the paper's N-SGDM ablation).

  Table 4 of Tuddenham et al. separates orthogonalisation's effect from mere rescaling: this
  keeps every direction of G but gives each layer a unit-norm step. Zero stays zero.

  Args:
    mask: as in `orthogonalise_components`.
    layout: as in `orthogonalise_components`; with a batch axis, each matrix is normalised alone.
    compute_dtype: as in `orthogonalise_components`.
  """
  _check_compute_dtype(compute_dtype)
  return _component_transform(
      lambda x: _safe_normalise(x, (-2, -1)), mask=mask, layout=layout,
      compute_dtype=compute_dtype)


def normalise_components(
    *, mask: Any = None, layout: Any = None, compute_dtype: Any = jnp.float32
) -> optax.GradientTransformation:
  """Scales each component's gradient (each column of G) to unit norm (the CN-SGDM ablation).

  Table 4 of Tuddenham et al.: every component moves at the same rate, as under
  orthogonalisation, but components are not made orthogonal to each other. Zero stays zero.

  Args:
    mask: as in `orthogonalise_components`.
    layout: as in `orthogonalise_components`.
    compute_dtype: as in `orthogonalise_components`.
  """
  _check_compute_dtype(compute_dtype)
  return _component_transform(
      lambda x: _safe_normalise(x, -2), mask=mask, layout=layout, compute_dtype=compute_dtype)
