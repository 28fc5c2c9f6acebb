"""Every benchmark runs end to end on its smallest sizes, so none rots (no timings checked)."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import suite

ROOT = pathlib.Path(__file__).resolve().parent.parent

NAMES = ["matrix_methods", "tree_update", "train_step", "compile_time", "eigh_fallback",
         "gram_iterations", "distributed"]


@pytest.mark.slow
def test_suite_smoke(tmp_path, capsys):
  suite.main(["--smoke", "--out", str(tmp_path)])
  out = capsys.readouterr().out
  for name in NAMES:
    rows = json.loads((tmp_path / f"{name}.json").read_text())["rows"]
    assert rows, name
    for row in rows:
      # Every error the benchmark measured is a number (not NaN, inf or missing) and >= 0, and
      # every sharded update kept its parameters' shardings.
      for key, value in row.items():
        if any(word in key for word in ("err", "dist", "round-off", "diff")):
          assert isinstance(value, float) and math.isfinite(value) and value >= 0, (name, key)
      assert row.get("shardings kept", True) is True, (name, row)
    table = (tmp_path / f"{name}.md").read_text()
    assert table.startswith("| ") and "| ---" in table and "jax" in table, name
    assert f"{name}: " in out
  assert "suite wall time" in out


@pytest.mark.slow
def test_lm_gradients_smoke(tmp_path, capsys):
  from benchmarks import lm_gradients
  lm_gradients.main(["--smoke", "--out", str(tmp_path)])
  table = (tmp_path / "lm_gradients.md").read_text()
  for route in ("orthax auto", "LAPACK SVD per matrix", "Gram route, float64, one pass"):
    assert f"| {route}" in table, route
  assert "AdamW's training step" in table


@pytest.mark.slow
def test_qdwh_drop_precision_smoke(tmp_path):
  """Every route gives a finite error, and float64 is switched off again afterwards."""
  import json

  import jax

  from benchmarks import qdwh_drop_precision
  qdwh_drop_precision.main(["--smoke", "--out", str(tmp_path)])
  rows = json.loads((tmp_path / "qdwh_drop_precision.json").read_text())["rows"]
  assert len(rows) == 6
  assert all(math.isfinite(r["error, worst"]) for r in rows)
  assert not jax.config.jax_enable_x64


def test_exact_structure_smoke(tmp_path):
  """Lowered for cuda, svd's update has an SVD solver call and qdwh's none; qdwh's solver calls
  are Cholesky and the eigendecomposition of its drop step, no QR (no device needed)."""
  import json

  from benchmarks import exact_structure
  exact_structure.main(["--smoke", "--out", str(tmp_path)])
  rows = json.loads((tmp_path / "exact_structure.json").read_text())["rows"]
  by = {(r["platform"], r["method"]): r for r in rows}
  assert set(by) == {(p, m) for p in ("cuda", "tpu") for m in ("svd", "qdwh", "auto")}
  assert all(r["shape groups"] > 1 for r in rows)
  assert "gesvd" in by["cuda", "svd"]["targets"]
  assert "gesvd" not in by["cuda", "qdwh"]["targets"]
  assert "potrf" in by["cuda", "qdwh"]["targets"]
  assert "geqrf" not in by["cuda", "qdwh"]["targets"]
  assert "orgqr" not in by["cuda", "qdwh"]["targets"]
  assert by["cuda", "qdwh"]["while loops"] == 0
  for platform in ("cuda", "tpu"):  # The default is qdwh there (`polar.AUTO_RULES`).
    assert by[platform, "auto"]["targets"] == by[platform, "qdwh"]["targets"]


@pytest.mark.slow  # 35 s (22 s of CPU) to 67 s on the shared 2-core machine
def test_communication_smoke(tmp_path):
  """benchmarks.communication on 8 simulated devices (a fresh jax process), smallest tree: the
  counts that docs/multihost.md quotes hold in its JSON."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "PYTHONPATH": str(ROOT)}
  result = subprocess.run(
      [sys.executable, "-m", "benchmarks.communication", "--smoke", "--out", str(tmp_path)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  data = json.loads((tmp_path / "communication.json").read_text())
  assert data["environment"]["device"] == "cpu: cpu x8" and data["environment"]["jax"]
  assert "benchmarks.communication" in data["command"]
  rows = {(r["axes"], r["update"]): r for r in data["rows"]}
  for axes in ("auto", "explicit"):
    bound = rows[(axes, "lower bound (one owner per matrix)")]["MB / device"]
    default = rows[(axes, "orthax svd (default)")]
    assert default["all-gather"] == default["collectives"] == 48  # one per kernel
    assert default["MB / device"] == pytest.approx(4 * bound)  # each device gathers 7/8 of all
    split = rows[(axes, "orthax svd, mesh=")]
    assert split["collectives"] < rows[("auto", "optax.contrib.muon")]["collectives"]
  # Explicit axes: each matrix to its device and back, two all-to-alls per shape group.
  split = rows[("explicit", "orthax svd, mesh=")]
  assert split["all-to-all"] == split["collectives"] == 6
  baseline = rows[("explicit", "stack-axis resharding (MaxText)")]
  assert split["collectives"] <= baseline["collectives"]
  assert split["MB / device"] <= 1.2 * bound


def test_cnn_gradients_smoke(tmp_path):
  """Every kernel gets a row whose methods agree with each other to float32 round-off (the
  smoke's gradients are well conditioned), and the timing table has SGDM's step as its unit."""
  from benchmarks import cnn_gradients
  cnn_gradients.main(["--smoke", "--out", str(tmp_path)])
  rows = json.loads((tmp_path / "cnn_gradients_basic_cnn.json").read_text())["rows"]
  assert [r["matrix"] for r in rows] == ["32 x 27", "288 x 32", "288 x 32", "512 x 10"]
  for row in rows:
    assert {row["auto picks"]} <= {"svd", "eigh"}
    # float32 polar factor: distance to float64 within 100 eps x condition number.
    bound = 100 * 2.0**-23 * row["condition number (kept)"]
    assert max(row[f"dist {m}"] for m in cnn_gradients.METHODS) < bound, row
  timing = json.loads((tmp_path / "cnn_gradients_basic_cnn_times.json").read_text())["rows"]
  assert timing[0] == {"timed": "sgdm step", "ms": timing[0]["ms"], "vs sgdm step": 1.0}
