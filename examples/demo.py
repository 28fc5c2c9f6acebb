"""SGD with momentum against orthogonal SGD with momentum on CIFAR-10, side by side.

A short version of the BasicCNN experiment of Tuddenham et al. (arXiv:2202.07052), run by
`examples.cifar10.compare`: both optimisers train the same model from the same initialisation on
the same batches in the same order, with the paper's protocol (batch 1024, learning rate 1e-2,
momentum 0.9, weight decay 5e-4, random crop with 4 pixels of padding and horizontal flips,
validation on 5,000 held-out training images). Only the budget is shorter by default.

    python -m examples.demo                                   # 3 epochs on 10,000 images
    python -m examples.demo --epochs 20 --train-size 45000    # closer to the paper
    python -m examples.demo --synthetic                       # no data set needed

The data is a local CIFAR-10 copy stored as concatenated JPEGs (see examples/cifar10/data.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from examples.cifar10 import compare
from examples.cifar10 import data as data_lib
from examples.cifar10.models import BasicCNN as BasicCNN

DEFAULT_DATA = data_lib.DEFAULT_PATH
OPTIMIZERS = "sgdm,orthogonal-sgdm"


@functools.partial(jax.jit, static_argnames="model")
def init_variables(model: BasicCNN, key: jax.Array) -> dict:
  """Parameters and batch statistics of a fresh model."""
  return model.init(key, jnp.zeros((1, 32, 32, 3), jnp.float32), train=False)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
      "--data", type=Path, help=f"cifar10_jpeg.npz (default: $ORTHAX_CIFAR10, else {DEFAULT_DATA})")
  parser.add_argument("--synthetic", action="store_true", help="use synthetic data instead")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--train-size", type=int, default=10_000,
                      help="first N of the 45,000 training images")
  parser.add_argument("--test-size", type=int, default=10_000, help="first N test images")
  parser.add_argument("--batch-size", type=int, default=1024)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", type=Path, default=Path("runs/demo"))
  args = parser.parse_args(argv)
  if args.epochs < 1:
    parser.error(f"--epochs must be >= 1, got {args.epochs}")
  if not args.batch_size <= args.train_size <= data_lib.TRAIN_SPLIT:
    parser.error(f"--train-size must be in [--batch-size={args.batch_size}, "
                 f"{data_lib.TRAIN_SPLIT}], got {args.train_size}")
  if not 1 <= args.test_size <= data_lib.TEST_SPLIT:
    parser.error(f"--test-size must be in [1, {data_lib.TEST_SPLIT}], got {args.test_size}")
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  flags = ["--model", "basic_cnn", "--optimizers", OPTIMIZERS, "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--seed", str(args.seed),
           "--train-size", str(args.train_size), "--test-size", str(args.test_size),
           "--workdir", str(args.out), "--no-checkpoint"]
  flags += ["--synthetic"] if args.synthetic else ["--data", str(args.data)] if args.data else []
  compare_args = compare.parse_args(flags)
  try:
    dataset = compare.load_dataset(compare_args)
  except data_lib.DataNotFoundError as error:
    print(error, file=sys.stderr)
    return 2
  results = compare.run_comparison(compare_args, dataset, args.out)
  results = {name.replace("-", "_"): runs for name, runs in results.items()}
  setting = compare.setting_line(compare_args, dataset)
  print(compare.results_table(results, compare_args.target))
  print(setting)
  compare.plot(results, args.out / "demo.png")
  config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
  metrics = {"config": config, "setting": setting,
             "results": {name: runs[0] for name, runs in results.items()}}
  (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
  print(f"plot: {args.out / 'demo.png'}")
  print(f"metrics: {args.out / 'metrics.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
