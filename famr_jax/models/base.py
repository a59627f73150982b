"""Shared machinery for models written as a sequence of named stages.

Every famr-jax model is a chain of *stages* ``x -> s_1 -> s_2 -> ... -> logits``.
A stage is a name plus a function of one activation; its parameters live under
the top-level ``params`` key equal to its name, and its non-linearities (ReLU,
pooling, flattening) are part of it. That gives three guarantees the unlearning
code relies on:

* ``model.apply({'params': p}, h, start=name)`` runs the model's *own* tail from
  stage ``name`` on that stage's input ``h`` (unlike the class-impressions
  authors' tail, which dropped the ReLUs; ERRATA item 3), and ``stop=name``
  ends the run at that stage and returns its output;
* every stage output is sown into the ``'intermediates'`` collection as
  ``intermediates['stage_outputs'][name]`` (a dict in stage order), so features
  for the style loss come from one forward pass. (The stage name itself cannot
  be the sow key: the stage's params submodule already owns that scope name.)
* a head/tail split is a split of the top-level params keys.

The pooling and padding helpers keep the convolutional nets defined on inputs as
small as 8x8 (scikit-learn digits) without changing them on 28x28 or 32x32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from famr_jax.errors import FamrError

STAGE_OUTPUTS = 'stage_outputs'
"""Key in the ``'intermediates'`` collection holding ``{stage name: output}``."""

Stage = tuple[str, Callable[[jax.Array], jax.Array]]
"""A named stage: ``(name, fn)`` with ``fn(activation) -> activation``."""


def run_stages(
    module: nn.Module,
    stages: Sequence[Stage],
    x: jax.Array,
    start: str | None = None,
    stop: str | None = None,
) -> jax.Array:
  """Runs ``stages`` in order from ``start`` to ``stop``, sowing each output.

  Each output is sown as ``intermediates['stage_outputs'][name]``; sowing is a
  no-op unless ``apply`` is called with ``mutable=['intermediates']``.

  Call it from a model's ``@nn.compact`` ``__call__``; stage functions may create
  submodules (they are only created when their stage runs, so a tail-only params
  dict is enough to run the tail).

  Args:
    module: the calling model; it must expose ``layer_names`` equal to the
      stage names in order.
    stages: the ``(name, fn)`` pairs, in order.
    x: the model input, or the input of stage ``start``.
    start: name of the first stage to run; ``None``: the first stage.
    stop: name of the last stage to run; ``None``: the last stage (logits).
      Feature extractors use it so that they neither trace nor run the rest.

  Returns:
    The output of stage ``stop`` (by default the logits).

  Raises:
    FamrError: ``start`` or ``stop`` is not a stage name, or ``stop`` comes
      before ``start``.

  Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> class Two(nn.Module):
    ...   layer_names = property(lambda self: ('a', 'b'))
    ...   @nn.compact
    ...   def __call__(self, x, *, start=None, stop=None):
    ...     return run_stages(self, (('a', nn.Dense(3, name='a')),
    ...                              ('b', nn.Dense(2, name='b'))), x, start, stop)
    >>> v = jax.eval_shape(Two().init, jax.random.key(0), jnp.ones((1, 4)))
    >>> sorted(v['params'])
    ['a', 'b']
  """
  names = tuple(name for name, _ in stages)
  if names != tuple(module.layer_names):
    # A programming error in a model definition, not a user mistake.
    raise RuntimeError(
        f'{type(module).__name__}: stages {names} differ from layer_names '
        f'{tuple(module.layer_names)}'
    )
  first = 0 if start is None else stage_index(names, start)
  last = len(names) - 1 if stop is None else stage_index(names, stop)
  if last < first:
    raise FamrError(f'stop layer {stop!r} comes before start layer {start!r}')
  for name, fn in stages[first:last + 1]:
    x = fn(x)
    module.sow(
        'intermediates', STAGE_OUTPUTS, {name: x},
        init_fn=dict, reduce_fn=lambda sown, new: {**sown, **new},
    )
  return x


def stage_index(names: Sequence[str], layer: str) -> int:
  """Position of ``layer`` in ``names``; a one-line FamrError naming the valid ones.

  Example:
    >>> stage_index(('conv1', 'fc'), 'fc')
    1
  """
  if not isinstance(layer, str) or layer not in names:
    raise FamrError(
        f'unknown layer {layer!r}; valid layers: {", ".join(names)}'
    )
  return list(names).index(layer)


def flatten(x: jax.Array) -> jax.Array:
  """Flattens everything but the batch axis (row-major, i.e. NHWC order).

  Example:
    >>> flatten(jnp.zeros((2, 3, 4, 5))).shape
    (2, 60)
  """
  return x.reshape((x.shape[0], -1))


def max_pool2(x: jax.Array) -> jax.Array:
  """2x2 max pooling, stride 2, floor mode, never shrinking an axis below 1.

  Floor mode (no padding) is PyTorch's ``MaxPool2d(2)`` and ConvNetJS's pool,
  so on sizes >= 2 this is exactly the classic layer (28 -> 14 -> 7 -> 3). An
  axis of size 1 (tiny inputs such as 8x8 digits after three pools) is padded
  by one ``-inf`` row/column so it stays 1 instead of collapsing to 0.

  Args:
    x: an NHWC batch.

  Returns:
    The pooled NHWC batch, spatial sizes ``max(1, s // 2)``.

  Example:
    >>> max_pool2(jnp.zeros((1, 7, 1, 3))).shape
    (1, 3, 1, 3)
  """
  # A reshape and a max, not reduce_window: the latter's gradient (select-and-scatter) is slow on
  # XLA:CPU (a LeNet5 step 1.3-1.7x faster this way); the values are identical.
  x = jnp.pad(x, ((0, 0),) + tuple((0, 1) if size == 1 else (0, 0) for size in x.shape[1:3]) + ((0, 0),),
              constant_values=-jnp.inf)
  b, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  return x[:, :2 * h2, :2 * w2].reshape(b, h2, 2, w2, 2, c).max(axis=(2, 4))


def valid_or_same_padding(
    spatial: Sequence[int], kernel: int
) -> tuple[tuple[int, int], ...]:
  """Per-axis padding: none (VALID) where the kernel fits, SAME where it does not.

  Used for LeNet5's conv2, which is VALID in LeCun (1998) but must still be
  defined on the 4x4 maps an 8x8 digit produces.

  Args:
    spatial: the (H, W) sizes of the conv input.
    kernel: the (odd) square kernel size.

  Returns:
    ``((lo, hi), (lo, hi))`` explicit padding for ``nn.Conv``.

  Example:
    >>> valid_or_same_padding((14, 4), 5)
    ((0, 0), (2, 2))
  """
  half = kernel // 2
  return tuple((0, 0) if size >= kernel else (half, half) for size in spatial)
