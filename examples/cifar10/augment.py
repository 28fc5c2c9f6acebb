"""The CIFAR-10 example's augmentation, on the device: a random crop of the zero-padded image and a
random horizontal flip (torchvision's `RandomCrop(32, padding=4)` and `RandomHorizontalFlip()`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

PADDING = 4


def augment(images: jax.Array, key: jax.Array) -> jax.Array:
  """Random 32x32 crop of each image zero-padded by 4 pixels, then a random horizontal flip.

  The padding is black pixels (0), as torchvision's `RandomCrop(32, padding=4)` on the raw image.
  One gather for the whole batch; with the batch sharded over devices, each device crops its own
  images, and the random numbers do not depend on the number of devices.
  """
  n, height, width, _ = images.shape
  crop_key, flip_key = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (PADDING, PADDING), (PADDING, PADDING), (0, 0)))
  corners = jax.random.randint(crop_key, (n, 2), 0, 2 * PADDING + 1)
  flip = jax.random.bernoulli(flip_key, 0.5, (n,))
  rows = corners[:, 0, None] + jnp.arange(height)  # (n, height)
  cols = corners[:, 1, None] + jnp.arange(width)  # (n, width)
  cols = jnp.where(flip[:, None], cols[:, ::-1], cols)
  batch = jnp.arange(n)[:, None, None]
  return padded[batch, rows[:, :, None], cols[:, None, :]]

