"""Trains one model with several optimisers on the same data and seeds: a table and a plot.

    python -m examples.cifar10.compare --model basic_cnn --optimizers sgdm,orthogonal-sgdm
    python -m examples.cifar10.compare --config table1 --model resnet20   # a paper reproduction

Every optimiser starts from the same initialisation (per seed) and sees the same batches and
augmentations. An optimiser may carry its own options after `@`, e.g.
`orthogonal-sgdm@mask=conv` or `orthogonal-sgdm@rtol=0.01@method=svd` (keys: method, mask, rtol,
lr, momentum, weight_decay, b2); the rest come from the flags.

Outputs, in --workdir: one training directory per optimiser and seed (metrics.jsonl, checkpoints:
rerunning with the same --workdir resumes), `results.json` and `compare.png` (validation accuracy
and loss per epoch, as the paper's Figs. 2-3).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import jax
import numpy as np

from examples.cifar10 import configs, optimizers, train
from examples.cifar10 import data as data_lib

SPEC_KEYS = {"method": str, "mask": str, "rtol": float, "lr": float, "momentum": float,
             "weight_decay": float, "b2": float}
UNSET = object()


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  add = parser.add_argument
  add("--config", choices=sorted(configs.CONFIGS),
      help="run a named paper reproduction (see configs.py); other flags override it")
  add("--model", default="basic_cnn")
  add("--optimizers", default="sgdm,orthogonal-sgdm",
      help="comma-separated optimiser specs: name[@key=value...]")
  add("--epochs", type=int, default=3)
  add("--batch-size", type=int, default=1024)
  add("--eval-batch-size", type=int, default=1024)
  add("--lr", type=float, default=1e-2)
  add("--momentum", type=float, default=0.9, help="SGD momentum, Adam's b1, Muon's beta")
  add("--weight-decay", type=float, default=5e-4)
  add("--b2", type=float, default=0.999, help="Adam's b2")
  add("--method", default="auto", help="orthax method: auto, svd, eigh, newton_schulz, ...")
  add("--mask", default="all", choices=tuple(optimizers.MASKS))
  add("--rtol", type=float, default=None, help="orthax's rank-aware cut (default: orthax's)")
  add("--schedule", default="constant", choices=("constant", "step"))
  add("--decay-epochs", default="", help="comma-separated epochs where lr / 10 (--schedule step)")
  add("--seed", type=int, default=0)
  add("--repeats", type=int, default=1, help="seeds seed, seed + 1, ...")
  add("--seeds", default=None, help="comma-separated seeds (overrides --seed and --repeats)")
  add("--target", type=float, default=0.5, help="validation accuracy for 'epochs to target'")
  add("--train-size", type=int, default=None, help="first N of the 45k training images")
  add("--validation-size", type=int, default=None, help="first N of the 5k validation images")
  add("--test-size", type=int, default=None, help="first N of the 10k test images")
  add("--data", default=None, help="cifar10_jpeg.npz (default: $ORTHAX_CIFAR10, tfds, local)")
  add("--download", action="store_true",
      help="let tensorflow-datasets download cifar10 if it is not prepared")
  add("--synthetic", action="store_true", help="synthetic data (tests; no real accuracy)")
  add("--diagnostics", action="store_true", help="log component cosines, dead parameters, ...")
  add("--no-checkpoint", dest="checkpoint", action="store_false")
  add("--workdir", default=None, help="default runs/compare/<model>-<time>")
  return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  args = make_parser().parse_args(argv)
  if args.epochs < 1:
    make_parser().error(f"--epochs must be >= 1, got {args.epochs}")
  return args


def given_flags(argv: list[str]) -> dict:
  """The flags `argv` sets explicitly (to lay them over a named config)."""
  parser = make_parser()
  unset = argparse.Namespace(**{name: UNSET for name in vars(parser.parse_args([]))})
  return {k: v for k, v in vars(parser.parse_args(argv, unset)).items() if v is not UNSET}


def seeds(args: argparse.Namespace) -> list[int]:
  if args.seeds:
    return [int(s) for s in args.seeds.split(",")]
  return list(range(args.seed, args.seed + args.repeats))


def parse_spec(spec: str) -> tuple[str, dict]:
  """'orthogonal-sgdm@mask=conv@rtol=0.01' -> ('orthogonal-sgdm', {'mask': 'conv', 'rtol': 0.01}).
  """
  name, *options = spec.split("@")
  parsed = {}
  for option in options:
    key, _, value = option.partition("=")
    if key not in SPEC_KEYS or not value:
      raise ValueError(
          f"Bad option {option!r} in optimiser spec {spec!r}; write key=value with key one of "
          f"{', '.join(SPEC_KEYS)}.")
    parsed[key] = SPEC_KEYS[key](value)
  return name, parsed


def make_config(args: argparse.Namespace, spec: str, seed: int) -> train.Config:
  name, options = parse_spec(spec)
  decay_epochs = tuple(int(e) for e in args.decay_epochs.split(",") if e)
  return train.Config(
      model=args.model, optimizer=name, epochs=args.epochs, batch_size=args.batch_size,
      eval_batch_size=args.eval_batch_size, learning_rate=options.get("lr", args.lr),
      momentum=options.get("momentum", args.momentum),
      weight_decay=options.get("weight_decay", args.weight_decay), b2=options.get("b2", args.b2),
      method=options.get("method", args.method), mask=options.get("mask", args.mask),
      rtol=options.get("rtol", args.rtol), schedule=args.schedule, decay_epochs=decay_epochs,
      seed=seed, data=args.data, synthetic=args.synthetic, train_size=args.train_size,
      validation_size=args.validation_size, test_size=args.test_size,
      diagnostics=args.diagnostics, checkpoint=args.checkpoint)


def history(records: list[dict]) -> dict:
  """Per-epoch records as columns, plus the run's wall time and mean step time."""
  columns = {key: [r[key] for r in records] for key in records[0] if key != "diagnostics"}
  if "diagnostics" in records[0]:
    columns["diagnostics"] = [r["diagnostics"] for r in records]
  compile_s = sum(c for c in columns["compile_s"] if c is not None)
  return {**columns, "wall_s": float(sum(columns["epoch_s"]) + compile_s),
          "mean_step_ms": float(np.mean(columns["step_ms"]))}


def run_comparison(args: argparse.Namespace, dataset: data_lib.Dataset, workdir: Path) -> dict:
  """{spec: [history per seed]}: every optimiser trained once per seed."""
  results = {}
  for spec in args.optimizers.split(","):
    runs = []
    for seed in seeds(args):
      config = make_config(args, spec, seed)
      run_dir = workdir / spec.replace("@", "_").replace("=", "-") / f"seed{seed}"
      runs.append({"seed": seed, **history(train.train_and_evaluate(config, run_dir, dataset))})
    results[spec] = runs
  return results


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


def setting_line(args: argparse.Namespace, dataset: data_lib.Dataset) -> str:
  device = jax.devices()[0]
  steps = len(dataset.train.labels) // args.batch_size
  return (
      f"{args.model} on {len(dataset.train.labels)} {dataset.source} training images "
      f"({steps} steps of {args.batch_size} per epoch), {args.epochs} epochs, lr {args.lr:g} "
      f"({args.schedule}), momentum {args.momentum:g}, weight decay {args.weight_decay:g}, "
      f"seeds {seeds(args)}; validation {len(dataset.validation.labels)}, test "
      f"{len(dataset.test.labels)} images; device: {jax.device_count()} x {device.device_kind}, "
      f"jax {jax.__version__}, {datetime.date.today().isoformat()}")


def load_dataset(args: argparse.Namespace) -> data_lib.Dataset:
  return data_lib.load(
      args.data, train_size=args.train_size, validation_size=args.validation_size,
      test_size=args.test_size, synthetic=args.synthetic, download=args.download)


def compare(args: argparse.Namespace, dataset: data_lib.Dataset | None = None) -> dict:
  """Runs the comparison `args` describes; prints and saves its table, plot and results."""
  dataset = dataset or load_dataset(args)
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  workdir = Path(args.workdir or f"runs/compare/{args.model}-{stamp}")
  workdir.mkdir(parents=True, exist_ok=True)
  results = run_comparison(args, dataset, workdir)
  setting = setting_line(args, dataset)
  print(results_table(results, args.target))
  print(setting)
  plot(results, workdir / "compare.png")
  flags = {k: v for k, v in vars(args).items() if k != "config"}
  summary = {"flags": flags, "setting": setting, "results": results}
  (workdir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
  print(f"plot: {workdir / 'compare.png'}")
  print(f"results: {workdir / 'results.json'}")
  return results


def run_config(name: str, argv: list[str]) -> None:
  """Runs every comparison of named config `name`, with the flags in `argv` laid over each."""
  given = given_flags(argv)
  preset_options = {k: given[k] for k in ("model", "workdir") if k in given}
  if any(k in given for k in ("seed", "seeds", "repeats")):
    preset_options["seeds"] = seeds(parse_args(argv))
  for preset in configs.CONFIGS[name](**preset_options):
    args = parse_args(preset)
    overrides = {k: v for k, v in given.items()
                 if k not in ("config", "model", "workdir", "seed", "seeds", "repeats")}
    vars(args).update(overrides)
    print(f"== {name}: {' '.join(preset)} {' '.join(f'{k}={v}' for k, v in overrides.items())}")
    compare(args)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  try:
    if args.config:
      run_config(args.config, argv)
    else:
      compare(args)
  except data_lib.DataNotFoundError as error:
    print(error, file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
