"""Barlow Twins' network and loss (Zbontar et al. 2021), in Flax linen.

The network is a backbone (a ResNet without its classifier) followed by a projector of
Linear(no bias)-BN-ReLU blocks and a last Linear(no bias). The loss standardises each embedding
dimension over the batch (the authors' `BatchNorm1d(affine=False)`), cross-correlates the two
views' embeddings, and pushes that matrix towards the identity.

Examples:
  >>> import jax.numpy as jnp
  >>> z = jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
  >>> round(float(barlow_twins_loss(z, z)), 6)  # identical, decorrelated views: C = I
  0.0
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from examples.models import convnets

LAMBDA = 0.0051  # the authors' weight of the off-diagonal terms

# Backbones: constructors of modules mapping (images, train) to pooled features.
BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "resnet18": functools.partial(convnets.ResNet18, num_classes=None, cifar_stem=True),
    "resnet18_imagenet_stem": functools.partial(convnets.ResNet18, num_classes=None),
    "resnet50": functools.partial(convnets.ResNet50, num_classes=None),
    "resnet20": functools.partial(convnets.ResNet20, num_classes=None),  # 64 features
}


class Projector(nn.Module):
  """Linear(no bias)-BN-ReLU for each hidden size, then a last Linear(no bias)."""

  sizes: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = convnets.batch_norm(train)
    for size in self.sizes[:-1]:
      x = nn.relu(norm()(nn.Dense(size, use_bias=False)(x)))
    return nn.Dense(self.sizes[-1], use_bias=False)(x)


class BarlowTwins(nn.Module):
  """Backbone then projector: `model(x, train)` is the embedding z, `model.features` the
  backbone's output (what the linear probe and k-NN monitor see)."""

  backbone: nn.Module
  projector_sizes: Sequence[int] = (2048, 2048, 2048)

  def setup(self):
    self.projector = Projector(self.projector_sizes)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return self.projector(self.backbone(x, train), train)

  def features(self, x: jax.Array) -> jax.Array:
    return self.backbone(x, False)


def make_model(backbone: str, projector_sizes: Sequence[int]) -> BarlowTwins:
  if backbone not in BACKBONES:
    raise ValueError(f"Unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}.")
  return BarlowTwins(BACKBONES[backbone](), tuple(projector_sizes))


def standardise(z: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Each column to zero mean and unit variance over the batch: BatchNorm1d(affine=False) in
  training mode (biased variance, eps inside the square root)."""
  mean = jnp.mean(z, axis=0)
  var = jnp.mean(jnp.square(z - mean), axis=0)
  return (z - mean) * jax.lax.rsqrt(var + eps)


def cross_correlation(z1: jax.Array, z2: jax.Array) -> jax.Array:
  """C = standardise(z1)^T standardise(z2) / batch, a (d, d) matrix.

  Under `jax.jit` with the batch sharded over devices, the means, variances and the sum over the
  batch are all over the global batch: XLA adds the cross-device reductions (the authors
  all-reduce C, and sync their batch norms, for the same effect).
  """
  z1, z2 = standardise(z1.astype(jnp.float32)), standardise(z2.astype(jnp.float32))
  return jnp.matmul(z1.T, z2, precision=jax.lax.Precision.HIGHEST) / z1.shape[0]


def barlow_twins_loss(z1: jax.Array, z2: jax.Array, lambd: float = LAMBDA) -> jax.Array:
  """sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2, for embeddings z1, z2 of shape (n, d).

  Symmetric in the two views: swapping them transposes C, which changes neither sum.
  """
  c = cross_correlation(z1, z2)
  diagonal = jnp.diagonal(c)
  on_diagonal = jnp.sum(jnp.square(1.0 - diagonal))
  off_diagonal = jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(diagonal))
  return on_diagonal + lambd * off_diagonal
