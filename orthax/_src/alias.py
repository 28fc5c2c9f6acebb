"""The paper's optimisers: orthogonalisation first, then weight decay and the base optimiser."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from orthax._src.components import LayoutSpec, MaskSpec, is_layout_leaf, select
from orthax._src.transform import Method, orthogonalise, orthogonalise_components
from orthax._src.tree_specs import resolve_tree


def keep_state_dtypes(
    transformation: optax.GradientTransformation) -> optax.GradientTransformation:
  """`transformation` whose state keeps, through every update, the dtypes it has after `init`.

  optax creates moments in the params' dtypes (or a `mu_dtype`), but an update with gradients of
  another dtype promotes them: with bfloat16 params and float32 gradients, SGD's trace and Adam's
  second moment come back float32. The state would then differ from `init`'s, so a jitted step
  compiles a second time and the state's memory doubles. This casts each updated state array
  back to its dtype before the update.
  """

  def update_fn(updates, state, params=None):
    new, new_state = transformation.update(updates, state, params)
    return new, jax.tree.map(_cast_like, new_state, state)

  return optax.GradientTransformation(transformation.init, update_fn)


def _cast_like(new: Any, old: Any) -> Any:
  if hasattr(new, "dtype") and hasattr(old, "dtype") and new.dtype != old.dtype:
    return new.astype(old.dtype)
  return new


def one_layer_mask(mask: MaskSpec, layout: LayoutSpec) -> MaskSpec:
  """`mask` for an optax wrapper, read as orthax reads masks: each leaf as one layer under
  `layout` (so that a stacked bias is a bias). None and a bool pass through as optax reads them."""
  if layout is None or mask is None or isinstance(mask, bool):
    return mask

  def chosen(params: Any) -> Any:
    return jax.tree.unflatten(jax.tree.structure(params), select(mask, layout, params)[1])

  return chosen


def _first_link(
    method: Method, mask: MaskSpec, orthogonaliser: optax.GradientTransformation | None, alias: str,
    layout: LayoutSpec = None,
) -> optax.GradientTransformation:
  """The alias's orthogonalising transformation: `orthogonaliser`, or one built from method/mask
  (and `layout`)."""
  if orthogonaliser is None:
    if layout is None:
      return orthogonalise(method, mask=mask)
    return orthogonalise_components(method, mask=mask, layout=layout)
  if not isinstance(orthogonaliser, optax.GradientTransformation):
    raise ValueError(
        f"{alias}(orthogonaliser=...) must be an optax.GradientTransformation such as "
        f"orthax.orthogonalise_components(...), got {orthogonaliser!r}.")
  if not (isinstance(method, str) and method == "auto") or mask is not None:
    raise ValueError(
        f"{alias}: pass either orthogonaliser=... or method/mask, not both; put method and mask "
        "into the orthogonaliser, e.g. orthax.orthogonalise_components(method, mask=mask).")
  return orthogonaliser


def _scale_by_layer_trust_ratio(
    layout: LayoutSpec, trust_coefficient: float, eps: float) -> optax.GradientTransformation:
  """`optax.scale_by_trust_ratio` with one ratio per layer: each norm is taken over a leaf's axes
  other than its layout's batch axes, so a stacked leaf gets the ratios of its layers unrolled."""

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("orthogonal_lars needs params for its trust ratio: pass them to update.")
    treedef: Any  # jax's PyTreeDef, whose stub the type checker cannot resolve.
    leaves, treedef = jax.tree.flatten(updates)
    layouts = resolve_tree(layout, updates, "layout", lambda _: None, is_layout_leaf)
    out = []
    for u, p, lay in zip(leaves, treedef.flatten_up_to(params), layouts, strict=True):
      batch = () if lay is None else (lay.batch,) if isinstance(lay.batch, int) else lay.batch
      batch = tuple(a % u.ndim for a in batch)
      axes = tuple(a for a in range(u.ndim) if a not in batch)
      param_norm = jnp.sqrt(jnp.sum(jnp.square(p), axis=axes, keepdims=True))
      update_norm = jnp.sqrt(jnp.sum(jnp.square(u), axis=axes, keepdims=True))
      ratio = trust_coefficient * param_norm / (update_norm + eps)
      zero = jnp.logical_or(param_norm == 0, update_norm == 0)
      out.append(u * jnp.where(zero, jnp.ones((), p.dtype), ratio))
    return jax.tree.unflatten(treedef, out), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def orthogonal_sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float | None = 0.9,
    *,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    method: Method = "auto",
    mask: MaskSpec = None,
    orthogonaliser: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
  """Orthogonal-SGDM, the paper's main optimiser.

  The authors replaced each kernel's gradient by U V^T and then ran PyTorch's SGD, which adds
  `weight_decay * param` to that (already orthogonalised) gradient before the momentum buffer.
  This is `optax.chain(orthogonalise, add_decayed_weights, sgd)`: decay enters after the
  orthogonalisation, on every parameter (as in PyTorch), and goes through momentum. This is the
  paper's order (orthogonalise the gradient, then accumulate momentum); for Muon's order
  (momentum first, then orthogonalise it) see `orthax.muon`.

  Args:
    learning_rate: a float or an optax schedule.
    momentum: momentum coefficient, or None for plain SGD.
    nesterov: Nesterov momentum.
    weight_decay: L2 coefficient added to the orthogonalised gradient.
    method: as in `orthax.orthogonalise_components`: a name, or a callable (B, P, N) ->
      (B, P, N) with its options bound, e.g. `functools.partial(orthax.polar.svd, rtol=1e-2)`.
    mask: which leaves to orthogonalise (default: floating leaves with ndim >= 2).
    orthogonaliser: the orthogonalising transformation to use instead of
      `orthogonalise(method, mask=mask)`, e.g. `orthax.orthogonalise_components(method="svd",
      rtol=1e-2, layout=...)`; leave `method` and `mask` unset when giving it.

  Examples:
    >>> import orthax
    >>> tx = orthax.orthogonal_sgd(1e-2, momentum=0.9, weight_decay=5e-4)  # the paper's recipe
  """
  return keep_state_dtypes(optax.chain(
      _first_link(method, mask, orthogonaliser, "orthogonal_sgd"),
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
  ))


def orthogonal_adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    weight_decay: float = 0.0,
    method: Method = "auto",
    mask: MaskSpec = None,
    orthogonaliser: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
  """Orthogonal-Adam as in the paper: U V^T, then L2 decay added to it, then Adam.

  PyTorch's `Adam(weight_decay=...)` adds `weight_decay * param` to the gradient before the
  moment estimates; here that gradient is the orthogonalised one, so decay is also normalised
  by Adam. For decoupled decay use `orthogonal_adamw`.

  Args:
    learning_rate: a float or an optax schedule.
    b1, b2, eps: Adam's parameters (the paper's Table 3 used b2 = 0.99).
    weight_decay: L2 coefficient added after orthogonalisation, before Adam.
    method: as in `orthax.orthogonalise_components`.
    mask: which leaves to orthogonalise.
    orthogonaliser: as in `orthogonal_sgd`.
  """
  return keep_state_dtypes(optax.chain(
      _first_link(method, mask, orthogonaliser, "orthogonal_adam"),
      optax.add_decayed_weights(weight_decay),
      optax.adam(learning_rate, b1=b1, b2=b2, eps=eps),
  ))


def orthogonal_adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    weight_decay: float = 1e-4,
    weight_decay_mask: MaskSpec = None,
    method: Method = "auto",
    mask: MaskSpec = None,
    orthogonaliser: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
  """U V^T, then AdamW: decoupled decay `learning_rate * weight_decay * param`, outside Adam.

  The paper's order: each step's gradient is orthogonalised before Adam's moments see it. For
  Muon's order (momentum first, then orthogonalise it; AdamW only for the leaves left out) see
  `orthax.muon`.

  Args:
    learning_rate: a float or an optax schedule.
    b1, b2, eps: Adam's parameters.
    weight_decay: decoupled decay coefficient (optax.adamw's), never orthogonalised.
    weight_decay_mask: which leaves decay (optax.adamw's `mask`); default every leaf.
    method: as in `orthax.orthogonalise_components`.
    mask: which leaves to orthogonalise.
    orthogonaliser: as in `orthogonal_sgd`.
  """
  return keep_state_dtypes(optax.chain(
      _first_link(method, mask, orthogonaliser, "orthogonal_adamw"),
      optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                  mask=weight_decay_mask),
  ))


def orthogonal_lars(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float = 0.0,
    weight_decay_mask: MaskSpec = True,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: MaskSpec = True,
    momentum: float = 0.9,
    nesterov: bool = False,
    method: Method = "auto",
    mask: MaskSpec = None,
    layout: LayoutSpec = None,
    orthogonaliser: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
  """Orthogonal LARS: U V^T on the selected kernels, then `optax.lars`.

  `optax.lars` adds decay to the (orthogonalised) gradient, rescales by the trust ratio, scales
  by the learning rate and then accumulates momentum (the authors' LARS accumulates momentum
  before the learning rate; the two differ while the rate changes: examples/barlow_twins has
  theirs). For Barlow Twins the paper orthogonalised convolution kernels only: pass
  `mask=orthax.masks.conv_kernels`.

  Args:
    learning_rate: a float or an optax schedule.
    weight_decay, weight_decay_mask, trust_coefficient, eps, trust_ratio_mask, momentum,
      nesterov: as in `optax.lars`.
    method: as in `orthax.orthogonalise_components`.
    mask: which leaves to orthogonalise.
    layout: which axes of each leaf stack layers (`orthax.Layout(batch=...)`, as in
      `orthax.orthogonalise_components`): the trust ratio is then one per layer, as in the same
      layers unrolled, and an orthogonaliser built from `method` and `mask` uses it too. Default
      None: every leaf is one layer, `optax.lars` exactly. With a layout, a callable or tree
      `weight_decay_mask` and `trust_ratio_mask` see each leaf as one layer too. Give an
      `orthogonaliser` the same layout.
    orthogonaliser: as in `orthogonal_sgd`.
  """
  first = _first_link(method, mask, orthogonaliser, "orthogonal_lars", layout)
  if layout is None:
    return keep_state_dtypes(optax.chain(first, optax.lars(
        learning_rate, weight_decay=weight_decay, weight_decay_mask=weight_decay_mask,
        trust_coefficient=trust_coefficient, eps=eps, trust_ratio_mask=trust_ratio_mask,
        momentum=momentum, nesterov=nesterov)))
  # optax.lars's own chain, with the trust ratio taken per layer.
  return keep_state_dtypes(optax.chain(
      first,
      optax.add_decayed_weights(weight_decay, mask=one_layer_mask(weight_decay_mask, layout)),
      optax.masked(_scale_by_layer_trust_ratio(layout, trust_coefficient, eps),
                   one_layer_mask(trust_ratio_mask, layout)),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum, nesterov=nesterov),
  ))
