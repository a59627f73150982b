"""Data read batch by batch from the host: the engine's and the forward passes' path for lazy arrays.

Arrays the engine is given normally go to the device whole and are gathered
there inside the compiled step. A data set that must not be materialized (an
image folder, :class:`famr_jax.data.image_folder.LazyImages`) instead stays on
the host: the engine runs one compiled step per minibatch (``loop="steps"``)
and feeds it that minibatch's rows, gathered (decoded) on the host while the
device runs the previous step (JAX dispatch is asynchronous). The compiled
step is the same program, called with a ``(padded_batch, ...)`` data array
and the row indices ``0 .. padded_batch - 1``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.data.image_folder import is_streamed

__all__ = ["apply_streamed", "any_streamed", "gather_rows", "is_streamed", "step_inputs"]

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


def any_streamed(arrays: Sequence[Any]) -> bool:
  """Whether any of ``arrays`` is a lazy array-like (read batch by batch).

  Example:
    >>> any_streamed((np.zeros(3), np.zeros(3)))
    False
  """
  return any(is_streamed(a) for a in arrays)


def gather_rows(array: Any, rows: np.ndarray) -> np.ndarray:
  """``array[rows]`` as a numpy array (a lazy array decodes just those rows).

  Example:
    >>> gather_rows(np.arange(5) * 10, np.array([4, 0])).tolist()
    [40, 0]
  """
  return np.asarray(array[np.asarray(rows)])


def step_inputs(host_data: Sequence[Any], indices: np.ndarray, weights: np.ndarray, row: int,
                put: Callable[[Any], Any]) -> tuple[tuple, np.ndarray, np.ndarray]:
  """``(batch, local_indices, local_weights)`` of row ``row`` of an epoch for the one-step program.

  ``batch`` holds the minibatch's rows of every array, placed by ``put``;
  ``local_indices`` is ``[[0, 1, ..., B - 1]]`` and ``local_weights`` the row's
  weights, so the step's on-device gather ``a[indices[0]]`` is the identity.

  Example:
    >>> b, i, w = step_inputs((np.arange(6.0),), np.array([[5, 1]]), np.ones((1, 2)), 0, lambda t: t)
    >>> b[0].tolist(), i.tolist()
    ([5.0, 1.0], [[0, 1]])
  """
  idx = indices[row]
  batch = tuple(put(gather_rows(a, idx)) for a in host_data)
  return batch, np.arange(len(idx), dtype=np.int32)[None], np.asarray(weights[row:row + 1])


def apply_streamed(apply_fn: ApplyFn, params: Params, x: Any, batch_size: int = 256) -> jax.Array:
  """``apply_fn(params, x)`` over an array-like read ``batch_size`` rows at a time (one compiled shape).

  The last batch is padded to ``batch_size`` so one program serves every batch.
  A numpy or jax ``x`` works too (it is sliced the same way).

  Example:
    >>> apply_streamed(lambda p, x: x * p, 2.0, np.arange(5.0)[:, None], 2)[:, 0].tolist()
    [0.0, 2.0, 4.0, 6.0, 8.0]
  """
  fn = _jitted(apply_fn)
  n = len(x)
  outs = []
  for start in range(0, n, batch_size):
    xb = np.asarray(x[start:start + batch_size], np.float32)
    real = len(xb)
    if real < batch_size and n > batch_size:
      xb = np.concatenate([xb, np.zeros((batch_size - real,) + xb.shape[1:], xb.dtype)])
    outs.append(fn(params, xb)[:real])
  return jnp.concatenate(outs) if len(outs) != 1 else outs[0]


_JITTED: dict[Any, Any] = {}


def _jitted(apply_fn: ApplyFn):
  # One jitted wrapper per apply_fn object, so a second call finds its compiled programs again.
  fn = _JITTED.get(apply_fn)
  if fn is None:
    fn = _JITTED[apply_fn] = jax.jit(apply_fn)
    while len(_JITTED) > 64:
      _JITTED.pop(next(iter(_JITTED)))
  return fn
