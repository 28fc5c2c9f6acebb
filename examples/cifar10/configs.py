"""The paper's CIFAR-10 experiments as `compare` command lines.

Each function returns a list of argument lists for `python -m examples.cifar10.compare`, one per
comparison (per model, per grid point, per batch size). Run one with
`python -m examples.cifar10.compare --config NAME [--model M] [--repeats N] [flags]`: `--model`
picks one model of a suite (or replaces the default model), `--seed/--seeds/--repeats` set the
seeds, `--workdir` the root (default `runs`), and any other flag overrides the config's value
(e.g. `--epochs 10` for a short check).

The protocol of Tuddenham et al. (arXiv:2202.07052), Sec. 4: batch 1024, lr 1e-2, momentum 0.9,
weight decay 5e-4, 100 epochs, constant learning rate, random crop (4-pixel padding) and flips,
45k/5k train/validation split, test on the 10k test set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from examples.cifar10.models import MODELS

PROTOCOL = ["--epochs", "100", "--batch-size", "1024", "--lr", "1e-2", "--momentum", "0.9",
            "--weight-decay", "5e-4", "--schedule", "constant"]
TABLE1_MODELS = tuple(MODELS)


def common(seeds: Sequence[int], workdir: str) -> list[str]:
  return ["--seeds", ",".join(str(s) for s in seeds), "--workdir", workdir]


def table1(model: str | None = None, seeds: Sequence[int] = (0,),
           workdir: str = "runs") -> list[list[str]]:
  """Table 1: SGDM against Orthogonal-SGDM on every model of the suite (or on `model`)."""
  return [["--model", m, "--optimizers", "sgdm,orthogonal-sgdm", *PROTOCOL,
           *common(seeds, f"{workdir}/table1/{m}")]
          for m in ((model,) if model else TABLE1_MODELS)]


def table2(model: str | None = None, seeds: Sequence[int] = (0,),
           workdir: str = "runs") -> list[list[str]]:
  """Table 2: ResNet-20 with He et al.'s schedule: batch 128, lr 0.1 / 10 at epochs 100 and 150,
  200 epochs, momentum 0.9, weight decay 1e-4."""
  model = model or "resnet20"
  return [["--model", model, "--optimizers", "sgdm,orthogonal-sgdm", "--epochs", "200",
           "--batch-size", "128", "--lr", "0.1", "--momentum", "0.9", "--weight-decay", "1e-4",
           "--schedule", "step", "--decay-epochs", "100,150",
           *common(seeds, f"{workdir}/table2/{model}")]]


def table3(model: str | None = None, seeds: Sequence[int] = (0,),
           workdir: str = "runs") -> list[list[str]]:
  """Table 3: Adam against SGDM, each with and without orthogonalisation, on ResNet-20 over the
  grid lr in {1e-1, 1e-2, 1e-3} x momentum (Adam's b1) in {0.9, 0.99}, Adam's b2 = 0.99; the
  rest is the Table 1 protocol. One comparison (four optimisers) per grid point."""
  model = model or "resnet20"
  return [["--model", model, "--optimizers", "sgdm,orthogonal-sgdm,adam,orthogonal-adam",
           *PROTOCOL, "--lr", lr, "--momentum", momentum, "--b2", "0.99",
           *common(seeds, f"{workdir}/table3/{model}-lr{lr}-m{momentum}")]
          for lr in ("1e-1", "1e-2", "1e-3") for momentum in ("0.9", "0.99")]


def table4(model: str | None = None, seeds: Sequence[int] = (0,),
           workdir: str = "runs") -> list[list[str]]:
  """Table 4: is it the orthogonalisation or the normalisation? N-SGDM (each layer's gradient to
  unit norm) and CN-SGDM (each component's) against SGDM and Orthogonal-SGDM (ResNet-20)."""
  model = model or "resnet20"
  return [["--model", model, "--optimizers", "sgdm,orthogonal-sgdm,n-sgdm,cn-sgdm", *PROTOCOL,
           *common(seeds, f"{workdir}/table4/{model}")]]


def table5(model: str | None = None, seeds: Sequence[int] = (0,),
           workdir: str = "runs") -> list[list[str]]:
  """Table 5: orthogonalising convolution kernels only (the classifier left to SGDM)."""
  model = model or "resnet20"
  return [["--model", model, "--optimizers", "sgdm,orthogonal-sgdm,orthogonal-sgdm@mask=conv",
           *PROTOCOL, *common(seeds, f"{workdir}/table5/{model}")]]


def fig11(model: str | None = None, seeds: Sequence[int] = (1, 2, 3),
          workdir: str = "runs") -> list[list[str]]:
  """Fig. 11: small batches (4 and 16), where a gradient has rank <= batch size: SGDM and
  Orthogonal-SGDM on every kernel, on the conv kernels only, on the classifier only, and
  rank-aware (rtol 1e-2), on BasicCNN for 10 epochs (our budget: 11,250 steps per epoch at
  batch 4)."""
  model = model or "basic_cnn"
  optimizers = ("sgdm,orthogonal-sgdm,orthogonal-sgdm@mask=conv,orthogonal-sgdm@mask=dense,"
                "orthogonal-sgdm@rtol=0.01")
  return [["--model", model, "--optimizers", optimizers, *PROTOCOL, "--epochs", "10",
           "--batch-size", str(batch), "--eval-batch-size", "1000",
           *common(seeds, f"{workdir}/fig11/{model}-batch{batch}")]
          for batch in (4, 16)]


CONFIGS: dict[str, Callable[..., list[list[str]]]] = {
    "table1": table1,
    "table2": table2,
    "table3": table3,
    "table4": table4,
    "table5": table5,
    "fig11": fig11,
}
