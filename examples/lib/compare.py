"""Comparisons: several optimisers (or variants) and seeds on the same data, a table and a plot.

Every run of a comparison trains in `<workdir>/<label>/seed<k>/` (see `run_dir`), so rerunning a
comparison with the same workdir resumes each run. `results_table` is a markdown table of final
losses and accuracies, the best validation accuracy, the epochs to a target and the times (mean ±
std over seeds); `plot` draws validation accuracy and loss per epoch (the paper's Figs. 2-3).

A label is an optimiser's name, optionally with settings after `@`: `orthogonal-sgdm@mask=conv`
or `orthogonal-sgdm@rtol=0.01@method=svd` (`parse_label`); the example applies the settings to its
config with `examples.lib.config.replace_from_strings`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np


def parse_label(label: str) -> tuple[str, dict[str, str]]:
  """'orthogonal-sgdm@mask=conv@rtol=0.01' -> ('orthogonal-sgdm', {'mask': 'conv', 'rtol': '0.01'}).
  """
  name, *options = label.split("@")
  parsed = {}
  for option in options:
    key, _, value = option.partition("=")
    if not key or not value:
      raise ValueError(
          f"Bad option {option!r} in optimiser label {label!r}; write name@key=value, e.g. "
          "orthogonal-sgdm@mask=conv.")
    parsed[key] = value
  return name, parsed


def run_dir(workdir: Path, label: str, seed: int) -> Path:
  return workdir / label.replace("@", "_").replace("=", "-") / f"seed{seed}"


def history(records: list[dict]) -> dict:
  """Per-epoch records as columns, plus the run's wall time and mean step time."""
  columns = {key: [r[key] for r in records] for key in records[0] if key != "diagnostics"}
  if "diagnostics" in records[0]:
    columns["diagnostics"] = [r["diagnostics"] for r in records]
  compile_s = sum(c for c in columns["compile_s"] if c is not None)
  return {**columns, "wall_s": float(sum(columns["epoch_s"]) + compile_s),
          "mean_step_ms": float(np.mean(columns["step_ms"]))}


def run_comparison(
    labels: Sequence[str], seeds: Sequence[int], workdir: Path,
    train: Callable[[str, int, Path], list[dict]],
) -> dict[str, list[dict]]:
  """{label: [history per seed]}: `train(label, seed, run_dir)` once per label and seed, returning
  the run's per-epoch records."""
  return {label: [{"seed": seed, **history(train(label, seed, run_dir(workdir, label, seed)))}
                  for seed in seeds]
          for label in labels}


def epochs_to(accuracies: list[float], target: float) -> int | None:
  return next((epoch for epoch, a in enumerate(accuracies, 1) if a >= target), None)


def mean_std(values, fmt: str, scale: float = 1.0) -> str:
  values = scale * np.asarray(values, np.float64)
  if len(values) == 1:
    return format(values[0], fmt)
  return f"{format(values.mean(), fmt)} ± {format(values.std(ddof=1), fmt)}"


def epochs_cell(runs: list[dict], target: float) -> str:
  reached = [e for e in (epochs_to(r["val_accuracy"], target) for r in runs) if e is not None]
  if not reached:
    return "-"
  cell = mean_std(reached, ".1f" if len(reached) > 1 else ".0f")
  return cell if len(reached) == len(runs) else f"{cell} ({len(reached)}/{len(runs)} runs)"


def results_table(results: dict[str, list[dict]], target: float) -> str:
  """Markdown: final losses and accuracies, best validation accuracy, epochs to `target`, times;
  mean ± std (sample) over seeds when there are several."""
  lines = [
      "| optimiser | final train loss | test loss | test accuracy | best val accuracy "
      f"| epochs to {100 * target:g}% val | wall time (s) | step time (ms) |",
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for name, runs in results.items():
    cells = [
        mean_std([r["train_loss"][-1] for r in runs], ".4f"),
        mean_std([r["test_loss"][-1] for r in runs], ".4f"),
        mean_std([r["test_accuracy"][-1] for r in runs], ".2f", 100) + "%",
        mean_std([max(r["val_accuracy"]) for r in runs], ".2f", 100) + "%",
        epochs_cell(runs, target),
        mean_std([r["wall_s"] for r in runs], ".1f"),
        mean_std([r["mean_step_ms"] for r in runs], ".1f"),
    ]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(results: dict[str, list[dict]], path: Path) -> None:
  """Validation accuracy and loss per epoch, one line per optimiser (mean, band: ± std)."""
  from matplotlib.figure import Figure  # Figure.savefig draws with Agg: no pyplot, no display
  from matplotlib.ticker import MaxNLocator

  fig = Figure(figsize=(10, 4), layout="constrained")
  accuracy_ax, loss_ax = fig.subplots(1, 2)
  for name, runs in results.items():
    for ax, key, scale in ((accuracy_ax, "val_accuracy", 100), (loss_ax, "val_loss", 1)):
      values = scale * np.array([r[key] for r in runs])
      epochs = np.arange(1, values.shape[1] + 1)
      (line,) = ax.plot(epochs, values.mean(0), marker="o", markersize=3, label=name)
      if len(runs) > 1:
        spread = values.std(0, ddof=1)
        ax.fill_between(epochs, values.mean(0) - spread, values.mean(0) + spread,
                        color=line.get_color(), alpha=0.2)
  accuracy_ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy")
  loss_ax.set(xlabel="epoch", ylabel="validation loss", title="Validation loss")
  for ax in (accuracy_ax, loss_ax):
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
  fig.savefig(path, dpi=120)


def device_line() -> str:
  """The devices, jax's version and today's date, to print with every table."""
  device = jax.devices()[0]
  return (f"device: {jax.device_count()} x {device.device_kind}, jax {jax.__version__}, "
          f"{datetime.date.today().isoformat()}")
