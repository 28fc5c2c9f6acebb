"""Data sets that fetch themselves: downloaded once, checked against a checksum, cached per user.

`fetch(remote)` returns the path of a verified local file: from the cache if it is there, else
downloaded from `remote.url` with a progress bar. The file is written under a temporary name in
the cache folder and renamed only once its checksum matches, so an interrupted or corrupt
download leaves nothing behind, and the next call simply tries again.

The cache folder is `$ORTHAX_DATA_CACHE`, else `$XDG_CACHE_HOME/orthax`, else `~/.cache/orthax`.
`tiny_shakespeare()` applies the data rules of the examples (CIFAR-10's too: `cifar10.load`) to
the language-modelling corpus: a named file, tensorflow-datasets, the local copy, the download.

    >>> sorted(REMOTES)
    ['cifar10', 'tiny_shakespeare']
    >>> REMOTES["cifar10"].checksum
    'md5:c58f30108f718f92721af3b95e74349a'
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

CHUNK = 1 << 20
LOCAL_COPIES = Path(__file__).resolve().parents[3] / "shared" / "data"


class Remote(NamedTuple):
  """A file on the internet and the checksum that identifies it ('md5:...' or 'sha256:...')."""

  name: str
  url: str
  filename: str
  checksum: str


REMOTES = {
    # The official "CIFAR-10 python version" archive and the md5 published beside it.
    "cifar10": Remote("CIFAR-10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "cifar-10-python.tar.gz", "md5:c58f30108f718f92721af3b95e74349a"),
    # char-rnn's input.txt, the text tensorflow-datasets and nanoGPT use (1,115,394 characters).
    "tiny_shakespeare": Remote(
        "Tiny Shakespeare",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "tinyshakespeare.txt",
        "sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
}


class DownloadError(OSError):
  """A download failed or did not match its checksum; nothing was cached."""


def cache_dir() -> Path:
  """`$ORTHAX_DATA_CACHE`, else `$XDG_CACHE_HOME/orthax`, else `~/.cache/orthax`."""
  if path := os.environ.get("ORTHAX_DATA_CACHE"):
    return Path(path)
  return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "orthax"


def _hasher(checksum: str):
  algorithm, _, digest = checksum.partition(":")
  if algorithm not in ("md5", "sha256") or not digest:
    raise ValueError(f"A checksum is 'md5:HEX' or 'sha256:HEX', got {checksum!r}.")
  return hashlib.new(algorithm), digest.lower()


def file_checksum_matches(path: Path, checksum: str) -> bool:
  hasher, digest = _hasher(checksum)
  with path.open("rb") as f:
    while chunk := f.read(CHUNK):
      hasher.update(chunk)
  return hasher.hexdigest() == digest


def cached(remote: Remote, directory: Path | None = None) -> Path | None:
  """The verified cached copy of `remote`, or None (a copy that fails its checksum is removed)."""
  path = (directory or cache_dir()) / remote.filename
  if not path.is_file():
    return None
  if file_checksum_matches(path, remote.checksum):
    return path
  path.unlink()
  return None


def fetch(remote: Remote, directory: Path | None = None, *, progress: bool = True,
          timeout: float = 60.0) -> Path:
  """The path of a verified local copy of `remote`, downloading it into the cache if needed.

  Raises:
    DownloadError: the download failed (no network, connection dropped) or its checksum did not
      match; the message names the URL, and nothing is left in the cache.
  """
  directory = directory or cache_dir()
  if path := cached(remote, directory):
    return path
  directory.mkdir(parents=True, exist_ok=True)
  hasher, digest = _hasher(remote.checksum)
  fd, partial = tempfile.mkstemp(dir=directory, prefix=f".{remote.filename}.", suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out:
      try:
        with urllib.request.urlopen(remote.url, timeout=timeout) as response:
          total = int(response.headers.get("Content-Length") or 0) or None
          received = _copy(response, out, hasher, total, remote, progress)
      except DownloadError:
        raise
      except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise DownloadError(f"Could not download {remote.name} from {remote.url}: {reason}") \
            from error
    if total is not None and received != total:
      raise DownloadError(
          f"The download of {remote.name} from {remote.url} stopped after {received} of "
          f"{total} bytes; nothing was cached. Run again to retry.")
    if hasher.hexdigest() != digest:
      raise DownloadError(
          f"{remote.name} from {remote.url} does not match its checksum ({remote.checksum}, got "
          f"{hasher.name}:{hasher.hexdigest()}); nothing was cached. Run again to retry, or "
          "fetch the file yourself and point the example at it.")
    final = directory / remote.filename
    os.replace(partial, final)
    return final
  finally:
    if os.path.exists(partial):
      os.unlink(partial)


def _copy(response, out, hasher, total: int | None, remote: Remote, progress: bool) -> int:
  from tqdm.auto import tqdm

  received = 0
  with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {remote.name}",
            disable=not progress) as bar:
    while True:
      try:
        chunk = response.read(CHUNK)
      except Exception as error:  # http.client.IncompleteRead and friends: a dropped connection
        raise DownloadError(
            f"The download of {remote.name} from {remote.url} broke off after {received} bytes "
            f"({error!r}); nothing was cached. Run again to retry.") from error
      if not chunk:
        return received
      out.write(chunk)
      hasher.update(chunk)
      received += len(chunk)
      bar.update(len(chunk))


def tiny_shakespeare(path: str | os.PathLike | None = None, *, progress: bool = True) -> str:
  """The Tiny Shakespeare corpus (1,115,394 characters of char-rnn's `input.txt`) as one string.

  Sources, in this order: `path`, else the file named by `$ORTHAX_TINY_SHAKESPEARE` (either must
  exist); tensorflow-datasets' `tiny_shakespeare` when tensorflow-datasets is importable and the
  data set is prepared (its train, validation and test texts are consecutive parts of the file);
  the local copy `<repo>/../shared/data/tinyshakespeare/input.txt`; the cached download.

  Raises:
    FileNotFoundError: a named file is missing, or nothing was found and the download failed;
      the message says what was tried and how to name a copy.
  """
  named = path or os.environ.get("ORTHAX_TINY_SHAKESPEARE")
  if named:
    if not Path(named).is_file():
      raise FileNotFoundError(
          f"No Tiny Shakespeare text at {named}; name a copy of input.txt with --data or "
          "$ORTHAX_TINY_SHAKESPEARE, or leave both unset to use the local copy or the download.")
    return Path(named).read_text(encoding="utf-8")
  if (text := _tfds_tiny_shakespeare()) is not None:
    return text
  local = LOCAL_COPIES / "tinyshakespeare" / "input.txt"
  if local.is_file():
    return local.read_text(encoding="utf-8")
  remote = REMOTES["tiny_shakespeare"]
  try:
    return fetch(remote, progress=progress).read_text(encoding="utf-8")
  except DownloadError as error:
    raise FileNotFoundError(
        f"No Tiny Shakespeare text found: no --data or $ORTHAX_TINY_SHAKESPEARE, no prepared "
        f"tensorflow-datasets tiny_shakespeare, no local copy at {local}, and the download into "
        f"{cache_dir()} failed ({error}). Run again where the machine has internet access, or "
        "name a copy of input.txt with --data or $ORTHAX_TINY_SHAKESPEARE.") from None


def _tfds_tiny_shakespeare() -> str | None:
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    return None
  builder = tfds.builder("tiny_shakespeare")
  if not builder.is_prepared():
    return None
  parts = []
  for split in ("train", "validation", "test"):
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      parts.append(example["text"].decode("utf-8"))
  return "".join(parts)
