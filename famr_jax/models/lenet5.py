"""LeNet5 (LeCun et al. 1998), as used by the class-impressions paper."""

from __future__ import annotations

import flax.linen as nn
import jax

from famr_jax.models.base import flatten, max_pool2, run_stages, valid_or_same_padding
from famr_jax.models.layers import Conv


class LeNet5(nn.Module):
  """LeNet5: two conv+ReLU+max-pool stages and three dense layers.

  ======  ==================================================================
  stage   computation
  ======  ==================================================================
  conv1   conv 6@5x5, padding 2 (SAME), ReLU, 2x2 max pool
  conv2   conv 16@5x5 VALID (see below), ReLU, 2x2 max pool
  fc1     flatten, dense 120, ReLU  (input 16*5*5 = 400 on 28x28)
  fc2     dense 84, ReLU
  fc3     dense num_classes         (input 84)
  ======  ==================================================================

  On 28x28 this is the classic network (61,706 params with 10 classes).
  The convolutions are ``layers.Conv`` (``nn.Conv``'s params; im2col on CPU,
  ``lax.conv`` elsewhere).

  Small inputs: conv2 is VALID on every spatial axis where its 5x5 kernel fits
  (input size >= 5) and SAME (padding 2) on an axis where it does not. Pooling
  is floor mode but never shrinks an axis below 1 (``base.max_pool2``). So
  8x8 digits go 8 -> conv1 8 -> pool 4 -> conv2 (SAME) 4 -> pool 2, and fc1
  sees 2*2*16 = 64 features; 28x28 and 32x32 are unchanged from LeCun
  (fc1 input 400 and 576).

  Attributes:
    num_classes: number of output logits.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = LeNet5(num_classes=10)
    >>> v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> v['params']['fc1']['kernel'].shape
    (400, 120)
  """

  num_classes: int

  @property
  def layer_names(self) -> tuple[str, ...]:
    return ('conv1', 'conv2', 'fc1', 'fc2', 'fc3')

  @nn.compact
  def __call__(
      self, x: jax.Array, *, start: str | None = None, stop: str | None = None
  ) -> jax.Array:
    def conv1(h):
      h = Conv(6, (5, 5), padding=((2, 2), (2, 2)), name='conv1')(h)
      return max_pool2(nn.relu(h))

    def conv2(h):
      padding = valid_or_same_padding(h.shape[1:3], 5)
      h = Conv(16, (5, 5), padding=padding, name='conv2')(h)
      return max_pool2(nn.relu(h))

    stages = (
        ('conv1', conv1),
        ('conv2', conv2),
        ('fc1', lambda h: nn.relu(nn.Dense(120, name='fc1')(flatten(h)))),
        ('fc2', lambda h: nn.relu(nn.Dense(84, name='fc2')(h))),
        ('fc3', lambda h: nn.Dense(self.num_classes, name='fc3')(h)),
    )
    return run_stages(self, stages, x, start, stop)
