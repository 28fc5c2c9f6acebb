"""Trains a CIFAR-10 model with one optimiser: data parallel, checkpointed every epoch, resumable.

The trainer is `examples.lib.train` (state, steps, the epoch loop `fit`); this module supplies
CIFAR-10's data, augmentation (random crop and flip, on the device) and evaluation splits.

Outputs, in `workdir`: `metrics.jsonl` (one line per epoch), `config.json`, and orbax checkpoints
in `checkpoints/` (params, batch_stats, opt_state, step, epoch, rng). Calling
`train_and_evaluate` again on the same workdir resumes from the latest checkpoint, and the resumed
run continues bit-identically (on CPU) to an uninterrupted one.
"""

from __future__ import annotations

import functools
from pathlib import Path

import flax.linen as nn
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from examples.cifar10 import augment
from examples.cifar10.configs import Config
from examples.lib import cifar10 as cifar_data
from examples.lib import data, diagnostics, optimizers, train
from examples.models import convnets

INPUT_SHAPE = (32, 32, 3)
DIAGNOSTICS_BATCH = 256
SUMMARY_FIELDS = (("train loss", "train_loss", ".4f"), ("val acc", "val_accuracy", ".4f"),
                  ("test acc", "test_accuracy", ".4f"))


def load_dataset(config: Config) -> cifar_data.Dataset:
  return cifar_data.load(
      config.data, train_size=config.train_size, validation_size=config.validation_size,
      test_size=config.test_size, synthetic=config.synthetic, download=config.download)


def steps_per_epoch(config: Config, dataset: cifar_data.Dataset) -> int:
  return data.steps_per_epoch(len(dataset.train.labels), config.batch_size, config.eval_batch_size)


def make_tx(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
  return optimizers.make_optimizer(
      config.optimizer, learning_rate=make_schedule(config, steps_per_epoch),
      momentum=config.momentum, weight_decay=config.weight_decay, method=config.method,
      mask=config.mask, rtol=config.rtol, b2=config.b2, steps=config.steps)


def make_schedule(config: Config, steps_per_epoch: int) -> optax.ScalarOrSchedule:
  return optimizers.make_schedule(
      config.learning_rate, config.schedule, config.decay_epochs, steps_per_epoch)


def train_and_evaluate(
    config: Config, workdir: str | Path, dataset: cifar_data.Dataset | None = None, *,
    model: nn.Module | None = None,
) -> list[dict]:
  """Trains the run `config` describes (one optimiser, one seed: see
  `examples.lib.compare.run_config`) for
  `config.epochs` epochs, resuming from `workdir`'s checkpoint, and evaluates each epoch.

  Args:
    config: the run.
    workdir: where metrics, config and checkpoints go.
    dataset: the loaded data; default `load_dataset(config)` (pass it to share one load).
    model: the network; default `convnets.make_model(config.model)`.

  Returns:
    One dict per epoch, from the first (including epochs of an earlier, resumed run): epoch,
    learning_rate, train/val/test loss and accuracy, epoch_s, step_ms, compile_s (see
    `examples.lib.train.fit`), and diagnostics when `config.diagnostics`.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  dataset = dataset or load_dataset(config)
  mesh = train.make_mesh()
  model = model or convnets.make_model(config.model)
  steps = steps_per_epoch(config, dataset)
  state = train.create_train_state(
      model, make_tx(config, steps), mesh, seed=config.seed, input_shape=INPUT_SHAPE)
  batched = NamedSharding(mesh, P("data"))
  eval_fn = train.make_eval_fn(model, dataset.mean, dataset.std, mesh)
  diagnose = None
  if config.diagnostics:
    validation = dataset.validation
    diagnose = diagnostics.make_diagnose(
        optimizers.make_direction(
            config.optimizer, method=config.method, mask=config.mask, rtol=config.rtol,
            steps=config.steps),
        validation.images[:DIAGNOSTICS_BATCH], validation.labels[:DIAGNOSTICS_BATCH],
        mean=dataset.mean, std=dataset.std, mesh=mesh)

  def evaluate(state):
    record = {}
    for prefix, split in (("val", dataset.validation), ("test", dataset.test)):
      loss, accuracy = train.evaluate_batches(
          state, eval_fn, data.padded_batches(split, config.eval_batch_size, batched))
      record.update({f"{prefix}_loss": loss, f"{prefix}_accuracy": accuracy})
    if diagnose is not None:
      record["diagnostics"] = diagnose(state)
    return record

  return train.fit(
      config, workdir, state, steps=steps,
      epoch_batches=data.shuffled_batches(dataset.train, config.batch_size, config.seed, batched),
      step=functools.partial(train.train_step, augment=augment.augment), mesh=mesh,
      input_shape=INPUT_SHAPE, mean=dataset.mean, std=dataset.std, evaluate=evaluate,
      schedule=make_schedule(config, steps), summary_fields=SUMMARY_FIELDS)
