"""KarpathyNet: the ConvNetJS CIFAR-10 demo network."""

from __future__ import annotations

import flax.linen as nn
import jax

from famr_jax.models.base import flatten, max_pool2, run_stages
from famr_jax.models.layers import Conv


class KarpathyNet(nn.Module):
  """Three conv(5x5, SAME)+ReLU+2x2-max-pool stages and a dense classifier.

  The ConvNetJS CIFAR-10 demo (Karpathy), used by the class-impressions paper:
  conv 16@5x5 pad 2, ReLU, pool 2; conv 20@5x5 pad 2, ReLU, pool 2;
  conv 20@5x5 pad 2, ReLU, pool 2; dense num_classes. Stages
  ``("conv1", "conv2", "conv3", "fc")``; ``fc`` flattens its input. The
  convolutions are ``layers.Conv`` (``nn.Conv``'s params; im2col on CPU,
  ``lax.conv`` elsewhere).

  Pooling is floor mode like ConvNetJS and PyTorch, except that an axis of size
  1 stays 1 (``base.max_pool2``), so the net is defined on tiny inputs. The
  feature map reaching ``fc`` is 4x4x20 = 320 on 32x32, 3x3x20 = 180 on 28x28
  (28 -> 14 -> 7 -> 3) and 1x1x20 = 20 on 8x8 (8 -> 4 -> 2 -> 1).

  Attributes:
    num_classes: number of output logits.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = KarpathyNet(num_classes=10)
    >>> v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    >>> v['params']['fc']['kernel'].shape
    (320, 10)
  """

  num_classes: int

  @property
  def layer_names(self) -> tuple[str, ...]:
    return ('conv1', 'conv2', 'conv3', 'fc')

  @nn.compact
  def __call__(
      self, x: jax.Array, *, start: str | None = None, stop: str | None = None
  ) -> jax.Array:
    def conv_stage(name: str, features: int):
      def fn(h):
        h = Conv(features, (5, 5), padding=((2, 2), (2, 2)), name=name)(h)
        return max_pool2(nn.relu(h))
      return name, fn

    stages = (
        conv_stage('conv1', 16),
        conv_stage('conv2', 20),
        conv_stage('conv3', 20),
        ('fc', lambda h: nn.Dense(self.num_classes, name='fc')(flatten(h))),
    )
    return run_stages(self, stages, x, start, stop)
