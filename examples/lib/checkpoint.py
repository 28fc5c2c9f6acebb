"""Checkpoints and exact resume: orbax checkpoints of the train state, config.json, metrics.jsonl.

A run's workdir holds `config.json` (the run's settings), `metrics.jsonl` (one JSON line per
epoch) and `checkpoints/` (params, batch_stats, opt_state, step, epoch, rng of the last two
epochs). `resume` restores the latest checkpoint and keeps the metrics up to its epoch, so a run
stopped at any point continues where its last checkpoint left it; it refuses a checkpoint made
under other settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

# Settings that may differ when a run is resumed: more epochs, a moved data file, diagnostics,
# and what only the comparison around the run reads.
RESUMABLE_CHANGES = ("epochs", "data", "download", "diagnostics", "target", "workdir", "multihost")


def read_metrics(workdir: Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(workdir: Path, records: list[dict]) -> None:
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def append_metrics(workdir: Path, record: dict) -> None:
  with (workdir / "metrics.jsonl").open("a") as f:
    f.write(json.dumps(record) + "\n")


def check_resumable(settings: dict, workdir: Path) -> None:
  """Refuses to resume a checkpoint made under other settings (other than RESUMABLE_CHANGES)."""
  path = workdir / "config.json"
  if path.is_file():
    saved = json.loads(path.read_text())
    changed = sorted(k for k in settings.keys() - set(RESUMABLE_CHANGES)
                     if saved.get(k) != settings[k])
    if changed:
      raise ValueError(
          f"{workdir} holds a checkpoint of a run with other settings ({', '.join(changed)}: "
          f"{[saved.get(k) for k in changed]} there, {[settings[k] for k in changed]} now); use "
          "another workdir, or delete this one to start afresh.")


def checkpoint_manager(workdir: Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      workdir.absolute() / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def checkpoint_items(state: Any, epoch: int) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state, "step": state.step, "epoch": epoch,
          "rng": jax.random.key_data(state.rng)}


def save_checkpoint(manager: ocp.CheckpointManager, state: Any, epoch: int) -> None:
  manager.save(epoch, args=ocp.args.StandardSave(checkpoint_items(state, epoch)))


def restore_checkpoint(manager: ocp.CheckpointManager, state: Any) -> tuple[Any, int]:
  """The latest checkpoint restored into `state`'s structure and sharding, and its epoch (0 if
  there is none)."""
  latest = manager.latest_step()
  if latest is None:
    return state, 0
  items = manager.restore(latest, args=ocp.args.StandardRestore(checkpoint_items(state, latest)))
  state = state.replace(
      params=items["params"], batch_stats=items["batch_stats"], opt_state=items["opt_state"],
      step=items["step"], rng=jax.random.wrap_key_data(items["rng"]))
  return state, int(items["epoch"])


def resume(settings: dict, workdir: Path, manager: ocp.CheckpointManager | None, state: Any):
  """`state` from the latest checkpoint (if any), its epoch, and the metrics up to that epoch;
  writes `settings` to config.json."""
  epoch = 0
  if manager is not None and manager.latest_step() is not None:
    check_resumable(settings, workdir)
    state, epoch = restore_checkpoint(manager, state)
  records = [r for r in read_metrics(workdir) if r["epoch"] <= epoch]
  if jax.process_index() == 0:  # one writer when several hosts share the workdir
    (workdir / "config.json").write_text(json.dumps(settings, indent=2) + "\n")
    write_metrics(workdir, records)
  return state, epoch, records
