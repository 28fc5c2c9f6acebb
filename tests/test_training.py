"""Orthogonal-SGDM against SGDM on a small CNN: the paper's claim, in miniature.

Tuddenham et al. report that orthogonalising each layer's gradient speeds up early training of
CNNs at the same learning rate, momentum and weight decay (lr 1e-2, momentum 0.9, weight decay
5e-4). Here both optimisers train the same model from the same initialisation on the same batches
of a fixed synthetic 10-class task, and Orthogonal-SGDM must end with the lower training loss.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import orthax

SEED = 0
NUM_CLASSES, IMAGE_SHAPE = 10, (16, 16, 3)
TRAIN_SIZE, BATCH_SIZE, STEPS, LAST = 2048, 128, 100, 10
LR, MOMENTUM, WEIGHT_DECAY = 1e-2, 0.9, 5e-4


class SmallCNN(nn.Module):
  """Two 3x3 stride-2 convolutions with 16 filters and ReLU, then a linear classifier."""

  @nn.compact
  def __call__(self, x):
    for _ in range(2):
      x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


def synthetic_task(seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Images around one fixed random template per class, with noise larger than the signal."""
  rng = np.random.default_rng(seed)
  templates = rng.standard_normal((NUM_CLASSES, *IMAGE_SHAPE))
  labels = rng.integers(0, NUM_CLASSES, TRAIN_SIZE)
  images = 0.3 * templates[labels] + rng.standard_normal((TRAIN_SIZE, *IMAGE_SHAPE))
  return images.astype(np.float32), labels.astype(np.int32)


def batch_indices(seed: int) -> np.ndarray:
  """(STEPS, BATCH_SIZE) indices: a fresh permutation of the training set every epoch."""
  rng = np.random.default_rng(seed + 1)
  epochs = -(-STEPS * BATCH_SIZE // TRAIN_SIZE)
  order = np.concatenate([rng.permutation(TRAIN_SIZE) for _ in range(epochs)])
  return order[: STEPS * BATCH_SIZE].reshape(STEPS, BATCH_SIZE)


def train(tx: optax.GradientTransformation, seed: int) -> np.ndarray:
  """The training loss at every step; the whole run is one compiled scan."""
  images, labels = synthetic_task(seed)
  model = SmallCNN()
  params = model.init(jax.random.key(seed), jnp.zeros((1, *IMAGE_SHAPE)))["params"]

  def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": params}, x),
                                                           y).mean()

  @jax.jit
  def run(params, images, labels, batches):
    def step(carry, indices):
      params, state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, images[indices], labels[indices])
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss

    return jax.lax.scan(step, (params, tx.init(params)), batches)[1]

  return np.asarray(run(params, images, labels, jnp.asarray(batch_indices(seed))))


def test_orthogonal_sgdm_trains_faster_than_sgdm():
  # Mean loss over the last 10 of 100 steps (SGDM / Orthogonal-SGDM), measured on CPU:
  # seed 0: 0.236 / 7e-5, seed 1: 0.259 / 2e-5, seed 2: 0.250 / 4e-5, seed 3: 0.192 / 4e-5,
  # seed 4: 0.245 / 7e-5. Orthogonal-SGDM fits the training set by step ~60; SGDM is still
  # descending at step 100, so the margin (~0.2) is far above run-to-run noise.
  sgdm = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, momentum=MOMENTUM))
  orthogonal_sgdm = orthax.orthogonal_sgd(LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
  sgdm_loss = train(sgdm, SEED)[-LAST:].mean()
  orthogonal_loss = train(orthogonal_sgdm, SEED)[-LAST:].mean()
  assert np.isfinite(sgdm_loss) and np.isfinite(orthogonal_loss)
  assert orthogonal_loss < sgdm_loss, f"{orthogonal_loss=} {sgdm_loss=}"
