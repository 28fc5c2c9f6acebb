"""The Barlow Twins example's configuration, and the paper's Fig. 7 runs as named presets.

`Config` is one comparison: pretraining with each of `optimizers`, once per seed; its fields are
the command line's flags (`examples.lib.config`). Presets (`CONFIGS`, chosen with
`python -m examples.barlow_twins.main --config NAME`; other flags override their fields):

- `fig7`: the paper's Fig. 7 on a GPU: 1,000 epochs, 10 warm-up epochs, k-NN every 50.
- `cpu`: the short run measured on the 2-core CPU (README): ResNet-18 with the ImageNet stem,
  projector 1024-1024-1024, batch 128, the first 12,800 training images, 2 epochs.
"""

from __future__ import annotations

import dataclasses

from examples.barlow_twins import lars, models
from examples.lib.config import Comparison, Preset, lay, setting


@dataclasses.dataclass(frozen=True)
class Config(Comparison):
  """Pretraining with each of `optimizers`, same seed. Defaults: the authors' LARS settings with
  solo-learn's CIFAR-10 network (ResNet-18 with a 3x3 stem, projector 2048-2048-2048, batch 256).

  One pretraining run is a `Config` with one optimiser and one seed
  (`examples.lib.compare.run_config`).
  """

  optimizers: tuple[str, ...] = setting(
      ("lars", "orthogonal-lars"), f"comma-separated, from {', '.join(lars.OPTIMIZERS)}")
  backbone: str = setting("resnet18", f"one of {', '.join(models.BACKBONES)}")
  projector: tuple[int, ...] = setting(
      (2048, 2048, 2048), "projector sizes (the authors': 8192-8192-8192)", separator="-")
  epochs: int = 100
  warmup_epochs: float = setting(10, "may be fractional")
  batch_size: int = 256
  eval_batch_size: int = 512
  weights_learning_rate: float = setting(0.2, "times batch_size / 256")
  biases_learning_rate: float = setting(0.0048, "times batch_size / 256")
  weight_decay: float = 1.5e-6
  momentum: float = 0.9
  trust_coefficient: float = 1e-3
  lambd: float = models.LAMBDA
  method: str = setting("auto", "orthax method for Orthogonal LARS")
  seeds: tuple[int, ...] = setting((0,), "comma-separated seeds", flags=("--seeds", "--seed"))
  data: str | None = setting(
      None, "a cifar10_jpeg.npz copy or the official cifar-10-python.tar.gz",
      unset="$ORTHAX_CIFAR10, tensorflow-datasets, the local copy, then the official download")
  synthetic: bool = setting(False, "synthetic data (tests; no real accuracy)")
  train_size: int | None = setting(None, "first N of the 45k training images")
  test_size: int | None = setting(None, "first N of the 10k test images")
  knn_every: int = setting(0, "epochs between k-NN evaluations; 0: after the last epoch only")
  knn_k: int = 200
  knn_temperature: float = 0.1
  probe_steps: int = 1000
  probe_learning_rate: float = 1e-2
  checkpoint: bool = setting(True, "--no-checkpoint: no checkpoints (and no resuming)")
  workdir: str | None = setting(None, "where the runs go", unset="runs/barlow_twins/<time>")


FIG7 = Config(epochs=1000, warmup_epochs=10, knn_every=50)
CPU = Config(backbone="resnet18_imagenet_stem", projector=(1024, 1024, 1024), batch_size=128,
             train_size=12_800, epochs=2, warmup_epochs=0.2, eval_batch_size=512)

CONFIGS: dict[str, Preset] = {
    "fig7": lambda flags, args: lay([FIG7], flags),
    "cpu": lambda flags, args: lay([CPU], flags),
}
