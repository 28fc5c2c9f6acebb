"""Barlow Twins pretraining on CIFAR-10 with LARS or Orthogonal LARS, then a linear probe.

The epoch loop, checkpoints, resuming, metrics.jsonl and data parallelism are the examples'
trainer's (`examples.lib.train.fit`), the data `examples.lib.cifar10`; this module supplies the
Barlow Twins step and the evaluation. The global batch is sharded over a ("data",) mesh of every
local device and one `jax.jit` step computes on it, so batch norm statistics, the embeddings'
standardisation and the cross-correlation are over the global batch (what the authors'
SyncBatchNorm and all-reduce do).

Each view is a separate forward pass, as in the authors' code, so batch norm sees one view's
batch at a time; the running statistics are updated by view 1, then view 2.

Evaluation on the frozen backbone (eval-mode batch norm, no augmentation): a k-NN monitor
(cosine similarity, k = 200, votes weighted by exp(similarity / 0.1), as in Wu et al. 2018 and
solo-learn) and, after the last epoch, a linear probe: multinomial logistic regression on the
standardised features of the training images, full batch, Adam, tested on the CIFAR-10 test set.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from examples.barlow_twins import augment, lars, models
from examples.barlow_twins.configs import Config
from examples.lib import cifar10 as cifar_data
from examples.lib import data, train

INPUT_SHAPE = (32, 32, 3)


def load_dataset(config: Config) -> cifar_data.Dataset:
  """The CIFAR-10 45k training split (pretraining, the probe's training set) and the test set."""
  return cifar_data.load(config.data, train_size=config.train_size, validation_size=0,
                       test_size=config.test_size, synthetic=config.synthetic)


def make_tx(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
  return lars.make_optimizer(
      config.optimizer, batch_size=config.batch_size, total_steps=config.epochs * steps_per_epoch,
      warmup_steps=round(config.warmup_epochs * steps_per_epoch),
      weights_learning_rate=config.weights_learning_rate,
      biases_learning_rate=config.biases_learning_rate, method=config.method,
      weight_decay=config.weight_decay, momentum=config.momentum,
      trust_coefficient=config.trust_coefficient)


def train_step(state: train.TrainState, images, labels, *, mean, std, lambd: float):
  """One LARS step on the Barlow Twins loss of two augmented views of a global batch (the labels
  are not used)."""
  del labels
  x1, x2 = augment.two_views(images, jax.random.fold_in(state.rng, state.step), mean, std)

  def loss_fn(params):
    z1, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, x1, train=True,
        mutable=["batch_stats"])
    z2, updates = state.apply_fn(
        {"params": params, "batch_stats": updates["batch_stats"]}, x2, train=True,
        mutable=["batch_stats"])
    return models.barlow_twins_loss(z1, z2, lambd), updates["batch_stats"]

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  return state, {"loss": loss}


@functools.cache
def make_features_fn(model: models.BarlowTwins, mean, std, mesh):
  """Backbone features of uint8 images (eval-mode batch norm), jitted once per model."""

  def features(variables, images):
    return model.apply(variables, data.normalise(images, mean, std),
                       method=models.BarlowTwins.features)

  return jax.jit(features, out_shardings=NamedSharding(mesh, P("data")))


def extract_features(state, features_fn, split, batch_size: int, mesh) -> np.ndarray:
  """(n, d) float32 features of every image of `split`, in order."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  chunks = []
  batches = data.padded_batches(split, batch_size, NamedSharding(mesh, P("data")))
  for images, _, weights in batches:
    count = int(jax.device_get(weights).sum())
    chunks.append(np.asarray(jax.device_get(features_fn(variables, images)))[:count])
  return np.concatenate(chunks).astype(np.float32)


def knn_accuracy(train_features, train_labels, test_features, test_labels, *, k: int = 200,
                 temperature: float = 0.1, num_classes: int = 10, chunk: int = 1000) -> float:
  """Weighted k-NN accuracy: cosine similarity, each of the k neighbours votes exp(sim / T)."""
  bank = jnp.asarray(train_features / np.linalg.norm(train_features, axis=1, keepdims=True))
  bank_labels = jnp.asarray(train_labels)
  k = min(k, len(train_labels))

  @jax.jit
  def predict(queries):
    queries = queries / jnp.linalg.norm(queries, axis=1, keepdims=True)
    similarity, index = jax.lax.top_k(queries @ bank.T, k)
    votes = jax.nn.one_hot(bank_labels[index], num_classes) * jnp.exp(similarity / temperature)[
        ..., None]
    return jnp.argmax(votes.sum(1), -1)

  correct = 0
  for start in range(0, len(test_labels), chunk):
    predictions = predict(jnp.asarray(test_features[start:start + chunk]))
    correct += int(jnp.sum(predictions == test_labels[start:start + chunk]))
  return correct / len(test_labels)


def linear_probe(train_features, train_labels, test_features, test_labels, *, steps: int = 1000,
                 learning_rate: float = 1e-2, num_classes: int = 10) -> dict[str, float]:
  """Softmax regression on standardised frozen features, full batch, Adam; train and test
  accuracy."""
  mean, std = train_features.mean(0), train_features.std(0) + 1e-6
  x_train = jnp.asarray((train_features - mean) / std)
  x_test = jnp.asarray((test_features - mean) / std)
  y_train = jnp.asarray(train_labels)
  params = {"w": jnp.zeros((x_train.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
  tx = optax.adam(learning_rate)

  def loss_fn(params):
    logits = x_train @ params["w"] + params["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y_train).mean()

  @jax.jit
  def fit(params):
    def step(carry, _):
      params, opt_state = carry
      grads = jax.grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    return jax.lax.scan(step, (params, tx.init(params)), length=steps)[0][0]

  params = fit(params)

  def accuracy(x, y):
    return float(np.mean(np.asarray(jnp.argmax(x @ params["w"] + params["b"], -1)) == y))

  return {"probe_train_accuracy": accuracy(x_train, train_labels),
          "probe_test_accuracy": accuracy(x_test, test_labels)}


def evaluate(state, config: Config, dataset: cifar_data.Dataset, model, mesh, *,
             probe: bool) -> dict[str, float]:
  """k-NN accuracy on the test set, and the linear probe's accuracies when `probe`."""
  start = time.perf_counter()
  features_fn = make_features_fn(model, dataset.mean, dataset.std, mesh)
  train_features = extract_features(state, features_fn, dataset.train, config.eval_batch_size,
                                    mesh)
  test_features = extract_features(state, features_fn, dataset.test, config.eval_batch_size, mesh)
  record = {"knn_accuracy": knn_accuracy(
      train_features, dataset.train.labels, test_features, dataset.test.labels, k=config.knn_k,
      temperature=config.knn_temperature)}
  if probe:
    record.update(linear_probe(
        train_features, dataset.train.labels, test_features, dataset.test.labels,
        steps=config.probe_steps, learning_rate=config.probe_learning_rate))
  record["eval_s"] = time.perf_counter() - start
  return record


SUMMARY_FIELDS = (("train loss", "train_loss", ".2f"), ("knn_accuracy", "knn_accuracy", ".4f"),
                  ("probe_test_accuracy", "probe_test_accuracy", ".4f"))


def pretrain(config: Config, workdir: str | Path, dataset: cifar_data.Dataset | None = None, *,
             backbone: nn.Module | None = None) -> list[dict]:
  """Pretrains the run `config` describes (one optimiser) for `config.epochs` epochs (resuming
  from `workdir`), evaluating as configured; `backbone` replaces `config.backbone`'s network.

  Returns one record per epoch (see `examples.lib.train.fit`): train_loss (the Barlow Twins
  loss, mean over the epoch), train_loss_steps (each step's), learning_rate (the weights' group,
  scheduled), step_ms, epoch_s, compile_s, and knn_accuracy on k-NN epochs; the last epoch also
  has probe_train_accuracy and probe_test_accuracy.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  dataset = dataset or load_dataset(config)
  mesh = train.make_mesh()
  model = (models.BarlowTwins(backbone, config.projector) if backbone is not None
           else models.make_model(config.backbone, config.projector))
  steps = data.steps_per_epoch(len(dataset.train.labels), config.batch_size,
                               config.eval_batch_size)
  state = train.create_train_state(
      model, make_tx(config, steps), mesh, seed=config.seed, input_shape=INPUT_SHAPE)
  batched = NamedSharding(mesh, P("data"))

  def evaluate_epoch(state):
    epoch = int(state.step) // steps
    last = epoch == config.epochs
    if last or (config.knn_every and epoch % config.knn_every == 0):
      return evaluate(state, config, dataset, model, mesh, probe=last)
    return {}

  return train.fit(
      config, workdir, state, steps=steps,
      epoch_batches=data.shuffled_batches(dataset.train, config.batch_size, config.seed, batched),
      step=functools.partial(train_step, lambd=config.lambd), mesh=mesh, input_shape=INPUT_SHAPE,
      mean=dataset.mean, std=dataset.std, evaluate=evaluate_epoch,
      schedule=lars.warmup_cosine(config.weights_learning_rate * config.batch_size / 256,
                                  config.epochs * steps, round(config.warmup_epochs * steps)),
      summary_fields=SUMMARY_FIELDS, per_step=True)
