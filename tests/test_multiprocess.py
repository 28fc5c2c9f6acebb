"""orthax under JAX's multi-process runtime: 2 processes x 2 CPU devices, one global mesh."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

from tests import multiprocess_checks

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROCESSES = 2
TIMEOUT_S = 240  # the checks take seconds; this only stops a hung collective


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.multidevice
def test_two_processes_match_numpy_keep_shardings_and_checkpoint(tmp_path):
  """Runs tests/multiprocess_checks.py as 2 jax processes on localhost (see its docstring)."""
  pytest.importorskip("orbax.checkpoint")  # installed with the examples extra, as `make test` does
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
  port = free_port()
  logs = [tmp_path / f"process{i}.log" for i in range(PROCESSES)]
  procs = []
  try:
    for i, log in enumerate(logs):
      with open(log, "w") as out:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.multiprocess_checks", "--process-id", str(i),
             "--processes", str(PROCESSES), "--port", str(port), "--workdir", str(tmp_path)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
      if any(p.poll() not in (None, 0) for p in procs):
        break  # one failed: the other would wait for it until the timeout
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  text = "\n".join(f"--- process {i} (exit {p.returncode}):\n" + log.read_text()[-5000:]
                   for i, (p, log) in enumerate(zip(procs, logs, strict=True)))
  if any(p.returncode == multiprocess_checks.SKIP for p in procs):
    reason = next(line for log in logs for line in log.read_text().splitlines()
                  if line.startswith("SKIP"))
    pytest.skip(reason)
  assert all(p.returncode == 0 for p in procs), text
  for i, log in enumerate(logs):
    assert f"process {i}: {6 * multiprocess_checks.STEPS} steps checked" in log.read_text(), text
