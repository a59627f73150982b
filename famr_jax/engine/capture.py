"""Recording an engine run instead of running it: how a farm of models becomes one vmapped program.

Inside :func:`capture_descents`, :func:`famr_jax.engine.descent.minibatch_descent`
validates its arguments, then raises :class:`DescentCaptured` carrying a
:class:`DescentCall` (everything that determines the run) instead of running.
A caller that builds N runs through the usual code paths (``train_classifier``,
a registered method) thus gets N descriptions, and
:func:`famr_jax.engine.farm.run_farm` runs them as one program over a leading
model axis through the engine's own step (:func:`famr_jax.engine.descent.make_segment_fn`).
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple


class DescentCall(NamedTuple):
  """The arguments of one :func:`famr_jax.engine.descent.minibatch_descent` call that shape its result."""
  loss_fn: Any
  params: Any
  data: tuple
  optimizer: Any
  epochs: int
  batch_size: int
  key: Any            # a typed PRNG key
  context: Any
  max_steps: int | None
  opt_state: Any
  scaled: bool        # a ScaleConfig or resume was asked for (a farm refuses those)


class DescentCaptured(Exception):
  """Raised by the engine inside :func:`capture_descents` instead of running; ``call`` is the run."""

  def __init__(self, call: DescentCall):
    super().__init__("an engine run was captured")
    self.call = call


_STATE = {"depth": 0}


def capturing() -> bool:
  """Whether engine runs are being captured (inside :func:`capture_descents`).

  Example:
    >>> capturing()
    False
  """
  return _STATE["depth"] > 0


@contextlib.contextmanager
def capture_descents():
  """Within the block, ``minibatch_descent`` raises :class:`DescentCaptured` instead of running.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from famr_jax.engine.descent import minibatch_descent
    >>> loss = lambda p, b, w, c: jnp.sum(w * (b[0] - p) ** 2)
    >>> with capture_descents():
    ...   try:
    ...     minibatch_descent(loss, jnp.zeros(()), (jnp.arange(4.0),), optax.sgd(0.1), epochs=2,
    ...                       batch_size=2, key=jax.random.key(0), show_progress=False)
    ...   except DescentCaptured as e:
    ...     call = e.call
    >>> call.epochs, call.batch_size
    (2, 2)
  """
  _STATE["depth"] += 1
  try:
    yield
  finally:
    _STATE["depth"] -= 1
