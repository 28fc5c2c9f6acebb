"""Tests of the Barlow Twins example: the loss, LARS's parameter groups, augmentation, training.

Training tests pass a tiny backbone (`TinyBackbone`) and train on synthetic data; the end-to-end
run is shared through a module fixture (each compile costs seconds).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from examples.barlow_twins import augment, configs, lars, main, models, train
from examples.lib import data
from examples.lib import train as lib_train
from tests.helpers import (
  assert_within,
  condition_number,
  eps,
  forward_error,
  polar_tol,
  round_off,
)

pytestmark = pytest.mark.examples

REPO = Path(__file__).resolve().parents[1]


class TinyBackbone(nn.Module):
  """Two stride-2 convolutions with batch norm and global pooling: 16 features."""

  @nn.compact
  def __call__(self, x, train: bool):
    for features in (8, 16):
      x = nn.Conv(features, (3, 3), strides=2)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    return jnp.mean(x, axis=(1, 2))


TINY = configs.Config(
    optimizers=("lars",), backbone="tiny", projector=(32, 32), epochs=2, warmup_epochs=1,
    batch_size=32, eval_batch_size=64, synthetic=True, train_size=128, test_size=64, knn_k=10,
    probe_steps=50)


# --- loss ----------------------------------------------------------------------------------------


def hand_loss(z1: np.ndarray, z2: np.ndarray, lambd: float) -> float:
  """The Barlow Twins loss written out element by element, in float64."""
  n, d = z1.shape

  def bn(z):
    mean = z.sum(0) / n
    var = ((z - mean) ** 2).sum(0) / n
    return (z - mean) / np.sqrt(var + 1e-5)

  a, b = bn(z1.astype(np.float64)), bn(z2.astype(np.float64))
  loss = 0.0
  for i in range(d):
    for j in range(d):
      c_ij = sum(a[k, i] * b[k, j] for k in range(n)) / n
      loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij**2
  return loss


def correlation_error(n: int) -> float:
  """Bound on a float32 entry of C against float64: the standardised columns carry the mean's,
  the variance's (round_off(n) each) and a few elementwise roundings (4 eps), both factors, and
  C's sum over the batch round_off(n); each relative to |C_ij| <= 1 (Cauchy-Schwarz)."""
  return 2 * (2 * round_off(n) + 4 * eps()) + round_off(n)


def loss_tol(z1: np.ndarray, z2: np.ndarray, lambd: float) -> float:
  """Bound on the float32 loss against float64: each C_ij off by dc (correlation_error) moves its
  term w (r + dc)^2 - w r^2 by at most w (2 |r| + dc) dc, with r = 1 - C_ii (w = 1) on the
  diagonal and r = C_ij (w = lambd) off it, summed over C."""
  def standardised(z):
    z = np.asarray(z, np.float64)
    return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
  c = standardised(z1).T @ standardised(z2) / len(z1)
  r = np.where(np.eye(len(c), dtype=bool), 1 - c, c)
  w = np.where(np.eye(len(c), dtype=bool), 1.0, lambd)
  dc = correlation_error(len(z1))
  return float(np.sum(w * (2 * np.abs(r) + dc) * dc)) + eps() * abs(hand_loss(z1, z2, lambd))


def test_loss_matches_hand_computation_and_ignores_view_order():
  rng = np.random.default_rng(0)
  z1 = rng.normal(size=(6, 4)).astype(np.float32)
  z2 = (z1 + 0.5 * rng.normal(size=(6, 4))).astype(np.float32)
  for lambd in (models.LAMBDA, 0.5):
    expected, tol = hand_loss(z1, z2, lambd), loss_tol(z1, z2, lambd)
    assert float(models.barlow_twins_loss(z1, z2, lambd)) == pytest.approx(expected, abs=tol)
    assert float(models.barlow_twins_loss(z2, z1, lambd)) == pytest.approx(expected, abs=tol)
  # A small case by hand: z1 = z2 with standardised (variance 1), uncorrelated columns gives
  # C = c I with c = 1 / (1 + 1e-5) (batch norm's epsilon): loss 2 (1 - c)^2, about 0. Negating a
  # column of z2 makes C_11 = -c: (1 + c)^2 + (1 - c)^2, about 4.
  z = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], np.float32)
  c = 1 / (1 + 1e-5)
  flipped = z * np.array([-1.0, 1.0], np.float32)
  for z2, expected in ((z, 2 * (1 - c) ** 2), (flipped, (1 + c) ** 2 + (1 - c) ** 2)):
    assert hand_loss(z, z2, models.LAMBDA) == pytest.approx(expected, rel=1e-12)
    assert float(models.barlow_twins_loss(z, z2)) == pytest.approx(
        expected, abs=loss_tol(z, z2, models.LAMBDA))


def test_cross_correlation_is_normalised_by_the_batch():
  """C of z with itself is the correlation matrix, shrunk by batch norm's epsilon (var / (var +
  1e-5)), to correlation_error."""
  z = np.random.default_rng(1).normal(size=(64, 3)).astype(np.float32)
  c = np.asarray(models.cross_correlation(z, z), np.float64)
  var = np.var(np.asarray(z, np.float64), axis=0)
  shrink = np.sqrt(var[:, None] * var[None, :] / ((var[:, None] + 1e-5) * (var[None, :] + 1e-5)))
  np.testing.assert_allclose(c, np.corrcoef(np.asarray(z, np.float64).T) * shrink, rtol=0,
                             atol=correlation_error(64))


# --- LARS ----------------------------------------------------------------------------------------


def tiny_tree(seed: int) -> dict:
  keys = jax.random.split(jax.random.key(seed), 5)
  return {
      "Conv_0": {"kernel": jax.random.normal(keys[0], (3, 3, 2, 4)),
                 "bias": jax.random.normal(keys[1], (4,))},
      "Dense_0": {"kernel": jax.random.normal(keys[2], (4, 3))},
      "BatchNorm_0": {"scale": jax.random.normal(keys[3], (3,)),
                      "bias": jax.random.normal(keys[4], (3,))},
  }


def authors_lars(params, grads_per_step, rates, *, wd, momentum, eta, orthogonal=False,
                 rate_first=False):
  """The authors' PyTorch LARS step by step in numpy float64, (weights_lr, biases_lr) per step in
  `rates` (with `rate_first`, optax.lars's order: the rate scales the step before the momentum
  buffer, which holds lr q g); the parameters after the steps, and per entry a first-order bound
  on a float32 run's distance from them.

  The bound follows each float32 quantity's error through the steps: every rounding is eps of
  the rounded value (float32's spacing; the unit round-off is half that, the other half covers
  the float32 constants 0.9, 0.1 and the rates); the norms in the trust ratio round_off(size)
  relative each; Orthogonal LARS's U V^T of the conv gradient G is off by polar_tol(kappa(G))
  in every entry. Second-order terms (products of errors, about 1e-12) are left out.
  """
  params = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
  buffers = jax.tree.map(np.zeros_like, params)
  errors = jax.tree.map(np.zeros_like, params)  # of the params, then of the buffer
  buffer_errors = jax.tree.map(np.zeros_like, params)
  e = eps()
  for grads, (lr_w, lr_b) in zip(grads_per_step, rates, strict=True):
    def leaf(p, g, mu, ep, emu, lr_w=lr_w, lr_b=lr_b):
      g = np.asarray(g, np.float64)
      eg = np.zeros_like(g)
      if p.ndim == 1:
        lr = lr_b
      else:
        lr = lr_w
        if orthogonal and p.ndim == 4:
          matrix = g.reshape(-1, g.shape[-1])
          u, _, vt = np.linalg.svd(matrix, full_matrices=False)
          g = (u @ vt).reshape(g.shape)
          eg = eg + polar_tol(condition_number(matrix), max(matrix.shape))
        d = g + wd * p
        ed = eg + wd * ep + e * (np.abs(g) + wd * np.abs(p))
        q = eta * np.linalg.norm(p) / np.linalg.norm(d)
        rq = (2 * round_off(p.size) + np.linalg.norm(ep) / np.linalg.norm(p)
              + np.linalg.norm(ed) / np.linalg.norm(d) + 2 * e)
        g, eg = q * d, q * ed + np.abs(q * d) * (rq + e)
      if rate_first:
        g, eg = lr * g, lr * eg + e * lr * np.abs(g)
      new_mu = momentum * mu + g
      emu[...] = momentum * emu + eg + e * (momentum * np.abs(mu) + np.abs(g))
      mu[...] = new_mu
      step, estep = (mu, emu) if rate_first else (lr * mu, lr * emu + e * lr * np.abs(mu))
      p = p - step
      ep[...] = ep + estep + e / 2 * np.abs(p)
      return p
    params = jax.tree.map(leaf, params, grads, buffers, errors, buffer_errors)
  return params, errors


def run_optimizer(tx, params, grads_per_step):
  state = tx.init(params)
  for grads in grads_per_step:
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def test_parameter_groups_by_dimension():
  groups = lars.parameter_groups(tiny_tree(0))
  assert groups == {"Conv_0": {"kernel": "weights", "bias": "biases"},
                    "Dense_0": {"kernel": "weights"},
                    "BatchNorm_0": {"scale": "biases", "bias": "biases"}}


@pytest.mark.parametrize("orthogonal", [False, True])
def test_lars_matches_the_authors_per_group(orthogonal):
  """Weights: decay, trust ratio, momentum, then lr_w; biases and batch norm: momentum, lr_b only;
  Orthogonal LARS also orthogonalises the conv kernel's gradient (not the dense kernel's). The
  rates change between steps, which is where the order of momentum and learning rate shows."""
  params, grads = tiny_tree(0), [tiny_tree(1), tiny_tree(2), tiny_tree(3)]
  lr_w, lr_b = [0.3, 0.2, 0.1], [0.03, 0.02, 0.01]
  options = {"weight_decay": 0.1, "momentum": 0.9, "trust_coefficient": 0.01}
  make = lars.orthogonal_authors_lars if orthogonal else lars.authors_lars
  tx = make(lambda step: jnp.array(lr_w)[step], lambda step: jnp.array(lr_b)[step], **options)
  got = run_optimizer(tx, params, grads)
  expected, bound = authors_lars(params, grads, list(zip(lr_w, lr_b, strict=True)), wd=0.1,
                                 momentum=0.9, eta=0.01, orthogonal=orthogonal)
  jax.tree.map(assert_within, got, expected, bound)


def test_optax_lars_differs_when_the_rate_changes():
  """optax.lars scales by the learning rate before momentum: equal at a constant rate, not
  under a schedule (and it decays and adapts the 1-D leaves too, so they are masked out here)."""
  params, grads = tiny_tree(0), [tiny_tree(1), tiny_tree(2)]
  mask = jax.tree.map(lambda p: p.ndim > 1, params)

  def both(lr):
    ours = run_optimizer(lars.authors_lars(lr, lr, weight_decay=0.1), params, grads)
    theirs = run_optimizer(optax.lars(lr, weight_decay=0.1, weight_decay_mask=mask,
                                      trust_coefficient=1e-3, trust_ratio_mask=mask),
                           params, grads)
    return ours, theirs

  def references(rates):
    """Both orders in float64 (optax's trust coefficient, 1e-3), with their float32 bounds."""
    return [authors_lars(params, grads, rates, wd=0.1, momentum=0.9, eta=1e-3, rate_first=first)
            for first in (False, True)]

  # At a constant rate the two orders are equal in exact arithmetic (float64: 1e-16 apart), so
  # the float32 runs are within the sum of their bounds of each other.
  ours, theirs = both(0.1)
  (_, ours_bound), (_, theirs_bound) = references([(0.1, 0.1)] * 2)
  jax.tree.map(lambda a, b, ea, eb: assert_within(a, b, ea + eb), ours, theirs, ours_bound,
               theirs_bound)
  # Under the schedule they differ by what the float64 references predict, to the same bounds,
  # and that difference is over 100 times the bounds.
  ours, theirs = both(lambda step: jnp.where(step == 0, 0.1, 1.0))
  (ours_ref, ours_bound), (theirs_ref, theirs_bound) = references([(0.1, 0.1), (1.0, 1.0)])
  kernel = [tree["Dense_0"]["kernel"] for tree in (ours, theirs, ours_ref, theirs_ref,
                                                    ours_bound, theirs_bound)]
  assert_within(kernel[0] - kernel[1], kernel[2] - kernel[3], kernel[4] + kernel[5])
  assert np.abs(kernel[2] - kernel[3]).max() > 100 * (kernel[4] + kernel[5]).max()


def test_schedule_warms_up_then_decays_to_a_thousandth():
  schedule = lars.warmup_cosine(2.0, total_steps=110, warmup_steps=10)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(1.0)
  assert float(schedule(10)) == pytest.approx(2.0)
  assert float(schedule(60)) == pytest.approx(1.001)
  assert float(schedule(110)) == pytest.approx(0.002)


def test_make_optimizer_scales_rates_by_batch():
  params, grads = tiny_tree(0), tiny_tree(1)
  tx = lars.make_optimizer("lars", batch_size=512, total_steps=100, warmup_steps=0,
                           weight_decay=0.0, trust_coefficient=1.0)
  updates, _ = tx.update(grads, tx.init(params), params)
  # At step 0 with no warmup: biases move by 0.0048 * 512 / 256 * g.
  # float32: the rate (0.0048, its batch scaling and the schedule's factor) and its product by g,
  # each a rounding of eps / 2; 4 eps is a margin of 2 over them.
  np.testing.assert_allclose(updates["Conv_0"]["bias"],
                             -0.0096 * np.asarray(grads["Conv_0"]["bias"], np.float64),
                             rtol=4 * eps())
  with pytest.raises(ValueError, match="orthogonal-lars"):
    lars.make_optimizer("sgd", batch_size=256, total_steps=1, warmup_steps=0)


# --- augmentation --------------------------------------------------------------------------------


def test_views_are_normalised_random_and_keep_constant_images_constant():
  images = jax.random.randint(jax.random.key(0), (16, 32, 32, 3), 0, 256).astype(jnp.uint8)
  views = jax.jit(augment.two_views)(images, jax.random.key(1), (0.5,) * 3, (0.25,) * 3)
  for v in views:
    assert v.shape == (16, 32, 32, 3) and v.dtype == jnp.float32
    # (x - 0.5) / 0.25 for x in [0, 1]: [-2, 2], off by two roundings of eps / 2 (relative).
    assert float(v.min()) >= -2.0 * (1 + eps()) and float(v.max()) <= 2.0 * (1 + eps())
  assert not np.allclose(views[0], views[1])
  again = jax.jit(augment.two_views)(images, jax.random.key(1), (0.5,) * 3, (0.25,) * 3)
  np.testing.assert_array_equal(views[0], again[0])
  gray = jnp.full((4, 32, 32, 3), 0.3)
  # Resizing a constant: each output a weighted sum of at most 32 x 32 inputs whose weights sum
  # to 1, to round_off(32 * 32) of 0.3.
  np.testing.assert_allclose(augment.random_resized_crop(gray, jax.random.key(2), 32), 0.3,
                             rtol=0, atol=0.3 * round_off(32 * 32))
  out = augment.grayscale(jax.random.uniform(jax.random.key(3), (2, 4, 4, 3)))
  np.testing.assert_allclose(out[..., 0], out[..., 2])


# --- training ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
  """main() on the tiny backbone: LARS and Orthogonal LARS, 2 epochs of 4 steps each."""
  workdir = tmp_path_factory.mktemp("bt")
  argv = ["--backbone", "tiny", "--projector", "32-32", "--epochs", "2", "--warmup-epochs", "1",
          "--batch-size", "32", "--eval-batch-size", "64", "--synthetic", "--train-size", "128",
          "--test-size", "64", "--knn-k", "10", "--knn-every", "1", "--probe-steps", "50",
          "--workdir", str(workdir)]
  assert main.main(argv, backbone=TinyBackbone()) == 0
  return workdir


def test_pretraining_end_to_end(compared):
  results = json.loads((compared / "results.json").read_text())
  assert results["command"].startswith("python -m examples.barlow_twins.main --backbone tiny")
  for name in ("lars", "orthogonal-lars"):
    (run,) = results["results"][name]
    assert run["seed"] == 0 and run["epoch"] == [1, 2]
    assert all(np.isfinite(loss) and loss > 0 for loss in run["train_loss"])
    assert run["train_loss"][1] < run["train_loss"][0]  # it learns (35.7 -> 31.5 here)
    assert all(0 <= a <= 1 for a in run["knn_accuracy"])
    assert run["probe_test_accuracy"][0] is None and 0 <= run["probe_test_accuracy"][1] <= 1
    assert (compared / name / "seed0" / "metrics.jsonl").is_file()
  assert (compared / "loss.png").stat().st_size > 1000
  assert "jax " in results["setting"]
  # Same seed, data and augmentations: the first epochs differ only by the optimiser.
  losses = [results["results"][n][0]["train_loss"][1] for n in ("lars", "orthogonal-lars")]
  assert losses[0] != losses[1]


def test_resume_refuses_other_settings(compared):
  config = dataclasses.replace(TINY, optimizers=("lars",), lambd=0.1)
  with pytest.raises(ValueError, match="lambd"):
    train.pretrain(config, compared / "lars" / "seed0", backbone=TinyBackbone())


def test_linear_probe_and_knn_separate_separable_features():
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(10, 16)) * 5
  labels = rng.integers(0, 10, 400)
  features = (centres[labels] + rng.normal(size=(400, 16))).astype(np.float32)
  probe = train.linear_probe(features[:300], labels[:300], features[300:], labels[300:], steps=200)
  assert probe["probe_test_accuracy"] > 0.95
  assert train.knn_accuracy(features[:300], labels[:300], features[300:], labels[300:],
                            k=20) > 0.95


STEP = """
import json, sys
import jax, numpy as np
from tests import test_barlow_twins as t
print(json.dumps({"devices": jax.device_count(), **t.one_step()}))
"""


def one_step() -> dict:
  """One Orthogonal LARS step of the tiny model on a fixed synthetic batch of 64: the loss and
  the updated projector kernel and batch-norm statistics."""
  config = dataclasses.replace(TINY, optimizers=("orthogonal-lars",), batch_size=64,
                               warmup_epochs=0)
  dataset = train.load_dataset(config)
  mesh = lib_train.make_mesh()
  model = models.BarlowTwins(TinyBackbone(), config.projector)
  state = lib_train.create_train_state(
      model, train.make_tx(config, 2), mesh, seed=config.seed, input_shape=train.INPUT_SHAPE)
  step, _ = lib_train.compile_train_step(
      functools.partial(train.train_step, lambd=0.0051), state, 64, mesh,
      input_shape=train.INPUT_SHAPE, mean=dataset.mean, std=dataset.std)
  batch = data.split_batches(dataset.train, [np.arange(64)],
                             jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  state, metrics = step(state, *next(batch))
  kernel = state.params["projector"]["Dense_0"]["kernel"]
  stats = state.batch_stats["backbone"]["BatchNorm_0"]
  return {"loss": float(metrics["loss"]), "kernel": np.asarray(kernel).tolist(),
          "mean": np.asarray(stats["mean"]).tolist(), "var": np.asarray(stats["var"]).tolist()}


# The reductions on the way from the images to the embeddings z (TinyBackbone, the (32, 32)
# projector, a batch of 64 of 32 x 32 images): dot products of conv0 (3 x 3 x 3), conv1
# (3 x 3 x 8) and the projector's two layers (16, 32), and sums over the batch of batch norm 0
# (64 x 16 x 16 positions), batch norm 1 (64 x 8 x 8), the pooling (8 x 8), the projector's batch
# norm and the standardisation (64 each).
DOTS, SUMS = (27, 72, 16, 32), (64 * 16 * 16, 64 * 8 * 8, 64, 64, 64)


@pytest.mark.multidevice
def test_eight_devices_match_one():
  """The batch sharded over 8 devices: batch norm, standardisation and C are global."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  result = subprocess.run([sys.executable, "-c", STEP], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  multi, single = json.loads(result.stdout.strip().splitlines()[-1]), one_step()
  assert multi["devices"] == 8 and jax.device_count() == 1
  # Two float32 runs of the same step, reduced in other orders: each within the first-order
  # bound of the exact step (`forward_error` of z and of each standardised column), so within
  # twice it of each other.
  rho = forward_error(DOTS, SUMS)
  # The loss: each C_ij is off by dc (its standardised columns by rho each, and its own
  # rounding, `correlation_error`), which moves sum w r^2 (r = 1 - C_ii, w = 1; r = C_ij,
  # w = lambda) by at most sum w 2 |r| dc + sum w dc^2 <= 2 sqrt(sum w * loss) dc + sum w dc^2.
  d, lambd = TINY.projector[-1], 0.0051
  weights, dc = d + lambd * d * (d - 1), 2 * (2 * rho + correlation_error(64))
  tol = 2 * np.sqrt(weights * single["loss"]) * dc + weights * dc**2
  assert multi["loss"] == pytest.approx(single["loss"], rel=0, abs=tol)
  # The projector kernel after one step from the same params p: p - lr eta ||p|| D / ||D||,
  # the trust ratio fixing the step's size. The gradient D is off by 2 rho (forward and
  # backward) and its batch sum's round_off(128) (two views) relative to ||D||, so D / ||D|| by
  # twice that in each run; and the rounding of p - step, eps |p| at most between the two.
  kernel, other = np.asarray(single["kernel"], np.float64), np.asarray(multi["kernel"])
  direction = 2 * (2 * rho + round_off(2 * 64))
  lr = 0.2 * 64 / 256  # the authors' weights' rate at step 0 without warm-up
  tol = 2 * lr * TINY.trust_coefficient * np.linalg.norm(kernel) * direction
  np.testing.assert_allclose(other, kernel, rtol=eps(), atol=tol)
  # Batch norm 0's running mean after the two views, 0.09 m1 + 0.1 m2 (momentum 0.9 from 0), and
  # variance 0.81 + 0.09 v1 + 0.1 v2 (from 1): each batch mean m over 64 x 16 x 16 positions of
  # conv0's outputs is off by (2 27 eps + round_off(16384)) of their root mean square
  # sqrt(v + m^2), and 0.09 a + 0.1 b <= sqrt(0.19 (0.09 a^2 + 0.1 b^2)) (Cauchy-Schwarz). The two
  # views' means are of the same images: taken as at most twice the combined one, |mean| / 0.19.
  mean, var = np.asarray(single["mean"], np.float64), np.asarray(single["var"], np.float64)
  squares = var - 0.81 + 0.19 * (2 * np.abs(mean) / 0.19) ** 2
  rms_sum = np.sqrt(0.19 * squares)
  tol = 2 * (2 * 27 * eps() + round_off(64 * 16 * 16)) * rms_sum + 4 * eps() * np.abs(mean)
  np.testing.assert_array_less(np.abs(np.asarray(multi["mean"]) - mean), tol)
