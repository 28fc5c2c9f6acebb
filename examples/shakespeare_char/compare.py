"""Trains the character-level GPT with several optimisers on the same batches and seeds.

    python -m examples.shakespeare_char.compare --optimizers adamw,muon@lr=0.02 --steps 2000
    python -m examples.shakespeare_char.compare --preset sweep --workdir runs/lm-sweep
    python -m examples.shakespeare_char.compare --preset finals \
        --best-lrs runs/lm-sweep/best_lrs.json --workdir runs/lm-finals

An optimiser label may carry its own settings after `@` (any field of `configs.Config`), e.g.
`orthax-muon@method=polar_express@layout=heads@lr=0.02`. Each run trains in
`<workdir>/<label>/seed<k>/` and is read back when it has finished there before, so a comparison
resumes run by run, and several processes may share a workdir (each given a part of the labels,
e.g. one per core), with a last call over all labels making the tables.

Prints and saves (in --workdir): a table per optimiser (validation loss at 500 / 1,000 / 2,000
steps, mean ± std over seeds, steps to the first optimiser's final loss and to muon's, step time
relative to the first optimiser measured side by side in one process), `results.json`,
`curves.png` (validation loss per step), and a sample of generated text from the best run. With
`--preset sweep`, a table of final validation loss per learning rate and `best_lrs.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

import numpy as np

from examples.lib import compare as compare_lib
from examples.lib import config as config_lib
from examples.shakespeare_char import configs, data, train
from examples.shakespeare_char.configs import Config

CHECKPOINTS = (500, 1000, 2000)


def setting_of(label: str) -> str:
  """The label without its learning rate: the optimiser setting it belongs to."""
  return "@".join(part for part in label.split("@") if not part.startswith(("lr=",
                                                                           "learning_rate=")))


def rate_of(config: Config, label: str) -> float:
  return train.run_config(config, label, 0).learning_rate


def run_all(config: Config, corpus: data.Corpus, workdir: Path) -> dict[str, list[dict]]:
  """{label: [history per seed]}."""
  return {label: [train.train(train.run_config(config, label, seed), corpus,
                              compare_lib.run_dir(workdir, label, seed))
                  for seed in config.seeds]
          for label in config.optimizers}


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
  shown = [s for s in CHECKPOINTS if s < config.steps] + [config.steps]
  header = ["optimiser", "lr", *[f"val loss @{s}" for s in shown]]
  header += [f"steps to {setting_of(t)}'s {v:.3f}" for t, v in targets.items()]
  header += ["step time (ms)", f"vs {setting_of(reference)}"] if step_ms else []
  lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
  for label, runs in results.items():
    cells = [setting_of(label), f"{rate_of(config, label):g}"]
    for step in shown:
      values = [loss_at(r, step) for r in runs]
      cells.append(compare_lib.mean_std(values, ".3f") if None not in values else "-")
    cells += [steps_cell(runs, target) for target in targets.values()]
    if step_ms:
      cells += [f"{step_ms[label]:.0f}", f"{step_ms[label] / step_ms[reference]:.2f}x"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def sweep_table(config: Config, results: dict[str, list[dict]]) -> tuple[str, dict[str, float]]:
  """Markdown: final validation loss of each setting at each rate (mean over seeds); and the
  best rate of each setting (a diverged run counts as worst)."""
  grid: dict[str, dict[float, float]] = {}
  for label, runs in results.items():
    loss = final_mean(runs)
    grid.setdefault(setting_of(label), {})[rate_of(config, label)] = (
        loss if np.isfinite(loss) else np.inf)
  best = {name: min(losses, key=losses.__getitem__) for name, losses in grid.items()}
  lines = [f"| optimiser | final validation loss at each rate ({config.steps} steps) | best lr |",
           "| --- | --- | ---: |"]
  for name, losses in grid.items():
    cells = ", ".join(("**" if rate == best[name] else "") + f"{rate:g}: {loss:.3f}"
                      + ("**" if rate == best[name] else "") for rate, loss in losses.items())
    lines.append(f"| {name} | {cells} | {best[name]:g} |")
  return "\n".join(lines), best


def plot(results: dict[str, list[dict]], path: Path, title: str) -> None:
  """Validation loss per step, one line per optimiser (mean; band: ± std over seeds)."""
  from matplotlib.figure import Figure

  fig = Figure(figsize=(8, 5), layout="constrained")
  ax = fig.subplots()
  for label, runs in results.items():
    steps = np.array(runs[0]["eval_steps"])
    values = np.array([r["val_loss"] for r in runs])
    (line,) = ax.plot(steps, values.mean(0), label=setting_of(label))
    if len(runs) > 1:
      spread = values.std(0, ddof=1)
      ax.fill_between(steps, values.mean(0) - spread, values.mean(0) + spread,
                      color=line.get_color(), alpha=0.2)
  finals = [v for runs in results.values() for r in runs for v in r["val_loss"][-1:]
            if np.isfinite(v)]
  if finals:
    ax.set_ylim(min(finals) - 0.05, min(finals) + 1.2)
  ax.set(xlabel="step", ylabel="validation loss", title=title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.savefig(path, dpi=120)


def setting_line(config: Config, corpus: data.Corpus) -> str:
  return (f"GPT {config.layers} layers x {config.width} wide, {config.heads} heads, context "
          f"{config.context}, batch {config.batch_size}, {config.steps} steps (warm-up "
          f"{config.warmup_steps}, cosine to {config.final_lr_fraction:g} x lr), clip "
          f"{config.clip:g}, weight decay {config.weight_decay:g}, seeds {list(config.seeds)}; "
          f"{corpus.source}, validation on {config.eval_windows} fixed windows; "
          f"{compare_lib.device_line()}")


def compare(config: Config, corpus: data.Corpus | None = None, *, sweep: bool = False,
            time_steps: int = 20) -> dict:
  """Runs the comparison `config` describes; prints and saves its tables, plot and sample."""
  train.check(config)
  corpus = corpus or data.load(config.data, synthetic=config.synthetic)
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  workdir = Path(config.workdir or f"runs/shakespeare_char/{stamp}")
  workdir.mkdir(parents=True, exist_ok=True)
  results = run_all(config, corpus, workdir)
  summary: dict = {"config": config_lib.json_values(config),
                   "setting": setting_line(config, corpus), "results": results}
  if sweep:
    table, best = sweep_table(config, results)
    (workdir / "best_lrs.json").write_text(json.dumps(best, indent=2) + "\n")
    summary["best_lrs"] = best
  else:
    step_ms = None
    if time_steps:
      runs = {label: train.run_config(config, label, 0) for label in config.optimizers}
      step_ms = train.time_steps(runs, corpus, steps=time_steps)
      summary["step_ms"] = step_ms
    table = results_table(config, results, step_ms)
  print(table)
  print(summary["setting"])
  plot(results, workdir / "curves.png", "Character-level GPT on Tiny Shakespeare")
  (workdir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
  if config.sample_chars:
    label = min(results, key=lambda k: final_mean(results[k]))
    run = train.run_config(config, label, config.seeds[0])
    params = train.load_params(
        compare_lib.run_dir(workdir, label, config.seeds[0]) / "params.npz", run, corpus.vocab)
    sample = train.generate(run, params, corpus, config.sample_chars)
    summary["sample"] = {"label": label, "text": sample}
    print(f"\nsample from {label}, seed {config.seeds[0]}:\n{sample}\n")
  (workdir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
  print(f"table above; plot: {workdir / 'curves.png'}; results: {workdir / 'results.json'}")
  return summary


def make_parser() -> argparse.ArgumentParser:
  parser = config_lib.make_parser(Config, __doc__)
  parser.add_argument("--preset", choices=("sweep", "finals"),
                      help="sweep: every setting at each rate of its grid (configs.py); finals: "
                      "the settings of --best-lrs at their best rates, 3 seeds, 2,000 steps")
  parser.add_argument("--best-lrs", help="the sweep's best_lrs.json (for --preset finals)")
  parser.add_argument("--only", help="comma-separated settings of the preset to run (default all)")
  parser.add_argument("--time-steps", type=int, default=20,
                      help="steps per round when timing each optimiser side by side (0: skip)")
  parser.add_argument("--time-only", action="store_true",
                      help="no training: time each optimiser's step side by side, print a table")
  return parser


def timing_table(config: Config, corpus: data.Corpus, steps: int) -> str:
  """Markdown: each optimiser's step time, measured side by side, relative to the first's, and
  the model's FLOP rate against a large matrix product's on the same device."""
  runs = {label: train.run_config(config, label, 0) for label in config.optimizers}
  step_ms = train.time_steps(runs, corpus, steps=steps)
  first = config.optimizers[0]
  flops = train.step_flops(train.Run(runs[first], corpus, 0))
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
  parser = make_parser()
  args = parser.parse_args(argv)
  given = config_lib.given(args, Config)
  if args.preset == "sweep":
    config = configs.sweep()
  elif args.preset == "finals":
    if not args.best_lrs:
      parser.error("--preset finals needs --best-lrs (the sweep's best_lrs.json)")
    config = configs.finals(json.loads(Path(args.best_lrs).read_text()))
  else:
    config = Config()
  config = dataclasses.replace(config, **given)
  if args.only:
    only = set(args.only.split(","))
    config = dataclasses.replace(config, optimizers=tuple(
        label for label in config.optimizers if setting_of(label) in only))
  try:
    train.check(config)
  except ValueError as error:
    parser.error(str(error))
  try:
    if args.time_only:
      corpus = data.load(config.data, synthetic=config.synthetic)
      print(timing_table(config, corpus, args.time_steps or 20))
      print(setting_line(config, corpus))
      return 0
    compare(config, sweep=args.preset == "sweep", time_steps=args.time_steps)
  except FileNotFoundError as error:
    print(error, file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
