"""Trains one model with several optimisers on the same data and seeds: a table and a plot.

    python -m examples.cifar10.compare --model basic_cnn --optimizers sgdm,orthogonal-sgdm
    python -m examples.cifar10.compare --config table1 --model resnet20   # a paper reproduction

Every optimiser starts from the same initialisation (per seed) and sees the same batches and
augmentations. An optimiser may carry its own settings after `@`, e.g.
`orthogonal-sgdm@mask=conv` or `orthogonal-sgdm@rtol=0.01@method=svd` (any field of `Config`,
e.g. method, mask, rtol, lr, momentum, weight_decay, b2); the rest come from the flags, which are
the fields of `examples.cifar10.configs.Config`.

Outputs, in --workdir: one training directory per optimiser and seed (metrics.jsonl, checkpoints:
rerunning with the same --workdir resumes), `results.json` and `compare.png` (validation accuracy
and loss per epoch, as the paper's Figs. 2-3).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import sys
from pathlib import Path

import flax.linen as nn

from examples.cifar10 import configs, train
from examples.cifar10.configs import Config
from examples.lib import cifar10 as cifar_data
from examples.lib import compare as compare_lib
from examples.lib import config as config_lib
from examples.lib import optimizers


def setting_line(config: Config, dataset: cifar_data.Dataset) -> str:
  steps = len(dataset.train.labels) // config.batch_size
  return (
      f"{config.model} on {len(dataset.train.labels)} {dataset.source} training images "
      f"({steps} steps of {config.batch_size} per epoch), {config.epochs} epochs, lr "
      f"{config.learning_rate:g} ({config.schedule}), momentum {config.momentum:g}, weight decay "
      f"{config.weight_decay:g}, seeds {list(config.seeds)}; validation "
      f"{len(dataset.validation.labels)}, test {len(dataset.test.labels)} images; "
      f"{compare_lib.device_line()}")


def run_comparison(config: Config, dataset: cifar_data.Dataset, workdir: Path, *,
                   model: nn.Module | None = None) -> dict[str, list[dict]]:
  """{label: [history per seed]}: every optimiser of `config` trained once per seed."""

  def train_run(label: str, seed: int, run_dir: Path) -> list[dict]:
    return train.train_and_evaluate(
        train.run_config(config, label, seed), run_dir, dataset, model=model)

  return compare_lib.run_comparison(config.optimizers, config.seeds, workdir, train_run)


def check(config: Config) -> None:
  """A ValueError for a comparison that cannot run, before any training."""
  if config.epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {config.epochs}.")
  for label in config.optimizers:
    run = train.run_config(config, label, 0)
    optimizers.check_name(run.optimizer, run.mask)


def compare(config: Config, dataset: cifar_data.Dataset | None = None, *,
            model: nn.Module | None = None, plot_name: str = "compare.png") -> dict:
  """Runs the comparison `config` describes; prints and saves its table, plot and results.

  `model` replaces the network `config.model` names (its name is still the one recorded).
  """
  check(config)
  dataset = dataset or train.load_dataset(config)
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  workdir = Path(config.workdir or f"runs/compare/{config.model}-{stamp}")
  workdir.mkdir(parents=True, exist_ok=True)
  results = run_comparison(config, dataset, workdir, model=model)
  setting = setting_line(config, dataset)
  print(compare_lib.results_table(results, config.target))
  print(setting)
  compare_lib.plot(results, workdir / plot_name)
  summary = {"config": config_lib.json_values(config), "setting": setting, "results": results}
  (workdir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
  print(f"plot: {workdir / plot_name}")
  print(f"results: {workdir / 'results.json'}")
  return results


def make_parser():
  parser = config_lib.make_parser(Config, __doc__)
  parser.add_argument("--config", choices=sorted(configs.CONFIGS),
                      help="run a named paper reproduction (see configs.py); other flags override "
                      "it, --model picks one model of it, --workdir is its root (default runs)")
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = make_parser()
  args = parser.parse_args(argv)
  given = config_lib.given(args, Config)
  if args.config:
    presets = configs.CONFIGS[args.config](
        model=given.pop("model", None), workdir=given.pop("workdir", "runs"))
  else:
    presets = [Config()]
  runs = [dataclasses.replace(preset, **given) for preset in presets]
  for config in runs:
    try:
      check(config)
    except ValueError as error:
      parser.error(str(error))
  try:
    for config in runs:
      if args.config:
        print(f"== {args.config}: {config.model} in {config.workdir}")
      compare(config)
  except cifar_data.DataNotFoundError as error:
    print(error, file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
