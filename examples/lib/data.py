"""Batches for the examples: epoch orders, placed and padded batches, synthetic images.

Images stay uint8 on the host (a quarter of the bytes of float32 to copy to the accelerator) and
are normalised on the device, inside the jitted step, by `normalise`. Each epoch's order comes
from (seed, epoch) alone, so a resumed run needs no data-iterator state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Split(NamedTuple):
  images: np.ndarray  # uint8 (n, height, width, 3)
  labels: np.ndarray  # int32 (n,)


def normalise(images: jax.Array, mean, std) -> jax.Array:
  """uint8 pixels to float32, per channel: (x / 255 - mean) / std."""
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std


def steps_per_epoch(num_examples: int, batch_size: int, eval_batch_size: int) -> int:
  """Full batches of `batch_size` in `num_examples`; checks that both batch sizes split evenly
  over the devices."""
  for name, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
    if size % jax.device_count():
      raise ValueError(
          f"{name}={size} must be a multiple of the {jax.device_count()} devices, which each take "
          "an equal share of a batch.")
  steps = num_examples // batch_size
  if steps == 0:
    raise ValueError(
        f"The training split has {num_examples} images, fewer than one batch of {batch_size}; "
        "raise train_size or lower batch_size.")
  return steps


def epoch_order(num_examples: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """(steps, batch_size) indices for `epoch`, from (seed, epoch) alone; drops the last partial
  batch."""
  steps = num_examples // batch_size
  order = np.random.default_rng((seed, epoch)).permutation(num_examples)
  return order[:steps * batch_size].reshape(steps, batch_size)


def split_batches(split: Split, order: Iterable[np.ndarray], sharding) -> Iterator:
  """`split`'s images and labels batch by batch in `order`, placed with `sharding` (lazily)."""
  for indices in order:
    yield jax.device_put((split.images[indices], split.labels[indices]), sharding)


def shuffled_batches(split: Split, batch_size: int, seed: int,
                     sharding) -> Callable[[int], Iterator]:
  """epoch -> `split`'s full batches in that epoch's order (`epoch_order`), placed with
  `sharding`."""

  def epoch_batches(epoch: int) -> Iterator:
    order = epoch_order(len(split.labels), batch_size, seed, epoch)
    return split_batches(split, order, sharding)

  return epoch_batches


def pad_batch(images: np.ndarray, labels: np.ndarray, size: int):
  """(images, labels, weights) padded to `size` rows with weight-0 zeros."""
  pad = size - len(labels)
  weights = np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])
  images = np.pad(images, ((0, pad),) + ((0, 0),) * (images.ndim - 1))
  return images, np.pad(labels, (0, pad)), weights


def padded_batches(split: Split, batch_size: int, sharding) -> Iterator:
  """`split` in order as placed (images, labels, weights) batches; the last is padded with
  weight 0."""
  for start in range(0, len(split.labels), batch_size):
    batch = pad_batch(split.images[start:start + batch_size],
                      split.labels[start:start + batch_size], batch_size)
    yield jax.device_put(batch, sharding)


def global_batches(batches: Iterable, sharding) -> Iterator:
  """Each process's numpy share of a batch as one global array per field, sharded over the
  mesh (on one process, the same as `jax.device_put`)."""
  for batch in batches:
    yield tuple(jax.make_array_from_process_local_data(sharding, x) for x in batch)


def class_patterns(rng: np.random.Generator, num_classes: int, image_size: int) -> np.ndarray:
  """One random (image_size, image_size, 3) pattern per class, for `synthetic_split`."""
  return rng.uniform(0, 255, (num_classes, image_size, image_size, 3))


def synthetic_split(rng: np.random.Generator, patterns: np.ndarray, n: int) -> Split:
  """`n` random images, each half its class's pattern and half noise: learnable, needs no files
  (for tests and for checking a setup; no meaningful accuracy)."""
  labels = rng.integers(0, len(patterns), n).astype(np.int32)
  noise = rng.uniform(0, 255, (n, *patterns.shape[1:]))
  return Split((0.5 * patterns[labels] + 0.5 * noise).astype(np.uint8), labels)
