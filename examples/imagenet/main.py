"""ImageNet ResNet-34: SGDM against Orthogonal-SGDM, the paper's Sec. 2.3.3 protocol.

    python -m examples.imagenet.main --data ~/tensorflow_datasets            # both optimisers
    python -m examples.imagenet.main --multihost --data gs://bucket/tfds ...  # on every host
    python -m examples.imagenet.main --synthetic --image-size 64 --epochs 1   # no data needed

Each optimiser trains in `<workdir>/<optimiser>/` (metrics.jsonl, config.json, orbax
checkpoints every epoch; rerunning the command resumes). Prints a markdown table of the final
validation top-1 accuracy.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import jax

from examples.cifar10 import optimizers
from examples.imagenet import train


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  add = parser.add_argument
  defaults = train.Config()
  add("--optimizers", default="sgdm,orthogonal-sgdm",
      help=f"comma-separated, from {', '.join(optimizers.OPTIMIZERS)}")
  add("--model", default=defaults.model)
  for name in ("epochs", "batch_size", "eval_batch_size", "image_size", "num_classes", "seed"):
    add("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
  for name in ("learning_rate", "momentum", "weight_decay"):
    add("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
  add("--method", default=defaults.method, help="orthax method for the orthogonal optimisers")
  add("--mask", default=defaults.mask, choices=sorted(optimizers.MASKS))
  add("--data", default=None, help="tensorflow-datasets data_dir holding imagenet2012")
  add("--synthetic", action="store_true", help="random class patterns instead of ImageNet")
  add("--train-size", type=int, default=None, help="synthetic training images")
  add("--test-size", type=int, default=None, help="synthetic validation images")
  add("--multihost", action="store_true", help="call jax.distributed.initialize() first")
  add("--no-checkpoint", dest="checkpoint", action="store_false")
  add("--workdir", default=None, help="default runs/imagenet/<model>-<time>")
  return parser


def make_config(args: argparse.Namespace, optimizer: str) -> train.Config:
  keys = ("model", "epochs", "batch_size", "eval_batch_size", "image_size", "num_classes", "seed",
          "learning_rate", "momentum", "weight_decay", "method", "mask", "data", "synthetic",
          "train_size", "test_size", "checkpoint")
  return train.Config(optimizer=optimizer, **{k: getattr(args, k) for k in keys})


def main(argv: list[str] | None = None) -> int:
  args = make_parser().parse_args(argv)
  if args.multihost:
    jax.distributed.initialize()  # coordinator and process ids from the cluster's environment
  names = args.optimizers.split(",")
  time_tag = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  workdir = Path(args.workdir or f"runs/imagenet/{args.model}-{time_tag}")
  source = train.load_source(make_config(args, names[0]))
  rows = []
  for name in names:
    records = train.train_and_evaluate(make_config(args, name), workdir / name, source)
    last = records[-1]
    seconds = sum(r["epoch_s"] for r in records)
    rows.append(f"| {name} | {last['epoch']} | {last['train_loss']:.4f} | "
                f"{100 * last['val_accuracy']:.2f} % | {seconds:.0f} s |")
  if jax.process_index() == 0:
    print("| optimiser | epochs | final train loss | val top-1 | wall time |\n"
          "| --- | ---: | ---: | ---: | ---: |\n" + "\n".join(rows))
    print(f"{args.model} on {source.name}, {jax.device_count()} x {jax.devices()[0].device_kind}"
          f" on {jax.process_count()} process(es), jax {jax.__version__}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
