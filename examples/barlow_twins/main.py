"""Barlow Twins on CIFAR-10: LARS against Orthogonal LARS, same seed, data and augmentations.

    python -m examples.barlow_twins.main --epochs 100                         # both optimisers
    python -m examples.barlow_twins.main --optimizers orthogonal-lars --backbone resnet18 ...

Each optimiser pretrains in `<workdir>/<optimiser>/` (metrics.jsonl, config.json, checkpoints;
rerunning the command resumes), then its frozen backbone is evaluated: k-NN and linear probe on
the CIFAR-10 test set. Writes `results.json` and `loss.png` (the Barlow Twins loss per epoch, as
the paper's Fig. 7) to the workdir and prints a markdown table.
"""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

from examples.barlow_twins import lars, train
from examples.lib import cifar10 as cifar_data
from examples.lib import config as config_lib


def plot(results: dict[str, list[dict]], path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
  for name, records in results.items():
    losses = [loss for r in records for loss in r["train_loss_steps"]]
    epochs = (np.arange(len(losses)) + 1) / len(records[0]["train_loss_steps"])
    ax.plot(epochs, losses, linewidth=1,
            label=name.replace("lars", "LARS").replace("orthogonal-", "Orthogonal "))
  ax.set(xlabel="epoch", ylabel="Barlow Twins loss (train batch)", yscale="log")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def results_table(results: dict[str, list[dict]]) -> str:
  lines = ["| optimiser | epochs | final train loss | k-NN test accuracy | linear probe test "
           "accuracy | step time | wall time |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for name, records in results.items():
    last = records[-1]
    probe = last.get("probe_test_accuracy")
    probe_cell = "-" if probe is None else f"{100 * probe:.2f} %"
    lines.append(
        f"| {name} | {last['epoch']} | {last['train_loss']:.1f} | "
        f"{100 * last['knn_accuracy']:.2f} % | {probe_cell} | "
        f"{sum(r['step_ms'] for r in records) / len(records):.0f} ms | "
        f"{sum(r['epoch_s'] for r in records):.0f} s |")
  return "\n".join(lines)


def main(argv: list[str] | None = None, *, backbone: nn.Module | None = None) -> int:
  """The command line; `backbone` replaces the network --backbone names (for tests)."""
  argv = sys.argv[1:] if argv is None else argv
  parser = config_lib.make_parser(train.Config, __doc__)
  config = config_lib.parse(train.Config, argv, parser=parser)
  for name in config.optimizers:
    if name not in lars.OPTIMIZERS:
      parser.error(f"unknown optimiser {name!r}; choose from {', '.join(lars.OPTIMIZERS)}")
  time_tag = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  workdir = Path(config.workdir or f"runs/barlow_twins/{time_tag}")
  try:
    dataset = train.load_dataset(config)
  except cifar_data.DataNotFoundError as error:
    print(error, file=sys.stderr)
    return 2
  results = {name: train.pretrain(config.run(name), workdir / name, dataset,
                                  backbone=backbone)
             for name in config.optimizers}
  command = "python -m examples.barlow_twins.main " + shlex.join(argv)
  device = f"{jax.devices()[0].device_kind} x {jax.device_count()}, jax {jax.__version__}"
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "results.json").write_text(json.dumps(
      {"command": command, "device": device, "date": datetime.date.today().isoformat(),
       "train_images": len(dataset.train.labels), "test_images": len(dataset.test.labels),
       "source": dataset.source, "results": results}, indent=2) + "\n")
  plot(results, workdir / "loss.png")
  print(results_table(results))
  print(f"\n{command}\n{device}, {datetime.date.today()}, {len(dataset.train.labels)} training "
        f"images of {dataset.source}; loss curves in {workdir / 'loss.png'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
