"""Accelerator evidence in runs of at most about 4 minutes each, most important first.

    PYTHONPATH=. python -m benchmarks.accelerator_evidence --run 1-methods --archive F.tar.gz
    PYTHONPATH=. python -m benchmarks.accelerator_evidence --run 2-steps --archive F.tar.gz
    PYTHONPATH=. python -m benchmarks.accelerator_evidence --run 3-lm --lm-data input.txt ...
    PYTHONPATH=. python -m benchmarks.accelerator_evidence --run 4-table1 --data cifar10.npz ...
    python -m benchmarks.accelerator_evidence --smoke --out DIR --runs DIR   # CPU, tiny sizes

Made for a lent GPU (one H100/H200) that may stop answering mid-run: each `--run` is one short
device command with its own budget (`RUNS`, 240 s each), its own summary
(`evidence-RUN.md|json`) and, with `--archive`, its own small archive holding only what that run
wrote; a lost machine loses one run, not all. The runs, in order of importance:

1. `1-methods`: `q1`, the exact methods (svd, eigh, qdwh) and the matrix-product ones on the
   ResNet-20, ResNet-50 and transformer (widths 768 and 4096) shapes
   (`benchmarks.matrix_methods --large`); `q3-resnet20`: training-step time and compile time
   relative to SGDM, ResNet-20 at batch 1024, for auto, svd, eigh, qdwh, newton_schulz,
   polar_express and Muon (`benchmarks.train_step`).
2. `2-steps`: `q2`, the whole-tree update against the authors' per-leaf SVD loop and
   `optax.contrib.muon` (`benchmarks.tree_update`); `q3-resnet50`, as q3 at batch 256.
3. `3-lm`: the character-level GPT of `examples.shakespeare_char` (nanoGPT's CPU configuration,
   2,000 steps, one seed) with AdamW, optax's Muon and orthax's settings at the rates the CPU
   sweep chose (`LM_OPTIMIZERS`), and each optimiser's step time measured side by side;
   `--lm-data` names Tiny Shakespeare's `input.txt` (the device machine cannot download it).
4. `4-table1`: SGDM and Orthogonal-SGDM on ResNet-20 with the paper's protocol (batch 1024, lr
   1e-2, momentum 0.9, weight decay 5e-4, 100 epochs, crop + flip), started at once as two
   processes that share the device, each with `XLA_PYTHON_CLIENT_MEM_FRACTION` of its memory.
   Each run checkpoints every epoch, so the same command again resumes where its time limit
   stopped it.

Without `--run`, `--stages` and `--budget-s` choose stages freely (the summary is then
`evidence.md|json`). Each stage is its own process with its own time limit; a stage that runs
out of time is stopped and what it wrote stays. The benchmark stages write
`results/<device>/NAME.md|json` (device e.g. `nvidia-h200`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAPER_TABLE1_RESNET20 = {"sgdm": 79.14, "orthogonal-sgdm": 87.12}  # test accuracy, %
TABLE1_PROTOCOL = ["--model", "resnet20", "--epochs", "100", "--batch-size", "1024", "--lr", "1e-2",
                   "--momentum", "0.9", "--weight-decay", "5e-4", "--schedule", "constant",
                   "--seed", "0"]
TABLE1_SMOKE = ["--model", "basic_cnn", "--epochs", "2", "--batch-size", "16",
                "--eval-batch-size", "32", "--train-size", "64", "--validation-size", "32",
                "--test-size", "32", "--synthetic", "--seed", "0"]
Q3_CONTENDERS = ("sgdm,orthogonal-sgdm auto,orthogonal-sgdm svd,orthogonal-sgdm eigh,"
                 "orthogonal-sgdm qdwh,orthogonal-sgdm newton_schulz,"
                 "orthogonal-sgdm polar_express,muon")
Q1_METHODS = "svd,eigh,qdwh,newton_schulz,polar_express-5"


@dataclasses.dataclass(frozen=True)
class Stage:
  """One part of the evidence: a command, and at most how many seconds of the budget it may use.

  The last stage that runs gets whatever is left.
  """

  name: str
  module: str
  args: tuple[str, ...]
  cap_s: float
  smoke_args: tuple[str, ...] | None = ("--smoke", "--repeats", "1")  # None: not in --smoke


BENCHMARK_STAGES = (
    Stage("q1", "benchmarks.matrix_methods", ("--large", "--methods", Q1_METHODS, "--repeats", "3"),
          100),
    Stage("q2", "benchmarks.tree_update", ("--repeats", "3"), 75),
    Stage("q3-resnet20", "benchmarks.train_step",
          ("--models", "resnet20", "--contenders", Q3_CONTENDERS, "--repeats", "5"), 110),
    Stage("q3-resnet50", "benchmarks.train_step",
          ("--models", "resnet50", "--contenders", Q3_CONTENDERS, "--repeats", "3"), 120,
          smoke_args=None),  # --smoke runs the same tiny model as q3-resnet20's
)
STAGE_NAMES = tuple(s.name for s in BENCHMARK_STAGES) + ("lm", "table1")
# The learning rates are the CPU sweep's best (examples/shakespeare_char/README.md).
LM_OPTIMIZERS = ("adamw@lr=0.008,muon@lr=0.02,"
                 "orthax-muon@method=polar_express@layout=whole@lr=0.02,"
                 "orthogonal-adamw@method=svd@layout=whole@lr=0.008,"
                 "orthogonal-adamw@method=svd@layout=heads@lr=0.004")
LM_SMOKE = ["--synthetic", "--steps", "4", "--warmup-steps", "1", "--batch-size", "2",
            "--context", "8", "--layers", "1", "--width", "8", "--heads", "2", "--eval-every", "2",
            "--eval-windows", "4", "--time-steps", "2", "--sample-chars", "10"]
LM_CAP_S = 200
# The device runs, most important first: their stages and wall-time budgets (seconds).
RUNS = {
    "1-methods": (("q1", "q3-resnet20"), 240.0),
    "2-steps": (("q2", "q3-resnet50"), 240.0),
    "3-lm": (("lm",), 240.0),
    "4-table1": (("table1",), 240.0),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--run", choices=tuple(RUNS), default=None,
                 help="one of the device runs (sets --stages and --budget-s)")
  p.add_argument("--budget-s", type=float, default=None,
                 help="wall time for all stages (default: the run's, else 540)")
  p.add_argument("--stages", default=None,
                 help=f"comma-separated, from {', '.join(STAGE_NAMES)} (default: the run's, "
                      "else all)")
  p.add_argument("--data", default=None, help="cifar10_jpeg.npz for table1")
  p.add_argument("--lm-data", default=None, help="Tiny Shakespeare's input.txt for lm")
  p.add_argument("--memory-fraction", type=float, default=0.45,
                 help="XLA_PYTHON_CLIENT_MEM_FRACTION of each table1 process (default 0.45)")
  p.add_argument("--out", type=pathlib.Path, default=None,
                 help="results folder (default benchmarks/results/<device>)")
  p.add_argument("--runs", type=pathlib.Path, default=ROOT / "runs" / "accelerator_evidence",
                 help="table1's training folders (ignored by git; rerun to resume)")
  p.add_argument("--archive", type=pathlib.Path, default=None,
                 help="also pack results and the runs' metrics into this .tar.gz")
  p.add_argument("--smoke", action="store_true", help="tiny sizes on any backend (the test)")
  args = p.parse_args(argv)
  if args.run is not None and args.stages is not None:
    p.error("--run chooses the stages; give --run or --stages, not both")
  run_stages, run_budget = RUNS[args.run] if args.run else (STAGE_NAMES, 540.0)
  stages = args.stages.split(",") if args.stages else list(run_stages)
  args.budget_s = run_budget if args.budget_s is None else args.budget_s
  if unknown := set(stages) - set(STAGE_NAMES):
    p.error(f"unknown stages {sorted(unknown)}; choose from {', '.join(STAGE_NAMES)}")
  if not 0 < args.memory_fraction <= 0.5:
    p.error(f"--memory-fraction must be in (0, 0.5] so that both table1 runs fit, got "
            f"{args.memory_fraction}")
  args.stages = [s for s in STAGE_NAMES if s in stages]
  return args


def python_env(**extra: str) -> dict[str, str]:
  """The environment of a stage: the checkout importable, output unbuffered."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
  return env


def device_info() -> dict[str, str]:
  """Device, jax version and date, read in a child process: this process never holds the device
  (its default allocation would take memory that the stages need)."""
  code = ("import json; from benchmarks import common; import jax; e = common.environment(); "
          "e['kind'] = jax.devices()[0].device_kind; print(json.dumps(e))")
  out = subprocess.run([sys.executable, "-c", code], env=python_env(), check=True,
                       capture_output=True, text=True, cwd=ROOT).stdout
  return json.loads(out.strip().splitlines()[-1])


def slug(kind: str) -> str:
  return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-") or "device"


def run_processes(commands: dict[str, list[str]], timeout_s: float,
                  env: dict[str, str]) -> dict[str, str]:
  """Starts every command at once; stops those still running after `timeout_s`.

  Returns each command's status: 'ok', 'exit N' or 'timed out'. A stopped process gets SIGTERM,
  then SIGKILL after 10 s; each runs in its own process group, so its children go too.
  """
  procs = {name: subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
           for name, cmd in commands.items()}
  deadline = time.monotonic() + max(timeout_s, 0)
  status = {}
  for name, proc in procs.items():
    try:
      proc.wait(timeout=max(deadline - time.monotonic(), 0))
      status[name] = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
      status[name] = "timed out"
  for name, proc in procs.items():
    if status[name] == "timed out":
      os.killpg(proc.pid, signal.SIGTERM)
      try:
        proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
  return status


def read_metrics(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table1_rows(runs: pathlib.Path, epochs: int) -> list[dict]:
  """One row per optimiser from its metrics.jsonl: epochs done, final accuracies, epoch times."""
  rows = []
  for optimiser, paper in PAPER_TABLE1_RESNET20.items():
    paths = sorted((runs / optimiser).glob(f"**/{optimiser}/seed*/metrics.jsonl"))
    records = read_metrics(paths[0]) if paths else []
    row = {"optimiser": optimiser, "epochs": f"{len(records)} / {epochs}",
           "paper test accuracy %": paper}
    if records:
      last = records[-1]
      steady = [r["epoch_s"] for r in records[1:]] or [records[0]["epoch_s"]]
      row.update({
          "test accuracy %": 100 * last["test_accuracy"],
          "best val accuracy %": 100 * max(r["val_accuracy"] for r in records),
          "train loss": last["train_loss"],
          "epoch s": sum(steady) / len(steady),
          "step ms": sum(r["step_ms"] for r in records) / len(records),
          "first epoch s": records[0]["epoch_s"],
      })
    rows.append(row)
  return rows


def markdown_table(rows: list[dict]) -> str:
  columns = list(dict.fromkeys(k for row in rows for k in row))
  lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  for row in rows:
    cells = [row.get(c, "") for c in columns]
    lines.append("| " + " | ".join(f"{c:.4g}" if isinstance(c, float) else str(c)
                                   for c in cells) + " |")
  return "\n".join(lines)


def written_since(folder: pathlib.Path, since: float) -> list[pathlib.Path]:
  """The files under `folder` modified at or after `since` (a `time.time()`)."""
  return sorted(path for path in folder.glob("**/*")
                if path.is_file() and path.stat().st_mtime >= since)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  start = time.monotonic()
  started = time.time() - 1  # File times may be rounded to the second.
  env = device_info()
  out = args.out or RESULTS / slug(env["kind"])
  out.mkdir(parents=True, exist_ok=True)
  args.runs.mkdir(parents=True, exist_ok=True)
  print(f"device {env['device']}, jax {env['jax']}; results -> {out}", flush=True)
  summary: dict = {"environment": env, "budget_s": args.budget_s, "stages": [], "table1": []}
  planned = [s for s in BENCHMARK_STAGES if s.name in args.stages]
  later_caps = sum(s.cap_s for s in planned)

  def left() -> float:
    return args.budget_s - (time.monotonic() - start)

  def record(name: str, status: str, began: float) -> None:
    wall = time.monotonic() - began
    summary["stages"].append({"stage": name, "status": status, "wall s": round(wall, 1)})
    print(f"== {name}: {status} in {wall:.0f} s ({left():.0f} s of the budget left)", flush=True)

  for stage in planned:
    later_caps -= stage.cap_s
    # Leave table1 at least a third of the budget when it is to run.
    reserve = args.budget_s / 3 if "table1" in args.stages else later_caps
    timeout = min(stage.cap_s, left() - reserve) if not args.smoke else left()
    began = time.monotonic()
    if timeout <= 0:
      record(stage.name, "skipped (no budget left)", began)
      continue
    flags = stage.smoke_args if args.smoke else stage.args
    if flags is None:
      record(stage.name, "skipped (smoke)", began)
      continue
    command = [sys.executable, "-m", stage.module, *flags, "--out", str(out)]
    status = run_processes({stage.name: command}, timeout, python_env())[stage.name]
    record(stage.name, status, began)

  if "lm" in args.stages:
    began = time.monotonic()
    reserve = args.budget_s / 3 if "table1" in args.stages else 0.0
    timeout = left() if args.smoke else min(LM_CAP_S, left() - reserve)
    lm_args = LM_SMOKE if args.smoke else (
        ["--optimizers", LM_OPTIMIZERS, "--seeds", "0"]
        + ([] if args.lm_data is None else ["--data", str(args.lm_data)]))
    command = [sys.executable, "-m", "examples.shakespeare_char.main", *lm_args,
               "--workdir", str(args.runs / "lm")]
    if timeout <= 0:
      record("lm", "skipped (no budget left)", began)
    else:
      status = run_processes({"lm": command}, timeout, python_env())["lm"]
      record("lm", status, began)
      if (results := args.runs / "lm" / "results.json").exists():
        summary["lm"] = json.loads(results.read_text())

  if "table1" in args.stages:
    began = time.monotonic()
    protocol = TABLE1_SMOKE if args.smoke else TABLE1_PROTOCOL
    data = [] if args.smoke or args.data is None else ["--data", str(args.data)]
    commands = {
        name: [sys.executable, "-m", "examples.cifar10.main", *protocol, *data,
               "--optimizers", name, "--workdir", str(args.runs / name)]
        for name in PAPER_TABLE1_RESNET20}
    # The compilation cache makes a resumed run start at once; nothing here times compiles.
    table_env = python_env(XLA_PYTHON_CLIENT_MEM_FRACTION=str(args.memory_fraction),
                           JAX_COMPILATION_CACHE_DIR=str(args.runs / "jax_cache"))
    status = run_processes(commands, left(), table_env)
    record("table1", ", ".join(f"{k} {v}" for k, v in status.items()), began)
    epochs = int(protocol[protocol.index("--epochs") + 1])
    summary["table1"] = table1_rows(args.runs, epochs)

  parts = [f"# Accelerator evidence\n\n{env['device']}, host {env['host']}, jax {env['jax']}, "
           f"{env['date']}; budget {args.budget_s:.0f} s, used {time.monotonic() - start:.0f} s."
           "\n\nCommand: `python -m benchmarks.accelerator_evidence "
           + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
           "## Stages\n\n" + markdown_table(summary["stages"])]
  if summary["table1"]:
    parts.append("## Table 1, ResNet-20 (paper: batch 1024, lr 1e-2, momentum 0.9, weight decay "
                 "5e-4, 100 epochs; both runs shared the device)\n\n"
                 + markdown_table(summary["table1"]))
  if summary.get("lm"):
    lm = summary["lm"]
    parts.append(f"## Character-level GPT\n\n{lm['setting']}\n\n"
                 + "\n".join(f"- {label}: validation loss {runs[0]['val_loss'][-1]:.3f}, step "
                             f"{lm.get('step_ms', {}).get(label, float('nan')):.1f} ms"
                             for label, runs in lm["results"].items()))
  name = "evidence" if args.run is None else f"evidence-{args.run}"
  (out / f"{name}.md").write_text("\n\n".join(parts) + "\n")
  (out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
  print("\n\n".join(parts), flush=True)
  if args.archive:
    # Only what this run wrote: an earlier run's files are in that run's archive.
    with tarfile.open(args.archive, "w:gz") as tar:
      for path in written_since(out, started):
        tar.add(path, arcname=str(pathlib.Path("results") / path.relative_to(out)))
      for path in written_since(args.runs, started):
        if path.suffix in (".jsonl", ".json", ".png") and "jax_cache" not in path.parts:
          tar.add(path, arcname=str(pathlib.Path("runs") / path.relative_to(args.runs)))
    print(f"archive: {args.archive}")
  return 1 if any("exit" in s["status"] for s in summary["stages"]) else 0


if __name__ == "__main__":
  sys.exit(main())
