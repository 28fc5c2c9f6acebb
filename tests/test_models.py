"""Parameter counts and one training step for every model in examples/models/convnets.py."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from examples.models import convnets

pytestmark = pytest.mark.examples

# torchvision's published counts (ImageNet, 1000 classes).
TORCHVISION_PARAMETERS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240,
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
}

# He et al.'s CIFAR ResNets with option-A shortcuts and 10 classes; see cifar_resnet_parameters.
# (The 272,474 sometimes quoted for ResNet-20 adds option-B 1x1 projections: 576 + 2,176.)
CIFAR_RESNET_PARAMETERS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018}


def cifar_resnet_parameters(depth: int, num_classes: int = 10) -> int:
  """Counted by hand: 3x3 convolutions without bias, batch norms with a scale and a bias per
  channel, shortcuts without parameters, a linear head on 64 features."""
  def conv_bn(c_in, c_out):
    return 9 * c_in * c_out + 2 * c_out

  total, c_in = conv_bn(3, 16), 16
  for c_out in (16, 32, 64):
    for _ in range((depth - 2) // 6):
      total += conv_bn(c_in, c_out) + conv_bn(c_out, c_out)
      c_in = c_out
  return total + 64 * num_classes + num_classes


def parameter_count(name: str, num_classes: int) -> int:
  """Counts from shapes alone: `jax.eval_shape` traces `init` without computing anything."""
  model = convnets.MODELS[name](num_classes=num_classes)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return convnets.count_parameters(variables["params"])


def test_models_are_the_ones_asked_for():
  assert set(convnets.MODELS) == {
      "basic_cnn", *(f"resnet{d}" for d in CIFAR_RESNET_PARAMETERS), *TORCHVISION_PARAMETERS}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMETERS))
def test_torchvision_parameter_counts(name):
  # Global average pooling makes the head, and so the count, independent of the input size.
  assert parameter_count(name, num_classes=1000) == TORCHVISION_PARAMETERS[name]


def test_basic_cnn_has_24714_parameters():
  assert parameter_count("basic_cnn", num_classes=10) == 24_714


@pytest.mark.parametrize("depth", sorted(CIFAR_RESNET_PARAMETERS))
def test_cifar_resnet_parameter_counts(depth):
  expected = CIFAR_RESNET_PARAMETERS[depth]
  assert expected == cifar_resnet_parameters(depth)
  assert parameter_count(f"resnet{depth}", num_classes=10) == expected
  # He et al.'s table 6: 0.27M, 0.46M, 0.66M, 0.85M.
  assert round(expected / 1e6, 2) == {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85}[depth]


def test_cifar_resnet_depth_must_be_6n_plus_2():
  with pytest.raises(ValueError, match=r"depth = 6n \+ 2"):
    convnets.CifarResNet(depth=21).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)


def test_basic_block_refuses_groups():
  model = convnets.ResNet(stage_sizes=(1,), block_cls=convnets.BasicBlock, groups=2)
  with pytest.raises(ValueError, match="use Bottleneck"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))


def sgd_step(model: nn.Module, variables, images, labels, learning_rate=0.1):
  """One step of plain SGD on the cross-entropy; batch statistics come back updated."""
  def loss_fn(params):
    logits, updates = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, images, train=True,
        mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates["batch_stats"]

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
  params = jax.tree.map(lambda p, g: p - learning_rate * g, variables["params"], grads)
  return {"params": params, "batch_stats": batch_stats}, loss


# The step runs once on tiny inputs, so XLA's optimisations would only cost compile time: without
# them the DenseNets compile about three times faster on CPU.
QUICK_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


def run_sgd_step(model: nn.Module, variables, images, labels):
  step = jax.jit(sgd_step, static_argnames="model").lower(model, variables, images, labels)
  return step.compile(QUICK_COMPILE)(variables, images, labels)


def initial_variables(model: nn.Module, images: jax.Array):
  """Variables with `model.init`'s structure, drawn in numpy: He-normal kernels, batch norm at
  identity, zero biases. On CPU, compiling `init` would add a third to each model's compile time;
  the parameter count tests already trace it."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      value = np.ones(leaf.shape)
    elif name in ("bias", "mean"):
      value = np.zeros(leaf.shape)
    else:
      value = rng.standard_normal(leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))
    return jnp.asarray(value.astype(leaf.dtype))

  return jax.tree_util.tree_map_with_path(draw, shapes)


# The torchvision-sized models take tens of seconds each on a 2-core CPU.
SLOW_STEPS = ("resnet50", "resnext50_32x4d", "densenet121")
# Models whose step runs the same code as another's with other widths or depths: their shapes
# are checked by the exact parameter counts above, and the step once, on the model named.
SAME_STEP_AS = {"wide_resnet50_2": "resnet50", "densenet161": "densenet121"}


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow) if name in SLOW_STEPS else name
    for name in convnets.MODELS if name not in SAME_STEP_AS])
def test_one_training_step(name):
  model = convnets.MODELS[name](num_classes=10)
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  labels = jnp.array([3, 7])
  variables = initial_variables(model, images)

  new_variables, loss = run_sgd_step(model, variables, images, labels)

  assert np.isfinite(loss)
  assert jax.tree.structure(new_variables) == jax.tree.structure(variables)
  for collection in ("params", "batch_stats"):
    changed = jax.tree.map(
        lambda new, old: bool(np.any(np.asarray(new) != np.asarray(old))),
        new_variables[collection], variables[collection])
    assert all(jax.tree.leaves(changed)), collection
