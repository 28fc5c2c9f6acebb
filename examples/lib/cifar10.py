"""CIFAR-10, the paper's way: a fixed 45k/5k train/validation split of the 50k training images.

Images stay uint8 on the host; each example augments and normalises them on the device, inside its
jitted train step, so the host only gathers indices.

Sources, in this order: the file given as `path` (`--data`), the file named by `$ORTHAX_CIFAR10`,
tensorflow-datasets' `cifar10` when tensorflow-datasets is importable and the data set is already
prepared (it is never downloaded here), and the local copy `cifar10_jpeg.npz` in
`<repo>/../shared/data/cifar10/`. `synthetic=True` needs no files.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from examples.lib import data
from examples.lib.data import Split

DEFAULT_PATH = Path(__file__).resolve().parents[3] / "shared/data/cifar10/cifar10_jpeg.npz"
TRAIN_SPLIT, VALIDATION_SPLIT, TEST_SPLIT = 45_000, 5_000, 10_000
SPLIT_SEED = 0  # the validation split is fixed: it never depends on the run's seed
NO_DATA_MESSAGE = """\
No CIFAR-10 data found at {path}.
Point the example at a local copy of cifar10_jpeg.npz, either with
    --data /path/to/cifar10_jpeg.npz
or with the environment variable
    ORTHAX_CIFAR10=/path/to/cifar10_jpeg.npz
or let tensorflow-datasets download it (where the machine can) with
    --download
or run on synthetic data (no meaningful accuracy) with
    --synthetic"""


class DataNotFoundError(FileNotFoundError):
  """No CIFAR-10 source was found; the message says how to point at one."""


class Dataset(NamedTuple):
  train: Split
  validation: Split
  test: Split
  mean: tuple[float, float, float]  # per channel, of the training images scaled to [0, 1]
  std: tuple[float, float, float]
  source: str


def find_local_copy(path: str | os.PathLike | None = None) -> Path:
  """`path`, else `$ORTHAX_CIFAR10`, else the default local copy; DataNotFoundError if absent."""
  path = Path(path or os.environ.get("ORTHAX_CIFAR10") or DEFAULT_PATH)
  if not path.is_file():
    raise DataNotFoundError(NO_DATA_MESSAGE.format(path=path))
  return path


def decode_jpegs(jpeg: np.ndarray, offsets: np.ndarray, indices: np.ndarray) -> np.ndarray:
  """Decodes the images `indices` of concatenated 32x32 JPEG files into uint8 (n, 32, 32, 3)."""
  from PIL import Image

  data, offsets = jpeg.tobytes(), offsets.tolist()
  images = np.empty((len(indices), 32, 32, 3), np.uint8)
  for row, i in enumerate(indices.tolist()):
    with Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]])) as image:
      images[row] = np.asarray(image.convert("RGB"))
  return images


def split_indices(num_train: int = TRAIN_SPLIT + VALIDATION_SPLIT) -> tuple[np.ndarray, np.ndarray]:
  """The fixed (train, validation) indices into the 50k training images: 45k and 5k."""
  order = np.random.default_rng(SPLIT_SEED).permutation(num_train)
  validation = num_train // 10
  return order[validation:], order[:validation]


def prefix(indices: np.ndarray, size: int | None) -> np.ndarray:
  return indices if size is None else indices[:size]


def load_npz(path: Path, sizes: tuple[int | None, int | None, int | None]) -> tuple[Split, ...]:
  """Train, validation and test splits of a cifar10_jpeg.npz file, decoding only what is used."""
  with np.load(path, allow_pickle=False) as npz:
    train_idx, val_idx = split_indices(len(npz["train_labels"]))
    test_idx = np.arange(len(npz["test_labels"]))
    splits = []
    for part, indices, size in zip(
        ("train", "train", "test"), (train_idx, val_idx, test_idx), sizes, strict=True):
      indices = prefix(indices, size)
      images = decode_jpegs(npz[f"{part}_jpeg"], npz[f"{part}_offsets"], indices)
      splits.append(Split(images, npz[f"{part}_labels"][indices].astype(np.int32)))
  return tuple(splits)


def load_tfds(sizes: tuple[int | None, int | None, int | None],
              download: bool = False) -> tuple[Split, ...] | None:
  """The same splits from tensorflow-datasets' `cifar10`, or None if it is not there.

  The data set is used when already prepared, and downloaded and prepared first if `download`.
  """
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    if download:
      raise DataNotFoundError(
          "--download needs tensorflow-datasets: pip install tensorflow-datasets tensorflow-cpu"
      ) from None
    return None
  builder = tfds.builder("cifar10")
  if not builder.is_prepared():
    if not download:
      return None
    builder.download_and_prepare()
  arrays = {split: tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
            for split in ("train", "test")}
  train_idx, val_idx = split_indices(len(arrays["train"]["label"]))
  test_idx = np.arange(len(arrays["test"]["label"]))
  return tuple(
      Split(arrays[part]["image"][prefix(indices, size)],
            arrays[part]["label"][prefix(indices, size)].astype(np.int32))
      for part, indices, size in zip(
          ("train", "train", "test"), (train_idx, val_idx, test_idx), sizes, strict=True))


def synthetic_splits(sizes: tuple[int | None, int | None, int | None],
                     seed: int = 0) -> tuple[Split, ...]:
  """Random images around one fixed random pattern per class: learnable, needs no files."""
  rng = np.random.default_rng(seed)
  patterns = data.class_patterns(rng, 10, 32)
  defaults = (2048, 512, 512)
  return tuple(data.synthetic_split(rng, patterns, size or default)
               for size, default in zip(sizes, defaults, strict=True))


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std of [0, 1] pixels, in float64 chunks (45k images: no 1 GB copy)."""
  total, squares = np.zeros(3), np.zeros(3)
  for chunk in np.array_split(images, max(1, len(images) // 5000)):
    pixels = chunk.reshape(-1, 3).astype(np.float64) / 255.0
    total += pixels.sum(0)
    squares += np.square(pixels).sum(0)
  count = images.size // 3
  mean = total / count
  std = np.sqrt(squares / count - np.square(mean))
  return tuple(mean.tolist()), tuple(std.tolist())


def load(
    path: str | os.PathLike | None = None,
    *,
    train_size: int | None = None,
    validation_size: int | None = None,
    test_size: int | None = None,
    synthetic: bool = False,
    download: bool = False,
) -> Dataset:
  """CIFAR-10 split 45k/5k/10k (train/validation/test), or prefixes of each split.

  Args:
    path: a cifar10_jpeg.npz file; default `$ORTHAX_CIFAR10`, then a prepared
      tensorflow-datasets `cifar10`, then the local copy beside the checkout.
    train_size, validation_size, test_size: use the first N images of each split (short runs);
      None uses the whole split. The split itself is fixed, so prefixes are nested.
    synthetic: random class patterns instead of CIFAR-10 (default 2048/512/512 images).
    download: let tensorflow-datasets download and prepare `cifar10` if it is not prepared
      (when neither `path` nor `$ORTHAX_CIFAR10` is given).

  Returns:
    A `Dataset` whose `mean` and `std` are those of the training images used.

  Raises:
    DataNotFoundError: no source was found; the message says how to name one.
  """
  sizes = (train_size, validation_size, test_size)
  if synthetic:
    splits, source = synthetic_splits(sizes), "synthetic"
  elif path is None and "ORTHAX_CIFAR10" not in os.environ and (
      tfds := load_tfds(sizes, download)):
    splits, source = tfds, "CIFAR-10 (tensorflow-datasets)"
  else:
    local = find_local_copy(path)
    splits, source = load_npz(local, sizes), f"CIFAR-10 ({local.name})"
  return Dataset(*splits, *channel_stats(splits[0].images), source)

