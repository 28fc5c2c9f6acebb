"""Barlow Twins on CIFAR-10: LARS against Orthogonal LARS, same seeds, data and augmentations.

    python -m examples.barlow_twins.main --epochs 100                         # both optimisers
    python -m examples.barlow_twins.main --config fig7 --workdir runs/fig7    # the paper's run
    python -m examples.barlow_twins.main --optimizers orthogonal-lars --backbone resnet18 ...

Each optimiser and seed pretrains in `<workdir>/<optimiser>/seed<k>/` (metrics.jsonl,
config.json, checkpoints; rerunning the command resumes), then its frozen backbone is evaluated:
k-NN and linear probe on the CIFAR-10 test set. Writes `results.json` and `loss.png` (the Barlow
Twins loss per step, as the paper's Fig. 7) to the workdir and prints a markdown table.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import flax.linen as nn
import numpy as np

from examples.barlow_twins import configs, lars, train
from examples.barlow_twins.configs import Config
from examples.lib import cifar10 as cifar_data
from examples.lib import compare as compare_lib
from examples.lib import config as config_lib


def steps_losses(run: dict) -> tuple[np.ndarray, np.ndarray]:
  """Every step's loss against its epoch (fractional)."""
  losses = [loss for epoch in run["train_loss_steps"] for loss in epoch]
  return (np.arange(len(losses)) + 1) / len(run["train_loss_steps"][0]), np.asarray(losses)


PANELS = (compare_lib.Panel("Barlow Twins loss", "epoch", "Barlow Twins loss (train batch)",
                            steps_losses, yscale="log"),)


def last(key: str, header: str) -> compare_lib.Column:
  """The last epoch's accuracy `key` (k-NN, probe), mean ± std over seeds; `-` if not evaluated."""

  def cell(label: str, runs: list[dict]) -> str:
    values = [r[key][-1] if key in r else None for r in runs]
    return "-" if None in values else compare_lib.mean_std(values, ".2f", 100) + " %"

  return compare_lib.Column(header, cell)


COLUMNS = (
    compare_lib.Column("epochs", lambda label, runs: str(runs[0]["epoch"][-1])),
    compare_lib.final("train_loss", "final train loss", ".1f"),
    last("knn_accuracy", "k-NN test accuracy"),
    last("probe_test_accuracy", "linear probe test accuracy"),
    compare_lib.run_total("mean_step_ms", "step time (ms)", ".0f"),
    compare_lib.run_total("wall_s", "wall time (s)", ".0f"),
)


def compare(config: Config, dataset: cifar_data.Dataset | None = None, *,
            backbone: nn.Module | None = None, command: str = "") -> dict:
  """Pretrains with each optimiser and seed of `config`; prints and saves the table, plot and
  results.json (which returns). `backbone` replaces the network `config.backbone` names."""
  dataset = dataset or train.load_dataset(config)
  workdir = Path(config.workdir or compare_lib.default_workdir("runs/barlow_twins"))
  workdir.mkdir(parents=True, exist_ok=True)

  def pretrain(run: Config, run_dir: Path) -> dict:
    return compare_lib.history(train.pretrain(run, run_dir, dataset, backbone=backbone))

  results = compare_lib.run_comparison(config, workdir, pretrain)
  setting = (f"{len(dataset.train.labels)} training images of {dataset.source}, "
             f"{len(dataset.test.labels)} test images; {compare_lib.device_line()}")
  return compare_lib.report(
      config, results, workdir, table=compare_lib.results_table(results, COLUMNS),
      setting=setting, panels=PANELS, plot_name="loss.png", command=command)


def main(argv: list[str] | None = None, *, backbone: nn.Module | None = None) -> int:
  """The command line; `backbone` replaces the network --backbone names (for tests)."""
  argv = sys.argv[1:] if argv is None else argv
  parser, _, runs = config_lib.command_line(Config, configs.CONFIGS, argv, __doc__)
  for config in runs:
    for name in config.optimizers:
      if name not in lars.OPTIMIZERS:
        parser.error(f"unknown optimiser {name!r}; choose from {', '.join(lars.OPTIMIZERS)}")
  command = "python -m examples.barlow_twins.main " + shlex.join(argv)
  return config_lib.exit_code(
      lambda: [compare(config, backbone=backbone, command=command) for config in runs])


if __name__ == "__main__":
  sys.exit(main())
