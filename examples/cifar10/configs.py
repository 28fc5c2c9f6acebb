"""The CIFAR-10 example's configuration, and the paper's experiments as named presets.

`Config` is one comparison: `model` trained with each of `optimizers`, once per seed. Its fields
are the command line's flags (`examples.lib.config`). Each paper preset is a function returning a
list of configs, one per comparison (per model, per grid point, per batch size), each with its
workdir under a root. Run one with
`python -m examples.cifar10.main --config NAME [--model M] [--seeds 0,1] [flags]`: `--model`
picks one model of a suite (or replaces the default model), `--workdir` is the root (default
`runs`), and any other flag overrides the preset's value (e.g. `--epochs 10` for a short check).
`CONFIGS` holds them by name, with `demo` (`python -m examples.demo`).

The protocol of Tuddenham et al. (arXiv:2202.07052), Sec. 4: batch 1024, lr 1e-2, momentum 0.9,
weight decay 5e-4, 100 epochs, constant learning rate, random crop (4-pixel padding) and flips,
45k/5k train/validation split, test on the 10k test set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from examples.lib.config import Comparison, Preset, lay, setting
from examples.lib.optimizers import MASKS, OPTIMIZERS
from examples.models.convnets import MODELS


@dataclasses.dataclass(frozen=True)
class Config(Comparison):
  """One comparison. Defaults: the paper's Table 1 protocol, with a 3-epoch budget.

  One training run is a `Config` with one optimiser and one seed
  (`examples.lib.compare.run_config`).
  """

  model: str = setting("basic_cnn", f"one of {', '.join(MODELS)}")
  optimizers: tuple[str, ...] = setting(
      ("sgdm", "orthogonal-sgdm"),
      f"comma-separated labels name[@field=value...], name one of "
      f"{', '.join(OPTIMIZERS)}; e.g. orthogonal-sgdm@mask=conv@rtol=0.01")
  epochs: int = 3
  batch_size: int = 1024
  eval_batch_size: int = 1024
  learning_rate: float = setting(1e-2, flags=("--lr", "--learning-rate"))
  momentum: float = setting(0.9, "SGD's momentum, Adam's b1, Muon's beta")
  weight_decay: float = setting(5e-4, "added to the (orthogonalised) gradient")
  b2: float = setting(0.999, "Adam's b2")
  method: str = setting("auto", "orthax method: auto, svd, eigh, newton_schulz, polar_express")
  mask: str = setting("all", "the kernels to orthogonalise", choices=tuple(MASKS))
  rtol: float | None = setting(None, "orthax's rank-aware cut", unset="orthax's")
  steps: int | None = setting(None, "iterations of the approximate methods", unset="orthax's, 5")
  schedule: str = setting("constant", "step: lr / 10 at each of decay_epochs",
                          choices=("constant", "step"))
  decay_epochs: tuple[int, ...] = ()
  seeds: tuple[int, ...] = setting((0,), "comma-separated seeds", flags=("--seeds", "--seed"))
  target: float = setting(0.5, "validation accuracy for 'epochs to target'")
  data: str | None = setting(
      None, "a cifar10_jpeg.npz copy or the official cifar-10-python.tar.gz",
      unset="$ORTHAX_CIFAR10, tensorflow-datasets, the local copy, then the official download")
  download: bool = setting(
      False, "let tensorflow-datasets (if installed) download and prepare cifar10")
  synthetic: bool = setting(False, "synthetic data (tests; no real accuracy)")
  train_size: int | None = setting(None, "first N of the 45k training images")
  validation_size: int | None = setting(None, "first N of the 5k validation images")
  test_size: int | None = setting(None, "first N of the 10k test images")
  diagnostics: bool = setting(False, "log component cosines, dead parameters, ...")
  checkpoint: bool = setting(True, "--no-checkpoint: no checkpoints (and no resuming)")
  workdir: str | None = setting(None, "where the runs go", unset="runs/compare/<model>-<time>")


PROTOCOL = Config(epochs=100, batch_size=1024, learning_rate=1e-2, momentum=0.9,
                  weight_decay=5e-4, schedule="constant")
TABLE1_MODELS = tuple(MODELS)


def table1(model: str | None = None) -> list[Config]:
  """Table 1: SGDM against Orthogonal-SGDM on every model of the suite (or on `model`)."""
  return [dataclasses.replace(PROTOCOL, model=m, workdir=f"table1/{m}")
          for m in ((model,) if model else TABLE1_MODELS)]


def table2(model: str | None = None) -> list[Config]:
  """Table 2: ResNet-20 with He et al.'s schedule: batch 128, lr 0.1 / 10 at epochs 100 and 150,
  200 epochs, momentum 0.9, weight decay 1e-4."""
  model = model or "resnet20"
  return [dataclasses.replace(
      PROTOCOL, model=model, epochs=200, batch_size=128, learning_rate=0.1, weight_decay=1e-4,
      schedule="step", decay_epochs=(100, 150), workdir=f"table2/{model}")]


def table3(model: str | None = None) -> list[Config]:
  """Table 3: Adam against SGDM, each with and without orthogonalisation, on ResNet-20 over the
  grid lr in {1e-1, 1e-2, 1e-3} x momentum (Adam's b1) in {0.9, 0.99}, Adam's b2 = 0.99; the
  rest is the Table 1 protocol. One comparison (four optimisers) per grid point."""
  model = model or "resnet20"
  return [dataclasses.replace(
      PROTOCOL, model=model, optimizers=("sgdm", "orthogonal-sgdm", "adam", "orthogonal-adam"),
      learning_rate=float(lr), momentum=float(momentum), b2=0.99,
      workdir=f"table3/{model}-lr{lr}-m{momentum}")
      for lr in ("1e-1", "1e-2", "1e-3") for momentum in ("0.9", "0.99")]


def table4(model: str | None = None) -> list[Config]:
  """Table 4: is it the orthogonalisation or the normalisation? N-SGDM (each layer's gradient to
  unit norm) and CN-SGDM (each component's) against SGDM and Orthogonal-SGDM (ResNet-20)."""
  model = model or "resnet20"
  return [dataclasses.replace(
      PROTOCOL, model=model, optimizers=("sgdm", "orthogonal-sgdm", "n-sgdm", "cn-sgdm"),
      workdir=f"table4/{model}")]


def table5(model: str | None = None) -> list[Config]:
  """Table 5: orthogonalising convolution kernels only (the classifier left to SGDM)."""
  model = model or "resnet20"
  return [dataclasses.replace(
      PROTOCOL, model=model, optimizers=("sgdm", "orthogonal-sgdm", "orthogonal-sgdm@mask=conv"),
      workdir=f"table5/{model}")]


def fig11(model: str | None = None) -> list[Config]:
  """Fig. 11: small batches (4 and 16), where a gradient has rank <= batch size: SGDM and
  Orthogonal-SGDM on every kernel, on the conv kernels only, on the classifier only, and
  rank-aware (rtol 1e-2), on BasicCNN for 10 epochs (our budget: 11,250 steps per epoch at
  batch 4), seeds 1, 2, 3."""
  model = model or "basic_cnn"
  labels = ("sgdm", "orthogonal-sgdm", "orthogonal-sgdm@mask=conv", "orthogonal-sgdm@mask=dense",
            "orthogonal-sgdm@rtol=0.01")
  return [dataclasses.replace(
      PROTOCOL, model=model, optimizers=labels, epochs=10, batch_size=batch, eval_batch_size=1000,
      seeds=(1, 2, 3), workdir=f"fig11/{model}-batch{batch}")
      for batch in (4, 16)]


def table1_methods(model: str | None = None) -> list[Config]:
  """Table 1's protocol for 20 epochs with Orthogonal-SGDM's U V^T computed each way: exact
  (svd) and approximate (Polar Express with 5 and 7 steps, Newton-Schulz with 5), against
  SGDM; seeds 0 and 1."""
  model = model or "basic_cnn"
  labels = ("sgdm", "orthogonal-sgdm@method=svd", "orthogonal-sgdm@method=polar_express",
            "orthogonal-sgdm@method=polar_express@steps=7",
            "orthogonal-sgdm@method=newton_schulz")
  return [dataclasses.replace(PROTOCOL, model=model, optimizers=labels, epochs=20, seeds=(0, 1),
                              target=0.6, workdir=f"table1_methods/{model}")]


def demo() -> Config:
  """`python -m examples.demo`: SGDM against Orthogonal-SGDM on BasicCNN, 3 epochs on the first
  10,000 training images, no checkpoints."""
  return Config(train_size=10_000, test_size=10_000, checkpoint=False, workdir="runs/demo")


def suite(configs: Callable[[str | None], list[Config]]) -> Preset:
  """A paper preset as `examples.lib.config.command_line` calls it: `--model` picks one model
  of the suite (or replaces the default), `--workdir` is the root of the configs' workdirs
  (default `runs`), and the other flags given replace the configs' fields."""

  def preset(flags: dict, args) -> list[Config]:
    del args
    flags = dict(flags)
    model, root = flags.pop("model", None), flags.pop("workdir", "runs")
    return lay([dataclasses.replace(c, workdir=f"{root}/{c.workdir}") for c in configs(model)],
               flags)

  return preset


CONFIGS: dict[str, Preset] = {
    "table1": suite(table1),
    "table1_methods": suite(table1_methods),
    "table2": suite(table2),
    "table3": suite(table3),
    "table4": suite(table4),
    "table5": suite(table5),
    "fig11": suite(fig11),
    "demo": lambda flags, args: lay([demo()], flags),
}
