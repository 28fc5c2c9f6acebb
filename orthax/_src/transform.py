"""Gradient transformations that act on each layer's components: orthogonalise and normalise."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from orthax._src import polar
from orthax._src.component_transform import MatrixFn, component_transform
from orthax._src.components import LayoutSpec, MaskSpec

Array = jax.Array
MethodName = Literal["auto", "svd", "eigh", "qdwh", "newton_schulz", "polar_express"]
Method = MethodName | MatrixFn
"""A method's name (with `rtol`/`steps` given beside it), or the matrix function itself."""
StepScale = Literal["muon", "rms"] | None

STEP_SCALES = (None, "muon", "rms")


def _compute_dtype(compute_dtype: Any) -> np.dtype:
  """The compute dtype as a numpy dtype; None is float32."""
  if compute_dtype is None:
    return np.dtype(np.float32)
  if isinstance(compute_dtype, jax.Array):
    raise ValueError(
        f"compute_dtype must be a dtype, got the array {compute_dtype!r}. Under "
        "optax.inject_hyperparams a dtype such as jnp.float64 is callable and is taken for a "
        "schedule: give its name (compute_dtype='float64') or list it in static_args.")
  try:
    dtype = np.dtype(compute_dtype)
    floating = bool(jnp.issubdtype(dtype, jnp.floating))
  except TypeError:
    floating = False
  if not floating:
    raise ValueError(
        f"compute_dtype must be a floating dtype such as jnp.float32, got {compute_dtype!r}.")
  return dtype


def _method_fn(method: Method, rtol: Any, steps: Any) -> MatrixFn:
  """The matrix function: a callable as given, or the named `orthax.polar` method with `rtol`
  and `steps` bound (an option the method does not take is an error)."""
  options = {name: value for name, value in (("rtol", rtol), ("steps", steps))
             if value is not None}
  if callable(method):
    if options:
      raise ValueError(
          f"{' and '.join(options)} go with a method name; bind them into a callable method "
          "instead, e.g. method=functools.partial(orthax.polar.svd, rtol=1e-2).")
    return method
  if not isinstance(method, str) or method not in polar.METHODS:
    raise ValueError(
        f"method must be one of {tuple(polar.METHODS)} or a callable (B, P, N) -> (B, P, N), "
        f"got {method!r}.")
  fn = polar.METHODS[method]
  for name in options:
    if name not in inspect.signature(fn).parameters:
      takers = tuple(m for m, f in polar.METHODS.items() if name in inspect.signature(f).parameters)
      raise ValueError(
          f"method={method!r} takes no {name}; {name} applies to {takers}. Drop {name}, or choose "
          "one of those.")
  if "rtol" in options:
    polar.check_rtol(rtol)
  if "steps" in options:
    options["steps"] = polar.check_steps(method, steps)
  return functools.partial(fn, **options)


def _step_scale_fn(step_scale: StepScale) -> Callable[[int, int], float] | None:
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
    method: Method = "auto",
    *,
    mask: MaskSpec = None,
    layout: LayoutSpec = None,
    rtol: float | Array | None = None,
    steps: int | None = None,
    step_scale: StepScale = None,
    compute_dtype: Any = None,
    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
) -> optax.GradientTransformation:
  """Replaces each selected layer's gradient G (P x N, one column per component) by U V^T.

  Tuddenham et al. view a layer as N components (conv filters, dense units, attention heads) of P
  parameters and replace its gradient G = U S V^T by the nearest (semi-)orthonormal matrix
  U V^T, so every direction the gradient spans moves at the same rate and components learn
  distinct features; any first-order optimiser chained after it then uses the result.

  Under `optax.inject_hyperparams`, `rtol` may be injected (it arrives as an array); optax takes
  every callable argument (a method, a mask or layout callable, a dtype object) for a schedule,
  so list those in `static_args` (orthax's own mask and layout callables raise a ValueError when
  given the step count).

  Args:
    method: the name of an `orthax.polar` method: `'auto'` (default; the fast exact route for
      the backend and shape), `'svd'` (exact, the paper's), `'eigh'` (exact, via the Gram
      matrix), `'newton_schulz'` (Muon's quintic iteration, approximate) or `'polar_express'`
      (approximate, converging); or any callable from a (B, P, N) array to a (B, P, N) array,
      such as `functools.partial(orthax.polar.svd, rtol=1e-2)` or one of your own. A callable
      that takes a `compute_dtype` keyword (orthax's methods do) gets each stack in its
      gradient's own dtype and `compute_dtype`; any other gets the stack cast to at least
      `compute_dtype`. Either way it never sees a matrix with a non-finite entry: that matrix's
      update is all NaN.
    mask: which leaves to orthogonalise: a pytree of bools with the params' structure (or a
      prefix of it, as optax's masks; None nodes in the params hold no leaf), a single bool, or a
      callable params -> such a tree (see `orthax.masks`). Default: every floating
      leaf with two or more dimensions, the authors' rule. Both count a leaf's dimensions
      without its layout's batch axes: a callable mask is given each stacked leaf as one layer
      (a `jax.ShapeDtypeStruct`), so an `nn.scan`-stacked bias stays a bias.
    layout: how a leaf is viewed as matrices: an `orthax.Layout` for all leaves, a pytree of
      `Layout` (or None for the default) with the params' structure, or a callable params ->
      such a tree. Default `Layout()`: the last axis indexes components, and every leaf is one
      layer (a bare stacked array does not say which axis is the stack).
    rtol: shorthand for the named method's `rtol` (exact methods only): singular values at or
      below `rtol * max(S)` are dropped (rank-aware update). Default None drops only what
      round-off can explain (`orthax.polar.default_rtol`): the numerical null space, and for
      bfloat16 gradients the directions their own rounding may have made; there U V^T is not
      signal, e.g. the direction the softmax classifier's gradient never has. At batch size B a
      dense gradient has rank <= B; the default already drops the rest. May be an array (e.g.
      from `optax.inject_hyperparams`); a traced value outside [0, 1) makes the update NaN.
    steps: shorthand for the named approximate method's `steps` (default 5). A Python int: it
      sets the program's structure (with `optax.inject_hyperparams`, list it in `static_args`).
    step_scale: None (the paper: U V^T as is), `'muon'` (times sqrt(max(1, N / P)), Muon's
      fan-out/fan-in rule) or `'rms'` (times 0.2 * sqrt(max(P, N)), matching AdamW's update RMS).
    compute_dtype: dtype of the decomposition (at least this precise: float64 leaves stay
      float64); None (default) is float32. Updates come back in each leaf's own dtype.
    mesh: a `jax.sharding.Mesh` to split the work over. Default None: under `jax.jit` on a mesh
      every device decomposes every matrix (each needs whole matrices: sharded gradients are
      gathered first). With a mesh, each shape group's matrices are divided among all of the
      mesh's devices, each device decomposes its share, and the results are sent back: the
      same values for about 1 / devices of the decomposition work per device. On a mesh of
      explicit axes each matrix travels whole to its device once and its result's shards come
      back (all-to-alls of the shape group's stack, when its leaves are sharded along a leading
      axis that the devices divide evenly). Under automatic axes, whose traced types do not
      carry shardings, gradients are gathered to every device first and results gathered back.
      Either way each update has its gradient's sharding, on meshes of automatic and of
      explicit axes.

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
  compute_dtype = _compute_dtype(compute_dtype)
  if mesh is not None and not isinstance(
      mesh, (jax.sharding.Mesh, jax.sharding.AbstractMesh)):
    raise ValueError(
        f"mesh must be a jax.sharding.Mesh (e.g. from jax.make_mesh) or None, got {mesh!r}.")
  return component_transform(
      matrix_fn, mask=mask, layout=layout, compute_dtype=compute_dtype, step_scale=scale,
      mesh=mesh, check_shapes=callable(method), guard=callable(method))


def orthogonalise(method: Method = "auto", *, mask: MaskSpec = None
                  ) -> optax.GradientTransformation:
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


def _safe_normalise(x: Array, axis: int | tuple[int, int]) -> Array:
  """x over its norm along `axis`; zero stays zero. Scaled first (exactly, by a power of two) so
  that the norm of very large or very small entries neither overflows nor underflows."""
  x = polar.scale_to_unit(x)
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.where(norm > 0, norm, 1)


def normalise(
    *, mask: MaskSpec = None, layout: LayoutSpec = None, compute_dtype: Any = None
) -> optax.GradientTransformation:
  """Divides each selected layer's gradient by its Frobenius norm (the paper's N-SGDM ablation).

  Table 4 of Tuddenham et al. separates orthogonalisation's effect from mere rescaling: this
  keeps every direction of G but gives each layer a unit-norm step. Zero stays zero.

  Args:
    mask: as in `orthogonalise_components`.
    layout: as in `orthogonalise_components`; with a batch axis, each matrix is normalised alone.
    compute_dtype: as in `orthogonalise_components`.
  """
  compute_dtype = _compute_dtype(compute_dtype)
  return component_transform(
      lambda x: _safe_normalise(x, (-2, -1)), mask=mask, layout=layout,
      compute_dtype=compute_dtype)


def normalise_components(
    *, mask: MaskSpec = None, layout: LayoutSpec = None, compute_dtype: Any = None
) -> optax.GradientTransformation:
  """Scales each component's gradient (each column of G) to unit norm (the CN-SGDM ablation).

  Table 4 of Tuddenham et al.: every component moves at the same rate, as under
  orthogonalisation, but components are not made orthogonal to each other. Zero stays zero.

  Args:
    mask: as in `orthogonalise_components`.
    layout: as in `orthogonalise_components`.
    compute_dtype: as in `orthogonalise_components`.
  """
  compute_dtype = _compute_dtype(compute_dtype)
  return component_transform(
      lambda x: _safe_normalise(x, -2), mask=mask, layout=layout, compute_dtype=compute_dtype)
