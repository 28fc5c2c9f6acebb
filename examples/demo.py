"""SGD with momentum against orthogonal SGD with momentum on CIFAR-10, side by side.

A short version of the BasicCNN experiment of Tuddenham et al. (arXiv:2202.07052): the CIFAR-10
example (`examples.cifar10.main`) with its preset `demo` (`examples.cifar10.configs.demo`). Both
optimisers train the same model from the same initialisation on the same batches in the same
order, with the paper's protocol (batch 1024, learning rate 1e-2, momentum 0.9, weight decay
5e-4, random crop with 4 pixels of padding and horizontal flips, validation on 5,000 held-out
training images). Only the budget is shorter by default.

    python -m examples.demo                                   # 3 epochs on 10,000 images
    python -m examples.demo --epochs 20 --train-size 45000    # closer to the paper
    python -m examples.demo --synthetic                       # no data set needed

Writes `demo.png` and `results.json` (each optimiser's per-epoch metrics) to --workdir.
"""

from __future__ import annotations

import sys

from examples.cifar10 import configs
from examples.cifar10 import main as cifar10
from examples.lib import cifar10 as cifar_data
from examples.lib import config as config_lib

FLAGS = ("data", "download", "synthetic", "epochs", "train_size", "test_size", "batch_size",
         "seeds", "workdir")


def parse_args(argv: list[str] | None) -> configs.Config:
  parser, _, (config,) = config_lib.command_line(
      configs.Config, {}, argv, __doc__.splitlines()[0], base=configs.demo(), fields=FLAGS)
  if config.epochs < 1:
    parser.error(f"--epochs must be >= 1, got {config.epochs}")
  if not config.batch_size <= config.train_size <= cifar_data.TRAIN_SPLIT:
    parser.error(f"--train-size must be in [--batch-size={config.batch_size}, "
                 f"{cifar_data.TRAIN_SPLIT}], got {config.train_size}")
  if not 1 <= config.test_size <= cifar_data.TEST_SPLIT:
    parser.error(f"--test-size must be in [1, {cifar_data.TEST_SPLIT}], got {config.test_size}")
  return config


def main(argv: list[str] | None = None) -> int:
  config = parse_args(argv)
  return config_lib.exit_code(lambda: cifar10.compare(config, plot_name="demo.png"))


if __name__ == "__main__":
  sys.exit(main())
