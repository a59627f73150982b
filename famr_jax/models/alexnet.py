"""AlexNet in torchvision's variant (Krizhevsky 2014 "one weird trick"; 61,100,840 params at 1000 classes).

Stages, named as torchvision's modules (``features.0`` -> ``features_0``)::

  features_0    conv 64@11x11/4 pad 2, ReLU, 3x3/2 max pool
  features_3    conv 192@5x5 pad 2, ReLU, 3x3/2 max pool
  features_6    conv 384@3x3 pad 1, ReLU
  features_8    conv 256@3x3 pad 1, ReLU
  features_10   conv 256@3x3 pad 1, ReLU, 3x3/2 max pool
  avgpool       adaptive average pool to 6x6 (PyTorch's bins), flatten (H, W, C order)
  classifier_1  dense 4096, ReLU
  classifier_4  dense 4096, ReLU
  classifier_6  dense num_classes

The dropout layers (``classifier.0``, ``classifier.3``) are left out: famr-jax
models are deterministic functions of their params (PyTorch's eval mode). The
flatten is NHWC, so importing torchvision weights permutes ``classifier.1``'s
input columns from (C, H, W) to (H, W, C) (``famr_jax.io.torch_weights``).
Inputs must be at least 63x63 (the three VALID max pools need a 3x3 map).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.models.base import flatten, run_stages
from famr_jax.models.layers import Conv

ALEXNET_MIN_SIZE = 63


def adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
  """``(size_out, size_in)`` averaging matrix of PyTorch's adaptive average pool on one axis.

  Bin ``i`` averages ``[floor(i * in / out), ceil((i + 1) * in / out))``.

  Example:
    >>> adaptive_pool_matrix(3, 2).tolist()
    [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]
  """
  matrix = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    lo, hi = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
    matrix[i, lo:hi] = 1.0 / (hi - lo)
  return matrix


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """``torch.nn.AdaptiveAvgPool2d(size)`` on an NHWC batch (two small matmuls).

  Example:
    >>> adaptive_avg_pool(jnp.ones((1, 1, 1, 2)), (6, 6)).shape
    (1, 6, 6, 2)
  """
  rows = jnp.asarray(adaptive_pool_matrix(x.shape[1], size[0]))
  cols = jnp.asarray(adaptive_pool_matrix(x.shape[2], size[1]))
  return jnp.einsum('ih,nhwc,jw->nijc', rows, x, cols)


def _pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class AlexNet(nn.Module):
  """torchvision's AlexNet on NHWC images (see the module doc for the stages).

  Attributes:
    num_classes: number of output logits.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> v = jax.eval_shape(AlexNet(10).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    >>> v['params']['classifier_1']['kernel'].shape
    (9216, 4096)
  """

  num_classes: int

  @property
  def layer_names(self) -> tuple[str, ...]:
    return ('features_0', 'features_3', 'features_6', 'features_8', 'features_10', 'avgpool',
            'classifier_1', 'classifier_4', 'classifier_6')

  @nn.compact
  def __call__(self, x: jax.Array, *, start: str | None = None, stop: str | None = None) -> jax.Array:
    def conv(name, features, kernel, stride, pad, pool):
      def fn(h):
        h = nn.relu(Conv(features, (kernel, kernel), strides=(stride, stride),
                         padding=((pad, pad), (pad, pad)), name=name)(h))
        return _pool(h) if pool else h
      return name, fn

    stages = (
        conv('features_0', 64, 11, 4, 2, True),
        conv('features_3', 192, 5, 1, 2, True),
        conv('features_6', 384, 3, 1, 1, False),
        conv('features_8', 256, 3, 1, 1, False),
        conv('features_10', 256, 3, 1, 1, True),
        ('avgpool', lambda h: flatten(adaptive_avg_pool(h, (6, 6)))),
        ('classifier_1', lambda h: nn.relu(nn.Dense(4096, name='classifier_1')(h))),
        ('classifier_4', lambda h: nn.relu(nn.Dense(4096, name='classifier_4')(h))),
        ('classifier_6', lambda h: nn.Dense(self.num_classes, name='classifier_6')(h)),
    )
    return run_stages(self, stages, x, start, stop)
