"""Trains the character-level GPT with several optimisers on the same batches and seeds.

    python -m examples.shakespeare_char.main --optimizers adamw,muon@lr=0.02 --steps 2000
    python -m examples.shakespeare_char.main --config sweep --workdir runs/lm-sweep
    python -m examples.shakespeare_char.main --config finals \
        --best-lrs runs/lm-sweep/best_lrs.json --workdir runs/lm-finals

An optimiser label may carry its own settings after `@` (any field of `configs.Config`), e.g.
`orthax-muon@method=polar_express@layout=heads@lr=0.02`. Each run trains in
`<workdir>/<label>/seed<k>/` and is read back when it has finished there before, so a comparison
resumes run by run, and several processes may share a workdir (each given a part of the labels,
e.g. one per core), with a last call over all labels making the tables.

Prints and saves (in --workdir): a table per optimiser (validation loss at 500 / 1,000 / 2,000
steps, mean ± std over seeds, steps to the first optimiser's final loss and to muon's, step time
relative to the first optimiser measured side by side in one process), `results.json`,
`curves.png` (validation loss per step; with muon among them, also against wall-clock time),
a table against Muon's wall-clock time (`wallclock_table`), and a sample of generated text from
the best run. With `--config sweep` or `fair_sweep`, a table of final validation loss per
learning rate (and AdamW-part rate) and `best_lrs.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from examples.lib import compare as compare_lib
from examples.lib import config as config_lib
from examples.shakespeare_char import configs, data, train
from examples.shakespeare_char.configs import Config

CHECKPOINTS = (500, 1000, 2000)


RATE_KEYS = ("lr=", "learning_rate=", "adam_lr=")


def setting_of(label: str) -> str:
  """The label without its learning rates (lr, adam_lr): the optimiser setting it belongs to."""
  return "@".join(part for part in label.split("@") if not part.startswith(RATE_KEYS))


def rate_of(config: Config, label: str) -> float:
  return compare_lib.run_config(config, label, 0).learning_rate


def rates_of(config: Config, label: str) -> dict[str, float]:
  """{"lr": ...} and, where the label sets it, {"adam_lr": ...}: the rates a sweep tunes."""
  run = compare_lib.run_config(config, label, 0)
  rates = {"lr": run.learning_rate}
  if run.adam_lr is not None:
    rates["adam_lr"] = run.adam_lr
  return rates


def rates_text(rates: dict[str, float]) -> str:
  return ", ".join(f"{key} {value:g}" for key, value in rates.items())


def run_all(config: Config, corpus: data.Corpus, workdir: Path,
            cache: train.StepCache | None = None) -> dict[str, list[dict]]:
  """{label: [history per seed]}; the runs of a setting share one compiled step (`cache`)."""
  cache = cache or train.StepCache()
  return compare_lib.run_comparison(
      config, workdir, lambda run, run_dir: train.train(run, corpus, run_dir, cache))


def loss_at(history: dict, step: int) -> float | None:
  steps = history["eval_steps"]
  return history["val_loss"][steps.index(step)] if step in steps else None


def steps_to(history: dict, target: float) -> float | None:
  """The first step at which the validation loss reaches `target`, interpolated linearly between
  evaluations; None if it never does."""
  steps, losses = history["eval_steps"], history["val_loss"]
  for i in range(1, len(steps)):
    if losses[i] <= target:
      before, after = losses[i - 1], losses[i]
      fraction = (before - target) / (before - after) if before > after else 1.0
      return steps[i - 1] + fraction * (steps[i] - steps[i - 1])
  return None


def final_mean(runs: list[dict]) -> float:
  return float(np.mean([r["val_loss"][-1] for r in runs]))


def steps_cell(runs: list[dict], target: float) -> str:
  reached = [s for s in (steps_to(r, target) for r in runs) if s is not None]
  if not reached:
    return "-"
  cell = compare_lib.mean_std(reached, ".0f")
  return cell if len(reached) == len(runs) else f"{cell} ({len(reached)}/{len(runs)} runs)"


def results_table(config: Config, results: dict[str, list[dict]],
                  step_ms: dict[str, float] | None = None) -> str:
  """Markdown: per optimiser, validation loss at `CHECKPOINTS` and at the end (mean ± std over
  seeds), steps to the first optimiser's final loss and to muon's, step time."""
  labels = list(results)
  reference = labels[0]
  targets = {reference: config.target or final_mean(results[reference])}
  muon = next((label for label in labels if setting_of(label) == "muon"), None)
  if muon is not None and muon != reference:
    targets[muon] = final_mean(results[muon])

  def loss_cell(step: int):
    def cell(label: str, runs: list[dict]) -> str:
      values = [loss_at(r, step) for r in runs]
      return compare_lib.mean_std(values, ".3f") if None not in values else "-"
    return cell

  def steps_column(name: str, target: float) -> compare_lib.Column:
    return compare_lib.Column(
        f"steps to {setting_of(name)}'s {target:.3f}",
        lambda label, runs: steps_cell(runs, target),
        lambda results: f"- : {setting_of(name)}'s {target:.3f} not reached in {config.steps} "
        "steps")

  shown = [s for s in CHECKPOINTS if s < config.steps] + [config.steps]
  columns = [compare_lib.Column("lr", lambda label, runs: f"{rate_of(config, label):g}")]
  columns += [compare_lib.Column(f"val loss @{s}", loss_cell(s)) for s in shown]
  columns += [steps_column(name, target) for name, target in targets.items()]
  if step_ms:
    columns += [
        compare_lib.Column("step time (ms)", lambda label, runs: f"{step_ms[label]:.0f}"),
        compare_lib.Column(f"vs {setting_of(reference)}",
                           lambda label, runs: f"{step_ms[label] / step_ms[reference]:.2f}x")]
  return compare_lib.results_table(results, columns, name=setting_of)


def sweep_table(config: Config, results: dict[str, list[dict]]
                ) -> tuple[str, dict[str, float | dict[str, float]]]:
  """Markdown: final validation loss of each setting at each rate (mean over seeds); and the
  best rate of each setting (a diverged run counts as worst): a float, or {"lr": ..., "adam_lr":
  ...} for a setting swept over its AdamW part's rate too."""
  grid: dict[str, dict[tuple, float]] = {}
  for label, runs in results.items():
    loss = final_mean(runs)
    rates = tuple(rates_of(config, label).items())
    grid.setdefault(setting_of(label), {})[rates] = loss if np.isfinite(loss) else np.inf
  chosen = {name: min(losses, key=losses.__getitem__) for name, losses in grid.items()}
  best = {name: rates[0][1] if len(rates) == 1 else dict(rates) for name, rates in chosen.items()}
  lines = [f"| optimiser | final validation loss at each rate ({config.steps} steps) | best |",
           "| --- | --- | ---: |"]
  for name, losses in grid.items():
    def cell(rates: tuple, loss: float, best: tuple = chosen[name]) -> str:
      text = rates_text(dict(rates)) if len(rates) > 1 else f"{rates[0][1]:g}"
      bold = "**" if rates == best else ""
      return f"{bold}{text}: {loss:.3f}{bold}"

    cells = ", ".join(cell(rates, loss) for rates, loss in losses.items())
    lines.append(f"| {name} | {cells} | {rates_text(dict(chosen[name]))} |")
  return "\n".join(lines), best


PANELS = (compare_lib.Panel(
    "Character-level GPT on Tiny Shakespeare", "step", "validation loss",
    lambda run: (run["eval_steps"], run["val_loss"]), yscale="log"),)


def loss_at_step(history: dict, step: float) -> float:
  """The validation loss at `step`, interpolated linearly between evaluations."""
  return float(np.interp(step, history["eval_steps"], history["val_loss"]))


def muon_label(results: dict[str, list[dict]]) -> str | None:
  return next((label for label in results if setting_of(label) == "muon"), None)


def wallclock_table(config: Config, results: dict[str, list[dict]],
                    step_ms: dict[str, float]) -> str:
  """Markdown: each optimiser against Muon's wall-clock time (`optax.contrib.muon`, the label
  whose setting is "muon"): wall time = steps x the step time measured side by side. Per
  optimiser: the steps it runs in the time Muon takes for its `config.steps`, its validation
  loss there (interpolated between evaluations; mean ± std over seeds), and the time it takes to
  reach Muon's final loss as a fraction of Muon's time."""
  muon = muon_label(results)
  if muon is None:
    raise ValueError("the wall-clock comparison needs a 'muon' label")
  budget_ms = config.steps * step_ms[muon]
  target = final_mean(results[muon])
  lines = [f"| optimiser | step time (ms) | vs muon | steps in muon's {budget_ms / 1e3:.0f} s | "
           f"val loss at muon's {budget_ms / 1e3:.0f} s | time to muon's {target:.3f} (x muon's) |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
  notes = []
  for label, runs in results.items():
    steps = budget_ms / step_ms[label]
    if steps <= config.steps:
      loss = compare_lib.mean_std([loss_at_step(r, steps) for r in runs], ".3f")
    else:
      loss = f"< {compare_lib.mean_std([r['val_loss'][-1] for r in runs], '.3f')} (a)"
      notes.append(f"(a): it would run more steps than the {config.steps:,} trained in Muon's "
                   f"time; its loss at {config.steps:,} steps is shown, an upper bound.")
    reached = [steps_to(r, target) for r in runs]
    fractions = [s * step_ms[label] / budget_ms for s in reached if s is not None]
    if len(fractions) == len(runs):
      time_cell = compare_lib.mean_std(fractions, ".2f") + "x"
    elif fractions:
      time_cell = f"{compare_lib.mean_std(fractions, '.2f')}x ({len(fractions)}/{len(runs)} runs)"
    else:
      time_cell = "-"
      notes.append(f"-: Muon's {target:.3f} not reached in {config.steps} steps; it needs more.")
    lines.append(f"| {setting_of(label)} | {step_ms[label]:.0f} | "
                 f"{step_ms[label] / step_ms[muon]:.2f}x | {min(steps, config.steps):.0f}"
                 f"{'+' if steps > config.steps else ''} | {loss} | {time_cell} |")
  return "\n".join(lines + ([""] + list(dict.fromkeys(notes)) if notes else []))


def wallclock_panels(config: Config, results: dict[str, list[dict]],
                     step_ms: dict[str, float]) -> tuple[compare_lib.Panel, ...]:
  """Validation loss per step, and against wall-clock time (steps x the side-by-side step time,
  run["timed_step_ms"]): whole, and its last part; a dashed line at Muon's time."""
  muon = muon_label(results)
  marks = () if muon is None else (config.steps * step_ms[muon] / 1e3,)
  lowest = min(final_mean(runs) for runs in results.values())

  def seconds(run):
    return np.asarray(run["eval_steps"]) * run["timed_step_ms"] / 1e3, run["val_loss"]

  return (*PANELS,
          compare_lib.Panel("Against wall-clock time (side-by-side step time)",
                            "seconds", "validation loss", seconds, yscale="log", marks=marks),
          compare_lib.Panel("The same, last part", "seconds", "validation loss", seconds,
                            ylim=(lowest - 0.02, lowest + 0.3), marks=marks))


def setting_line(config: Config, corpus: data.Corpus) -> str:
  return (f"GPT {config.layers} layers x {config.width} wide, {config.heads} heads, context "
          f"{config.context}, batch {config.batch_size}, {config.steps} steps (warm-up "
          f"{config.warmup_steps}, cosine to {config.final_lr_fraction:g} x lr), clip "
          f"{config.clip:g}, weight decay {config.weight_decay:g}, seeds {list(config.seeds)}; "
          f"{corpus.source}, validation on {config.eval_windows} fixed windows; "
          f"{compare_lib.device_line()}")


def compare(config: Config, corpus: data.Corpus | None = None, *, sweep: bool = False,
            time_steps: int = 20) -> dict:
  """Runs the comparison `config` describes; prints and saves its tables, plot, sample and
  results.json; returns what results.json holds."""
  train.check(config)
  corpus = corpus or data.load(config.data, synthetic=config.synthetic)
  workdir = Path(config.workdir or compare_lib.default_workdir("runs/shakespeare_char"))
  workdir.mkdir(parents=True, exist_ok=True)
  cache = train.StepCache()
  results = run_all(config, corpus, workdir, cache)
  extra: dict = {}
  panels, plotted = PANELS, None
  if sweep:
    table, best = sweep_table(config, results)
    (workdir / "best_lrs.json").write_text(json.dumps(best, indent=2) + "\n")
    extra["best_lrs"] = best
  else:
    step_ms = None
    if time_steps:
      runs = {label: compare_lib.run_config(config, label, 0) for label in config.optimizers}
      step_ms = extra["step_ms"] = train.time_steps(runs, corpus, steps=time_steps, cache=cache)
    table = results_table(config, results, step_ms)
    if step_ms and muon_label(results) is not None:
      table += "\n\nAgainst Muon's wall-clock time:\n\n" + wallclock_table(config, results, step_ms)
      panels = wallclock_panels(config, results, step_ms)
      plotted = {label: [{**r, "timed_step_ms": step_ms[label]} for r in runs]
                 for label, runs in results.items()}
  if config.sample_chars:
    label = min(results, key=lambda k: final_mean(results[k]))
    run = compare_lib.run_config(config, label, config.seeds[0])
    params = train.load_params(
        compare_lib.run_dir(workdir, label, config.seeds[0]) / "params.npz", run, corpus.vocab)
    extra["sample"] = {"label": label, "text": train.generate(run, params, corpus,
                                                              config.sample_chars)}
  summary = compare_lib.report(config, results, workdir, table=table,
                               setting=setting_line(config, corpus), panels=panels,
                               plot_name="curves.png", plotted=plotted, **extra)
  if "sample" in extra:
    print(f"\nsample from {extra['sample']['label']}, seed {config.seeds[0]}:\n"
          f"{extra['sample']['text']}\n")
  return summary


def add_flags(parser: argparse.ArgumentParser) -> None:
  configs.add_flags(parser)
  parser.add_argument("--only", help="comma-separated settings of the preset to run (default all)")
  parser.add_argument("--time-steps", type=int, default=20,
                      help="steps per round when timing each optimiser side by side (0: skip)")
  parser.add_argument("--time-only", action="store_true",
                      help="no training: time each optimiser's step side by side, print a table")


def timing_table(config: Config, corpus: data.Corpus, steps: int) -> str:
  """Markdown: each optimiser's step time, measured side by side, relative to the first's, and
  the model's FLOP rate against a large matrix product's on the same device."""
  runs = {label: compare_lib.run_config(config, label, 0) for label in config.optimizers}
  cache = train.StepCache()
  step_ms = train.time_steps(runs, corpus, steps=steps, cache=cache)
  first = config.optimizers[0]
  flops = train.step_flops(train.Run(runs[first], corpus, 0, cache))
  peak = train.matmul_gflops()
  lines = ["| optimiser | step time (ms) | vs " + first + " |", "| --- | ---: | ---: |"]
  lines += [f"| {label} | {ms:.1f} | {ms / step_ms[first]:.2f}x |" for label, ms in step_ms.items()]
  rate = flops / step_ms[first] / 1e6
  lines.append(f"\n{first}'s step: {flops / 1e9:.2f} GFLOP (XLA's count) in "
               f"{step_ms[first]:.1f} ms = {rate:.1f} GFLOP/s; a float32 1024^3 matrix product "
               f"here: {peak:.1f} GFLOP/s "
               f"({100 * rate / peak:.0f} % of it)")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser, args, (config,) = config_lib.command_line(
      Config, configs.CONFIGS, argv, __doc__, extra_flags=add_flags)
  if args.only:
    only = set(args.only.split(","))
    config = dataclasses.replace(config, optimizers=tuple(
        label for label in config.optimizers if setting_of(label) in only))
  try:
    train.check(config)
  except ValueError as error:
    parser.error(str(error))

  def run() -> None:
    if args.time_only:
      corpus = data.load(config.data, synthetic=config.synthetic)
      print(timing_table(config, corpus, args.time_steps or 20))
      print(setting_line(config, corpus))
    else:
      compare(config, sweep=args.config in configs.SWEEPS, time_steps=args.time_steps)

  return config_lib.exit_code(run)


if __name__ == "__main__":
  sys.exit(main())
