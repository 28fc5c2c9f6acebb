"""The optimisers the paper compares, by name, built with orthax's aliases.

Every SGD and Adam variant is `orthax.orthogonal_sgd` or `orthax.orthogonal_adam` with its own
first link (`orthogonaliser=`), `make_direction`: the gradient's direction is changed first (U V^T,
a normalisation, or nothing for plain SGDM and Adam), then weight decay is added to it, then SGD
with momentum or Adam runs as usual. That is where PyTorch's `SGD(weight_decay=...)`, which the
authors used, adds decay.

| name | direction | base |
| --- | --- | --- |
| sgdm, adam | the gradient | SGD with momentum, Adam |
| orthogonal-sgdm, -adam | U V^T of each kernel (`orthax.orthogonalise_components`) | same |
| n-sgdm | each kernel's gradient over its Frobenius norm (`orthax.normalise`) | SGD momentum |
| cn-sgdm | each component's gradient to unit norm (`orthax.normalise_components`) | SGD momentum |
| muon | `optax.contrib.muon`: Newton-Schulz on the momentum; biases and norms to Adam | - |
| adamw, orthogonal-adamw | the gradient; U V^T of each matrix (the paper's order) | AdamW |
| orthax-muon | `orthax.muon`: Muon's order (momentum, then U V^T); the rest to AdamW | - |
| speedrun-muon | `orthax.speedrun_muon`: the NanoGPT speedrun's NorMuon, cautious decay | - |

For transformers, `mask="hidden"` selects the hidden matrices (`orthax.masks.hidden_matrices`:
no embeddings, no output head), and `layout` views every attention kernel whole (one matrix per
projection, as Muon), per head, or with the heads as the paper's components
(`orthax.attention_layout`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import optax
from optax.contrib import MuonDimensionNumbers

import orthax

MUONS = ("muon", "orthax-muon", "speedrun-muon")  # the ones with an AdamW part of their own
OPTIMIZERS = (
    "sgdm", "orthogonal-sgdm", "adam", "orthogonal-adam", "n-sgdm", "cn-sgdm", "muon", "adamw",
    "orthogonal-adamw", "orthax-muon", "speedrun-muon")
LAYOUTS = ("default", "whole", "heads", "components")


def dense_kernels(params: Any) -> Any:
  """2-D kernels only (dense layers; in BasicCNN, the classifier): the complement of conv."""
  return jax.tree.map(lambda kernel, conv: kernel and not conv,
                      orthax.masks.kernels(params), orthax.masks.conv_kernels(params))


MASKS = {"all": orthax.masks.kernels, "conv": orthax.masks.conv_kernels, "dense": dense_kernels,
         "hidden": orthax.masks.hidden_matrices()}


def check_name(name: str, mask: str, layout: str = "default") -> None:
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimiser {name!r}; choose from {', '.join(OPTIMIZERS)}.")
  if mask not in MASKS:
    raise ValueError(
        f"Unknown mask {mask!r}: 'all' orthogonalises every kernel (conv and dense), 'conv' only "
        "convolution kernels (the paper's Table 5), 'dense' only dense kernels, 'hidden' a "
        "transformer's hidden matrices (no embeddings, no output head).")
  if layout not in LAYOUTS:
    raise ValueError(
        f"Unknown layout {layout!r}: 'default' (orthax.Layout(): the last axis is the "
        "components), or for attention kernels 'whole' (one matrix per projection, as Muon), "
        "'heads' (each head's matrix) or 'components' (the heads as the paper's components).")
  if name == "muon" and layout not in ("default", "whole"):
    raise ValueError(f"optax.contrib.muon views each matrix whole; layout {layout!r} needs "
                     "orthax-muon.")
  if name == "speedrun-muon" and layout not in ("default", "whole"):
    raise ValueError(f"speedrun-muon views query and key per pair of heads and value and out "
                     f"whole, as the speedrun; layout {layout!r} needs orthax-muon.")


def matrices(params: Any) -> Any:
  """Leaves with two or more axes (nanoGPT's choice of what weight decay applies to)."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_layout(layout: str) -> Any:
  """The `layout` argument of orthax's transformations for a `LAYOUTS` name."""
  return None if layout == "default" else orthax.attention_layout(layout)


def approximation_options(rtol: float | None, steps: int | None) -> dict:
  """orthax's `rtol` (exact methods) and `steps` (approximate methods), where given."""
  options = {"rtol": rtol, "steps": steps}
  return {key: value for key, value in options.items() if value is not None}


def make_direction(
    name: str, *, method: str = "auto", mask: str = "all", rtol: float | None = None,
    layout: str = "default", steps: int | None = None,
) -> optax.GradientTransformation:
  """The stateless transformation of the gradient that optimiser `name` applies before decay.

  The identity for sgdm, adam, adamw and the two muons (they orthogonalise their momentum).
  """
  check_name(name, mask, layout)
  if name.startswith("orthogonal-"):
    options = approximation_options(rtol, steps)
    return orthax.orthogonalise_components(
        method, mask=MASKS[mask], layout=make_layout(layout), **options)
  if name == "n-sgdm":
    return orthax.normalise(mask=MASKS[mask])
  if name == "cn-sgdm":
    return orthax.normalise_components(mask=MASKS[mask])
  return optax.identity()


def muon_dimension_numbers(mask: str):
  """Muon's view of each parameter: a conv kernel (kh, kw, in, out) reduces over (0, 1, 2) to
  output 3, a dense kernel (in, out) over 0 to 1, an attention kernel is one matrix (query, key,
  value (embed, heads, head_dim) over 0 to (1, 2); out (heads, head_dim, embed) over (0, 1) to 2,
  as `orthax.attention_layout("whole")`); None (Adam) for the rest and for leaves `mask` leaves
  out. Without this, `optax.contrib.muon` sends every conv and attention kernel to Adam."""

  def dimension_numbers(params: Any) -> Any:
    selected = MASKS[mask](params)
    views = orthax.attention_layout("whole")(params)

    def leaf(x, chosen, view):
      if not chosen or x.ndim not in (2, 3, 4):
        return None
      if view is not None:  # an attention kernel
        components = (view.components,) if isinstance(view.components, int) else view.components
        return MuonDimensionNumbers(
            reduction_axis=tuple(a for a in range(x.ndim) if a not in components),
            output_axis=tuple(components))
      if x.ndim == 4:
        return MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
      if x.ndim == 2:
        return MuonDimensionNumbers(reduction_axis=0, output_axis=1)
      return None

    return jax.tree.map(leaf, params, selected, views,
                        is_leaf=lambda v: v is None or isinstance(v, orthax.Layout))

  return dimension_numbers


def make_schedule(
    learning_rate: float, schedule: str, decay_epochs: Sequence[int], steps_per_epoch: int
) -> optax.ScalarOrSchedule:
  """'constant' (the paper's Table 1), or 'step': / 10 at each of `decay_epochs` (Table 2)."""
  if schedule == "constant":
    return learning_rate
  if schedule == "step":
    return optax.piecewise_constant_schedule(
        learning_rate, {epoch * steps_per_epoch: 0.1 for epoch in decay_epochs})
  raise ValueError(f"Unknown schedule {schedule!r}; use 'constant' or 'step'.")


def make_optimizer(
    name: str,
    *,
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    method: str = "auto",
    mask: str = "all",
    rtol: float | None = None,
    b2: float = 0.999,
    layout: str = "default",
    muon_beta: float | None = None,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    steps: int | None = None,
    normuon_beta2: float | None = None,
) -> optax.GradientTransformation:
  """Optimiser `name` (one of `OPTIMIZERS`).

  Args:
    name: sgdm, orthogonal-sgdm, adam, orthogonal-adam, n-sgdm, cn-sgdm, muon, adamw,
      orthogonal-adamw, orthax-muon or speedrun-muon.
    learning_rate: a float or an optax schedule.
    momentum: SGD's momentum; Adam's b1 (also the b1 of the two muons' AdamW part).
    weight_decay: for sgdm, adam and their variants, the L2 coefficient added to the
      (orthogonalised) gradient; for adamw and the muons, decoupled decay times the learning
      rate: adamw's of matrices only (ndim >= 2: not norms and biases), the muons' of every
      leaf (as optax.contrib.muon's `weight_decay` and `adam_weight_decay`).
    method: orthax's matrix method (auto, svd, eigh, newton_schulz, polar_express), also
      orthax-muon's (give newton_schulz for Muon's own).
    mask: 'all' (every kernel, the default), 'conv' (convolution kernels only), 'dense'
      (dense kernels only: in BasicCNN, the classifier) or 'hidden' (a transformer's hidden
      matrices). For the muons, the leaves it leaves out go to AdamW.
    rtol: orthax's rank-aware cut (exact methods); None is orthax's default.
    b2: Adam's second-moment decay (the paper's Table 3 used 0.99).
    layout: how attention kernels are viewed (`LAYOUTS`); 'default' is `orthax.Layout()`.
    muon_beta: the muons' momentum; default `momentum`.
    adam_learning_rate: the muons' AdamW learning rate; default `learning_rate`.
    steps: iterations of the approximate methods (newton_schulz, polar_express); None is
      orthax's default.
    normuon_beta2: orthax-muon only: NorMuon's second-moment decay (`orthax.muon`'s
      `normuon_beta2`, one moment per output feature, the paper's neuron); None: no NorMuon.
  """
  check_name(name, mask, layout)
  if normuon_beta2 is not None and name != "orthax-muon":
    raise ValueError(f"normuon_beta2 is orthax-muon's option (speedrun-muon has NorMuon "
                     f"built in); {name!r} has none.")
  if name == "muon":
    return optax.contrib.muon(
        learning_rate, beta=momentum if muon_beta is None else muon_beta,
        weight_decay=weight_decay, adam_b1=momentum, adam_b2=b2,
        adam_weight_decay=weight_decay, adam_learning_rate=adam_learning_rate,
        muon_weight_dimension_numbers=muon_dimension_numbers(mask))
  if name == "orthax-muon":
    options = approximation_options(rtol, steps)
    return orthax.muon(
        learning_rate, beta=momentum if muon_beta is None else muon_beta, method=method,
        mask=MASKS[mask], layout=make_layout(layout), weight_decay=weight_decay,
        adam_b1=momentum, adam_b2=b2,
        adam_weight_decay=weight_decay, adam_learning_rate=adam_learning_rate,
        normuon_beta2=normuon_beta2, **options)
  if name == "speedrun-muon":  # its own method (Polar Express), layout and Adam epsilon
    return orthax.speedrun_muon(
        learning_rate, beta=momentum if muon_beta is None else muon_beta,
        weight_decay=weight_decay, adam_learning_rate=adam_learning_rate, adam_b1=momentum,
        adam_b2=b2, adam_weight_decay=weight_decay, mask=MASKS[mask])
  direction = make_direction(
      name, method=method, mask=mask, rtol=rtol, layout=layout, steps=steps)
  if name.endswith("adamw"):
    return orthax.orthogonal_adamw(
        learning_rate, b1=momentum, b2=b2, weight_decay=weight_decay, weight_decay_mask=matrices,
        orthogonaliser=direction)
  if name.endswith("adam"):
    return orthax.orthogonal_adam(
        learning_rate, b1=momentum, b2=b2, weight_decay=weight_decay, orthogonaliser=direction)
  return orthax.orthogonal_sgd(
      learning_rate, momentum=momentum or None, weight_decay=weight_decay,
      orthogonaliser=direction)
