"""The self-fetching data path against a real HTTP server on the loopback interface."""

import hashlib
import http.server
import threading

import pytest

from examples.lib import download

pytestmark = pytest.mark.examples

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: several reads of the copy loop


class Handler(http.server.BaseHTTPRequestHandler):
  def do_GET(self):  # noqa: N802 (http.server's name)
    self.server.requests += 1
    body = self.server.body
    self.send_response(200)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if self.path.endswith("/drop"):  # Promise the whole body, send half, hang up.
      self.wfile.write(body[: len(body) // 2])
      self.wfile.flush()
      self.connection.close()
      return
    self.wfile.write(body)

  def log_message(self, *args):
    pass


@pytest.fixture
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  httpd.body, httpd.requests = PAYLOAD, 0
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield httpd
  httpd.shutdown()
  httpd.server_close()


def remote(server, path="/file.bin", body=PAYLOAD, algorithm="sha256"):
  digest = hashlib.new(algorithm, body).hexdigest()
  host, port = server.server_address
  return download.Remote("test data", f"http://{host}:{port}{path}", "file.bin",
                         f"{algorithm}:{digest}")


def test_download_is_verified_cached_and_read_back_offline(server, tmp_path):
  spec = remote(server, algorithm="md5")
  path = download.fetch(spec, tmp_path, progress=False)
  assert path == tmp_path / "file.bin" and path.read_bytes() == PAYLOAD
  assert server.requests == 1
  server.shutdown()
  server.server_close()  # No network from here on.
  assert download.fetch(spec, tmp_path, progress=False) == path
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]


def test_wrong_checksum_fails_and_caches_nothing(server, tmp_path):
  spec = remote(server)._replace(checksum="sha256:" + "0" * 64)
  with pytest.raises(download.DownloadError, match="does not match its checksum"):
    download.fetch(spec, tmp_path, progress=False)
  assert list(tmp_path.iterdir()) == []


def test_dropped_connection_leaves_no_partial_file(server, tmp_path):
  spec = remote(server, path="/drop")
  with pytest.raises(download.DownloadError, match="test data"):
    download.fetch(spec, tmp_path, progress=False)
  assert list(tmp_path.iterdir()) == []
  # The next call tries again, and succeeds once the server sends everything.
  assert download.fetch(remote(server), tmp_path, progress=False).read_bytes() == PAYLOAD


def test_offline_error_names_the_url(tmp_path):
  spec = download.Remote("test data", "http://127.0.0.1:9/nothing", "file.bin",
                         "sha256:" + "0" * 64)
  with pytest.raises(download.DownloadError, match="http://127.0.0.1:9/nothing"):
    download.fetch(spec, tmp_path, progress=False, timeout=5)
  assert list(tmp_path.iterdir()) == []


def test_corrupt_cached_copy_is_replaced(server, tmp_path):
  spec = remote(server)
  (tmp_path / "file.bin").write_bytes(b"truncated")
  assert download.fetch(spec, tmp_path, progress=False).read_bytes() == PAYLOAD
  assert server.requests == 1


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("ORTHAX_DATA_CACHE", str(tmp_path / "mine"))
  assert download.cache_dir() == tmp_path / "mine"
  monkeypatch.delenv("ORTHAX_DATA_CACHE")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert download.cache_dir() == tmp_path / "xdg" / "orthax"


def test_tiny_shakespeare_checksum_matches_the_local_copy():
  import pathlib
  local = pathlib.Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"
  if not local.is_file():
    pytest.skip("no local Tiny Shakespeare copy beside the checkout")
  assert download.file_checksum_matches(local, download.REMOTES["tiny_shakespeare"].checksum)


# CIFAR-10 through the whole loader: the official archive's format, served from the loopback.

def official_archive(path, per_batch=3, test=4):
  """A miniature cifar-10-python.tar.gz: image k is k + 3 c in channel c of every pixel."""
  import io
  import pickle
  import tarfile

  import numpy as np

  def batch(start, n):
    images = np.zeros((n, 3, 32, 32), np.uint8)
    for k in range(n):
      for c in range(3):
        images[k, c] = start + k + 3 * c
    return {b"data": images.reshape(n, 3072), b"labels": [(start + k) % 10 for k in range(n)]}

  names = [(f"data_batch_{i}", batch(per_batch * (i - 1), per_batch)) for i in range(1, 6)]
  names.append(("test_batch", batch(100, test)))
  with tarfile.open(path, "w:gz") as tar:
    for name, content in names:
      blob = pickle.dumps(content)
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return path.read_bytes()


@pytest.fixture
def cifar_sources(monkeypatch, tmp_path):
  """No --data, no $ORTHAX_CIFAR10, no tensorflow-datasets, no local copy; a private cache."""
  import sys

  from examples.lib import cifar10
  monkeypatch.delenv("ORTHAX_CIFAR10", raising=False)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  monkeypatch.setattr(cifar10, "DEFAULT_PATH", tmp_path / "absent" / "cifar10_jpeg.npz")
  monkeypatch.setenv("ORTHAX_DATA_CACHE", str(tmp_path / "cache"))
  return cifar10


def test_cifar10_downloads_the_official_archive_once(server, tmp_path, monkeypatch,
                                                     cifar_sources):
  import numpy as np

  server.body = official_archive(tmp_path / "served.tar.gz")
  spec = remote(server, path="/cifar-10-python.tar.gz", body=server.body, algorithm="md5")
  monkeypatch.setitem(download.REMOTES, "cifar10",
                      spec._replace(filename="cifar-10-python.tar.gz"))
  dataset = cifar_sources.load()
  assert dataset.source == "CIFAR-10 (cifar-10-python.tar.gz)"
  # 15 training images split 13 / 2 by the fixed permutation; 4 test images.
  train_idx, val_idx = cifar_sources.split_indices(15)
  for split, indices in ((dataset.train, train_idx), (dataset.validation, val_idx),
                         (dataset.test, 100 + np.arange(4))):
    assert split.images.shape == (len(indices), 32, 32, 3) and split.images.dtype == np.uint8
    for c in range(3):  # channel-major rows became channels-last pixels
      np.testing.assert_array_equal(split.images[:, 5, 7, c], indices + 3 * c)
    np.testing.assert_array_equal(split.labels, indices % 10)
  assert (tmp_path / "cache" / "cifar-10-python.tar.gz").is_file() and server.requests == 1
  server.shutdown()
  server.server_close()
  again = cifar_sources.load(train_size=5)  # from the cache, without the network
  np.testing.assert_array_equal(again.train.images, dataset.train.images[:5])


def test_cifar10_offline_says_what_it_tried_and_exits_2(tmp_path, monkeypatch, cifar_sources,
                                                       capsys):
  monkeypatch.setitem(download.REMOTES, "cifar10", download.Remote(
      "CIFAR-10", "http://127.0.0.1:9/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
      "md5:" + "0" * 32))
  with pytest.raises(cifar_sources.DataNotFoundError) as error:
    cifar_sources.load()
  message = str(error.value)
  for option in ("--data", "ORTHAX_CIFAR10", "--synthetic", "ORTHAX_DATA_CACHE",
                 "http://127.0.0.1:9/", "not installed", "absent"):
    assert option in message, option
  assert "--download" not in message  # it needs tensorflow-datasets, which is not installed
  assert not (tmp_path / "cache").exists() or list((tmp_path / "cache").iterdir()) == []

  from examples.cifar10 import main
  assert main.main(["--epochs", "1", "--workdir", str(tmp_path / "run")]) == 2
  assert "downloading it failed" in capsys.readouterr().err


# Tiny Shakespeare through the same rules.

@pytest.fixture
def text_sources(monkeypatch, tmp_path):
  """No named file, no tensorflow-datasets, no local copy; a private cache."""
  import sys
  monkeypatch.delenv("ORTHAX_TINY_SHAKESPEARE", raising=False)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  monkeypatch.setattr(download, "LOCAL_COPIES", tmp_path / "absent")
  monkeypatch.setenv("ORTHAX_DATA_CACHE", str(tmp_path / "cache"))


def test_tiny_shakespeare_downloads_once_then_reads_the_cache(server, monkeypatch, text_sources):
  text = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 100
  server.body = text.encode()
  spec = remote(server, path="/input.txt", body=server.body)
  monkeypatch.setitem(download.REMOTES, "tiny_shakespeare", spec._replace(filename="input.txt"))
  assert download.tiny_shakespeare(progress=False) == text
  server.shutdown()
  server.server_close()
  assert download.tiny_shakespeare(progress=False) == text and server.requests == 1


def test_tiny_shakespeare_offline_says_what_it_tried(monkeypatch, text_sources):
  monkeypatch.setitem(download.REMOTES, "tiny_shakespeare", download.Remote(
      "Tiny Shakespeare", "http://127.0.0.1:9/input.txt", "input.txt", "sha256:" + "0" * 64))
  with pytest.raises(FileNotFoundError) as error:
    download.tiny_shakespeare(progress=False)
  for part in ("ORTHAX_TINY_SHAKESPEARE", "tensorflow-datasets", "local copy", "127.0.0.1:9"):
    assert part in str(error.value), part


def test_tiny_shakespeare_prefers_a_named_file_then_tfds(monkeypatch, tmp_path, text_sources):
  import sys

  import numpy as np
  named = tmp_path / "mine.txt"
  named.write_text("to be")
  assert download.tiny_shakespeare(named) == "to be"
  with pytest.raises(FileNotFoundError, match="ORTHAX_TINY_SHAKESPEARE"):
    download.tiny_shakespeare(tmp_path / "missing.txt")

  class Builder:  # tensorflow-datasets' tiny_shakespeare in miniature: three consecutive parts
    def is_prepared(self):
      return True

    def as_dataset(self, split):
      return [{"text": np.bytes_({"train": b"ab", "validation": b"cd", "test": b"ef"}[split])}]

  module = type(sys)("tensorflow_datasets")
  module.builder = lambda name: Builder() if name == "tiny_shakespeare" else None
  module.as_numpy = lambda dataset: dataset
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
  assert download.tiny_shakespeare() == "abcdef"
