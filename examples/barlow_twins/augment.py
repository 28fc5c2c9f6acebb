"""Barlow Twins' two augmented views of a batch, on the device and vectorised over the batch.

Zbontar et al.'s ImageNet recipe, sized for 32x32 CIFAR images as solo-learn and lightly do:

| step | view 1 | view 2 |
| --- | --- | --- |
| random resized crop, scale (0.08, 1), aspect ratio (3/4, 4/3), bilinear | p = 1 | p = 1 |
| horizontal flip | p = 0.5 | p = 0.5 |
| colour jitter: brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1 | p = 0.8 | p = 0.8 |
| grayscale | p = 0.2 | p = 0.2 |
| Gaussian blur | omitted | omitted |
| solarise (invert pixels >= 0.5) | p = 0 | p = 0.2 |

Differences from torchvision's transforms, all deliberate: the crop draws its area and aspect
ratio once and clips the sides to the image (torchvision retries 10 times, then falls back to a
centre crop); the jitter's four operations run in a fixed order (torchvision shuffles them); hue
is approximated by rotating the chroma plane of YIQ colour space by 2 pi h (torchvision shifts H
in HSV exactly). Blur is left out: the authors blur with a 23-pixel kernel at 224x224, a tenth of
the image; at 32x32 that would be a 3-pixel kernel, and solo-learn's and lightly's CIFAR recipes
leave it out because it destroys most of the detail left in the image.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from examples.lib.data import normalise

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}
JITTER_P, GRAYSCALE_P = 0.8, 0.2
SOLARISE_P = (0.0, 0.2)  # view 1, view 2
LUMA = jnp.array([0.299, 0.587, 0.114])  # ITU-R 601, as torchvision's rgb_to_grayscale
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
# Inverted once here: inside the step, jnp.linalg.inv is an LU solve (cuSOLVER getrf) every step.
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ).astype(np.float32)
RGB_TO_YIQ = RGB_TO_YIQ.astype(np.float32)


def random_resized_crop(images: jax.Array, key: jax.Array, size: int) -> jax.Array:
  """A random crop of each image (area fraction in SCALE, aspect ratio in RATIO), resized to
  size x size with bilinear interpolation. Float images (n, h, w, c) -> (n, size, size, c)."""
  n, height, width, _ = images.shape
  area_key, ratio_key, corner_key = jax.random.split(key, 3)
  area = jax.random.uniform(area_key, (n,), minval=SCALE[0], maxval=SCALE[1])
  log_ratio = jax.random.uniform(ratio_key, (n,), minval=math.log(RATIO[0]),
                                 maxval=math.log(RATIO[1]))
  crop_w = jnp.minimum(jnp.sqrt(area * jnp.exp(log_ratio)), 1.0) * width
  crop_h = jnp.minimum(jnp.sqrt(area / jnp.exp(log_ratio)), 1.0) * height
  corner = jax.random.uniform(corner_key, (n, 2))
  top, left = corner[:, 0] * (height - crop_h), corner[:, 1] * (width - crop_w)
  # Pixel centres of the output grid, mapped into each crop (align_corners=False, as torchvision).
  steps = (jnp.arange(size) + 0.5) / size
  rows = top[:, None] + steps * crop_h[:, None] - 0.5  # (n, size)
  cols = left[:, None] + steps * crop_w[:, None] - 0.5
  rows, cols = jnp.clip(rows, 0, height - 1), jnp.clip(cols, 0, width - 1)
  r0, c0 = jnp.floor(rows).astype(jnp.int32), jnp.floor(cols).astype(jnp.int32)
  r1, c1 = jnp.minimum(r0 + 1, height - 1), jnp.minimum(c0 + 1, width - 1)
  wr, wc = (rows - r0)[:, :, None, None], (cols - c0)[:, None, :, None]
  batch = jnp.arange(n)[:, None, None]

  def at(r, c):
    return images[batch, r[:, :, None], c[:, None, :]]

  top_row = at(r0, c0) * (1 - wc) + at(r0, c1) * wc
  bottom_row = at(r1, c0) * (1 - wc) + at(r1, c1) * wc
  return top_row * (1 - wr) + bottom_row * wr


def grayscale(images: jax.Array) -> jax.Array:
  return jnp.broadcast_to((images @ LUMA)[..., None], images.shape)


def blend(images: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
  """factor * images + (1 - factor) * other, clipped to [0, 1] (torchvision's _blend)."""
  return jnp.clip(factor * images + (1 - factor) * other, 0.0, 1.0)


def rotate_hue(images: jax.Array, turns: jax.Array) -> jax.Array:
  """Rotates each image's chroma in YIQ space by `turns` of a full circle (approximate hue)."""
  yiq = images @ RGB_TO_YIQ.T
  angle = 2 * jnp.pi * turns
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  i = yiq[..., 1] * cos - yiq[..., 2] * sin
  q = yiq[..., 1] * sin + yiq[..., 2] * cos
  rgb = jnp.stack([yiq[..., 0], i, q], axis=-1) @ YIQ_TO_RGB.T
  return jnp.clip(rgb, 0.0, 1.0)


def colour_jitter(images: jax.Array, key: jax.Array) -> jax.Array:
  """Brightness, contrast, saturation, then hue, each with its own random factor per image."""
  n = images.shape[0]
  keys = jax.random.split(key, 4)

  def factor(key, strength):
    return jax.random.uniform(key, (n, 1, 1, 1), minval=1 - strength, maxval=1 + strength)

  images = blend(images, jnp.zeros_like(images), factor(keys[0], JITTER["brightness"]))
  mean_gray = jnp.mean(grayscale(images), axis=(1, 2, 3), keepdims=True)
  images = blend(images, mean_gray, factor(keys[1], JITTER["contrast"]))
  images = blend(images, grayscale(images), factor(keys[2], JITTER["saturation"]))
  turns = jax.random.uniform(keys[3], (n, 1, 1), minval=-JITTER["hue"], maxval=JITTER["hue"])
  return rotate_hue(images, turns)


def solarise(images: jax.Array) -> jax.Array:
  return jnp.where(images >= 0.5, 1.0 - images, images)


def where_each(chosen: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.where(chosen[:, None, None, None], a, b)


def view(images: jax.Array, key: jax.Array, solarise_p: float) -> jax.Array:
  """One augmented view of uint8 images (n, h, w, 3) as float32 in [0, 1], same size."""
  n, size = images.shape[0], images.shape[1]
  keys = jax.random.split(key, 7)
  x = random_resized_crop(images.astype(jnp.float32) / 255.0, keys[0], size)
  x = where_each(jax.random.bernoulli(keys[1], 0.5, (n,)), x[:, :, ::-1], x)
  x = where_each(jax.random.bernoulli(keys[2], JITTER_P, (n,)), colour_jitter(x, keys[3]), x)
  x = where_each(jax.random.bernoulli(keys[4], GRAYSCALE_P, (n,)), grayscale(x), x)
  return where_each(jax.random.bernoulli(keys[5], solarise_p, (n,)), solarise(x), x)


def two_views(images: jax.Array, key: jax.Array, mean, std) -> tuple[jax.Array, jax.Array]:
  """The two differently augmented, normalised views of a batch of uint8 images."""
  key1, key2 = jax.random.split(key)
  views = (view(images, key1, SOLARISE_P[0]), view(images, key2, SOLARISE_P[1]))
  return tuple(normalise(v * 255.0, mean, std) for v in views)
