"""NorMuon's normalisation: each neuron's update over its root second moment, the norm kept."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from orthax._src.components import LayoutSpec, MaskSpec, matrix_views

NeuronAxis = Literal["components", "longer"]
NEURON_AXES = ("components", "longer")


class NormaliseNeuronsState(NamedTuple):
  """State of `normalise_neurons`: per selected leaf, the second moment of each neuron's update.

  For a leaf viewed as (B, P, N) matrices, `nu` is (B, 1, N) when the neurons are the N
  components and (B, P, 1) when they are the P rows (`axis="longer"` with P > N), in at least
  float32; `optax.MaskedNode()` for the leaves that the mask leaves out.
  """

  nu: optax.Updates


def _reduced_axis(axis: NeuronAxis, p: int, n: int) -> int:
  """The matrix axis averaged over: -2 gives one moment per component (column), -1 per row."""
  if axis == "components" or n >= p:
    return -2
  return -1


def normalise_neurons(
    beta2: float = 0.95,
    *,
    eps: float = 1e-10,
    axis: NeuronAxis = "components",
    mask: MaskSpec = None,
    layout: LayoutSpec = None,
) -> optax.GradientTransformation:
  """NorMuon's normalisation: divides each neuron's update by its root second moment.

  Muon's orthogonalised update has equal singular values but, row by row, unequal norms, so a
  few neurons take most of the step. NorMuon (Li et al.) keeps an exponential moving average of
  each neuron's mean squared update, v_t = beta2 v_{t-1} + (1 - beta2) mean(O_t^2), divides the
  neuron's update by sqrt(v_t) + eps, and then scales the whole matrix back to the Frobenius norm
  it came in with; the update's overall size, and so the learning rate, is Muon's. Chain it after
  `orthax.orthogonalise_components` with the same mask and layout (`orthax.muon(normuon_beta2=...)`
  does). The moment has no bias correction (as in the paper and its code): a correction would
  scale a whole matrix, which the norm rescaling undoes.

  Which axis is the neuron: orthax views a leaf as (B, P, N) matrices whose N columns are the
  components (`orthax.Layout`), and those are the neurons: a Dense kernel (in, out) has one per
  output unit, a Conv kernel (kh, kw, in, out) one per filter, an attention projection viewed
  `"whole"` one per output feature (query, key, value: heads * head_dim; out: embed), per head
  (`"heads"`) one per output feature of that head. The paper's "row" of a PyTorch (out, in)
  weight is this column. `axis="longer"` is the NanoGPT speedrun's rule instead: one moment per
  row or column along the longer side of each matrix (per component when N >= P, else per P-row).

  The paper scales the normalised update to RMS 0.2 (times sqrt(P N)); its code, which this
  follows, keeps the incoming norm, so with `step_scale="rms"` before it and an exact polar factor
  of full rank (Frobenius norm sqrt(min(P, N))) the two agree.

  Args:
    beta2: decay rate of the second moment (the paper's 0.95; the speedrun's `train_gpt.py` 0.9).
    eps: added to the root second moment before dividing (the paper's code's 1e-10).
    axis: `"components"` (one moment per component, the paper's neuron) or `"longer"` (the
      speedrun's: along the longer side).
    mask: which leaves to normalise, as in `orthax.orthogonalise_components` (default every
      floating leaf with two or more dimensions); the rest pass through.
    layout: how a leaf is viewed as (B, P, N) matrices, as in `orthax.orthogonalise_components`.

  Returns:
    An `optax.GradientTransformation` whose state is a `NormaliseNeuronsState`. Each update has
    its input's dtype and, per matrix, its input's Frobenius norm.

  Examples:
    >>> import jax.numpy as jnp, orthax
    >>> tx = orthax.normalise_neurons()
    >>> u = {"w": jnp.array([[3.0, 0.0], [0.0, 4.0]])}  # columns (neurons) of norms 3 and 4
    >>> out, _ = tx.update(u, tx.init(u))
    >>> out["w"].tolist()  # both neurons now move equally; the Frobenius norm is still 5
    [[3.535533905029297, 0.0], [0.0, 3.535533905029297]]

  References:
    Li, Liu, Liang, Chen, Zhao, `NorMuon: Making Muon more efficient and scalable
    <https://arxiv.org/abs/2510.05491>`_, 2025
  """
  if axis not in NEURON_AXES:
    raise ValueError(
        f"normalise_neurons(axis=...) must be one of {NEURON_AXES}: 'components' (one moment per "
        f"component, NorMuon's neuron) or 'longer' (the speedrun's rule); got {axis!r}.")

  def moment_shape_dtype(x, view):
    b, p, n = view.shape
    shape = (b, 1, n) if _reduced_axis(axis, p, n) == -2 else (b, p, 1)
    return shape, jnp.promote_types(jnp.result_type(x), jnp.float32)

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    _, views = matrix_views(params, mask, layout)
    nu = []
    for x, view in zip(leaves, views, strict=True):
      if view is None:
        nu.append(optax.MaskedNode())
      else:
        shape, dtype = moment_shape_dtype(x, view)
        nu.append(jnp.zeros(shape, dtype))
    return NormaliseNeuronsState(nu=jax.tree.unflatten(treedef, nu))

  def normalise(u, nu, view):
    _, dtype = moment_shape_dtype(u, view)
    m = view.matrices(u).astype(dtype)
    mean_square = jnp.mean(jnp.square(m), axis=_reduced_axis(axis, *view.shape[1:]), keepdims=True)
    nu = (beta2 * nu + (1 - beta2) * mean_square).astype(dtype)
    scaled = m / (jnp.sqrt(nu) + eps)
    before = jnp.linalg.norm(m, axis=(-2, -1), keepdims=True)
    after = jnp.linalg.norm(scaled, axis=(-2, -1), keepdims=True)
    out = scaled * (before / jnp.where(after > 0, after, 1))
    return view.restore(out).astype(u.dtype), nu

  def update_fn(updates, state, params=None):
    del params
    treedef: Any  # jax's PyTreeDef, whose stub the type checker cannot resolve.
    leaves, treedef = jax.tree.flatten(updates)
    nus = treedef.flatten_up_to(state.nu)
    _, views = matrix_views(updates, mask, layout)
    out, new_nu = [], []
    for u, nu, view in zip(leaves, nus, views, strict=True):
      if view is None or u.size == 0:
        out.append(u)
        new_nu.append(nu)
        continue
      u, nu = normalise(u, nu, view)
      out.append(u)
      new_nu.append(nu)
    return (jax.tree.unflatten(treedef, out),
            NormaliseNeuronsState(nu=jax.tree.unflatten(treedef, new_nu)))

  return optax.GradientTransformation(init_fn, update_fn)
