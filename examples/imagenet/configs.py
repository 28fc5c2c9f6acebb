"""The ImageNet example's configuration, and its runs as named presets.

`Config` is one comparison: the model trained with each of `optimizers`, once per seed; its
fields are the command line's flags (`examples.lib.config`). Presets (`CONFIGS`, chosen with
`python -m examples.imagenet.main --config NAME`; other flags override their fields):

- `paper`: the paper's Sec. 2.3.3 protocol (the defaults): ResNet-34, batch 1024, lr 1e-2,
  momentum 0.9, weight decay 5e-4, 100 epochs, constant learning rate.
- `check`: the pipeline end to end without the data: synthetic 64-pixel images, batch 64,
  one epoch.
"""

from __future__ import annotations

import dataclasses

from examples.lib.config import Comparison, Preset, lay, setting
from examples.lib.optimizers import MASKS, OPTIMIZERS
from examples.models import convnets


@dataclasses.dataclass(frozen=True)
class Config(Comparison):
  """The paper's ImageNet protocol: ResNet-34, batch 1024, lr 1e-2, momentum 0.9, weight decay
  5e-4, 100 epochs, constant learning rate; each of `optimizers` trains once.

  One training run is a `Config` with one optimiser and one seed
  (`examples.lib.compare.run_config`).
  """

  optimizers: tuple[str, ...] = setting(
      ("sgdm", "orthogonal-sgdm"),
      f"comma-separated labels name[@field=value...], name one of {', '.join(OPTIMIZERS)}")
  model: str = setting("resnet34", f"one of {', '.join(convnets.MODELS)}")
  epochs: int = 100
  batch_size: int = setting(1024, "global: split over every device of every host")
  eval_batch_size: int = 1024
  image_size: int = 224
  num_classes: int = 1000
  seeds: tuple[int, ...] = setting((0,), "comma-separated seeds", flags=("--seeds", "--seed"))
  learning_rate: float = 1e-2
  momentum: float = 0.9
  weight_decay: float = 5e-4
  method: str = setting("auto", "orthax method for the orthogonal optimisers")
  steps: int | None = setting(None, "iterations of the approximate methods", unset="orthax's, 5")
  mask: str = setting("all", "the kernels to orthogonalise", choices=tuple(MASKS))
  data: str | None = setting(None, "tensorflow-datasets data_dir holding imagenet2012")
  synthetic: bool = setting(False, "random class patterns instead of ImageNet")
  train_size: int | None = setting(None, "synthetic training images (default 4 batches)")
  test_size: int | None = setting(None, "synthetic validation images (default 1 batch)")
  multihost: bool = setting(False, "call jax.distributed.initialize() first")
  checkpoint: bool = setting(True, "--no-checkpoint: no checkpoints (and no resuming)")
  workdir: str | None = setting(None, "where the runs go", unset="runs/imagenet/<model>-<time>")


CHECK = Config(synthetic=True, image_size=64, epochs=1, batch_size=64, eval_batch_size=64)

CONFIGS: dict[str, Preset] = {
    "paper": lambda flags, args: lay([Config()], flags),
    "check": lambda flags, args: lay([CHECK], flags),
}
