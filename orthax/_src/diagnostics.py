"""The paper's diagnostics: how distinct a layer's components are, and how many are stalled."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def component_cosine(features: Array) -> Array:
  """Mean |cosine| between the representations of distinct components (Sec. 3.2, Fig. 8).

  A component's representation is its output over a batch (and spatial positions): column j of
  `features` reshaped to (M, N). Orthogonalised training keeps these less alike than SGDM does.

  Args:
    features: activations of shape (..., N), N components (channels or units) last.

  Returns:
    A scalar: the mean over the N (N - 1) ordered pairs of distinct components of |cos|; 0 for
    N = 1. Components with an all-zero output (dead units) count as cosine 0.
  """
  x = jnp.reshape(features, (-1, features.shape[-1])).astype(jnp.float32)
  n = x.shape[-1]
  if n < 2:
    return jnp.zeros((), jnp.float32)
  norms = jnp.linalg.norm(x, axis=0)
  x = x / jnp.where(norms > 0, norms, 1)
  cos = jnp.abs(x.T @ x)
  return (jnp.sum(cos) - jnp.trace(cos)) / (n * (n - 1))


def cosine_significance_threshold(dimension: int) -> float:
  """4 / sqrt(d): random unit vectors in d dimensions have |cos| above it with negligible odds.

  Tuddenham et al. (App. A) use it to judge whether the cosines of `component_cosine`, between
  vectors of `dimension` = M samples, are meaningfully above chance (|cos| of random vectors has
  standard deviation about 1 / sqrt(d)).
  """
  if dimension < 1:
    raise ValueError(f"cosine_significance_threshold needs dimension >= 1, got {dimension=}.")
  return 4.0 / dimension**0.5


def dead_parameters(grads: Any) -> Array:
  """The number of gradient entries that are exactly zero (Sec. 3.3, Fig. 9).

  Such parameters are temporarily dead: no example in the batch moves them (e.g. the weights into
  a ReLU unit that is off for the whole batch).
  """
  leaves = jax.tree_util.tree_leaves(grads)
  return sum((jnp.sum(leaf == 0) for leaf in leaves), jnp.zeros((), jnp.int32))


def orthogonality_error(update: Array) -> Array:
  """||O^T O - I||_F / sqrt(N) for a (P, N) update with P >= N (rows instead when P < N).

  0 for an exact polar factor of a full-rank gradient; about the spread of the singular values
  around 1 for the approximate methods.
  """
  if update.ndim != 2:
    raise ValueError(f"orthogonality_error expects a (P, N) matrix, got {update.shape=}.")
  o = update.astype(jnp.float32)
  if o.shape[0] < o.shape[1]:
    o = o.T
  n = o.shape[1]
  return jnp.linalg.norm(o.T @ o - jnp.eye(n)) / jnp.sqrt(n)
