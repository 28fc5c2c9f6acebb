"""The self-fetching data path against a real HTTP server on the loopback interface."""

import hashlib
import http.server
import threading

import pytest

from examples.lib import download

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
