"""Each benchmark runs end to end on its smallest sizes, so none rots (no timings checked)."""

import importlib
import sys

import pytest


@pytest.mark.parametrize("name", ["matrix_methods", "tree_update", "compile_time", "train_step"])
def test_benchmark_smoke(name, tmp_path, monkeypatch, capsys):
  module = importlib.import_module(f"benchmarks.{name}")
  monkeypatch.setattr(sys, "argv", [name, "--smoke", "--out", str(tmp_path)])
  module.main()
  assert (tmp_path / f"{name}.json").exists()
  table = (tmp_path / f"{name}.md").read_text()
  assert table.startswith("| ") and "jax" in table
  assert "| ---" in capsys.readouterr().out
