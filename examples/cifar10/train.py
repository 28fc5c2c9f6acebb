"""Trains a CIFAR-10 model with one optimiser: data parallel, checkpointed every epoch, resumable.

Data parallelism: one mesh axis "data" over every local device. The train state is replicated;
each global batch is placed with `NamedSharding(mesh, P("data"))`, so every device holds
batch_size / device_count images, and one `jax.jit` step computes on the global batch. XLA
inserts the cross-device reductions: the gradient's mean, and batch norm's batch mean and
variance, which are therefore global statistics over the whole batch (not per device, as
`pmap` code computes them unless told otherwise). A run on 8 devices matches one on 1 device up
to float reduction order.

Reproducibility: each epoch's data order comes from (seed, epoch), and each step's augmentation
key from (the state's rng, step), so a run resumed from a checkpoint needs no data-iterator
state and continues bit-identically (on CPU) to an uninterrupted run.

Outputs, in `workdir`: `metrics.jsonl` (one line per epoch), `config.json`, and orbax checkpoints
in `checkpoints/` (params, batch_stats, opt_state, step, epoch, rng). Calling
`train_and_evaluate` again on the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from examples.cifar10 import data as data_lib
from examples.cifar10 import optimizers
from examples.cifar10.models import MODELS

# Fields that may differ when a run is resumed: more epochs, a moved data file, diagnostics.
RESUMABLE_CHANGES = ("epochs", "data", "diagnostics")
DIAGNOSTICS_BATCH = 256


@dataclasses.dataclass(frozen=True)
class Config:
  """One training run. Defaults: the paper's Table 1 protocol, with a 3-epoch budget."""

  model: str = "basic_cnn"
  optimizer: str = "sgdm"
  epochs: int = 3
  batch_size: int = 1024
  eval_batch_size: int = 1024
  learning_rate: float = 1e-2
  momentum: float = 0.9
  weight_decay: float = 5e-4
  b2: float = 0.999
  method: str = "auto"
  mask: str = "all"
  rtol: float | None = None
  schedule: str = "constant"  # or "step": learning rate / 10 at each of decay_epochs
  decay_epochs: tuple[int, ...] = ()
  seed: int = 0
  data: str | None = None
  synthetic: bool = False
  train_size: int | None = None
  validation_size: int | None = None
  test_size: int | None = None
  diagnostics: bool = False
  checkpoint: bool = True


class TrainState(train_state.TrainState):
  batch_stats: Any
  rng: jax.Array  # each step's augmentation key is fold_in(rng, step)


def load_dataset(config: Config) -> data_lib.Dataset:
  return data_lib.load(
      config.data, train_size=config.train_size, validation_size=config.validation_size,
      test_size=config.test_size, synthetic=config.synthetic)


def make_mesh() -> jax.sharding.Mesh:
  # Auto axes: XLA propagates the batch sharding through models written for global arrays.
  return jax.make_mesh((jax.device_count(),), ("data",), (jax.sharding.AxisType.Auto,))


def make_model(name: str, num_classes: int = 10):
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; choose from {', '.join(MODELS)}.")
  return MODELS[name](num_classes=num_classes)


def make_schedule(config: Config, steps_per_epoch: int) -> optax.ScalarOrSchedule:
  """Constant (the paper's Table 1), or step decay: / 10 at each of `decay_epochs` (Table 2)."""
  if config.schedule == "constant":
    return config.learning_rate
  if config.schedule == "step":
    return optax.piecewise_constant_schedule(
        config.learning_rate, {epoch * steps_per_epoch: 0.1 for epoch in config.decay_epochs})
  raise ValueError(f"Unknown schedule {config.schedule!r}; use 'constant' or 'step'.")


def make_tx(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
  return optimizers.make_optimizer(
      config.optimizer, learning_rate=make_schedule(config, steps_per_epoch),
      momentum=config.momentum, weight_decay=config.weight_decay, method=config.method,
      mask=config.mask, rtol=config.rtol, b2=config.b2)


@functools.cache
def init_fn(model):
  """`model.init`, jitted (much faster than eager on CPU) once per model in a process."""
  return jax.jit(functools.partial(model.init, train=False))


def create_train_state(
    config: Config, model, steps_per_epoch: int, mesh: jax.sharding.Mesh, *,
    tx: optax.GradientTransformation | None = None, image_size: int = 32,
) -> TrainState:
  """A fresh state from `config.seed`, replicated over the mesh; `tx` defaults to `make_tx`."""
  init_key, rng = jax.random.split(jax.random.key(config.seed))
  variables = init_fn(model)(init_key, jnp.zeros((1, image_size, image_size, 3), jnp.float32))
  tx = tx or make_tx(config, steps_per_epoch)
  state = TrainState(
      step=jnp.zeros((), jnp.int32), apply_fn=model.apply, params=variables["params"],
      tx=tx, opt_state=tx.init(variables["params"]), batch_stats=variables["batch_stats"],
      rng=rng)
  return jax.device_put(state, NamedSharding(mesh, P()))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(
    state: TrainState, images: jax.Array, labels: jax.Array, *, mean, std,
    augment=data_lib.augment,
):
  """One optimiser step on a global batch of uint8 images, augmented on the device by `augment`
  (None: the images come augmented, as from the ImageNet example's input pipeline)."""
  if augment is not None:
    images = augment(images, jax.random.fold_in(state.rng, state.step))
  x = data_lib.normalise(images, mean, std)

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
  logits = apply_fn(variables, data_lib.normalise(images, mean, std), train=False)
  correct = jnp.argmax(logits, -1) == labels
  return {"loss": jnp.sum(weights * cross_entropy(logits, labels)),
          "correct": jnp.sum(weights * correct), "count": jnp.sum(weights)}


@functools.cache
def make_eval_fn(model, mean, std, mesh):
  """`eval_step` jitted once per model and data in a process (it does not see the optimiser)."""
  return jax.jit(functools.partial(eval_step, apply_fn=model.apply, mean=mean, std=std),
                 out_shardings=NamedSharding(mesh, P()))


def compile_train_step(
    state: TrainState, dataset, batch_size: int, mesh, *, step=train_step, image_size: int = 32
) -> tuple[Any, float]:
  """`step` (default `train_step`) compiled ahead of time for this state and batch shape, and
  compile seconds. `step(state, images, labels, *, mean, std)` takes uint8 images."""
  replicated, batched = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  step = jax.jit(
      functools.partial(step, mean=dataset.mean, std=dataset.std),
      in_shardings=(replicated, batched, batched), out_shardings=replicated)
  images = jax.ShapeDtypeStruct(
      (batch_size, image_size, image_size, 3), jnp.uint8, sharding=batched)
  labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=batched)
  start = time.perf_counter()
  compiled = step.lower(state, images, labels).compile()
  return compiled, time.perf_counter() - start


def epoch_order(num_examples: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """(steps, batch_size) indices for `epoch`, from (seed, epoch) alone; drops the last partial
  batch."""
  steps = num_examples // batch_size
  order = np.random.default_rng((seed, epoch)).permutation(num_examples)
  return order[:steps * batch_size].reshape(steps, batch_size)


def split_batches(split, order, sharding):
  """`split`'s images and labels batch by batch in `order`, placed with `sharding` (lazily)."""
  for indices in order:
    yield jax.device_put((split.images[indices], split.labels[indices]), sharding)


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


def padded_batches(split, batch_size: int, sharding):
  """`split` in order as placed (images, labels, weights) batches; the last is padded with
  weight 0."""
  for start in range(0, len(split.labels), batch_size):
    images = split.images[start:start + batch_size]
    labels = split.labels[start:start + batch_size]
    pad = batch_size - len(labels)
    weights = np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])
    images = np.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0)))
    labels = np.pad(labels, (0, pad))
    yield jax.device_put((images, labels, weights), sharding)


def evaluate_batches(state, eval_fn, batches) -> tuple[float, float]:
  """Mean loss and accuracy over (images, labels, weights) batches (weight 0 marks padding)."""
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  for batch in batches:
    sums = jax.device_get(eval_fn(variables, *batch))
    totals = {k: totals[k] + float(sums[k]) for k in totals}
  return totals["loss"] / totals["count"], totals["correct"] / totals["count"]


def evaluate(state, eval_fn, split, batch_size: int, sharding) -> tuple[float, float]:
  """Mean loss and accuracy over a whole split; the last batch is padded with weight 0."""
  return evaluate_batches(state, eval_fn, padded_batches(split, batch_size, sharding))


def layer_name(path) -> str:
  keys = [getattr(k, "key", getattr(k, "idx", k)) for k in path]
  return "/".join(str(k) for k in keys if k != "__call__" and not isinstance(k, int))


def diagnose_step(state: TrainState, images, labels, *, direction, mean, std) -> dict[str, Any]:
  """On a fixed batch: every conv layer's output, the gradient, and the optimiser's direction.

  The direction is what `optimizers.make_direction` makes of the gradient before decay and
  momentum: U V^T for the orthogonal optimisers (exactly orthogonal for the exact methods at full
  rank), the gradient itself for SGDM and Adam.
  """
  from orthax import diagnostics  # here: the rest of the example works without it

  x = data_lib.normalise(images, mean, std)

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state.batch_stats}
    logits, updates = state.apply_fn(
        variables, x, train=True, mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda module, method: (
            isinstance(module, nn.Conv) and method == "__call__"))
    return cross_entropy(logits, labels).mean(), updates["intermediates"]

  (_, outputs), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  update, _ = direction.update(grads, direction.init(state.params), state.params)
  kernels = [(layer_name(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(update)
             if getattr(path[-1], "key", None) == "kernel" and leaf.ndim >= 2]
  conv_outputs = [(layer_name(path), out)
                  for path, out in jax.tree_util.tree_leaves_with_path(outputs)]
  return {
      "component_cosine": {name: diagnostics.component_cosine(out) for name, out in conv_outputs},
      "cosine_threshold": {
          name: diagnostics.cosine_significance_threshold(out.size // out.shape[-1])
          for name, out in conv_outputs},
      "dead_parameters": diagnostics.dead_parameters(grads),
      "orthogonality_error": {
          name: diagnostics.orthogonality_error(k.reshape(-1, k.shape[-1])) for name, k in kernels},
  }


def make_diagnose(config: Config, dataset, mesh):
  """A jitted `diagnose_step` bound to a fixed batch: the first validation images."""
  size = min(DIAGNOSTICS_BATCH, len(dataset.validation.labels))
  size -= size % jax.device_count()
  batch = jax.device_put(
      (dataset.validation.images[:size], dataset.validation.labels[:size]),
      NamedSharding(mesh, P("data")))
  direction = optimizers.make_direction(
      config.optimizer, method=config.method, mask=config.mask, rtol=config.rtol)
  step = jax.jit(
      functools.partial(diagnose_step, direction=direction, mean=dataset.mean, std=dataset.std),
      out_shardings=NamedSharding(mesh, P()))
  return lambda state: jax.tree.map(lambda x: x.item(), jax.device_get(step(state, *batch)))


def config_dict(config: Config) -> dict:
  return json.loads(json.dumps(dataclasses.asdict(config)))


def check_resumable(config: Config, workdir: Path) -> None:
  """Refuses to resume a checkpoint made under another configuration (other than epochs)."""
  path = workdir / "config.json"
  if path.is_file():
    saved, current = json.loads(path.read_text()), config_dict(config)
    changed = sorted(k for k in current.keys() - set(RESUMABLE_CHANGES)
                     if saved.get(k) != current[k])
    if changed:
      raise ValueError(
          f"{workdir} holds a checkpoint of a run with other settings ({', '.join(changed)}: "
          f"{[saved.get(k) for k in changed]} there, {[current[k] for k in changed]} now); use "
          "another workdir, or delete this one to start afresh.")


def checkpoint_manager(workdir: Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      workdir.absolute() / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))


def checkpoint_items(state: TrainState, epoch: int) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state, "step": state.step, "epoch": epoch,
          "rng": jax.random.key_data(state.rng)}


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState, epoch: int) -> None:
  manager.save(epoch, args=ocp.args.StandardSave(checkpoint_items(state, epoch)))


def restore_checkpoint(manager: ocp.CheckpointManager, state: TrainState) -> tuple[TrainState, int]:
  """The latest checkpoint restored into `state`'s structure and sharding, and its epoch (0 if
  there is none)."""
  latest = manager.latest_step()
  if latest is None:
    return state, 0
  items = manager.restore(latest, args=ocp.args.StandardRestore(checkpoint_items(state, latest)))
  state = state.replace(
      params=items["params"], batch_stats=items["batch_stats"], opt_state=items["opt_state"],
      step=items["step"], rng=jax.random.wrap_key_data(items["rng"]))
  return state, int(items["epoch"])


def read_metrics(workdir: Path) -> list[dict]:
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(workdir: Path, records: list[dict]) -> None:
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def learning_rate_at(schedule: optax.ScalarOrSchedule, step) -> float:
  return float(schedule(step) if callable(schedule) else schedule)


def steps_per_epoch(config: Config, dataset: data_lib.Dataset) -> int:
  """Full batches per epoch; checks that batches split evenly over the devices."""
  for name in ("batch_size", "eval_batch_size"):
    size = getattr(config, name)
    if size % jax.device_count():
      raise ValueError(
          f"{name}={size} must be a multiple of the {jax.device_count()} devices, which each take "
          "an equal share of a batch.")
  steps = len(dataset.train.labels) // config.batch_size
  if steps == 0:
    raise ValueError(
        f"The training split has {len(dataset.train.labels)} images, fewer than one batch of "
        f"{config.batch_size}; raise train_size or lower batch_size.")
  return steps


def resume(config: Config, workdir: Path, manager, state: TrainState):
  """`state` from the latest checkpoint (if any), its epoch, and the metrics up to that epoch."""
  epoch = 0
  if manager is not None and manager.latest_step() is not None:
    check_resumable(config, workdir)
    state, epoch = restore_checkpoint(manager, state)
  records = [r for r in read_metrics(workdir) if r["epoch"] <= epoch]
  if jax.process_index() == 0:  # one writer when several hosts share the workdir
    (workdir / "config.json").write_text(json.dumps(config_dict(config), indent=2) + "\n")
    write_metrics(workdir, records)
  return state, epoch, records


def evaluate_splits(state, eval_fn, dataset: data_lib.Dataset, batch_size: int, sharding) -> dict:
  record = {}
  for prefix, split in (("val", dataset.validation), ("test", dataset.test)):
    loss, accuracy = evaluate(state, eval_fn, split, batch_size, sharding)
    record.update({f"{prefix}_loss": loss, f"{prefix}_accuracy": accuracy})
  return record


def summary_line(config: Config, record: dict) -> str:
  return (f"{config.optimizer} epoch {record['epoch']}/{config.epochs}: train loss "
          f"{record['train_loss']:.4f}, val acc {record['val_accuracy']:.4f}, test acc "
          f"{record['test_accuracy']:.4f}, {record['epoch_s']:.1f} s")


def train_and_evaluate(
    config: Config, workdir: str | Path, dataset: data_lib.Dataset | None = None
) -> list[dict]:
  """Trains `config.epochs` epochs (resuming from `workdir`'s checkpoint) and evaluates each.

  Args:
    config: the run.
    workdir: where metrics, config and checkpoints go.
    dataset: the loaded data; default `load_dataset(config)` (pass it to share one load).

  Returns:
    One dict per epoch, from the first (including epochs of an earlier, resumed run): epoch,
    learning_rate, train/val/test loss and accuracy, epoch_s (wall time of the whole epoch:
    training, evaluation, checkpoint), step_ms (mean step time, compile excluded), compile_s (in
    the first epoch a process trains), and diagnostics when `config.diagnostics`.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  dataset = dataset or load_dataset(config)
  mesh, model = make_mesh(), make_model(config.model)
  steps = steps_per_epoch(config, dataset)
  state = create_train_state(config, model, steps, mesh)
  batched = NamedSharding(mesh, P("data"))
  eval_fn = make_eval_fn(model, dataset.mean, dataset.std, mesh)
  diagnose = make_diagnose(config, dataset, mesh) if config.diagnostics else None

  def evaluate(state):
    record = evaluate_splits(state, eval_fn, dataset, config.eval_batch_size, batched)
    if diagnose is not None:
      record["diagnostics"] = diagnose(state)
    return record

  def epoch_batches(epoch):
    order = epoch_order(len(dataset.train.labels), config.batch_size, config.seed, epoch)
    return split_batches(dataset.train, order, batched)

  return fit(
      config, workdir, state, steps=steps, epoch_batches=epoch_batches,
      compile_step=lambda state: compile_train_step(state, dataset, config.batch_size, mesh),
      evaluate=evaluate, schedule=make_schedule(config, steps), summary=summary_line)


def fit(
    config, workdir: Path, state: TrainState, *, steps: int,
    epoch_batches: Callable[[int], Iterable], compile_step: Callable, evaluate: Callable,
    schedule: optax.ScalarOrSchedule, summary: Callable[[Any, dict], str],
    per_step: bool = False,
) -> list[dict]:
  """The epoch loop the examples share: resume, train, evaluate, checkpoint, log each epoch.

  Args:
    config: a dataclass with `epochs`, `optimizer` and `checkpoint` (saved as config.json).
    workdir: an existing directory for metrics.jsonl, config.json and checkpoints/.
    state: a fresh `TrainState`; replaced by the latest checkpoint's if there is one.
    steps: steps per epoch.
    epoch_batches: epoch -> an iterable of at least `steps` placed batches (step_fn's arguments
      after the state).
    compile_step: state -> (step_fn, compile seconds), called only if an epoch is left to train.
    evaluate: state -> a dict of evaluation metrics for the epoch's record.
    schedule: the learning rate (logged at the start of each epoch).
    summary: (config, record) -> the line printed after each epoch.
    per_step: also record every step's metrics (`train_loss_steps`, ...), not only their means.
  """
  manager = checkpoint_manager(workdir) if config.checkpoint else None
  state, start_epoch, records = resume(config, workdir, manager, state)
  if start_epoch >= config.epochs:
    return records

  step_fn, compile_s = compile_step(state)
  for epoch in range(start_epoch + 1, config.epochs + 1):
    start = time.perf_counter()
    record = {"epoch": epoch, "learning_rate": learning_rate_at(schedule, state.step)}
    desc = f"{config.optimizer} epoch {epoch}/{config.epochs}"
    state, train_metrics = train_epoch(
        state, step_fn, epoch_batches(epoch), steps, desc, per_step=per_step)
    record.update(train_metrics)
    record.update(evaluate(state))
    if manager is not None:
      save_checkpoint(manager, state, epoch)
    record["epoch_s"] = time.perf_counter() - start
    record["compile_s"] = compile_s if epoch == start_epoch + 1 else None
    records.append(record)
    if jax.process_index() == 0:
      with (workdir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
      tqdm.write(summary(config, record), file=sys.stderr)
  if manager is not None:
    manager.close()  # waits for the last asynchronous save
  return records
