"""SGD with momentum against orthogonal SGD with momentum on CIFAR-10, side by side.

A short version of the BasicCNN experiment of Tuddenham et al. (arXiv:2202.07052), run by
`examples.cifar10.compare` with the preset `examples.cifar10.configs.demo`: both optimisers train
the same model from the same initialisation on the same batches in the same order, with the
paper's protocol (batch 1024, learning rate 1e-2, momentum 0.9, weight decay 5e-4, random crop
with 4 pixels of padding and horizontal flips, validation on 5,000 held-out training images).
Only the budget is shorter by default.

    python -m examples.demo                                   # 3 epochs on 10,000 images
    python -m examples.demo --epochs 20 --train-size 45000    # closer to the paper
    python -m examples.demo --synthetic                       # no data set needed

The data is a local CIFAR-10 copy stored as concatenated JPEGs (see examples/lib/cifar10.py).
Writes `demo.png` and `metrics.json` (each optimiser's per-epoch metrics) to --workdir (default
runs/demo).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from examples.cifar10 import compare, configs, train
from examples.lib import cifar10 as cifar_data
from examples.lib import compare as compare_lib
from examples.lib import config as config_lib

FLAGS = ("data", "synthetic", "epochs", "train_size", "test_size", "batch_size", "seeds",
         "workdir")


def parse_args(argv: list[str] | None) -> configs.Config:
  parser = config_lib.make_parser(
      configs.Config, __doc__.splitlines()[0], base=configs.demo(), fields=FLAGS)
  config = config_lib.parse(configs.Config, argv, base=configs.demo(), parser=parser)
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
  try:
    dataset = train.load_dataset(config)
  except cifar_data.DataNotFoundError as error:
    print(error, file=sys.stderr)
    return 2
  workdir = Path(config.workdir)
  results = compare.run_comparison(config, dataset, workdir)
  results = {name.replace("-", "_"): runs for name, runs in results.items()}
  setting = compare.setting_line(config, dataset)
  print(compare_lib.results_table(results, config.target))
  print(setting)
  compare_lib.plot(results, workdir / "demo.png")
  metrics = {"config": config_lib.json_values(config), "setting": setting,
             "results": {name: runs[0] for name, runs in results.items()}}
  (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
  print(f"plot: {workdir / 'demo.png'}")
  print(f"metrics: {workdir / 'metrics.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
