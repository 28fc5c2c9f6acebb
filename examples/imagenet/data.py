"""ImageNet (ILSVRC 2012) through tensorflow-datasets' `imagenet2012`, or a synthetic stand-in.

The real data: tensorflow-datasets cannot download ImageNet; download ILSVRC2012_img_train.tar
and ILSVRC2012_img_val.tar from image-net.org and prepare them once with
`tfds build imagenet2012 --manual_dir DIR --data_dir DATA_DIR`. tensorflow and
tensorflow-datasets are imported only here, only for the real data.

The pipeline is the standard one (as in the Flax and TPU ResNet examples): training images get
an Inception-style random resized crop (area 8-100 %, aspect ratio 3/4-4/3, 10 tries, else a
centre crop) resized to `image_size` and a random horizontal flip; validation images are resized
so the centre crop of `image_size` is `image_size / (image_size + 32)` of the shorter side (256
-> 224) and centre-cropped. Images stay uint8 (normalised on the device, in the train step).

Multi-host: every process reads its own shard of each split (`tfds.split_for_jax_process`) and
yields its share of each global batch; `examples.lib.data.global_batches` assembles the global
arrays. Every
process yields the same number of evaluation batches (padded with weight-0 images), as the
collectives in the step require.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import numpy as np

from examples.lib import data

MEAN = (0.485, 0.456, 0.406)  # torchvision's, of [0, 1] pixels
STD = (0.229, 0.224, 0.225)
TRAIN_IMAGES, VALIDATION_IMAGES = 1_281_167, 50_000
CROP_PADDING = 32
NO_TFDS_MESSAGE = """\
The ImageNet example reads imagenet2012 through tensorflow-datasets, which is not installed:
    pip install tensorflow-cpu tensorflow-datasets
then prepare the manually downloaded archives once:
    tfds build imagenet2012 --manual_dir DIR_WITH_THE_TARS --data_dir DATA_DIR
and pass --data DATA_DIR. Run with --synthetic to check the example without the data."""


class Source(NamedTuple):
  """Where the batches come from; each iterator yields this process's share of a global batch."""

  train_batches: Callable[[int], Iterator[tuple[np.ndarray, np.ndarray]]]  # epoch -> batches
  eval_batches: Callable[[], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]]
  train_size: int
  eval_size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  name: str


def local_batch_size(batch_size: int) -> int:
  if batch_size % jax.process_count():
    raise ValueError(f"batch_size={batch_size} must be a multiple of the "
                     f"{jax.process_count()} processes.")
  return batch_size // jax.process_count()


def synthetic(image_size: int, num_classes: int, batch_size: int, *, train_size: int = 256,
              eval_size: int = 128, seed: int = 0) -> Source:
  """Random images around one random pattern per class (learnable), already at `image_size`:
  for tests and for checking a setup without the data."""
  rng = np.random.default_rng(seed)
  patterns = data.class_patterns(rng, num_classes, image_size)
  train_images, train_labels = data.synthetic_split(rng, patterns, train_size)
  eval_images, eval_labels = data.synthetic_split(rng, patterns, eval_size)
  local, start = local_batch_size(batch_size), jax.process_index() * local_batch_size(batch_size)

  def train_batches(epoch):
    order = np.random.default_rng((seed, epoch)).permutation(train_size)
    for first in range(0, train_size - batch_size + 1, batch_size):
      indices = order[first + start:first + start + local]
      yield train_images[indices], train_labels[indices]

  def eval_batches():
    for first in range(0, eval_size, batch_size):
      rows = slice(first + start, min(first + start + local, eval_size))
      yield data.pad_batch(eval_images[rows], eval_labels[rows], local)

  return Source(train_batches, eval_batches, train_size, eval_size, MEAN, STD, "synthetic")


def imagenet(data_dir: str | None, image_size: int, batch_size: int, *, seed: int = 0) -> Source:
  """tensorflow-datasets' prepared `imagenet2012` with the standard training and evaluation
  preprocessing (see the module docstring)."""
  try:
    import tensorflow as tf
    import tensorflow_datasets as tfds
  except ImportError as error:
    raise ImportError(NO_TFDS_MESSAGE) from error
  tf.config.set_visible_devices([], "GPU")  # keep tf.data off the accelerators
  builder = tfds.builder("imagenet2012", data_dir=data_dir)
  local = local_batch_size(batch_size)
  autotune = tf.data.AUTOTUNE

  def random_crop(jpeg):
    shape = tf.io.extract_jpeg_shape(jpeg)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    window = tf.stack([offset_y, offset_x, height, width])
    image = tf.image.decode_and_crop_jpeg(jpeg, window, channels=3)
    # No acceptable box in 10 tries: the whole image came back (size's channel entry is -1).
    failed = tf.reduce_all(tf.equal(shape[:2], size[:2]))
    return tf.cond(failed, lambda: centre_crop(jpeg), lambda: resize(image))

  def centre_crop(jpeg):
    shape = tf.io.extract_jpeg_shape(jpeg)
    height, width = shape[0], shape[1]
    side = tf.cast(image_size / (image_size + CROP_PADDING)
                   * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
    window = tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])
    return resize(tf.image.decode_and_crop_jpeg(jpeg, window, channels=3))

  def resize(image):
    image = tf.image.resize(image, [image_size, image_size], tf.image.ResizeMethod.BICUBIC)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

  def train_example(example):
    image = tf.image.random_flip_left_right(random_crop(example["image"]))
    return image, tf.cast(example["label"], tf.int32)

  def eval_example(example):
    return centre_crop(example["image"]), tf.cast(example["label"], tf.int32)

  def read(split, *, shuffle_seed=None):
    return builder.as_dataset(
        split=tfds.split_for_jax_process(split, drop_remainder=shuffle_seed is not None),
        shuffle_files=shuffle_seed is not None,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed))

  def train_batches(epoch):
    epoch_seed = seed * 100_003 + epoch  # a new order every epoch; the same on a rerun
    ds = read("train", shuffle_seed=epoch_seed).shuffle(16 * local, seed=epoch_seed)
    ds = ds.map(train_example, num_parallel_calls=autotune)
    return iter(tfds.as_numpy(ds.batch(local, drop_remainder=True).prefetch(autotune)))

  eval_size = builder.info.splits["validation"].num_examples
  eval_steps = math.ceil(math.ceil(eval_size / jax.process_count()) / local)

  def eval_batches():
    ds = read("validation").map(eval_example, num_parallel_calls=autotune)
    batches = iter(tfds.as_numpy(ds.batch(local).prefetch(autotune)))
    for _ in range(eval_steps):  # the same count on every process
      images, labels = next(batches, (np.zeros((0, image_size, image_size, 3), np.uint8),
                                      np.zeros((0,), np.int32)))
      yield data.pad_batch(images, labels, local)

  train_size = builder.info.splits["train"].num_examples
  return Source(train_batches, eval_batches, train_size, eval_size, MEAN, STD,
                "imagenet2012 (tensorflow-datasets)")
