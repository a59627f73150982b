"""ResNets in torchvision's layout (He et al. 2016): ResNet-18/34/50 and the CIFAR ResNet-18.

Stages (the model's split points, one per residual block)::

  stem        conv1 (7x7/2, pad 3; CIFAR: 3x3/1, pad 1), bn1, ReLU, 3x3/2 max pool (CIFAR: none)
  layer1_0 .. layer4_{n-1}   the residual blocks, ReLU after the sum
  avgpool     global average pool (no params; its output is the (N, C) feature vector)
  fc          linear classifier

Names map one to one to torchvision's state-dict keys (``famr_jax.io.torch_weights``)::

  conv1.weight                  stem/conv1/kernel     (O,I,kh,kw) -> (kh,kw,I,O)
  bn1.{weight,bias}             stem/bn1/{scale,bias}
  bn1.running_{mean,var}        batch_stats: stem/bn1/{mean,var}
  layerI.J.convK / .bnK         layerI_J/convK, layerI_J/bnK
  layerI.J.downsample.0 / .1    layerI_J/downsample_0 (1x1 conv), layerI_J/downsample_1 (BN)
  fc.{weight,bias}              fc/{kernel (transposed), bias}

Block types as in torchvision: ``BasicBlock`` (two 3x3 convs) for 18/34,
``Bottleneck`` (1x1, 3x3 with the stride, 1x1 at 4x width: "ResNet v1.5") for
50. Convolutions have no bias; BatchNorm epsilon is 1e-5. Running statistics are
bound to the model, not in params (``famr_jax.models.batchnorm``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from famr_jax.models.base import run_stages
from famr_jax.models.batchnorm import BatchNorm, BatchStats
from famr_jax.models.layers import Conv

RESNET_LAYOUTS: dict[str, tuple[str, tuple[int, ...], bool]] = {
    # name: (block, blocks per stage, CIFAR stem)
    'resnet18': ('basic', (2, 2, 2, 2), False),
    'resnet34': ('basic', (3, 4, 6, 3), False),
    'resnet50': ('bottleneck', (3, 4, 6, 3), False),
    'resnet18_cifar': ('basic', (2, 2, 2, 2), True),
}


def _conv(features: int, kernel: int, stride: int, name: str) -> Conv:
  pad = kernel // 2   # torchvision's explicit symmetric padding (not SAME: it differs at stride 2)
  return Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
              use_bias=False, kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
              name=name)


class ResidualBlock(nn.Module):
  """torchvision's ``BasicBlock`` (``bottleneck=False``) or ``Bottleneck``, NHWC."""

  width: int
  stride: int
  bottleneck: bool
  downsample: bool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.bottleneck:
      out = self.width * 4
      y = nn.relu(BatchNorm(name='bn1')(_conv(self.width, 1, 1, 'conv1')(x), train))
      y = nn.relu(BatchNorm(name='bn2')(_conv(self.width, 3, self.stride, 'conv2')(y), train))
      y = BatchNorm(name='bn3')(_conv(out, 1, 1, 'conv3')(y), train)
    else:
      out = self.width
      y = nn.relu(BatchNorm(name='bn1')(_conv(self.width, 3, self.stride, 'conv1')(x), train))
      y = BatchNorm(name='bn2')(_conv(self.width, 3, 1, 'conv2')(y), train)
    if self.downsample:
      x = BatchNorm(name='downsample_1')(_conv(out, 1, self.stride, 'downsample_0')(x), train)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A torchvision-layout ResNet classifier on NHWC images (see the module doc for stages and names).

  Attributes:
    num_classes: number of output logits.
    block: ``"basic"`` or ``"bottleneck"``.
    stage_sizes: residual blocks in each of the four stages.
    width: channels of the first stage (64; doubled at each stage).
    cifar_stem: 3x3 stride-1 stem without max pool (the CIFAR ResNet-18).
    batch_stats: running statistics bound to the model (``with_batch_stats``);
      None: the initial ones.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = ResNet(num_classes=10, block='basic', stage_sizes=(1, 1), width=4, cifar_stem=True)
    >>> model.layer_names
    ('stem', 'layer1_0', 'layer2_0', 'avgpool', 'fc')
    >>> v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    >>> v['params']['layer2_0']['downsample_0']['kernel'].shape, v['batch_stats']['stem']['bn1']['var'].shape
    ((1, 1, 4, 8), (4,))
  """

  num_classes: int
  block: str = 'basic'
  stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
  width: int = 64
  cifar_stem: bool = False
  batch_stats: BatchStats | None = None

  @property
  def block_names(self) -> tuple[str, ...]:
    return tuple(f'layer{i + 1}_{j}' for i, n in enumerate(self.stage_sizes) for j in range(n))

  @property
  def layer_names(self) -> tuple[str, ...]:
    return ('stem', *self.block_names, 'avgpool', 'fc')

  @nn.compact
  def __call__(self, x: jax.Array, *, start: str | None = None, stop: str | None = None,
               train: bool = False) -> jax.Array:
    stem = Stem(self.width, self.cifar_stem, name='stem')
    bottleneck = self.block == 'bottleneck'
    expansion = 4 if bottleneck else 1
    stages = [('stem', lambda h: stem(h, train))]
    in_channels = self.width
    for i, n in enumerate(self.stage_sizes):
      width = self.width * 2 ** i
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        downsample = stride != 1 or in_channels != width * expansion
        block = ResidualBlock(width, stride, bottleneck, downsample, name=f'layer{i + 1}_{j}')
        stages.append((block.name, lambda h, b=block: b(h, train)))
        in_channels = width * expansion
    stages.append(('avgpool', lambda h: jnp.mean(h, axis=(1, 2))))
    stages.append(('fc', lambda h: nn.Dense(self.num_classes, name='fc')(h)))
    return run_stages(self, stages, x, start, stop)


class Stem(nn.Module):
  """conv1, bn1, ReLU and (ImageNet stem) the 3x3 stride-2 max pool with padding 1."""

  width: int
  cifar: bool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if self.cifar:
      return nn.relu(BatchNorm(name='bn1')(_conv(self.width, 3, 1, 'conv1')(x), train))
    x = nn.relu(BatchNorm(name='bn1')(_conv(self.width, 7, 2, 'conv1')(x), train))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def resnet_from_layout(name: str, num_classes: int, **overrides) -> ResNet:
  """The ResNet ``name`` of ``RESNET_LAYOUTS`` (``width`` and ``stage_sizes`` may be overridden).

  Example:
    >>> resnet_from_layout('resnet50', 1000).block
    'bottleneck'
  """
  block, sizes, cifar = RESNET_LAYOUTS[name]
  return ResNet(num_classes=num_classes, block=block, stage_sizes=tuple(overrides.get('stage_sizes', sizes)),
                width=int(overrides.get('width', 64)), cifar_stem=cifar)
