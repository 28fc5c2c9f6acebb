"""Cautious weight decay: decoupled decay only where it agrees with the optimiser's update."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def add_cautious_decayed_weights(
    weight_decay: float | jax.Array = 0.0, mask: Any = None
) -> optax.GradientTransformation:
  """`optax.add_decayed_weights`, but only on the entries whose update and parameter agree in sign.

  Decoupled weight decay pulls every parameter towards zero, also where the optimiser is pushing
  it away from zero; there the two cancel. Cautious weight decay (Chen et al.) decays only the
  entries where the update u and the parameter x satisfy u * x >= 0, i.e. where the optimiser's
  own step already shrinks |x| (or is zero): u + weight_decay * 1[u * x >= 0] * x. It replaces
  `optax.add_decayed_weights` in a chain and sits where that does, before the learning rate: there
  updates point uphill, as gradients do (optax's `scale_by_learning_rate` then negates them), and
  "agree" means sign(u) = sign(x) with zeros counting as agreeing. The signs are compared, not
  the product, so tiny entries whose product would underflow are judged correctly.

  Args:
    weight_decay: the decay rate (times the learning rate that follows); may be an array, e.g.
      from `optax.inject_hyperparams`.
    mask: as in `optax.add_decayed_weights`: a pytree of bools or a callable params -> such a
      tree; the leaves it leaves out pass through undecayed.

  Returns:
    A stateless `optax.GradientTransformation`; it needs `params`.

  Examples:
    >>> import jax.numpy as jnp, orthax
    >>> tx = orthax.add_cautious_decayed_weights(0.5)
    >>> params = jnp.array([2.0, 2.0, -2.0])
    >>> updates = jnp.array([1.0, -1.0, -1.0])  # gradient-like: x - lr * u shrinks entries 1, 3
    >>> tx.update(updates, tx.init(params), params)[0].tolist()
    [2.0, -1.0, -2.0]

  References:
    Chen, Li, Liang, Su, Xie, Pierse, Liang, Lao, Liu, `Cautious Weight Decay
    <https://arxiv.org/abs/2510.12402>`_, 2025
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def decayed(u, x):
    if u is None:
      return None
    agree = jnp.sign(u) * jnp.sign(x) >= 0
    return (u + weight_decay * jnp.where(agree, x, 0)).astype(u.dtype)

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(
          "add_cautious_decayed_weights compares each update with its parameter: pass params to "
          "update, tx.update(updates, state, params).")
    return jax.tree.map(decayed, updates, params, is_leaf=lambda x: x is None), state

  tx = optax.GradientTransformation(init_fn, update_fn)
  return tx if mask is None else optax.masked(tx, mask)
