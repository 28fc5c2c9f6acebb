"""The accelerator evidence script runs end to end on tiny sizes (no timings checked)."""

import json
import os
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


def test_a_stage_over_its_time_is_stopped(tmp_path):
  """The sleeper is stopped (its process is gone, and it never reached its last line)."""
  pid_file, done_file = tmp_path / "pid", tmp_path / "done"
  sleeper = (f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
             f"time.sleep(60); open({str(done_file)!r}, 'w').write('slept')")
  status = evidence.run_processes(
      {"sleeper": [sys.executable, "-c", sleeper],
       "quick": [sys.executable, "-c", "pass"],
       "failing": [sys.executable, "-c", "raise SystemExit(3)"]},
      timeout_s=3, env=evidence.python_env())
  assert status == {"sleeper": "timed out", "quick": "ok", "failing": "exit 3"}
  assert not done_file.exists()
  with pytest.raises(ProcessLookupError):
    os.kill(int(pid_file.read_text()), 0)


def test_runs_cover_every_stage_once_most_important_first():
  order = [stage for stages, _ in evidence.RUNS.values() for stage in stages]
  assert sorted(order) == sorted(evidence.STAGE_NAMES)
  assert order[:2] == ["q1", "q3-resnet20"]  # Matrix methods and training-step ratios first.
  assert list(evidence.RUNS)[-1] == "4-table1"
  for run, (stages, budget) in evidence.RUNS.items():
    assert budget <= 240, run
    args = evidence.parse_args(["--run", run])
    assert args.stages == [s for s in evidence.STAGE_NAMES if s in stages]
    assert args.budget_s == budget
  assert "qdwh" in evidence.Q1_METHODS and "qdwh" in evidence.Q3_CONTENDERS


def test_an_archive_holds_only_what_its_run_wrote(tmp_path):
  old, new = tmp_path / "old.md", tmp_path / "sub" / "new.md"
  new.parent.mkdir()
  old.write_text("an earlier run's")
  new.write_text("this run's")
  os.utime(old, (1e9, 1e9))
  assert evidence.written_since(tmp_path, 1.5e9) == [new]


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
    (["--run", "1-methods", "--stages", "q1"], "not both"),
])
def test_bad_arguments(argv, message, capsys):
  with pytest.raises(SystemExit):
    evidence.parse_args(argv)
  assert message in capsys.readouterr().err
