"""Tests of the CIFAR-10 example: data, augmentation, training, resume, data parallelism, main.

Training tests pass a tiny CNN (`helpers.TinyCNN`) as the model and train on synthetic data,
and share their runs through one module fixture: each compile costs seconds on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from examples.cifar10 import augment, configs, main, train
from examples.lib import checkpoint, data, optimizers
from examples.lib import cifar10 as data_lib
from examples.lib import compare as compare_lib
from examples.lib import config as config_lib
from examples.lib import train as lib_train
from examples.models.convnets import MODELS
from orthax._src import polar_exact
from tests import helpers
from tests.helpers import round_off

pytestmark = pytest.mark.examples

REPO = Path(__file__).resolve().parents[1]
HAS_DIAGNOSTICS = importlib.util.find_spec("orthax.diagnostics") is not None
TINY = configs.Config(
    model="tiny", optimizers=("orthogonal-sgdm",), epochs=1, batch_size=64, eval_batch_size=64,
    synthetic=True, train_size=256, validation_size=128, test_size=128)


def final_state(config: configs.Config, workdir: Path) -> lib_train.TrainState:
  """The state of `workdir`'s latest checkpoint."""
  state = lib_train.create_train_state(
      helpers.TinyCNN(), train.make_tx(config, 1), lib_train.make_mesh(), seed=config.seed,
      input_shape=train.INPUT_SHAPE)
  return checkpoint.restore_checkpoint(checkpoint.checkpoint_manager(workdir), state)[0]


def numpy_tree(state: lib_train.TrainState) -> dict:
  return jax.device_get(
      {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state})


def run_tiny(workdir: str, config: configs.Config = TINY) -> tuple[list[dict], dict]:
  """Trains `config` in `workdir`; its metrics and final state (also run in a subprocess)."""
  records = train.train_and_evaluate(config, workdir, model=helpers.TinyCNN())
  return records, numpy_tree(final_state(config, Path(workdir)))


# --- data ----------------------------------------------------------------------------------------


SIGMAS = 5  # standard errors allowed to a statistic of the data
# Per-channel means of the decoded training images of the local copy (its README).
CIFAR10_MEAN = (0.4913, 0.4821, 0.4465)


def local_copy() -> Path:
  try:
    return data_lib.find_local_copy()
  except data_lib.DataNotFoundError as error:
    pytest.skip(str(error).splitlines()[0])


def test_split_is_fixed_45k_5k():
  train_idx, val_idx = data_lib.split_indices()
  assert (len(train_idx), len(val_idx)) == (45_000, 5_000)
  assert len(np.union1d(train_idx, val_idx)) == 50_000
  np.testing.assert_array_equal(data_lib.split_indices()[1], val_idx)


def image_moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Each image's per-channel mean and mean square of its [0, 1] pixels, in float64."""
  x = images.reshape(len(images), -1, 3).astype(np.float64) / 255
  return x.mean(1), np.einsum("ipc,ipc->ic", x, x) / x.shape[1]


def test_loader_on_local_copy():
  dataset = data_lib.load(local_copy(), train_size=2000, test_size=1000)
  assert dataset.train.images.shape == (2000, 32, 32, 3)
  assert dataset.validation.images.shape == (5000, 32, 32, 3)
  assert dataset.test.images.shape == (1000, 32, 32, 3)
  for split in dataset[:3]:
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    assert split.labels.min() == 0 and split.labels.max() == 9
  # Statistics of the data, not round-off: each within SIGMAS standard errors of what it
  # estimates (a 5-sigma deviation has probability 6e-7; the split is fixed, so it is drawn once).
  # The 5,000 validation images are drawn without replacement from 50,000 with 5,000 per class:
  # hypergeometric class counts, mean 500, variance n p (1 - p) (N - n) / (N - 1), sd 20.1.
  n, population, p = 5000, 50_000, 0.1
  counts = np.bincount(dataset.validation.labels, minlength=10)
  count_sd = np.sqrt(n * p * (1 - p) * (population - n) / (population - 1))
  assert np.abs(counts - n * p).max() < SIGMAS * count_sd, counts
  # The channel means of the 2,000 training images (a random draw from the 50,000) against the
  # 50,000's: the standard error from the spread of the images' own means (finite-population
  # corrected), plus 2e-4 for the reference: this copy's means rounded to 4 digits (5e-5), and
  # the original release's (0.49140, 0.48216, 0.44653) differ from them by less than 1.5e-4.
  means, squares = image_moments(dataset.train.images)
  mean_se = means.std(0, ddof=1) / np.sqrt(2000) * np.sqrt(1 - 2000 / population)
  np.testing.assert_array_less(np.abs(np.subtract(dataset.mean, CIFAR10_MEAN)),
                               SIGMAS * mean_se + 2e-4)
  # The pixel std against the one of the 5,000 validation images, computed here: the two are
  # disjoint random draws from the same 50,000, so their difference has standard error
  # S sqrt(1 / 2000 + 1 / 5000), S the spread of each image's influence on the std (its mean
  # square less 2 mu times its mean, over 2 std: the delta method).
  other_means, other_squares = image_moments(dataset.validation.images)
  means, squares = np.concatenate([means, other_means]), np.concatenate([squares, other_squares])
  mu = means.mean(0)
  std = np.sqrt(squares.mean(0) - mu**2)
  std_se = ((squares - 2 * mu * means) / (2 * std)).std(0, ddof=1) * np.sqrt(1 / 2000 + 1 / 5000)
  other_std = np.sqrt(other_squares.mean(0) - other_means.mean(0) ** 2)
  np.testing.assert_array_less(np.abs(np.subtract(dataset.std, other_std)),
                               SIGMAS * std_se)


@pytest.mark.parametrize("tfds_installed", [False, True])
def test_missing_data_says_how_to_point_at_a_copy(tmp_path, monkeypatch, tfds_installed):
  """--download is offered only where tensorflow-datasets is there to act on it."""
  monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                      type(sys)("tensorflow_datasets") if tfds_installed else None)
  with pytest.raises(data_lib.DataNotFoundError) as error:
    data_lib.load(tmp_path / "missing.npz")
  message = str(error.value)
  assert "--data" in message and "ORTHAX_CIFAR10" in message and "--synthetic" in message
  assert "cifar-10-python.tar.gz" in message
  assert ("--download" in message) == tfds_installed


class FakeCifarBuilder:
  """tensorflow-datasets' cifar10 builder in miniature: image i carries i in its first pixel."""

  def __init__(self, prepared: bool):
    self.prepared, self.downloads = prepared, 0

  def is_prepared(self) -> bool:
    return self.prepared

  def download_and_prepare(self) -> None:
    self.prepared, self.downloads = True, self.downloads + 1

  def as_dataset(self, split: str, batch_size: int) -> dict:
    assert batch_size == -1 and self.prepared
    n = {"train": 60, "test": 20}[split]
    images = np.zeros((n, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return {"image": images, "label": np.arange(n, dtype=np.int64) % 10}


@pytest.fixture
def fake_tfds(monkeypatch):
  builder = FakeCifarBuilder(prepared=True)
  module = type(sys)("tensorflow_datasets")
  module.builder = lambda name: builder if name == "cifar10" else None
  module.as_numpy = lambda tree: tree
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", module)
  monkeypatch.delenv("ORTHAX_CIFAR10", raising=False)
  return builder


def test_tfds_source_gives_the_fixed_split(fake_tfds):
  dataset = data_lib.load(train_size=40)
  assert dataset.source == "CIFAR-10 (tensorflow-datasets)"
  train_idx, val_idx = data_lib.split_indices(60)
  np.testing.assert_array_equal(dataset.train.images[:, 0, 0, 0], train_idx[:40])
  np.testing.assert_array_equal(dataset.validation.images[:, 0, 0, 0], val_idx)
  np.testing.assert_array_equal(dataset.test.images[:, 0, 0, 0], np.arange(20))
  assert dataset.train.labels.dtype == np.int32
  np.testing.assert_array_equal(dataset.train.labels, train_idx[:40] % 10)
  assert fake_tfds.downloads == 0


def test_tfds_downloads_only_when_asked(fake_tfds):
  fake_tfds.prepared = False
  assert data_lib.load_tfds((None, None, None)) is None
  assert fake_tfds.downloads == 0
  splits = data_lib.load_tfds((None, None, None), download=True)
  assert fake_tfds.downloads == 1 and [len(s.labels) for s in splits] == [54, 6, 20]


def test_download_without_tfds_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
  monkeypatch.delenv("ORTHAX_CIFAR10", raising=False)
  assert data_lib.load_tfds((None, None, None)) is None
  with pytest.raises(data_lib.DataNotFoundError, match="pip install tensorflow-datasets"):
    data_lib.load(download=True)


def test_augment_crops_and_flips():
  images = jax.random.randint(jax.random.key(1), (32, 32, 32, 3), 1, 256).astype(jnp.uint8)
  out = np.asarray(jax.jit(augment.augment)(images, jax.random.key(2)))
  assert out.shape == images.shape and out.dtype == np.uint8
  padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)))
  found = set()
  for image, result in zip(padded, out, strict=True):
    matches = [(r, c, flip) for r in range(9) for c in range(9) for flip in (False, True)
               if np.array_equal(
                   image[r:r + 32, c:c + 32][:, ::-1] if flip else image[r:r + 32, c:c + 32],
                   result)]
    assert len(matches) == 1  # every output is one crop of its padded image, maybe mirrored
    found.add(matches[0])
  assert {flip for _, _, flip in found} == {False, True}
  assert len({(r, c) for r, c, _ in found}) > 10


def test_epoch_order_depends_on_seed_and_epoch_only():
  order = data.epoch_order(100, 32, seed=0, epoch=1)
  assert order.shape == (3, 32) and len(np.unique(order)) == 96
  np.testing.assert_array_equal(order, data.epoch_order(100, 32, seed=0, epoch=1))
  assert not np.array_equal(order, data.epoch_order(100, 32, seed=0, epoch=2))


# --- optimisers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", optimizers.OPTIMIZERS)
def test_every_optimizer_takes_a_step(name):
  params = {"conv": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.zeros(8)},
            "dense": {"kernel": jnp.ones((8, 10)), "bias": jnp.zeros(10)}}
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(0), p.shape), params)
  tx = optimizers.make_optimizer(name, learning_rate=1e-2, momentum=0.9, weight_decay=5e-4)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
  assert all(bool(jnp.all(jnp.isfinite(u))) and bool(jnp.any(u != 0))
             for u in jax.tree.leaves(updates))
  if name in ("orthogonal-sgdm", "muon"):  # the conv kernel's step is orthogonalised
    # The first step is -lr (D + wd P) for the (36, 8) view G = U S V^T of the kernel's
    # gradient and P of the params (all ones): D = U V^T for orthogonal-sgdm, within
    # polar_tol(kappa(G)) of it in the spectral norm; for muon U f(S) V^T, f Muon's 5
    # Newton-Schulz steps on S / ||G||_F (the first momentum is a multiple of G; optax's width
    # scale is 1 as 8 < 36), within newton_schulz_tol of it. The sum and the products round
    # each entry by 2 eps at most: 2 eps ||.||_F <= 2 eps sqrt(8) ||.||_2 in the spectral norm.
    g = np.asarray(grads["conv"]["kernel"], np.float64).reshape(36, 8)
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    if name == "orthogonal-sgdm":
      f, tol = np.ones(8), helpers.polar_tol(s[0] / s[-1], 36)
    else:
      f, tol = s / np.linalg.norm(s), helpers.newton_schulz_tol(0, 36)
      for a, b, c in helpers.NEWTON_SCHULZ_5:
        f = a * f + b * f**3 + c * f**5
    expected = u @ np.diag(f) @ vt + 5e-4 * np.ones((36, 8))
    tol += 2 * helpers.eps() * np.sqrt(8) * np.linalg.norm(expected, 2)
    step = np.asarray(updates["conv"]["kernel"], np.float64).reshape(36, 8) / -1e-2
    assert np.linalg.norm(step - expected, 2) <= tol, (np.linalg.norm(step - expected, 2), tol)


def test_conv_mask_leaves_dense_kernels_alone():
  grads = {"conv": {"kernel": jnp.arange(72.0).reshape(3, 3, 1, 8)},
           "dense": {"kernel": jnp.arange(80.0).reshape(8, 10)}}
  direction = optimizers.make_direction("orthogonal-sgdm", mask="conv")
  updates, _ = direction.update(grads, direction.init(grads), grads)
  np.testing.assert_array_equal(updates["dense"]["kernel"], grads["dense"]["kernel"])
  # The conv kernel as its (kh kw in, out) = (9, 8) matrix, of rank 2 (an arange): its polar
  # factor keeps those 2 directions (numpy's float64 SVD), to the float32 bound.
  matrix = np.arange(72.0).reshape(9, 8)
  u, s, vt = np.linalg.svd(matrix, full_matrices=False)
  np.testing.assert_allclose(np.asarray(updates["conv"]["kernel"]).reshape(9, 8),
                             u[:, :2] @ vt[:2], rtol=0, atol=helpers.polar_tol(s[0] / s[1], 9))


def test_dense_mask_leaves_conv_kernels_alone():
  grads = {"conv": {"kernel": jnp.arange(72.0).reshape(3, 3, 1, 8), "bias": jnp.arange(8.0)},
           "dense": {"kernel": jnp.arange(80.0).reshape(8, 10)}}
  direction = optimizers.make_direction("orthogonal-sgdm", mask="dense")
  updates, _ = direction.update(grads, direction.init(grads), grads)
  np.testing.assert_array_equal(updates["conv"]["kernel"], grads["conv"]["kernel"])
  np.testing.assert_array_equal(updates["conv"]["bias"], grads["conv"]["bias"])
  # arange(80) has rank 2: U V^T keeps its 2 directions and adds none, to polar_tol at the
  # condition number of the kept directions (singular values move by no more than the factor).
  s = np.linalg.svd(np.arange(80.0).reshape(8, 10), compute_uv=False)
  tol = helpers.polar_tol(s[0] / s[1], 10)
  singular = np.linalg.svd(np.asarray(updates["dense"]["kernel"], np.float64), compute_uv=False)
  np.testing.assert_allclose(singular[:2], 1.0, rtol=0, atol=tol)
  np.testing.assert_allclose(singular[2:], 0.0, rtol=0, atol=tol)


def test_unknown_optimizer_names_the_choices():
  with pytest.raises(ValueError, match="orthogonal-sgdm"):
    optimizers.make_optimizer("orthogonal-sgd", learning_rate=1e-2)


# --- training, resume, data parallelism ----------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A 2-epoch run, and a 1-epoch run resumed to 2 epochs, of the tiny CNN."""
  root = tmp_path_factory.mktemp("runs")
  straight = dataclasses.replace(TINY, epochs=2)
  resumed = dataclasses.replace(TINY, diagnostics=HAS_DIAGNOSTICS)
  first_records, first_state = run_tiny(str(root / "resumed"), resumed)
  jsonl = (root / "resumed/metrics.jsonl").read_text()
  resumed = dataclasses.replace(resumed, epochs=2, diagnostics=False)  # one compile fewer
  return {
      "root": root, "first_records": first_records, "first_state": first_state, "jsonl": jsonl,
      "straight": run_tiny(str(root / "straight"), straight),
      "resumed": run_tiny(str(root / "resumed"), resumed),
  }


def test_one_epoch_end_to_end(runs):
  (record,) = runs["first_records"]
  assert json.loads(runs["jsonl"]) == json.loads(json.dumps(record))
  for split in ("train", "val", "test"):
    assert np.isfinite(record[f"{split}_loss"]) and 0 <= record[f"{split}_accuracy"] <= 1
  assert record["epoch"] == 1 and record["step_ms"] > 0 and record["compile_s"] > 0
  assert (runs["root"] / "resumed/checkpoints").is_dir()


def test_resume_is_bit_identical(runs):
  straight_records, straight_state = runs["straight"]
  resumed_records, resumed_state = runs["resumed"]
  jax.tree.map(np.testing.assert_array_equal, resumed_state, straight_state)
  assert [r["epoch"] for r in resumed_records] == [1, 2]
  assert straight_records[1]["train_loss"] < straight_records[0]["train_loss"]  # it learns
  for key in ("train_loss", "val_loss", "test_accuracy"):
    assert resumed_records[1][key] == straight_records[1][key]


def test_resume_refuses_other_settings(runs):
  other = dataclasses.replace(TINY, learning_rate=0.1, epochs=3)
  with pytest.raises(ValueError, match="learning_rate"):
    train.train_and_evaluate(other, runs["root"] / "straight", model=helpers.TinyCNN())


def test_diagnostics_are_logged(runs):
  pytest.importorskip("orthax.diagnostics")
  diagnostics = runs["first_records"][0]["diagnostics"]
  assert set(diagnostics["component_cosine"]) == {"Conv_0", "Conv_1"}
  assert all(0 <= c <= 1 for c in diagnostics["component_cosine"].values())
  assert diagnostics["dead_parameters"] >= 0
  # Each conv kernel's direction is auto's exact polar factor O of its (27, 8) and (72, 16)
  # gradient view. On CPU that is eigh, trusted where the condition number is at most
  # EIGH_MAX_CONDITION, so O is within t = polar_tol(EIGH_MAX_CONDITION, P) of U V^T and
  # ||O^T O - I||_2 <= 2 t + t^2; beyond it svd, whose U and V are orthonormal to round-off at any
  # condition number (less than that). Plus O^T O's own rounding (`orthogonality_tol`). A dropped
  # direction (a rank-deficient gradient) or an unorthogonalised step is off by more than 0.1.
  errors = diagnostics["orthogonality_error"]
  for name, shape in (("Conv_0/kernel", (27, 8)), ("Conv_1/kernel", (72, 16))):
    t = helpers.polar_tol(polar_exact.EIGH_MAX_CONDITION, max(shape))
    assert errors[name] < helpers.orthogonality_tol(shape, 2 * t + t**2), (name, errors[name])


SUBPROCESS = """
import json, sys
import numpy as np
from tests import test_cifar10 as t
records, state = t.run_tiny(sys.argv[1], t.ONE_STEP)
np.savez(sys.argv[1] + "/step.npz", **t.flat_arrays(t.step_parts(state)))
print(json.dumps({"devices": t.jax.device_count(), "records": records}))
"""
# One SGDM step per epoch: the run's final state is its first step's.
ONE_STEP = dataclasses.replace(TINY, optimizers=("sgdm",), train_size=64)


def step_parts(state: dict) -> dict[str, list[np.ndarray]]:
  """The leaves of the params ("p1"), batch statistics ("stats": each batch norm's mean and
  variance) and SGD's momentum ("trace") of a `numpy_tree`."""
  (trace,) = [s.trace for s in jax.tree.leaves(
      state["opt_state"], is_leaf=lambda s: isinstance(s, optax.TraceState))
      if isinstance(s, optax.TraceState)]
  parts = {"p1": state["params"], "stats": state["batch_stats"], "trace": trace}
  return {name: [np.asarray(x) for x in jax.tree.leaves(tree)] for name, tree in parts.items()}


def flat_arrays(parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
  return {f"{name}_{i}": x for name, leaves in parts.items() for i, x in enumerate(leaves)}


def one_step() -> tuple[dict[str, list[np.ndarray]], list[bool]]:
  """`ONE_STEP`'s step on this process's devices as `train_and_evaluate` takes it (the seed's
  initialisation, the first epoch's order, the step's augmentation): `step_parts` of the state
  after it and the params before it ("p0"), and `before_batch_norm` of the params."""
  dataset = train.load_dataset(ONE_STEP)
  mesh = lib_train.make_mesh()
  state = lib_train.create_train_state(
      helpers.TinyCNN(), train.make_tx(ONE_STEP, 1), mesh, seed=ONE_STEP.seed,
      input_shape=train.INPUT_SHAPE)
  before = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]
  step, _ = lib_train.compile_train_step(
      functools.partial(lib_train.train_step, augment=augment.augment), state, 64, mesh,
      input_shape=train.INPUT_SHAPE, mean=dataset.mean, std=dataset.std)
  batches = data.shuffled_batches(dataset.train, 64, ONE_STEP.seed, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("data")))
  state, _ = step(state, *next(iter(batches(1))))
  return {"p0": before, **step_parts(numpy_tree(state))}, before_batch_norm(state.params)


def before_batch_norm(params: dict) -> list[bool]:
  """Per leaf: whether it is a bias that batch norm follows (a convolution's, in the tiny CNN),
  whose gradient is zero in exact arithmetic (batch norm subtracts the mean)."""
  return [jax.tree_util.keystr(path).startswith("['Conv_") and path[-1].key == "bias"
          for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


# The tiny CNN's reductions on a batch of 64 32 x 32 images: the dot products of conv0
# (3 x 3 x 3), conv1 (3 x 3 x 8) and the classifier (16); the sums over the batch of batch norm 0
# (64 x 16 x 16 positions), batch norm 1 (64 x 8 x 8), the pooling (8 x 8) and the loss (64).
DOTS, SUMS = (27, 72, 16), (64 * 16 * 16, 64 * 8 * 8, 8 * 8, 64)


@pytest.mark.multidevice
def test_eight_devices_match_one(tmp_path):
  """The example trains, evaluates and checkpoints on 8 devices; its step there (the batch
  sharded: the gradient's mean and batch norm's statistics are global) is the single device's
  step, to the bound on two float32 runs of it (one step from the same params: no drift)."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  result = subprocess.run(
      [sys.executable, "-c", SUBPROCESS, str(tmp_path)], env=env, cwd=REPO, capture_output=True,
      text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  output = json.loads(result.stdout.strip().splitlines()[-1])
  assert output["devices"] == 8 and jax.device_count() == 1
  (record,) = output["records"]
  assert all(np.isfinite(record[f"{split}_loss"]) for split in ("train", "val", "test"))
  single, zeros = one_step()
  with np.load(tmp_path / "step.npz") as saved:
    multi = {name: [saved[f"{name}_{i}"] for i in range(len(leaves))]
             for name, leaves in single.items() if name != "p0"}
  single = {name: [np.asarray(x, np.float64) for x in leaves] for name, leaves in single.items()}
  p0, trace = single["p0"], single["trace"]
  # SGDM's first step: the momentum is G + wd p0 and p1 = p0 - lr (G + wd p0). Each run's
  # gradient of a leaf is within 2 forward_error (forward and backward) and its own sum over the
  # batch and positions (round_off(64 x 16 x 16) at most) of the exact one, relative to the
  # leaf's norm; two runs within twice that. A bias before batch norm has no gradient in exact
  # arithmetic, only the round-off of its layer's sums: bounded with the whole gradient's norm.
  # Each run rounds G + wd p0 (eps |.| between the two), lr (G + wd p0) and p1 (eps |.| each).
  wd, lr = TINY.weight_decay, TINY.learning_rate
  grads = [t - wd * p for t, p in zip(trace, p0, strict=True)]
  rho = 2 * (2 * helpers.forward_error(DOTS, SUMS) + round_off(64 * 16 * 16))
  whole = rho * np.sqrt(sum(np.sum(g**2) for g in grads))
  for a, b, p, g, t, zero in zip(multi["trace"], trace, multi["p1"], grads, single["p1"],
                                 zeros, strict=True):
    tol = whole if zero else rho * np.linalg.norm(g)
    np.testing.assert_allclose(a, b, rtol=helpers.eps(), atol=tol)
    np.testing.assert_allclose(p, t, rtol=helpers.eps(),
                               atol=lr * (tol + 2 * helpers.eps() * np.abs(b).max()))
  # Batch norm's running statistics after one batch (momentum 0.9 from mean 0 and variance 1):
  # 0.1 m and 0.9 + 0.1 v, so the batch's m and v, and the root mean square r = sqrt(v + m^2)
  # of the layer's inputs, are known. Each run's m is within forward_error r of the exact one,
  # E[x^2] within 2 forward_error r^2, v = E[x^2] - m^2 within 4 forward_error r^2; two runs,
  # twice; and the update's roundings, eps of the value.
  rho = helpers.forward_error(DOTS, SUMS)
  stats, multi_stats = single["stats"], multi["stats"]  # BatchNorm_0 mean, var; BatchNorm_1 ...
  for i in range(0, len(stats), 2):
    (mean, var), (a_mean, a_var) = stats[i:i + 2], multi_stats[i:i + 2]
    r2 = (var - 0.9) / 0.1 + (mean / 0.1) ** 2
    helpers.assert_within(a_mean, mean, 2 * 0.1 * rho * np.sqrt(r2) + 2 * helpers.eps() * abs(mean))
    helpers.assert_within(a_var, var, 2 * 0.1 * 4 * rho * r2 + 2 * helpers.eps() * var)


# --- compare and configs -------------------------------------------------------------------------


def test_compare_end_to_end(tmp_path, capsys):
  argv = ["--model", "tiny", "--optimizers", "sgdm,orthogonal-sgdm@mask=conv", "--epochs", "1",
          "--batch-size", "64", "--eval-batch-size", "64", "--synthetic", "--train-size", "128",
          "--validation-size", "64", "--test-size", "64", "--no-checkpoint", "--target", "0.05",
          "--workdir", str(tmp_path)]
  config = config_lib.parse(configs.Config, argv)
  main.compare(config, model=helpers.TinyCNN())
  out = capsys.readouterr().out
  assert "| optimiser | final train loss | test loss | test accuracy |" in out
  assert "| sgdm |" in out and "| orthogonal-sgdm@mask=conv |" in out
  assert "jax " + jax.__version__ in out
  assert (tmp_path / "compare.png").stat().st_size > 0
  results = json.loads((tmp_path / "results.json").read_text())["results"]
  assert set(results) == {"sgdm", "orthogonal-sgdm@mask=conv"}
  assert results["sgdm"][0]["epoch"] == [1]
  saved = json.loads((tmp_path / "orthogonal-sgdm_mask-conv/seed0/config.json").read_text())
  assert saved["optimizers"] == ["orthogonal-sgdm"] and saved["mask"] == "conv"


def test_table_shows_mean_and_std_over_seeds():
  run = {"train_loss": [1.0], "test_loss": [1.0], "test_accuracy": [0.5],
         "val_accuracy": [0.4], "wall_s": 1.0, "mean_step_ms": 2.0}
  table = compare_lib.results_table({"sgdm": [run, {**run, "test_accuracy": [0.7]}]},
                                    compare_lib.classification_columns(target=0.5))
  assert "| sgdm |" in table and "60.00 ± 14.14%" in table and "| - |" in table
  assert table.endswith("- : 50% validation accuracy not reached in 1 epoch")


def test_missing_data_exits_2(tmp_path, capsys):
  assert main.main(["--data", str(tmp_path / "missing.npz")]) == 2
  assert "ORTHAX_CIFAR10" in capsys.readouterr().err


def test_bad_optimizer_label_is_a_usage_error(capsys):
  with pytest.raises(SystemExit) as exit_:
    main.main(["--optimizers", "sgdm,orthogonal-sgd", "--synthetic"])
  assert exit_.value.code == 2 and "orthogonal-sgdm" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(set(configs.CONFIGS) - {"demo"}))
def test_presets_are_valid_comparisons(name):
  for config in configs.CONFIGS[name]({"workdir": "/tmp/x"}, None):
    assert config.model in MODELS and config.workdir.startswith(f"/tmp/x/{name}/")
    main.check(config)


def test_flags_override_presets():
  _, args, runs = config_lib.command_line(
      configs.Config, configs.CONFIGS, ["--config", "table1", "--epochs", "2", "--synthetic",
                                        "--model", "resnet20"], None)
  assert args.config == "table1"
  assert config_lib.given(args, configs.Config) == {
      "epochs": 2, "synthetic": True, "model": "resnet20"}
  (run,) = runs
  assert (run.model, run.epochs, run.synthetic, run.workdir) == (
      "resnet20", 2, True, "runs/table1/resnet20")
  assert len(configs.table1()) == len(configs.TABLE1_MODELS)
  assert len(configs.table1("resnet20")) == 1
  assert len(configs.table3()) == 6
  assert configs.fig11()[0].seeds == (1, 2, 3) and configs.table1()[0].seeds == (0,)
  assert config_lib.parse(configs.Config, ["--seed", "3"]).seeds == (3,)
  assert config_lib.parse(configs.Config, ["--lr", "0.1"]).learning_rate == 0.1


def test_optimizer_label_settings():
  run = compare_lib.run_config(
      configs.Config(), "orthogonal-sgdm@mask=conv@rtol=0.01@lr=0.1@steps=7", 2)
  assert (run.optimizer, run.seed, run.mask, run.rtol, run.learning_rate, run.steps) == (
      "orthogonal-sgdm", 2, "conv", 0.01, 0.1, 7)
  with pytest.raises(ValueError, match="key=value"):
    compare_lib.run_config(configs.Config(), "sgdm@lr", 0)
  with pytest.raises(ValueError, match="Unknown setting 'colour'"):
    compare_lib.run_config(configs.Config(), "sgdm@colour=red", 0)


def test_step_schedule_divides_by_ten():
  config = configs.Config(learning_rate=0.1, schedule="step", decay_epochs=(2, 3),
                          optimizers=("sgdm",))
  schedule = train.make_schedule(config, steps_per_epoch=10)
  assert [float(schedule(s)) for s in (0, 19, 20, 30)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
  assert isinstance(train.make_tx(config, 10), optax.GradientTransformation)
