"""Every benchmark runs end to end on its smallest sizes, so none rots (no timings checked)."""

import json
import math

import pytest

from benchmarks import suite

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
