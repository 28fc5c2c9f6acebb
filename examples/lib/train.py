"""The examples' trainer: a replicated train state, jitted steps, and the epoch loop `fit`.

Data parallelism: one mesh axis "data" over every device. The train state is replicated; each
global batch is placed with `NamedSharding(mesh, P("data"))`, so every device holds
batch_size / device_count images, and one `jax.jit` step computes on the global batch. XLA
inserts the cross-device reductions: the gradient's mean, and batch norm's batch mean and
variance, which are therefore global statistics over the whole batch (not per device, as
`pmap` code computes them unless told otherwise). A run on 8 devices matches one on 1 device up
to float reduction order.

Reproducibility: each epoch's data order comes from (seed, epoch) (`data.epoch_order`), and each
step's augmentation key from (the state's rng, step), so a run resumed from a checkpoint needs no
data-iterator state and continues bit-identically (on CPU) to an uninterrupted run.

Everything a step needs is passed to it: the model and optimiser build the state, the input shape
and the normalisation's mean and std are arguments, augmentation is a function (or None).
"""

from __future__ import annotations

import functools
import itertools
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from examples.lib import checkpoint
from examples.lib.config import json_values
from examples.lib.data import normalise


class TrainState(train_state.TrainState):
  batch_stats: Any
  rng: jax.Array  # each step's augmentation key is fold_in(rng, step)


def make_mesh() -> jax.sharding.Mesh:
  # Auto axes: XLA propagates the batch sharding through models written for global arrays.
  return jax.make_mesh((jax.device_count(),), ("data",), (jax.sharding.AxisType.Auto,))


@functools.cache
def init_fn(model: nn.Module):
  """`model.init`, jitted (much faster than eager on CPU) once per model in a process."""
  return jax.jit(functools.partial(model.init, train=False))


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, *, seed: int,
    input_shape: Sequence[int],
) -> TrainState:
  """A fresh state from `seed` for inputs of `input_shape` (one example: height, width,
  channels), replicated over the mesh."""
  init_key, rng = jax.random.split(jax.random.key(seed))
  variables = init_fn(model)(init_key, jnp.zeros((1, *input_shape), jnp.float32))
  state = TrainState(
      step=jnp.zeros((), jnp.int32), apply_fn=model.apply, params=variables["params"],
      tx=tx, opt_state=tx.init(variables["params"]), batch_stats=variables["batch_stats"],
      rng=rng)
  return jax.device_put(state, NamedSharding(mesh, P()))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(
    state: TrainState, images: jax.Array, labels: jax.Array, *, mean, std,
    augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
):
  """One optimiser step on a global batch of uint8 images, augmented on the device by
  `augment(images, key)` (None: the images come augmented from the input pipeline)."""
  if augment is not None:
    images = augment(images, jax.random.fold_in(state.rng, state.step))
  x = normalise(images, mean, std)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    logits, updates = state.apply_fn(variables, x, train=True, mutable=["batch_stats"])
    return cross_entropy(logits, labels).mean(), (logits, updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return state, {"loss": loss, "accuracy": accuracy}


def eval_step(variables, images, labels, weights, *, apply_fn, mean, std) -> dict[str, jax.Array]:
  """Sums of loss, correct predictions and weight over a batch (weight 0 marks padding)."""
  logits = apply_fn(variables, normalise(images, mean, std), train=False)
  correct = jnp.argmax(logits, -1) == labels
  return {"loss": jnp.sum(weights * cross_entropy(logits, labels)),
          "correct": jnp.sum(weights * correct), "count": jnp.sum(weights)}


@functools.cache
def make_eval_fn(model: nn.Module, mean, std, mesh):
  """`eval_step` jitted once per model and normalisation in a process (it does not see the
  optimiser)."""
  return jax.jit(functools.partial(eval_step, apply_fn=model.apply, mean=mean, std=std),
                 out_shardings=NamedSharding(mesh, P()))


def compile_train_step(
    step: Callable, state: TrainState, batch_size: int, mesh, *, input_shape: Sequence[int],
    mean, std,
) -> tuple[Any, float]:
  """`step(state, images, labels, *, mean, std)` compiled ahead of time for this state and a
  batch of `batch_size` uint8 images of `input_shape`, and the compile seconds."""
  replicated, batched = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  step = jax.jit(functools.partial(step, mean=mean, std=std),
                 in_shardings=(replicated, batched, batched), out_shardings=replicated)
  images = jax.ShapeDtypeStruct((batch_size, *input_shape), jnp.uint8, sharding=batched)
  labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=batched)
  start = time.perf_counter()
  compiled = step.lower(state, images, labels).compile()
  return compiled, time.perf_counter() - start


def train_epoch(
    state, step_fn, batches, steps: int, desc: str, *, per_step: bool = False
) -> tuple[TrainState, dict]:
  """Runs `step_fn` over `steps` placed batches; the mean of each metric as `train_<name>` (loss,
  accuracy, ...), and the mean step time; with `per_step`, also each step's values as
  `train_<name>_steps`.

  One step stays in flight: step i's metrics are read after step i + 1 is dispatched, so the host
  gathers the next batch while the device computes, and the progress bar stays honest.
  """
  history, pending = [], None
  bar = tqdm(total=steps, desc=desc, leave=False, file=sys.stderr)

  def record(metrics):
    history.append(jax.device_get(metrics))
    bar.update()
    bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", refresh=False)

  start = time.perf_counter()
  for batch in itertools.islice(batches, steps):
    state, metrics = step_fn(state, *batch)
    if pending is not None:
      record(pending)
    pending = metrics
  record(pending)
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  bar.close()
  record = {f"train_{k}": float(np.mean([m[k] for m in history])) for k in history[0]}
  if per_step:
    record.update({f"train_{k}_steps": [float(m[k]) for m in history] for k in history[0]})
  return state, {**record, "step_ms": 1e3 * seconds / len(history)}


def evaluate_batches(state, eval_fn, batches) -> tuple[float, float]:
  """Mean loss and accuracy over (images, labels, weights) batches (weight 0 marks padding)."""
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  for batch in batches:
    sums = jax.device_get(eval_fn(variables, *batch))
    totals = {k: totals[k] + float(sums[k]) for k in totals}
  return totals["loss"] / totals["count"], totals["correct"] / totals["count"]


def learning_rate_at(schedule: optax.ScalarOrSchedule, step) -> float:
  return float(schedule(step) if callable(schedule) else schedule)


def summary_line(name: str, epochs: int, record: dict,
                 fields: Sequence[tuple[str, str, str]]) -> str:
  """'name epoch e/E: label value, ..., seconds s' for each (label, key, format) of `fields`
  that `record` holds."""
  values = "".join(f"{label} {format(record[key], fmt)}, " for label, key, fmt in fields
                   if key in record)
  return f"{name} epoch {record['epoch']}/{epochs}: {values}{record['epoch_s']:.1f} s"


def fit(
    config: Any, workdir: Path, state: TrainState, *, steps: int,
    epoch_batches: Callable[[int], Iterable], step: Callable, mesh: jax.sharding.Mesh,
    input_shape: Sequence[int], mean, std, evaluate: Callable, schedule: optax.ScalarOrSchedule,
    summary_fields: Sequence[tuple[str, str, str]], per_step: bool = False,
) -> list[dict]:
  """The epoch loop the examples share: resume, train, evaluate, checkpoint, log each epoch.

  Args:
    config: a one-run config dataclass with `optimizer` (the run's name in the progress bar and
      summary lines), `epochs`, `batch_size` and `checkpoint` (save an orbax checkpoint after
      each epoch, and resume from them); saved as config.json, and a checkpoint made under other
      settings is not resumed (see `checkpoint.check_resumable`).
    workdir: an existing directory for metrics.jsonl, config.json and checkpoints/.
    state: a fresh `TrainState`; replaced by the latest checkpoint's if there is one.
    steps: steps per epoch.
    epoch_batches: epoch -> an iterable of at least `steps` placed (images, labels) batches.
    step: `step(state, images, labels, *, mean, std) -> (state, metrics)`, e.g. `train_step`;
      compiled by `compile_train_step` (only if an epoch is left to train).
    mesh, input_shape, mean, std: as in `compile_train_step`.
    evaluate: state -> a dict of evaluation metrics for the epoch's record.
    schedule: the learning rate (logged at the start of each epoch).
    summary_fields: (label, record key, format) of the line printed after each epoch.
    per_step: also record every step's metrics (`train_loss_steps`, ...), not only their means.

  Returns:
    One dict per epoch, from the first (including epochs of an earlier, resumed run): epoch,
    learning_rate, the train metrics' means, step_ms (mean step time, compile excluded), what
    `evaluate` returns, epoch_s (wall time of the whole epoch: training, evaluation, checkpoint)
    and compile_s (in the first epoch a process trains).
  """
  name, epochs = config.optimizer, config.epochs
  manager = checkpoint.checkpoint_manager(workdir) if config.checkpoint else None
  state, start_epoch, records = checkpoint.resume(json_values(config), workdir, manager, state)
  if start_epoch >= epochs:
    return records

  step_fn, compile_s = compile_train_step(
      step, state, config.batch_size, mesh, input_shape=input_shape, mean=mean, std=std)
  for epoch in range(start_epoch + 1, epochs + 1):
    start = time.perf_counter()
    record = {"epoch": epoch, "learning_rate": learning_rate_at(schedule, state.step)}
    state, train_metrics = train_epoch(
        state, step_fn, epoch_batches(epoch), steps, f"{name} epoch {epoch}/{epochs}",
        per_step=per_step)
    record.update(train_metrics)
    record.update(evaluate(state))
    if manager is not None:
      checkpoint.save_checkpoint(manager, state, epoch)
    record["epoch_s"] = time.perf_counter() - start
    record["compile_s"] = compile_s if epoch == start_epoch + 1 else None
    records.append(record)
    if jax.process_index() == 0:
      checkpoint.append_metrics(workdir, record)
      tqdm.write(summary_line(name, epochs, record, summary_fields), file=sys.stderr)
  if manager is not None:
    manager.close()  # waits for the last asynchronous save
  return records
