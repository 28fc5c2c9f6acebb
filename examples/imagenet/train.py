"""ResNet-34 on ImageNet, SGDM or Orthogonal-SGDM (Tuddenham et al., Sec. 2.3.3).

The examples' trainer (`examples.lib.train`: state, steps, the epoch loop `fit`, checkpoints,
metrics) with ImageNet's data. Augmentation happens in the input pipeline (`data.py`), so the
step only normalises.

Data parallel over every device of every process: a ("data",) mesh over `jax.devices()`, the
state replicated, each global batch assembled from the processes' shares. Multi-host runs call
`jax.distributed.initialize()` first (`main.py --multihost`); only process 0 writes metrics.
"""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from examples.imagenet import data as imagenet_data
from examples.imagenet.configs import Config
from examples.lib import data, optimizers, train
from examples.models import convnets

SUMMARY_FIELDS = (("train loss", "train_loss", ".4f"), ("val loss", "val_loss", ".4f"),
                  ("val top-1", "val_accuracy", ".4f"))


def load_source(config: Config) -> imagenet_data.Source:
  if config.synthetic:
    return imagenet_data.synthetic(
        config.image_size, config.num_classes, config.batch_size,
        train_size=config.train_size or 4 * config.batch_size,
        eval_size=config.test_size or config.eval_batch_size, seed=config.seed)
  return imagenet_data.imagenet(
      config.data, config.image_size, config.batch_size, seed=config.seed)


def make_tx(config: Config) -> optax.GradientTransformation:
  return optimizers.make_optimizer(
      config.optimizer, learning_rate=config.learning_rate, momentum=config.momentum,
      weight_decay=config.weight_decay, method=config.method, mask=config.mask,
      steps=config.steps)


def train_and_evaluate(config: Config, workdir: str | Path,
                       source: imagenet_data.Source | None = None, *,
                       model: nn.Module | None = None) -> list[dict]:
  """Trains the run `config` describes (one optimiser, one seed) for `config.epochs` epochs,
  resuming from `workdir`, evaluating on the validation set; `model` replaces `config.model`'s
  network.

  Returns one record per epoch: train_loss, train_accuracy, val_loss, val_accuracy (top-1),
  learning_rate, step_ms, epoch_s, compile_s (see `examples.lib.train.fit`).
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  source = source or load_source(config)
  mesh = train.make_mesh()
  model = model or convnets.make_model(config.model, config.num_classes)
  steps = data.steps_per_epoch(source.train_size, config.batch_size, config.eval_batch_size)
  input_shape = (config.image_size, config.image_size, 3)
  state = train.create_train_state(
      model, make_tx(config), mesh, seed=config.seed, input_shape=input_shape)
  batched = NamedSharding(mesh, P("data"))
  eval_fn = train.make_eval_fn(model, source.mean, source.std, mesh)

  def evaluate(state):
    batches = data.global_batches(source.eval_batches(), batched)
    loss, accuracy = train.evaluate_batches(state, eval_fn, batches)
    return {"val_loss": loss, "val_accuracy": accuracy}

  return train.fit(
      config, workdir, state, steps=steps,
      epoch_batches=lambda epoch: data.global_batches(source.train_batches(epoch), batched),
      step=train.train_step, mesh=mesh, input_shape=input_shape, mean=source.mean, std=source.std,
      evaluate=evaluate, schedule=config.learning_rate, summary_fields=SUMMARY_FIELDS)
