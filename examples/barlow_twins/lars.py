"""LARS as the Barlow Twins authors ran it, and Orthogonal LARS, from optax and orthax primitives.

The authors' LARS (facebookresearch/barlowtwins, `main.py`) splits the parameters by shape:

| group | leaves | learning rate | weight decay | trust ratio | orthogonalised (Orthogonal LARS) |
| --- | --- | --- | --- | --- | --- |
| weights | ndim >= 2: conv and dense kernels | 0.2 * batch / 256 | yes | yes | conv kernels only |
| biases | ndim == 1: biases, batch-norm scales and offsets | 0.0048 * batch / 256 | no | no | no |

and for each weight computes g <- g + wd * p, g <- g * eta * ||p|| / ||g|| (1 when either norm is
0), mu <- momentum * mu + g, p <- p - lr * mu; the biases skip the first two. Both learning rates
follow one schedule: linear warmup from 0, then a cosine decay to 1/1000 of the peak.

`optax.lars` differs in three ways. It scales by the learning rate *before* the momentum trace
(mu <- momentum * mu + lr_t * g, p <- p - mu), so each past gradient keeps the learning rate of
its own step; the authors' buffer is rescaled by the current rate at every step. The two agree for
a constant rate and differ during warmup and decay (just after warmup, optax's buffer still holds
the small early rates). It has one learning rate for every leaf. And its masks default to
decaying and adapting every leaf, biases and batch norm included. `authors_lars` below is the
authors' order and grouping: `optax.multi_transform` over the two groups, each an `optax.chain`
ending in `trace` then `scale_by_learning_rate`.

Orthogonal LARS, as in Tuddenham et al. (Sec. 2.3.4), replaces each convolution kernel's gradient
by U V^T first (`orthax.orthogonalise_components` with `orthax.masks.conv_kernels`; the dense
projector layers are left alone), then runs the same LARS: decay is added to the orthogonalised
gradient and the trust ratio rescales the sum.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

import orthax

WEIGHTS, BIASES = "weights", "biases"
OPTIMIZERS = ("lars", "orthogonal-lars")


def parameter_groups(params: Any) -> Any:
  """The authors' split: "biases" for 1-D leaves (biases, batch-norm parameters), else
  "weights"."""
  return jax.tree.map(lambda p: BIASES if p.ndim <= 1 else WEIGHTS, params)


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """The authors' schedule: linear from 0 to `peak` over `warmup_steps`, then a half cosine from
  `peak` to `peak / 1000` at `total_steps`."""
  decay_steps = max(total_steps - warmup_steps, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / max(warmup_steps, 1)
    progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
    q = 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return jnp.where(step < warmup_steps, warm, peak * q + 1e-3 * peak * (1.0 - q))

  return schedule


def authors_lars(
    weights_learning_rate: optax.ScalarOrSchedule,
    biases_learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float = 1.5e-6,
    momentum: float = 0.9,
    trust_coefficient: float = 1e-3,
) -> optax.GradientTransformation:
  """The authors' LARS: decay and trust ratio on the weights only, momentum, then the group's
  learning rate (see the module docstring for how this differs from `optax.lars`).

  Args:
    weights_learning_rate: for leaves with ndim >= 2 (the authors: 0.2 * batch / 256, scheduled).
    biases_learning_rate: for 1-D leaves (the authors: 0.0048 * batch / 256, scheduled).
    weight_decay: L2 coefficient added to the weights' gradients (the authors: 1.5e-6).
    momentum: the momentum buffer's decay.
    trust_coefficient: eta in eta * ||p|| / ||g||.
  """
  weights = optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient),
      optax.trace(decay=momentum),
      optax.scale_by_learning_rate(weights_learning_rate),
  )
  biases = optax.chain(
      optax.trace(decay=momentum),
      optax.scale_by_learning_rate(biases_learning_rate),
  )
  return optax.multi_transform({WEIGHTS: weights, BIASES: biases}, parameter_groups)


def orthogonal_authors_lars(
    weights_learning_rate: optax.ScalarOrSchedule,
    biases_learning_rate: optax.ScalarOrSchedule,
    *,
    method: str = "auto",
    **lars_options,
) -> optax.GradientTransformation:
  """U V^T of every convolution kernel's gradient (`orthax.orthogonalise_components`), then
  `authors_lars`. (`orthax.orthogonal_lars` is U V^T then `optax.lars`, with optax's order.)"""
  return optax.chain(
      orthax.orthogonalise_components(method, mask=orthax.masks.conv_kernels),
      authors_lars(weights_learning_rate, biases_learning_rate, **lars_options),
  )


def make_optimizer(
    name: str,
    *,
    batch_size: int,
    total_steps: int,
    warmup_steps: int,
    weights_learning_rate: float = 0.2,
    biases_learning_rate: float = 0.0048,
    method: str = "auto",
    **lars_options,
) -> optax.GradientTransformation:
  """`lars` or `orthogonal-lars` with the authors' rates: base * batch_size / 256, scheduled by
  `warmup_cosine`."""
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimiser {name!r}; choose from {', '.join(OPTIMIZERS)}.")
  scale = batch_size / 256
  rates = [warmup_cosine(base * scale, total_steps, warmup_steps)
           for base in (weights_learning_rate, biases_learning_rate)]
  if name == "orthogonal-lars":
    return orthogonal_authors_lars(*rates, method=method, **lars_options)
  return authors_lars(*rates, **lars_options)
