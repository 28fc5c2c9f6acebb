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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import optax
from optax.contrib import MuonDimensionNumbers

import orthax

OPTIMIZERS = (
    "sgdm", "orthogonal-sgdm", "adam", "orthogonal-adam", "n-sgdm", "cn-sgdm", "muon")


def dense_kernels(params: Any) -> Any:
  """2-D kernels only (dense layers; in BasicCNN, the classifier): the complement of conv."""
  return jax.tree.map(lambda kernel, conv: kernel and not conv,
                      orthax.masks.kernels(params), orthax.masks.conv_kernels(params))


MASKS = {"all": orthax.masks.kernels, "conv": orthax.masks.conv_kernels, "dense": dense_kernels}


def check_name(name: str, mask: str) -> None:
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimiser {name!r}; choose from {', '.join(OPTIMIZERS)}.")
  if mask not in MASKS:
    raise ValueError(
        f"Unknown mask {mask!r}: 'all' orthogonalises every kernel (conv and dense), 'conv' only "
        "convolution kernels (the paper's Table 5), 'dense' only dense kernels.")


def make_direction(
    name: str, *, method: str = "auto", mask: str = "all", rtol: float | None = None
) -> optax.GradientTransformation:
  """The stateless transformation of the gradient that optimiser `name` applies before decay.

  The identity for sgdm, adam and muon (muon orthogonalises its momentum, inside optax).
  """
  check_name(name, mask)
  if name.startswith("orthogonal-"):
    options = {} if rtol is None else {"rtol": rtol}
    return orthax.orthogonalise_components(method, mask=MASKS[mask], **options)
  if name == "n-sgdm":
    return orthax.normalise(mask=MASKS[mask])
  if name == "cn-sgdm":
    return orthax.normalise_components(mask=MASKS[mask])
  return optax.identity()


def muon_dimension_numbers(mask: str):
  """Muon's view of each parameter: a conv kernel (kh, kw, in, out) reduces over (0, 1, 2) to
  output 3, a dense kernel (in, out) over 0 to 1; None (Adam) for the rest and for leaves `mask`
  leaves out. Without this, `optax.contrib.muon` sends every conv kernel to Adam."""

  def dimension_numbers(params: Any) -> Any:
    selected = MASKS[mask](params)

    def leaf(x, chosen):
      if not chosen or x.ndim not in (2, 4):
        return None
      if x.ndim == 4:
        return MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
      return MuonDimensionNumbers(reduction_axis=0, output_axis=1)

    return jax.tree.map(leaf, params, selected)

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
) -> optax.GradientTransformation:
  """Optimiser `name` (one of `OPTIMIZERS`).

  Args:
    name: sgdm, orthogonal-sgdm, adam, orthogonal-adam, n-sgdm, cn-sgdm or muon.
    learning_rate: a float or an optax schedule.
    momentum: SGD's momentum; Adam's b1; Muon's beta. 0 for plain SGD.
    weight_decay: L2 coefficient added to the (orthogonalised) gradient; for Muon, its decay.
    method: orthax's matrix method (auto, svd, eigh, newton_schulz, polar_express).
    mask: 'all' (every kernel, the default), 'conv' (convolution kernels only) or 'dense'
      (dense kernels only: in BasicCNN, the classifier).
    rtol: orthax's rank-aware cut (exact methods); None is orthax's default.
    b2: Adam's second-moment decay (the paper's Table 3 used 0.99).
  """
  check_name(name, mask)
  if name == "muon":
    return optax.contrib.muon(
        learning_rate, beta=momentum, weight_decay=weight_decay, adam_b1=momentum, adam_b2=b2,
        adam_weight_decay=weight_decay, muon_weight_dimension_numbers=muon_dimension_numbers(mask))
  direction = make_direction(name, method=method, mask=mask, rtol=rtol)
  if name.endswith("adam"):
    return orthax.orthogonal_adam(
        learning_rate, b1=momentum, b2=b2, weight_decay=weight_decay, orthogonaliser=direction)
  return orthax.orthogonal_sgd(
      learning_rate, momentum=momentum or None, weight_decay=weight_decay,
      orthogonaliser=direction)
