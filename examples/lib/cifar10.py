"""CIFAR-10, the paper's way: a fixed 45k/5k train/validation split of the 50k training images.

Images stay uint8 on the host; each example augments and normalises them on the device, inside its
jitted train step, so the host only gathers indices.

Sources, in this order:
1. the file given as `path` (`--data`), else the file named by `$ORTHAX_CIFAR10`: a
   `cifar10_jpeg.npz` copy or the official `cifar-10-python.tar.gz` (it must exist);
2. tensorflow-datasets' `cifar10`, when tensorflow-datasets is importable and the data set is
   prepared (or `download=True`, which lets it download and prepare it);
3. the local copy `cifar10_jpeg.npz` in `<repo>/../shared/data/cifar10/`;
4. the official archive in the per-user cache (`examples.lib.download`), downloaded into it once
   from its public source, checked against its published md5, when nothing above is there.
`synthetic=True` needs no files.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from examples.lib import data, download
from examples.lib.data import Split

DEFAULT_PATH = Path(__file__).resolve().parents[3] / "shared/data/cifar10/cifar10_jpeg.npz"
TRAIN_SPLIT, VALIDATION_SPLIT, TEST_SPLIT = 45_000, 5_000, 10_000
SPLIT_SEED = 0  # the validation split is fixed: it never depends on the run's seed
ADVICE = """\
Point the example at a copy with
    --data /path/to/cifar10_jpeg.npz    (or /path/to/cifar-10-python.tar.gz)
or with the environment variable
    ORTHAX_CIFAR10=/path/to/cifar10_jpeg.npz
{tfds}or run on synthetic data (no meaningful accuracy) with
    --synthetic"""
TFDS_ADVICE = """\
or let tensorflow-datasets download it (where the machine can) with
    --download
"""
NO_DATA_MESSAGE = """\
No CIFAR-10 data found at {path}.
{advice}"""
OFFLINE_MESSAGE = """\
No CIFAR-10 data found, and downloading it failed.
Tried, in this order:
    --data and $ORTHAX_CIFAR10: neither given
    tensorflow-datasets' cifar10: {tfds}
    the local copy {local}: absent
    the download of {url} into {cache}: {error}
Where the machine has internet access, run again (an interrupted download is retried; set
$ORTHAX_DATA_CACHE to keep the download elsewhere).
{advice}"""


def has_tfds() -> bool:
  """Whether tensorflow-datasets imports (only a call that names a source imports it)."""
  try:
    import tensorflow_datasets  # noqa: F401
  except ImportError:
    return False
  return True


def advice() -> str:
  """How to name a source; `--download` only where tensorflow-datasets is installed (it is the
  one route that needs it)."""
  return ADVICE.format(tfds=TFDS_ADVICE if has_tfds() else "")


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
    raise DataNotFoundError(NO_DATA_MESSAGE.format(path=path, advice=advice()))
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


def load_python_archive(path: Path, sizes: tuple[int | None, int | None, int | None]
                        ) -> tuple[Split, ...]:
  """Train, validation and test splits of the official `cifar-10-python.tar.gz`.

  Its five training batches and one test batch are pickled dicts whose b"data" rows hold a
  32 x 32 image as 3072 channel-major bytes (1024 red, then green, then blue). Unpickling runs
  code from the file, so only a file that `download.fetch` checked against its published md5,
  or one you name yourself, is read.
  """
  import pickle
  import tarfile

  batches = {}
  with tarfile.open(path, "r:gz") as tar:
    for member in tar.getmembers():
      name = Path(member.name).name
      if member.isfile() and name.startswith(("data_batch_", "test_batch")):
        batches[name] = pickle.load(tar.extractfile(member), encoding="bytes")

  def arrays(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    images = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([np.asarray(batches[n][b"labels"]) for n in names])
    return images.transpose(0, 2, 3, 1), labels.astype(np.int32)

  train_images, train_labels = arrays([f"data_batch_{i}" for i in range(1, 6)])
  test_images, test_labels = arrays(["test_batch"])
  train_idx, val_idx = split_indices(len(train_labels))
  test_idx = np.arange(len(test_labels))
  return tuple(
      Split(np.ascontiguousarray(images[prefix(indices, size)]), labels[prefix(indices, size)])
      for images, labels, indices, size in zip(
          (train_images, train_images, test_images), (train_labels, train_labels, test_labels),
          (train_idx, val_idx, test_idx), sizes, strict=True))


def load_file(path: Path, sizes: tuple[int | None, int | None, int | None]) -> tuple[Split, ...]:
  """A `cifar10_jpeg.npz` copy, or the official archive (a name ending in .tar.gz)."""
  if path.name.endswith(".tar.gz"):
    return load_python_archive(path, sizes)
  return load_npz(path, sizes)


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
    path: a cifar10_jpeg.npz file or the official cifar-10-python.tar.gz; default
      `$ORTHAX_CIFAR10`, then a prepared tensorflow-datasets `cifar10`, then the local copy
      beside the checkout, then the official archive, downloaded once into the per-user cache.
    train_size, validation_size, test_size: use the first N images of each split (short runs);
      None uses the whole split. The split itself is fixed, so prefixes are nested.
    synthetic: random class patterns instead of CIFAR-10 (default 2048/512/512 images).
    download: let tensorflow-datasets download and prepare `cifar10` if it is not prepared
      (when neither `path` nor `$ORTHAX_CIFAR10` is given).

  Returns:
    A `Dataset` whose `mean` and `std` are those of the training images used.

  Raises:
    DataNotFoundError: no source was found (a named file is missing, or the download failed);
      the message says what was tried and how to name a source.
  """
  sizes = (train_size, validation_size, test_size)
  if synthetic:
    splits, source = synthetic_splits(sizes), "synthetic"
  elif path is not None or "ORTHAX_CIFAR10" in os.environ:
    local = find_local_copy(path)
    splits, source = load_file(local, sizes), f"CIFAR-10 ({local.name})"
  elif tfds := load_tfds(sizes, download):
    splits, source = tfds, "CIFAR-10 (tensorflow-datasets)"
  elif DEFAULT_PATH.is_file():
    splits, source = load_npz(DEFAULT_PATH, sizes), f"CIFAR-10 ({DEFAULT_PATH.name})"
  else:
    archive = fetch_official(download)
    splits, source = load_python_archive(archive, sizes), f"CIFAR-10 ({archive.name})"
  return Dataset(*splits, *channel_stats(splits[0].images), source)


def fetch_official(tfds_download: bool = False) -> Path:
  """The official archive from the per-user cache, downloaded into it first if needed."""
  remote = download.REMOTES["cifar10"]
  try:
    return download.fetch(remote)
  except download.DownloadError as error:
    if has_tfds():
      tfds = "no prepared data set" + (" (and --download failed)" if tfds_download else "")
    else:
      tfds = "not installed"
    raise DataNotFoundError(OFFLINE_MESSAGE.format(
        tfds=tfds, local=DEFAULT_PATH, url=remote.url, cache=download.cache_dir(),
        error=error, advice=advice())) from None

