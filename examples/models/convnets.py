"""The convolutional networks of Tuddenham et al. (arXiv:2202.07052) in Flax linen.

The paper's BasicCNN, He et al.'s CIFAR ResNets, and torchvision's ImageNet ResNets, ResNeXt,
Wide ResNet and DenseNets. The authors ran the ImageNet architectures on 32x32 images unchanged,
so these keep their 7x7 stride-2 stem and max-pool, and their last stage sees 1x1 feature maps.

Every model takes NHWC float images and is called as `model(x, train)`. Batch norm is PyTorch's
(momentum 0.1 there is 0.9 here, epsilon 1e-5) and convolutions start as torchvision's do. There
is no dropout. `MODELS` maps a name to a constructor taking `num_classes`; `make_model` looks one
up.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> model = MODELS["resnet20"](num_classes=10)
  >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  >>> count_parameters(variables["params"])
  269722
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Callable[..., nn.Module]

# torchvision's ResNets: kaiming_normal_(mode="fan_out", nonlinearity="relu").
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torchvision's DenseNets and He et al.'s CIFAR ResNets: kaiming_normal_() (fan_in, gain sqrt 2).
kaiming_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def batch_norm(train: bool) -> ModuleDef:
  """PyTorch's BatchNorm2d defaults in Flax terms: batch statistics in training, running after."""
  return functools.partial(
      nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)


def count_parameters(params: Any) -> int:
  """The number of scalars in a tree of arrays (or of `jax.eval_shape` shapes)."""
  return sum(int(leaf.size) for leaf in jax.tree.leaves(params))


class BasicCNN(nn.Module):
  """The paper's BasicCNN (appendix B.1): three 3x3 stride-2 convolutions with 32 filters, each
  followed by batch norm and ReLU, then a linear classifier. 24,714 parameters on 32x32x3 inputs.
  """

  num_classes: int = 10
  features: int = 32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train)
    for _ in range(3):
      x = nn.Conv(self.features, (3, 3), strides=2, padding=1)(x)
      x = nn.relu(norm()(x))
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class CifarBlock(nn.Module):
  """He et al.'s CIFAR basic block. Its option-A shortcut subsamples and zero-pads channels, so
  it has no parameters."""

  features: int
  strides: int
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(
        nn.Conv, self.features, (3, 3), padding=1, use_bias=False, kernel_init=kaiming_fan_in)
    y = nn.relu(self.norm()(conv(strides=self.strides)(x)))
    y = self.norm()(conv()(y))
    if self.strides != 1 or x.shape[-1] != self.features:
      x = x[:, ::self.strides, ::self.strides, :]
      pad = self.features - x.shape[-1]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """He et al.'s CIFAR ResNet: a 3x3 stem, three stages of (depth - 2) / 6 basic blocks with
  16, 32 and 64 filters, global average pooling and a linear classifier.

  References:
    He, Zhang, Ren, Sun, `Deep Residual Learning for Image Recognition
    <https://arxiv.org/abs/1512.03385>`_, 2016 (section 4.2).
  """

  depth: int
  num_classes: int | None = 10  # None: no classifier; the pooled features are the output

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.depth < 8 or (self.depth - 2) % 6:
      raise ValueError(
          f"CifarResNet(depth={self.depth}) needs depth = 6n + 2 with n >= 1: 20, 32, 44, 56.")
    norm = batch_norm(train)
    x = nn.Conv(16, (3, 3), padding=1, use_bias=False, kernel_init=kaiming_fan_in)(x)
    x = nn.relu(norm()(x))
    for stage, features in enumerate((16, 32, 64)):
      for block in range((self.depth - 2) // 6):
        strides = 2 if stage > 0 and block == 0 else 1
        x = CifarBlock(features, strides, norm)(x)
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes is None:
      return x
    return nn.Dense(self.num_classes, kernel_init=kaiming_fan_in)(x)


class BasicBlock(nn.Module):
  """torchvision's ResNet basic block: two 3x3 convolutions, a 1x1 projection shortcut when the
  shape changes."""

  features: int
  strides: int
  norm: ModuleDef
  groups: int = 1
  width_per_group: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.groups != 1 or self.width_per_group != 64:
      raise ValueError(
          f"BasicBlock takes groups=1 and width_per_group=64, not {self.groups=} and "
          f"{self.width_per_group=}; use Bottleneck for ResNeXt and Wide ResNets.")
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=kaiming_fan_out)
    y = conv(self.features, (3, 3), strides=self.strides, padding=1)(x)
    y = nn.relu(self.norm()(y))
    y = self.norm()(conv(self.features, (3, 3), padding=1)(y))
    if self.strides != 1 or x.shape[-1] != self.features:
      x = self.norm()(conv(self.features, (1, 1), strides=self.strides)(x))
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """torchvision's ResNet bottleneck (v1.5: the stride is on the 3x3 convolution), grouped for
  ResNeXt, widened for Wide ResNets; its output has 4 * features channels."""

  features: int
  strides: int
  norm: ModuleDef
  groups: int = 1
  width_per_group: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=kaiming_fan_out)
    width = int(self.features * self.width_per_group / 64) * self.groups
    y = nn.relu(self.norm()(conv(width, (1, 1))(x)))
    y = conv(width, (3, 3), strides=self.strides, padding=1, feature_group_count=self.groups)(y)
    y = nn.relu(self.norm()(y))
    y = self.norm()(conv(4 * self.features, (1, 1))(y))
    if self.strides != 1 or x.shape[-1] != 4 * self.features:
      x = self.norm()(conv(4 * self.features, (1, 1), strides=self.strides)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """torchvision's ImageNet ResNet: 7x7 stride-2 stem and 3x3 stride-2 max-pool, four stages
  with 64, 128, 256 and 512 base filters, global average pooling and a linear classifier.

  References:
    He, Zhang, Ren, Sun, `Deep Residual Learning for Image Recognition
    <https://arxiv.org/abs/1512.03385>`_, 2016.
    Xie, Girshick, Dollar, Tu, He, `Aggregated Residual Transformations for Deep Neural Networks
    <https://arxiv.org/abs/1611.05431>`_, 2017.
    Zagoruyko, Komodakis, `Wide Residual Networks <https://arxiv.org/abs/1605.07146>`_, 2016.
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  num_classes: int | None = 10  # None: no classifier; the pooled features are the output
  groups: int = 1
  width_per_group: int = 64
  cifar_stem: bool = False  # a 3x3 stride-1 stem without max-pool, for 32x32 images

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train)
    conv = functools.partial(nn.Conv, 64, use_bias=False, kernel_init=kaiming_fan_out)
    if self.cifar_stem:
      x = nn.relu(norm()(conv((3, 3), padding=1)(x)))
    else:
      x = nn.relu(norm()(conv((7, 7), strides=2, padding=3)(x)))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = self.block_cls(
            64 * 2**stage, strides, norm, groups=self.groups,
            width_per_group=self.width_per_group)(x)
    x = jnp.mean(x, axis=(1, 2))
    return x if self.num_classes is None else nn.Dense(self.num_classes)(x)


class DenseLayer(nn.Module):
  """torchvision's DenseNet-BC layer: BN-ReLU-Conv 1x1 to bn_size * growth_rate channels,
  BN-ReLU-Conv 3x3 to growth_rate channels, concatenated to its input."""

  growth_rate: int
  bn_size: int
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=kaiming_fan_in)
    y = conv(self.bn_size * self.growth_rate, (1, 1))(nn.relu(self.norm()(x)))
    y = conv(self.growth_rate, (3, 3), padding=1)(nn.relu(self.norm()(y)))
    return jnp.concatenate([x, y], axis=-1)


class DenseNet(nn.Module):
  """torchvision's DenseNet-BC: 7x7 stride-2 stem and 3x3 stride-2 max-pool, dense blocks joined
  by transitions (BN-ReLU-Conv 1x1 halving the channels, 2x2 average pool), a final BN and ReLU,
  global average pooling and a linear classifier.

  References:
    Huang, Liu, van der Maaten, Weinberger, `Densely Connected Convolutional Networks
    <https://arxiv.org/abs/1608.06993>`_, 2017.
  """

  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train)
    conv = functools.partial(nn.Conv, use_bias=False, kernel_init=kaiming_fan_in)
    x = conv(self.num_init_features, (7, 7), strides=2, padding=3)(x)
    x = nn.relu(norm()(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for block, num_layers in enumerate(self.block_config):
      for _ in range(num_layers):
        x = DenseLayer(self.growth_rate, self.bn_size, norm)(x)
      if block != len(self.block_config) - 1:
        x = conv(x.shape[-1] // 2, (1, 1))(nn.relu(norm()(x)))  # compression 0.5
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(nn.relu(norm()(x)), axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


ResNet20 = functools.partial(CifarResNet, depth=20)
ResNet32 = functools.partial(CifarResNet, depth=32)
ResNet44 = functools.partial(CifarResNet, depth=44)
ResNet56 = functools.partial(CifarResNet, depth=56)

ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
ResNeXt50_32x4d = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, groups=32, width_per_group=4)
WideResNet50_2 = functools.partial(
    ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck, width_per_group=128)

DenseNet121 = functools.partial(
    DenseNet, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64)
DenseNet161 = functools.partial(
    DenseNet, growth_rate=48, block_config=(6, 12, 36, 24), num_init_features=96)

MODELS: dict[str, Callable[..., nn.Module]] = {
    "basic_cnn": BasicCNN,
    "resnet20": ResNet20,
    "resnet32": ResNet32,
    "resnet44": ResNet44,
    "resnet56": ResNet56,
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnext50_32x4d": ResNeXt50_32x4d,
    "wide_resnet50_2": WideResNet50_2,
    "densenet121": DenseNet121,
    "densenet161": DenseNet161,
}


def make_model(name: str, num_classes: int = 10) -> nn.Module:
  """`MODELS[name](num_classes=num_classes)`, or a ValueError naming the choices."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; choose from {', '.join(MODELS)}.")
  return MODELS[name](num_classes=num_classes)
