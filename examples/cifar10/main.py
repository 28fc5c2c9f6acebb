"""Trains one model with several optimisers on the same data and seeds: a table and a plot.

    python -m examples.cifar10.main --model basic_cnn --optimizers sgdm,orthogonal-sgdm
    python -m examples.cifar10.main --config table1 --model resnet20   # a paper reproduction

Every optimiser starts from the same initialisation (per seed) and sees the same batches and
augmentations. An optimiser may carry its own settings after `@`, e.g.
`orthogonal-sgdm@mask=conv` or `orthogonal-sgdm@method=polar_express@steps=7` (any field of
`Config`: method, steps, mask, rtol, lr, momentum, weight_decay, b2, ...); the rest come from the
flags, which are the fields of `examples.cifar10.configs.Config`. `--config NAME` starts from a
preset of `configs.CONFIGS`.

Outputs, in --workdir: one training directory per optimiser and seed (metrics.jsonl, checkpoints:
rerunning with the same --workdir resumes), `results.json` and `compare.png` (validation accuracy
and loss per epoch, as the paper's Figs. 2-3).
"""

from __future__ import annotations

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


def check(config: Config) -> None:
  """A ValueError for a comparison that cannot run, before any training."""
  if config.epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {config.epochs}.")
  for label in config.optimizers:
    run = compare_lib.run_config(config, label, 0)
    optimizers.check_name(run.optimizer, run.mask)


def compare(config: Config, dataset: cifar_data.Dataset | None = None, *,
            model: nn.Module | None = None, plot_name: str = "compare.png") -> dict:
  """Runs the comparison `config` describes; prints and saves its table, plot and results.json.

  `model` replaces the network `config.model` names (its name is still the one recorded).
  Returns what results.json holds.
  """
  check(config)
  dataset = dataset or train.load_dataset(config)
  workdir = Path(config.workdir or compare_lib.default_workdir(f"runs/compare/{config.model}"))
  workdir.mkdir(parents=True, exist_ok=True)

  def train_run(run: Config, run_dir: Path) -> dict:
    return compare_lib.history(train.train_and_evaluate(run, run_dir, dataset, model=model))

  results = compare_lib.run_comparison(config, workdir, train_run)
  table = compare_lib.results_table(results, compare_lib.classification_columns(config.target))
  return compare_lib.report(config, results, workdir, table=table,
                            setting=setting_line(config, dataset), plot_name=plot_name)


def main(argv: list[str] | None = None) -> int:
  parser, args, runs = config_lib.command_line(Config, configs.CONFIGS, argv, __doc__)
  for config in runs:
    try:
      check(config)
    except ValueError as error:
      parser.error(str(error))

  def run_all() -> None:
    for config in runs:
      if args.config:
        print(f"== {args.config}: {config.model} in {config.workdir}")
      compare(config)

  return config_lib.exit_code(run_all)


if __name__ == "__main__":
  sys.exit(main())
