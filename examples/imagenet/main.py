"""ImageNet ResNet-34: SGDM against Orthogonal-SGDM, the paper's Sec. 2.3.3 protocol.

    python -m examples.imagenet.main --data ~/tensorflow_datasets            # both optimisers
    python -m examples.imagenet.main --multihost --data gs://bucket/tfds ...  # on every host
    python -m examples.imagenet.main --synthetic --image-size 64 --epochs 1   # no data needed

Each optimiser trains in `<workdir>/<optimiser>/` (metrics.jsonl, config.json, orbax
checkpoints every epoch; rerunning the command resumes). Prints a markdown table of the final
validation top-1 accuracy.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import flax.linen as nn
import jax

from examples.imagenet import train
from examples.lib import config as config_lib


def main(argv: list[str] | None = None, *, model: nn.Module | None = None) -> int:
  """The command line; `model` replaces the network --model names (for tests)."""
  config = config_lib.parse(train.Config, argv, description=__doc__)
  if config.multihost:
    jax.distributed.initialize()  # coordinator and process ids from the cluster's environment
  time_tag = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  workdir = Path(config.workdir or f"runs/imagenet/{config.model}-{time_tag}")
  source = train.load_source(config)
  rows = []
  for name in config.optimizers:
    records = train.train_and_evaluate(
        config.run(name), workdir / name, source, model=model)
    last = records[-1]
    seconds = sum(r["epoch_s"] for r in records)
    rows.append(f"| {name} | {last['epoch']} | {last['train_loss']:.4f} | "
                f"{100 * last['val_accuracy']:.2f} % | {seconds:.0f} s |")
  if jax.process_index() == 0:
    print("| optimiser | epochs | final train loss | val top-1 | wall time |\n"
          "| --- | ---: | ---: | ---: | ---: |\n" + "\n".join(rows))
    print(f"{config.model} on {source.name}, {jax.device_count()} x {jax.devices()[0].device_kind}"
          f" on {jax.process_count()} process(es), jax {jax.__version__}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
