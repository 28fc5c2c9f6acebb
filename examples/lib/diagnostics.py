"""Per-epoch diagnostics of a training run, on a fixed batch, via `orthax.diagnostics`.

For each conv layer: the mean |cos| between its output channels and that statistic's significance
threshold; the number of parameters with an exactly zero gradient; and the orthogonality error of
each kernel's update direction (U V^T for the orthogonal optimisers).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from examples.lib.data import normalise
from examples.lib.train import TrainState, cross_entropy


def layer_name(path) -> str:
  keys = [getattr(k, "key", getattr(k, "idx", k)) for k in path]
  return "/".join(str(k) for k in keys if k != "__call__" and not isinstance(k, int))


def diagnose_step(state: TrainState, images, labels, *, direction, mean, std) -> dict[str, Any]:
  """On a fixed batch: every conv layer's output, the gradient, and the optimiser's direction.

  The direction is what `optimizers.make_direction` makes of the gradient before decay and
  momentum: U V^T for the orthogonal optimisers (exactly orthogonal for the exact methods at full
  rank), the gradient itself for SGDM and Adam.
  """
  from orthax import diagnostics  # here: the rest of the examples work without it

  x = normalise(images, mean, std)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    logits, updates = state.apply_fn(
        variables, x, train=True, mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda module, method: (
            isinstance(module, nn.Conv) and method == "__call__"))
    return cross_entropy(logits, labels).mean(), updates["intermediates"]

  (_, outputs), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  update, _ = direction.update(grads, direction.init(state.params), state.params)
  kernels = [(layer_name(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(update)
             if getattr(path[-1], "key", None) == "kernel" and leaf.ndim >= 2]
  conv_outputs = [(layer_name(path), out)
                  for path, out in jax.tree_util.tree_leaves_with_path(outputs)]
  return {
      "component_cosine": {name: diagnostics.component_cosine(out) for name, out in conv_outputs},
      "cosine_threshold": {
          name: diagnostics.cosine_significance_threshold(out.size // out.shape[-1])
          for name, out in conv_outputs},
      "dead_parameters": diagnostics.dead_parameters(grads),
      "orthogonality_error": {
          name: diagnostics.orthogonality_error(k.reshape(-1, k.shape[-1])) for name, k in kernels},
  }


def make_diagnose(direction: optax.GradientTransformation, images, labels, *, mean, std, mesh):
  """state -> `diagnose_step`'s dict as Python numbers, jitted and bound to the batch (images,
  labels); the batch is cut to a multiple of the device count."""
  size = len(labels) - len(labels) % jax.device_count()
  batch = jax.device_put((images[:size], labels[:size]), NamedSharding(mesh, P("data")))
  step = jax.jit(functools.partial(diagnose_step, direction=direction, mean=mean, std=std),
                 out_shardings=NamedSharding(mesh, P()))
  return lambda state: jax.tree.map(lambda x: x.item(), jax.device_get(step(state, *batch)))
