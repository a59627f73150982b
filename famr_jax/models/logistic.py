"""Multinomial logistic regression: flatten, then one dense layer."""

from __future__ import annotations

import flax.linen as nn
import jax

from famr_jax.models.base import flatten, run_stages


class LogisticRegression(nn.Module):
  """Softmax regression ``logits = flatten(x) @ W + b``.

  One stage, ``"fc"`` (params ``fc/kernel`` of shape (H*W*C, num_classes) and
  ``fc/bias``). The flatten is part of the stage, so ``start="fc"`` takes the
  image batch as well.

  Attributes:
    num_classes: number of output logits.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = LogisticRegression(num_classes=10)
    >>> logits, v = jax.eval_shape(model.init_with_output, jax.random.key(0),
    ...                            jnp.zeros((2, 8, 8, 1)))
    >>> logits.shape, v['params']['fc']['kernel'].shape
    ((2, 10), (64, 10))
  """

  num_classes: int

  @property
  def layer_names(self) -> tuple[str, ...]:
    return ('fc',)

  @nn.compact
  def __call__(
      self, x: jax.Array, *, start: str | None = None, stop: str | None = None
  ) -> jax.Array:
    stages = (('fc', lambda h: nn.Dense(self.num_classes, name='fc')(flatten(h))),)
    return run_stages(self, stages, x, start, stop)
