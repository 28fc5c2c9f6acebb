"""Comparisons: several optimisers (or variants) and seeds on the same data, a table and a plot.

Every example's comparison runs here: `run_comparison` trains each label of `config.optimizers`
once per seed, each in `<workdir>/<label>/seed<k>/` (`run_dir`), so rerunning a comparison with
the same workdir resumes each run; `report` prints the markdown table (`results_table`, made of
the example's `Column`s), the setting and `device_line`, draws the plot (`plot`, the example's
`Panel`s) and writes `results.json`, once.

A label is an optimiser's name, optionally with settings after `@`: `orthogonal-sgdm@mask=conv`
or `orthogonal-sgdm@rtol=0.01@method=svd` (`parse_label`); `run_config` applies them to the
example's config.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from examples.lib.config import json_values, replace_from_strings


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


def run_config(config: Any, label: str, seed: int) -> Any:
  """The one-run config of `label` (an optimiser with its own settings, `name@field=value...`)
  and `seed` in comparison `config` (a dataclass with `optimizers` and `seeds`)."""
  name, options = parse_label(label)
  run = config.run(name, seeds=(seed,))
  try:
    return replace_from_strings(run, options)
  except ValueError as error:
    raise ValueError(f"In optimiser label {label!r}: {error}") from None


def default_workdir(root: str) -> Path:
  """`root/<date>-<time>`: a fresh directory name for a comparison given no --workdir."""
  return Path(root) / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def run_dir(workdir: Path, label: str, seed: int) -> Path:
  return workdir / label.replace("@", "_").replace("=", "-") / f"seed{seed}"


def history(records: list[dict]) -> dict:
  """Per-epoch records as columns (None in the epochs that lack a key, e.g. a k-NN evaluation made
  every few epochs), plus the run's wall time and mean step time."""
  keys = list(dict.fromkeys(key for r in records for key in r))
  columns = {key: [r.get(key) for r in records] for key in keys}
  compile_s = sum(c for c in columns["compile_s"] if c is not None)
  return {**columns, "wall_s": float(sum(columns["epoch_s"]) + compile_s),
          "mean_step_ms": float(np.mean(columns["step_ms"]))}


def run_comparison(
    config: Any, workdir: Path, train: Callable[[Any, Path], dict],
) -> dict[str, list[dict]]:
  """{label: [history per seed]}: `train(run_config(config, label, seed), run_dir)` once per
  label of `config.optimizers` and seed of `config.seeds`, returning the run's history (columns:
  one value per epoch or evaluation, see `history`)."""
  return {label: [{"seed": seed, **train(run_config(config, label, seed),
                                         run_dir(workdir, label, seed))}
                  for seed in config.seeds]
          for label in config.optimizers}


def epochs_to(accuracies: list[float], target: float) -> int | None:
  return next((epoch for epoch, a in enumerate(accuracies, 1) if a >= target), None)


def mean_std(values, fmt: str, scale: float = 1.0) -> str:
  values = scale * np.asarray(values, np.float64)
  if len(values) == 1:
    return format(values[0], fmt)
  return f"{format(values.mean(), fmt)} ± {format(values.std(ddof=1), fmt)}"


class Column(NamedTuple):
  """A column of `results_table`: its header and its cell from a label and its runs (one per
  seed)."""

  header: str
  cell: Callable[[str, list[dict]], str]
  note: Callable[[dict[str, list[dict]]], str] | None = None  # what its `-` cells mean


def final(key: str, header: str, fmt: str = ".4f", scale: float = 1.0, unit: str = "") -> Column:
  """The last value of `key`, mean ± std over seeds."""
  return Column(header, lambda _, runs: mean_std([r[key][-1] for r in runs], fmt, scale) + unit)


def best(key: str, header: str, fmt: str = ".2f", scale: float = 100.0, unit: str = "%") -> Column:
  """The largest value of `key` over the run, mean ± std over seeds."""
  return Column(header, lambda _, runs: mean_std(
      [max(v for v in r[key] if v is not None) for r in runs], fmt, scale) + unit)


def run_total(key: str, header: str, fmt: str = ".1f") -> Column:
  """A per-run number (`wall_s`, `mean_step_ms`), mean ± std over seeds."""
  return Column(header, lambda _, runs: mean_std([r[key] for r in runs], fmt))


def epochs_cell(runs: list[dict], target: float, key: str = "val_accuracy") -> str:
  reached = [e for e in (epochs_to(r[key], target) for r in runs) if e is not None]
  if not reached:
    return "-"
  cell = mean_std(reached, ".1f" if len(reached) > 1 else ".0f")
  return cell if len(reached) == len(runs) else f"{cell} ({len(reached)}/{len(runs)} runs)"


def epochs_to_target(target: float, key: str = "val_accuracy") -> Column:
  """The first epoch at which `key` reached `target` (mean ± std over the seeds that did)."""
  def note(results: dict[str, list[dict]]) -> str:
    epochs = max(len(r[key]) for runs in results.values() for r in runs)
    return (f"- : {100 * target:g}% validation accuracy not reached in {epochs} "
            f"epoch{'' if epochs == 1 else 's'}")

  return Column(f"epochs to {100 * target:g}% val",
                lambda _, runs: epochs_cell(runs, target, key), note)


def classification_columns(target: float, split: str = "test") -> list[Column]:
  """The classifiers' table: final train and `split` loss and accuracy, best validation accuracy,
  epochs to `target` validation accuracy, wall time, step time."""
  return [final("train_loss", "final train loss"), final(f"{split}_loss", f"{split} loss"),
          final(f"{split}_accuracy", f"{split} accuracy", ".2f", 100, "%"),
          best("val_accuracy", "best val accuracy"), epochs_to_target(target),
          run_total("wall_s", "wall time (s)"), run_total("mean_step_ms", "step time (ms)")]


def results_table(results: dict[str, list[dict]], columns: Sequence[Column],
                  name: Callable[[str], str] = str) -> str:
  """Markdown: one row per label (shown as `name(label)`), one cell per column (mean ± std,
  sample, over seeds when there are several); a line under the table says what a `-` cell
  means, where there is one."""
  lines = ["| optimiser | " + " | ".join(c.header for c in columns) + " |",
           "| --- |" + " ---: |" * len(columns)]
  rows = {label: [c.cell(label, runs) for c in columns] for label, runs in results.items()}
  lines += [f"| {name(label)} | " + " | ".join(cells) + " |" for label, cells in rows.items()]
  notes = [c.note(results) for i, c in enumerate(columns)
           if c.note is not None and any(cells[i] == "-" for cells in rows.values())]
  return "\n".join(lines + ([""] + notes if notes else []))


class Panel(NamedTuple):
  """One panel of `plot`: `series(run) -> (x, y)` for each run (the seeds share x)."""

  title: str
  xlabel: str
  ylabel: str
  series: Callable[[dict], tuple[Any, Any]]
  yscale: str = "linear"
  ylim: tuple[float, float] | None = None  # None: matplotlib's
  marks: tuple[float, ...] = ()  # x values marked by a dashed vertical line


def per_epoch(key: str, scale: float = 1.0) -> Callable[[dict], tuple[Any, Any]]:
  """The series of `key` against the epoch (1, 2, ...)."""
  return lambda run: (np.arange(1, len(run[key]) + 1), scale * np.asarray(run[key], np.float64))


VALIDATION_PANELS = (
    Panel("Validation accuracy", "epoch", "validation accuracy (%)",
          per_epoch("val_accuracy", 100)),
    Panel("Validation loss", "epoch", "validation loss", per_epoch("val_loss")))


def plot(results: dict[str, list[dict]], path: Path,
         panels: Sequence[Panel] = VALIDATION_PANELS) -> None:
  """One panel per `Panel`, one line per label (the mean over seeds; band: ± std). Default:
  validation accuracy and loss per epoch (the paper's Figs. 2-3)."""
  from matplotlib.figure import Figure  # Figure.savefig draws with Agg: no pyplot, no display
  from matplotlib.ticker import MaxNLocator

  # One legend for every panel, below them: labels with settings are long.
  columns = max(1, min(len(results), (5 * len(panels)) // 7))
  fig = Figure(figsize=(5 * len(panels), 4 + 0.22 * math.ceil(len(results) / columns)),
               layout="constrained")
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, panel in zip(axes, panels, strict=True):
    for name, runs in results.items():
      series = [panel.series(r) for r in runs]
      x, values = series[0][0], np.array([y for _, y in series])
      (line,) = ax.plot(x, values.mean(0), marker="o" if len(x) <= 50 else None, markersize=3,
                        label=name)
      if len(runs) > 1:
        spread = values.std(0, ddof=1)
        ax.fill_between(x, values.mean(0) - spread, values.mean(0) + spread,
                        color=line.get_color(), alpha=0.2)
    ax.set(xlabel=panel.xlabel, ylabel=panel.ylabel, title=panel.title, yscale=panel.yscale)
    if panel.ylim is not None:
      ax.set_ylim(*panel.ylim)
    for mark in panel.marks:
      ax.axvline(mark, color="grey", linestyle="--", linewidth=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
  fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=columns,
             fontsize=8)
  fig.savefig(path, dpi=120)


def device_line() -> str:
  """The devices (and processes, when several), jax's version and today's date, to print with
  every table."""
  device = jax.devices()[0]
  processes = f" on {jax.process_count()} processes" if jax.process_count() > 1 else ""
  return (f"device: {jax.device_count()} x {device.device_kind}{processes}, jax {jax.__version__}, "
          f"{datetime.date.today().isoformat()}")


def report(config: Any, results: dict[str, list[dict]], workdir: Path, *, table: str, setting: str,
           panels: Sequence[Panel] = VALIDATION_PANELS, plot_name: str = "compare.png",
           plotted: dict[str, list[dict]] | None = None, **extra: Any) -> dict:
  """Prints `table` and `setting`, draws `plot_name` (of `plotted`, default `results`: the runs
  with whatever else the panels need) and writes `results.json` (config, setting, results and
  `extra`) to `workdir`, once; returns what results.json holds."""
  summary = {"config": json_values(config), "setting": setting, "results": results, **extra}
  print(table)
  print(setting)
  plot(results if plotted is None else plotted, workdir / plot_name, panels)
  (workdir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
  print(f"plot: {workdir / plot_name}")
  print(f"results: {workdir / 'results.json'}")
  return summary
