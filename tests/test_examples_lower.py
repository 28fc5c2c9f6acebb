"""Every example's jitted train and eval steps lower for GPU and TPU, on this CPU machine.

`jax.export.export(jax.jit(step), platforms=["cuda", "tpu"])` traces each step once with abstract
arguments (nothing is allocated or run) and lowers it for both platforms: a primitive with no
GPU or TPU lowering fails the export, and jax.export refuses custom calls it cannot vouch for
(host callbacks among them). On top, the StableHLO is checked for host callbacks and CPU-only
kernels (LAPACK), and the solver custom calls of each optimiser are compared with the table in
examples/README.md. The models are the examples' own classes at small width or depth and the
optimisers are the examples' own, orthogonalised ones included.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from examples.barlow_twins import lars
from examples.barlow_twins import models as barlow_models
from examples.barlow_twins import train as barlow_train
from examples.cifar10 import augment
from examples.lib import optimizers
from examples.lib import train as lib_train
from examples.models import convnets
from examples.shakespeare_char import train as lm_train
from examples.shakespeare_char.configs import Config as LMConfig
from examples.shakespeare_char.model import GPT

pytestmark = pytest.mark.examples

PLATFORMS = ("cuda", "tpu")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# Custom-call targets that only a CPU (or the host) can run.
HOST_ONLY = re.compile(r"callback|lapack|cpu|host", re.IGNORECASE)
# The solver custom calls each kind of optimiser lowers to (examples/README.md, "GPU and TPU"):
# the exact methods call cuSOLVER on GPU and need no custom call on TPU (XLA's own loops); the
# iterations and the unorthogonalised optimisers are matrix products only.
SVD = {"cusolver_gesvdj_ffi", "cusolver_gesvd_ffi"}  # cuSOLVER's Jacobi SVD for small matrices
EXPECTED_SOLVERS = {  # (the calls it must make, the calls it may make)
    "svd": (set(), SVD),
    "eigh": ({"cusolver_syevd_ffi"}, {"cusolver_syevd_ffi"} | SVD),  # SVD: eigh's fallback
    # Batched Cholesky steps; the drop step's eigendecomposition, in a branch: no SVD, no QR.
    "qdwh": ({"cusolver_potrf_ffi"}, {"cusolver_potrf_ffi", "cusolver_syevd_ffi"}),
    "none": (set(), set()),
}


def custom_calls(text: str) -> set[str]:
  return set(re.findall(r"custom_call @([\w.]+)", text))


def lower(fn, *args, **kwargs) -> str:
  """The StableHLO of `fn` (jitted) exported for `PLATFORMS`; checks it calls nothing host-only."""
  exported = jax.export.export(fn if hasattr(fn, "lower") else jax.jit(fn),
                               platforms=PLATFORMS)(*args, **kwargs)
  assert exported.platforms == PLATFORMS
  text = exported.mlir_module()
  host_only = {c for c in custom_calls(text) if HOST_ONLY.search(c)}
  assert not host_only, host_only
  return text


def solvers(text: str) -> set[str]:
  """The linear-algebra custom calls (cuSOLVER and friends) in `text`."""
  return {c for c in custom_calls(text) if c.startswith(("cusolver", "cublas", "hipsolver"))}


def check_solvers(text: str, family: str) -> None:
  """`text` calls some of `family`'s solvers (cuSOLVER picks gesvdj or gesvd by size), and no
  other solver."""
  found = solvers(text)
  required, allowed = EXPECTED_SOLVERS[family]
  assert required <= found <= allowed and bool(found) == bool(allowed), found


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def classifier_state(model, tx, image_size: int):
  """The examples' `TrainState` for `model` and `tx`, abstract (shapes only)."""

  def make():
    variables = model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)),
                           train=False)
    return lib_train.TrainState(
        step=jnp.zeros((), jnp.int32), apply_fn=model.apply, params=variables["params"],
        tx=tx, opt_state=tx.init(variables["params"]), batch_stats=variables["batch_stats"],
        rng=jax.random.key(1))

  return jax.eval_shape(make)


def images(batch: int, size: int):
  return (jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
          jax.ShapeDtypeStruct((batch,), jnp.int32))


def method_of(label: str) -> str:
  """Which solver family an optimiser label should lower to (`EXPECTED_SOLVERS`)."""
  if "method=svd" in label:
    return "svd"
  if "method=eigh" in label:
    return "eigh"
  return "none"


# --- CIFAR-10 (and the demo): BasicCNN, augmentation in the step ----------------------------------

CIFAR_LABELS = ("sgdm", "orthogonal-sgdm@method=svd", "orthogonal-sgdm@method=eigh",
                "orthogonal-sgdm@method=newton_schulz", "orthogonal-sgdm@method=polar_express",
                "n-sgdm", "muon")


@pytest.mark.parametrize("label", CIFAR_LABELS)
def test_cifar10_steps_lower_for_gpu_and_tpu(label):
  name, options = label.partition("@")[0], dict(
      o.split("=") for o in label.split("@")[1:])
  tx = optimizers.make_optimizer(name, learning_rate=1e-2, weight_decay=5e-4, **options)
  model = convnets.BasicCNN(features=8)
  state = classifier_state(model, tx, 32)
  step = functools.partial(lib_train.train_step, mean=MEAN, std=STD, augment=augment.augment)
  text = lower(step, state, *images(16, 32))
  check_solvers(text, method_of(label))


def test_cifar10_auto_method_lowers_to_an_exact_solver():
  """`auto` picks per platform: on GPU `qdwh` (`polar.AUTO_RULES`), with no SVD solver."""
  tx = optimizers.make_optimizer("orthogonal-sgdm", learning_rate=1e-2)
  state = classifier_state(convnets.BasicCNN(features=8), tx, 32)
  step = functools.partial(lib_train.train_step, mean=MEAN, std=STD, augment=augment.augment)
  text = lower(step, state, *images(16, 32))
  required, allowed = EXPECTED_SOLVERS["qdwh"]
  assert required <= solvers(text) <= allowed, solvers(text)


def test_classifier_eval_step_lowers_for_gpu_and_tpu():
  model = convnets.BasicCNN(features=8)
  state = classifier_state(model, optax.sgd(0.1), 32)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  step = functools.partial(lib_train.eval_step, apply_fn=model.apply, mean=MEAN, std=STD)
  weights = jax.ShapeDtypeStruct((16,), jnp.float32)
  assert not solvers(lower(step, variables, *images(16, 32), weights))


# --- ImageNet: torchvision's ResNet class, two blocks, augmentation in the input pipeline ---


@pytest.mark.parametrize("label", ("sgdm", "orthogonal-sgdm@method=svd"))
def test_imagenet_train_step_lowers_for_gpu_and_tpu(label):
  name, _, option = label.partition("@")
  method = option.partition("=")[2] or "auto"
  tx = optimizers.make_optimizer(name, learning_rate=1e-2, weight_decay=5e-4, method=method)
  model = convnets.ResNet(stage_sizes=(1, 1), block_cls=convnets.BasicBlock, num_classes=10)
  state = classifier_state(model, tx, 32)
  text = lower(functools.partial(lib_train.train_step, mean=MEAN, std=STD), state,
               *images(8, 32))
  check_solvers(text, method_of(label))


# --- Barlow Twins: two views, LARS ---


@pytest.mark.parametrize("name", lars.OPTIMIZERS)
def test_barlow_twins_steps_lower_for_gpu_and_tpu(name):
  model = barlow_models.BarlowTwins(convnets.CifarResNet(depth=8, num_classes=None), (16, 16))
  tx = lars.make_optimizer(name, batch_size=16, total_steps=10, warmup_steps=1, method="svd")
  state = classifier_state(model, tx, 32)
  step = functools.partial(barlow_train.train_step, mean=MEAN, std=STD,
                           lambd=barlow_models.LAMBDA)
  text = lower(step, state, *images(16, 32))
  check_solvers(text, "svd" if name == "orthogonal-lars" else "none")

  def features(variables, images):
    return model.apply(variables, images.astype(jnp.float32),
                       method=barlow_models.BarlowTwins.features)

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  assert not solvers(lower(features, variables, images(16, 32)[0]))


# --- the character-level GPT (Flax NNX): batches drawn in the step --------------------------------

LM_LABELS = ("adamw", "muon", "orthax-muon@method=polar_express@layout=heads",
             "orthogonal-adamw@method=svd", "orthogonal-sgdm@method=eigh@layout=heads")


@pytest.mark.parametrize("label", LM_LABELS)
def test_shakespeare_char_steps_lower_for_gpu_and_tpu(label):
  from examples.lib.compare import run_config

  base = LMConfig(optimizers=(label,), layers=1, heads=2, width=16, context=16, batch_size=4)
  config = run_config(base, label, 0)
  graphdef, state = nnx.split(GPT(65, context=16, layers=1, heads=2, width=16, rngs=nnx.Rngs(0)))
  params = abstract(nnx.to_pure_dict(state))
  tx = lm_train.make_optimizer(config)
  opt_state = jax.eval_shape(tx.init, params)
  ids = jax.ShapeDtypeStruct((1000,), jnp.int32)
  key = jax.eval_shape(lambda: jax.random.key(0))
  text = lower(lm_train.train_step, params, opt_state, ids, key, np.int32(0), graphdef=graphdef,
               tx=tx, batch_size=4, context=16)
  check_solvers(text, method_of(label))
  windows = jax.ShapeDtypeStruct((4, 16), jnp.int32)
  assert not solvers(lower(lm_train.eval_loss, params, windows, windows, graphdef=graphdef))
