"""Multi-layer perceptron with ReLU hidden layers."""

from __future__ import annotations

import flax.linen as nn
import jax

from famr_jax.models.base import flatten, run_stages


class MLP(nn.Module):
  """Flatten, ``len(hidden)`` dense+ReLU layers, then a dense head.

  Stages ``("fc1", ..., "fc{k}", "head")``; each hidden stage is
  ``relu(flatten(h) @ W + b)`` (flattening a 2-D input is a no-op), the head
  has no activation.

  Attributes:
    num_classes: number of output logits.
    hidden: widths of the hidden layers.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = MLP(num_classes=10, hidden=(32,))
    >>> model.layer_names
    ('fc1', 'head')
    >>> logits, v = jax.eval_shape(model.init_with_output, jax.random.key(0),
    ...                            jnp.zeros((2, 8, 8, 1)))
    >>> logits.shape, v['params']['fc1']['kernel'].shape
    ((2, 10), (64, 32))
  """

  num_classes: int
  hidden: tuple[int, ...] = (128, 64)

  @property
  def layer_names(self) -> tuple[str, ...]:
    return tuple(f'fc{i + 1}' for i in range(len(self.hidden))) + ('head',)

  @nn.compact
  def __call__(
      self, x: jax.Array, *, start: str | None = None, stop: str | None = None
  ) -> jax.Array:
    def hidden_stage(name: str, width: int):
      return name, lambda h: nn.relu(nn.Dense(width, name=name)(flatten(h)))

    stages = tuple(
        hidden_stage(name, width)
        for name, width in zip(self.layer_names[:-1], self.hidden)
    ) + (('head', lambda h: nn.Dense(self.num_classes, name='head')(flatten(h))),)
    return run_stages(self, stages, x, start, stop)
