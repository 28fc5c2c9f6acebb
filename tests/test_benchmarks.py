"""Every benchmark runs end to end on its smallest sizes, so none rots (no timings checked)."""

import pytest

from benchmarks import suite

NAMES = ["matrix_methods", "tree_update", "train_step", "compile_time", "eigh_fallback",
         "gram_iterations", "distributed"]


@pytest.mark.slow
def test_suite_smoke(tmp_path, capsys):
  suite.main(["--smoke", "--out", str(tmp_path)])
  out = capsys.readouterr().out
  for name in NAMES:
    assert (tmp_path / f"{name}.json").exists(), name
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


def test_exact_structure_smoke(tmp_path):
  """Lowered for cuda, svd's update has an SVD solver call and qdwh's none; qdwh's solver calls
  are QR, Cholesky and the eigendecomposition of its drop step (no device needed)."""
  import json

  from benchmarks import exact_structure
  exact_structure.main(["--smoke", "--out", str(tmp_path)])
  rows = json.loads((tmp_path / "exact_structure.json").read_text())["rows"]
  by = {(r["platform"], r["method"]): r for r in rows}
  assert set(by) == {(p, m) for p in ("cuda", "tpu") for m in ("svd", "qdwh")}
  assert all(r["shape groups"] > 1 for r in rows)
  assert "gesvd" in by["cuda", "svd"]["targets"]
  assert "gesvd" not in by["cuda", "qdwh"]["targets"]
  assert "potrf" in by["cuda", "qdwh"]["targets"]
  assert by["cuda", "qdwh"]["while loops"] == 0
