"""The minibatch engine shared by training, FAMR and the baselines.

One epoch is one jit-compiled call: a ``lax.scan`` over the epoch's
minibatches, then an optional evaluation of the new params, all on device.
The only host synchronization is one scalar per epoch, so that progress bars
report work done rather than work dispatched.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from famr_jax.progress import progress

Params = Any
Batch = tuple[jax.Array, ...]
# loss_fn(params, batch, weights, context) -> scalar; ``weights`` is 1 for
# real examples and 0 for the padding that fills the last minibatch;
# ``context`` is any pytree the loss needs besides the batch (the anchor
# params, say). It is passed as a jit argument, never closed over, so large
# arrays are not baked into the compiled program as constants.
LossFn = Callable[[Params, Batch, jax.Array, Any], jax.Array]
MetricsFn = Callable[[Params, Any], dict[str, jax.Array]]


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


def freeze_outside(optimizer: optax.GradientTransformation,
                   trainable_mask: Params | None) -> optax.GradientTransformation:
  """Wraps ``optimizer`` so that leaves where ``trainable_mask`` is False never move.

  Frozen leaves get exactly zero updates (``optax.set_to_zero``), so they stay
  bit-identical; their optimizer state is not even allocated.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> opt = freeze_outside(optax.sgd(1.0), {"a": True, "b": False})
    >>> p = {"a": jnp.ones(2), "b": jnp.ones(2)}
    >>> u, _ = opt.update(p, opt.init(p), p)
    >>> u["b"].tolist()
    [0.0, 0.0]
  """
  if trainable_mask is None:
    return optimizer
  labels = jax.tree.map(lambda m: "train" if m else "freeze", trainable_mask)
  return optax.multi_transform({"train": optimizer, "freeze": optax.set_to_zero()}, labels)


def make_epoch_fn(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                  batch_size: int, metrics_fn: MetricsFn | None = None):
  """Builds ``epoch(params, opt_state, data, context, key) -> (params, opt_state, metrics)``.

  ``data`` is a tuple of arrays with a shared leading axis; it is an argument
  (not a closed-over constant) so the compiled program does not embed the
  data set. ``metrics`` holds the mean training loss of the epoch plus
  whatever ``metrics_fn(params, context)`` returns.
  """

  def step(carry, batch_spec):
    params, opt_state, data, context = carry
    indices, weights = batch_spec
    batch = tuple(a[indices] for a in data)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, weights, context)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state, data, context), (loss, jnp.sum(weights))

  @jax.jit
  def epoch(params, opt_state, data, context, key):
    batches = epoch_batches(key, data[0].shape[0], batch_size)
    (params, opt_state, _, _), (losses, counts) = jax.lax.scan(
        step, (params, opt_state, data, context), (batches.indices, batches.weights))
    metrics = dict(metrics_fn(params, context)) if metrics_fn is not None else {}
    metrics["loss"] = jnp.sum(losses * counts) / jnp.sum(counts)
    return params, opt_state, metrics

  return epoch


class DescentResult(NamedTuple):
  """Output of :func:`minibatch_descent`."""
  params: Params
  history: list[dict[str, float]]   # one dict of metrics per epoch
  compile_s: float                  # time to compile the epoch function
  run_s: float                      # time of all epochs, compile excluded


def minibatch_descent(loss_fn: LossFn, params: Params, data: Sequence[Any],
                      optimizer: optax.GradientTransformation, *, epochs: int,
                      batch_size: int, key: jax.Array, context: Any = None,
                      metrics_fn: MetricsFn | None = None,
                      initial_metrics: bool = False,
                      desc: str = "epochs", show_progress: bool = True) -> DescentResult:
  """Minimizes ``loss_fn`` over ``data`` by minibatch steps of ``optimizer``.

  Args:
    loss_fn: ``loss_fn(params, batch, weights, context) -> scalar`` (see :data:`LossFn`).
    params: initial parameters.
    data: arrays with a shared leading axis (e.g. ``(x, y)`` or ``(x,)``).
    optimizer: any optax transformation.
    epochs: number of passes over ``data``.
    batch_size: minibatch size (the last batch of an epoch is padded and masked).
    key: PRNG key; epoch ``e`` shuffles with ``fold_in(key, e)``.
    context: pytree passed to ``loss_fn`` and ``metrics_fn`` (e.g. anchor params).
    metrics_fn: optional ``metrics_fn(params, context) -> dict`` evaluated after every epoch.
    initial_metrics: also evaluate ``metrics_fn`` before the first epoch
      (recorded as epoch 0 of the history).
    desc: progress-bar label.
    show_progress: draw a progress bar.

  Returns:
    A :class:`DescentResult`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> x = jnp.arange(8.0)[:, None]
    >>> loss = lambda p, b, w, c: jnp.sum(w * (b[0][:, 0] - p) ** 2) / jnp.sum(w)
    >>> r = minibatch_descent(loss, jnp.zeros(()), (x,), optax.sgd(0.1), epochs=50,
    ...                       batch_size=4, key=jax.random.key(0), show_progress=False)
    >>> abs(float(r.params) - 3.5) < 0.2  # the mean of 0..7, up to SGD noise
    True
  """
  import time  # local: keeps module import light

  data = tuple(jnp.asarray(a) for a in data)
  opt_state = optimizer.init(params)
  epoch_fn = make_epoch_fn(loss_fn, optimizer, batch_size, metrics_fn)
  history: list[dict[str, float]] = []
  if initial_metrics and metrics_fn is not None:
    m0 = jax.jit(metrics_fn)(params, context)
    history.append({"epoch": 0, **{k: float(v) for k, v in m0.items()}})

  t0 = time.perf_counter()
  compiled = epoch_fn.lower(params, opt_state, data, context, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - t0

  device_metrics = []
  t0 = time.perf_counter()
  for epoch in progress(range(epochs), desc=desc, enabled=show_progress):
    params, opt_state, metrics = compiled(params, opt_state, data, context,
                                          jax.random.fold_in(key, epoch))
    metrics["loss"].block_until_ready()  # one scalar per epoch: honest progress
    device_metrics.append(metrics)
  jax.block_until_ready(params)
  run_s = time.perf_counter() - t0
  for epoch, metrics in enumerate(jax.device_get(device_metrics), start=1):
    history.append({"epoch": epoch, **{k: float(v) for k, v in metrics.items()}})
  return DescentResult(params, history, compile_s, run_s)
