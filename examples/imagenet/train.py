"""ResNet-34 on ImageNet, SGDM or Orthogonal-SGDM (Tuddenham et al., Sec. 2.3.3).

The CIFAR-10 example's trainer with ImageNet's data: the same `TrainState`, optimisers
(`examples.cifar10.optimizers`), train and eval steps, epoch loop, checkpoints and metrics
(`examples.cifar10.train.fit`). Augmentation happens in the input pipeline (`data.py`), so the
step only normalises.

Data parallel over every device of every process: a ("data",) mesh over `jax.devices()`, the
state replicated, each global batch assembled from the processes' shares. Multi-host runs call
`jax.distributed.initialize()` first (`main.py --multihost`); only process 0 writes metrics.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from examples.cifar10 import train as cifar_train
from examples.imagenet import data as data_lib


@dataclasses.dataclass(frozen=True)
class Config(cifar_train.Config):
  """The paper's ImageNet protocol: ResNet-34, batch 1024, lr 1e-2, momentum 0.9, weight decay
  5e-4, 100 epochs, constant learning rate. `data` is tensorflow-datasets' data_dir;
  `train_size` and `test_size` size the synthetic data."""

  model: str = "resnet34"
  epochs: int = 100
  batch_size: int = 1024
  eval_batch_size: int = 1024
  image_size: int = 224
  num_classes: int = 1000


def load_source(config: Config) -> data_lib.Source:
  if config.synthetic:
    return data_lib.synthetic(
        config.image_size, config.num_classes, config.batch_size,
        train_size=config.train_size or 4 * config.batch_size,
        eval_size=config.test_size or config.eval_batch_size, seed=config.seed)
  return data_lib.imagenet(config.data, config.image_size, config.batch_size, seed=config.seed)


def steps_per_epoch(config: Config, source: data_lib.Source) -> int:
  if config.batch_size % jax.device_count() or config.eval_batch_size % jax.device_count():
    raise ValueError(
        f"batch_size={config.batch_size} and eval_batch_size={config.eval_batch_size} must be "
        f"multiples of the {jax.device_count()} devices.")
  steps = source.train_size // config.batch_size
  if steps == 0:
    raise ValueError(f"{source.train_size} training images are fewer than one batch of "
                     f"{config.batch_size}.")
  return steps


def summary_line(config: Config, record: dict) -> str:
  return (f"{config.optimizer} epoch {record['epoch']}/{config.epochs}: train loss "
          f"{record['train_loss']:.4f}, val loss {record['val_loss']:.4f}, val top-1 "
          f"{record['val_accuracy']:.4f}, {record['epoch_s']:.1f} s")


def train_and_evaluate(config: Config, workdir: str | Path,
                       source: data_lib.Source | None = None) -> list[dict]:
  """Trains `config.epochs` epochs (resuming from `workdir`), evaluating on the validation set.

  Returns one record per epoch: train_loss, train_accuracy, val_loss, val_accuracy (top-1),
  learning_rate, step_ms, epoch_s, compile_s (see `examples.cifar10.train.fit`).
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  source = source or load_source(config)
  mesh = cifar_train.make_mesh()
  model = cifar_train.make_model(config.model, config.num_classes)
  steps = steps_per_epoch(config, source)
  state = cifar_train.create_train_state(config, model, steps, mesh, image_size=config.image_size)
  batched = NamedSharding(mesh, P("data"))
  eval_fn = cifar_train.make_eval_fn(model, source.mean, source.std, mesh)
  step = functools.partial(cifar_train.train_step, augment=None)

  def evaluate(state):
    batches = data_lib.global_batches(source.eval_batches(), batched)
    loss, accuracy = cifar_train.evaluate_batches(state, eval_fn, batches)
    return {"val_loss": loss, "val_accuracy": accuracy}

  return cifar_train.fit(
      config, workdir, state, steps=steps,
      epoch_batches=lambda epoch: data_lib.global_batches(source.train_batches(epoch), batched),
      compile_step=lambda state: cifar_train.compile_train_step(
          state, source, config.batch_size, mesh, step=step, image_size=config.image_size),
      evaluate=evaluate, schedule=cifar_train.make_schedule(config, steps),
      summary=summary_line)

