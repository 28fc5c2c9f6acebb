"""The accelerator evidence script runs end to end on tiny sizes (no timings checked)."""

import json
import sys
import tarfile

import pytest

from benchmarks import accelerator_evidence as evidence

pytestmark = pytest.mark.slow  # subprocesses that each start jax and compile small models


def test_smoke_writes_every_stage_and_the_table1_rows(tmp_path):
  out, runs, archive = tmp_path / "out", tmp_path / "runs", tmp_path / "evidence.tar.gz"
  # q2 and q3 run the same modules' smoke as tests/test_benchmarks.py; one benchmark stage
  # exercises the stage plumbing here.
  rc = evidence.main(["--smoke", "--stages", "q1,table1,lm", "--out", str(out), "--runs",
                      str(runs), "--archive", str(archive)])
  assert rc == 0
  summary = json.loads((out / "evidence.json").read_text())
  status = {s["stage"]: s["status"] for s in summary["stages"]}
  assert status == {"q1": "ok", "table1": "sgdm ok, orthogonal-sgdm ok", "lm": "ok"}
  assert list(summary["lm"]["results"]) == ["adamw", "muon"]  # the example's defaults
  assert "## Character-level GPT" in (out / "evidence.md").read_text()
  assert (out / "matrix_methods.md").read_text().startswith("| ")
  rows = {r["optimiser"]: r for r in summary["table1"]}
  assert set(rows) == {"sgdm", "orthogonal-sgdm"}
  for row in rows.values():
    assert row["epochs"] == "2 / 2"
    assert 0 <= row["test accuracy %"] <= 100 and row["epoch s"] > 0 and row["step ms"] > 0
  # The two runs started from the same initialisation but took different steps.
  assert rows["sgdm"]["train loss"] != rows["orthogonal-sgdm"]["train loss"]
  assert "## Table 1, ResNet-20" in (out / "evidence.md").read_text()
  with tarfile.open(archive) as tar:
    names = tar.getnames()
  assert "results/evidence.md" in names and "results/matrix_methods.json" in names
  assert sum(n.endswith("metrics.jsonl") for n in names) == 2
  assert "runs/lm/results.json" in names and "runs/lm/curves.png" in names


def test_a_stage_over_its_time_is_stopped():
  """The outcome, not the elapsed time: the sleeper, which would finish "ok" after 60 s, is
  recorded as timed out, and the other stages are unaffected."""
  status = evidence.run_processes(
      {"sleeper": [sys.executable, "-c", "import time; time.sleep(60)"],
       "quick": [sys.executable, "-c", "pass"],
       "failing": [sys.executable, "-c", "raise SystemExit(3)"]},
      timeout_s=3, env=evidence.python_env())
  assert status == {"sleeper": "timed out", "quick": "ok", "failing": "exit 3"}


def test_table1_rows_of_a_partial_run(tmp_path):
  """A run stopped by its time limit reports the epochs it finished (the rest resume later)."""
  run = tmp_path / "sgdm" / "table1" / "sgdm" / "seed0"
  run.mkdir(parents=True)
  records = [{"epoch_s": 9.0, "step_ms": 5.0, "test_accuracy": 0.5, "val_accuracy": 0.52,
              "train_loss": 1.5},
             {"epoch_s": 3.0, "step_ms": 4.0, "test_accuracy": 0.6, "val_accuracy": 0.58,
              "train_loss": 1.2}]
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  rows = {r["optimiser"]: r for r in evidence.table1_rows(tmp_path, 100)}
  assert rows["sgdm"]["epochs"] == "2 / 100"
  assert rows["sgdm"]["test accuracy %"] == pytest.approx(60.0)
  assert rows["sgdm"]["best val accuracy %"] == pytest.approx(58.0)
  assert rows["sgdm"]["epoch s"] == 3.0 and rows["sgdm"]["first epoch s"] == 9.0
  assert rows["orthogonal-sgdm"]["epochs"] == "0 / 100"
  assert "test accuracy %" not in rows["orthogonal-sgdm"]


@pytest.mark.parametrize("argv, message", [
    (["--stages", "q1,nope"], "unknown stages"),
    (["--memory-fraction", "0.8"], "memory-fraction"),
])
def test_bad_arguments(argv, message, capsys):
  with pytest.raises(SystemExit):
    evidence.parse_args(argv)
  assert message in capsys.readouterr().err
