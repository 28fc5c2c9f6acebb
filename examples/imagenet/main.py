"""ImageNet ResNet-34: SGDM against Orthogonal-SGDM, the paper's Sec. 2.3.3 protocol.

    python -m examples.imagenet.main --data ~/tensorflow_datasets            # both optimisers
    python -m examples.imagenet.main --multihost --data gs://bucket/tfds ...  # on every host
    python -m examples.imagenet.main --config check                           # no data needed

Each optimiser and seed trains in `<workdir>/<optimiser>/seed<k>/` (metrics.jsonl, config.json,
orbax checkpoints every epoch; rerunning the command resumes). Process 0 prints a markdown table
of the final validation top-1 accuracy and writes `results.json` and `compare.png` (validation
accuracy and loss per epoch).
"""

from __future__ import annotations

import sys
from pathlib import Path

import flax.linen as nn
import jax

from examples.imagenet import configs, train
from examples.imagenet.configs import Config
from examples.lib import compare as compare_lib
from examples.lib import config as config_lib

COLUMNS = (
    compare_lib.Column("epochs", lambda label, runs: str(runs[0]["epoch"][-1])),
    compare_lib.final("train_loss", "final train loss"),
    compare_lib.final("val_loss", "val loss"),
    compare_lib.final("val_accuracy", "val top-1", ".2f", 100, " %"),
    compare_lib.run_total("mean_step_ms", "step time (ms)"),
    compare_lib.run_total("wall_s", "wall time (s)", ".0f"),
)


def compare(config: Config, *, model: nn.Module | None = None) -> dict | None:
  """Trains each optimiser and seed of `config`; on process 0, prints and saves the table, plot
  and results.json (which it returns). `model` replaces the network `config.model` names."""
  workdir = Path(config.workdir or compare_lib.default_workdir(f"runs/imagenet/{config.model}"))
  workdir.mkdir(parents=True, exist_ok=True)
  source = train.load_source(config)

  def train_run(run: Config, run_dir: Path) -> dict:
    return compare_lib.history(train.train_and_evaluate(run, run_dir, source, model=model))

  results = compare_lib.run_comparison(config, workdir, train_run)
  if jax.process_index() != 0:
    return None
  setting = f"{config.model} on {source.name}; {compare_lib.device_line()}"
  return compare_lib.report(config, results, workdir, setting=setting,
                            table=compare_lib.results_table(results, COLUMNS))


def main(argv: list[str] | None = None, *, model: nn.Module | None = None) -> int:
  """The command line; `model` replaces the network --model names (for tests)."""
  _, _, runs = config_lib.command_line(Config, configs.CONFIGS, argv, __doc__)
  if any(config.multihost for config in runs):
    jax.distributed.initialize()  # coordinator and process ids from the cluster's environment
  for config in runs:
    compare(config, model=model)
  return 0


if __name__ == "__main__":
  sys.exit(main())
