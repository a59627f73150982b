"""How an epoch is cut into minibatches, microbatches and compiled calls.

Pure functions of ``(key, epoch, sizes)``: the engine's every random draw is
one of these, so a run (or a resumed run) is reproducible step for step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.errors import FamrError


class EpochBatches(NamedTuple):
  """Indices and 0/1 weights of one epoch's minibatches, ``[num_batches, batch_size]``."""
  indices: jax.Array
  weights: jax.Array


def epoch_batches(key: jax.Array, num_examples: int, batch_size: int) -> EpochBatches:
  """A random permutation cut into ``ceil(n / batch_size)`` minibatches.

  The last minibatch is padded with index 0 and weight 0, so every example is
  seen exactly once per epoch and shapes stay static for ``jit``.

  Example:
    >>> import jax
    >>> b = epoch_batches(jax.random.key(0), 5, 2)
    >>> b.indices.shape, b.weights.sum().item()
    ((3, 2), 5.0)
  """
  num_batches = -(-num_examples // batch_size)
  perm = jax.random.permutation(key, num_examples)
  pad = num_batches * batch_size - num_examples
  indices = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)])
  weights = jnp.concatenate([jnp.ones((num_examples,)), jnp.zeros((pad,))])
  return EpochBatches(indices.reshape(num_batches, batch_size),
                      weights.reshape(num_batches, batch_size).astype(jnp.float32))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Minibatches (optimizer steps) in one epoch: ``ceil(num_examples / batch_size)``.

  Example:
    >>> steps_per_epoch(100, 32)
    4
  """
  return -(-int(num_examples) // int(batch_size))


def step_schedule(num_examples: int, batch_size: int, *, epochs: int,
                  max_steps: int | None = None) -> tuple[int, int]:
  """``(epochs to run, steps of the last one)`` for ``epochs`` or a step budget ``max_steps``.

  A step budget replaces ``epochs``: ``max_steps`` optimizer steps in all, the
  last epoch cut short. Budgets make a schedule independent of the data set's
  size (an epoch over a forget set of 6,000 samples is 40x the steps of one
  over 135), which matters for objectives that are unbounded below, such as
  gradient ascent.

  Example:
    >>> step_schedule(100, 32, epochs=3)
    (3, 4)
    >>> step_schedule(100, 32, epochs=3, max_steps=6)
    (2, 2)
  """
  per_epoch = steps_per_epoch(num_examples, batch_size)
  if max_steps is None:
    return epochs, per_epoch
  if max_steps <= 0:
    raise FamrError(f"the step budget must be positive, got {max_steps}")
  run = -(-int(max_steps) // per_epoch)
  return run, int(max_steps) - (run - 1) * per_epoch


class SegmentPlan(NamedTuple):
  """Static shape of an epoch as the engine runs it (see :func:`plan_segments`)."""
  num_examples: int     # real examples (rows beyond are padding, never sampled)
  batch_size: int       # real examples per minibatch (the user's batch size)
  padded_batch: int     # minibatch columns, zero-weight padding included
  num_batches: int      # optimizer steps per epoch
  segment_steps: int    # steps per compiled call
  num_segments: int     # compiled calls per epoch
  grad_accum: int       # microbatches per minibatch


def plan_segments(num_examples: int, batch_size: int, *, num_devices: int = 1, grad_accum: int = 1,
                  segment_steps: int | None = None) -> SegmentPlan:
  """How an epoch is cut into minibatches, microbatches and compiled segments.

  A minibatch keeps exactly the examples it has on one device; when
  ``batch_size`` is not a multiple of ``grad_accum * num_devices`` it is padded
  with zero-weight examples (the loss is a weighted mean, so the update is the
  same), never refused. An epoch's steps run in calls of ``segment_steps``
  (default: the whole epoch); the last call of an epoch skips the steps past
  its end.

  Example:
    >>> p = plan_segments(100, 10, num_devices=8, segment_steps=4)
    >>> p.padded_batch, p.num_batches, p.num_segments
    (16, 10, 3)
  """
  if num_examples <= 0:
    raise FamrError("the data set is empty")
  if batch_size <= 0:
    raise FamrError(f"batch size must be positive, got {batch_size}")
  unit = grad_accum * num_devices
  padded = -(-batch_size // unit) * unit
  num_batches = -(-num_examples // batch_size)
  seg = num_batches if segment_steps is None else max(1, min(int(segment_steps), num_batches))
  return SegmentPlan(num_examples, batch_size, padded, num_batches, seg, -(-num_batches // seg), grad_accum)


def padded_epoch(key: jax.Array, plan: SegmentPlan) -> tuple[jax.Array, jax.Array]:
  """The epoch's ``(indices, weights)``, padded to ``num_segments * segment_steps`` rows.

  Columns beyond ``batch_size`` and rows beyond ``num_batches`` have weight 0.

  Example:
    >>> import jax
    >>> i, w = padded_epoch(jax.random.key(0), plan_segments(5, 2, num_devices=3, segment_steps=2))
    >>> i.shape, w.sum().item()
    ((4, 3), 5.0)
  """
  b = epoch_batches(key, plan.num_examples, plan.batch_size)
  rows = plan.num_segments * plan.segment_steps
  pad = ((0, rows - plan.num_batches), (0, plan.padded_batch - plan.batch_size))
  return jnp.pad(b.indices, pad), jnp.pad(b.weights, pad)


MONITOR_SIZE = 512   # forget examples a method's per-epoch history is measured on


def monitor_rows(key: jax.Array, num_examples: int, size: int = MONITOR_SIZE) -> np.ndarray:
  """A fixed random sample of at most ``size`` rows (from ``fold_in(key, 3)``) for per-epoch histories.

  Whole-set passes every epoch cost as much as the descent on a 6,000-image
  forget set; a fixed sample keeps the history cheap and comparable across epochs.

  Example:
    >>> import jax
    >>> rows = monitor_rows(jax.random.key(0), 5, size=3)
    >>> len(rows), len(set(rows.tolist())), int(rows.max()) < 5
    (3, 3, True)
  """
  return np.asarray(jax.random.permutation(jax.random.fold_in(key, 3), int(num_examples)))[:size]
