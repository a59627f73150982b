"""The minibatch engine shared by training, FAMR and the baselines.

One epoch is one jit-compiled call: a ``lax.scan`` over the epoch's
minibatches, then an optional evaluation of the new params, all on device.
The only host synchronization is one scalar per epoch, so that progress bars
report work done rather than work dispatched.

Options (all off by default, which keeps the engine bit-identical to its
first version): a :class:`famr_jax.engine.parallel.ScaleConfig` shards every
minibatch over all devices (``jax.jit`` + ``NamedSharding`` on a ``"data"``
mesh; params replicated or FSDP-sharded), accumulates gradients over
microbatches, and a :class:`famr_jax.engine.resume.ResumeConfig` saves resumable
Orbax checkpoints every N steps. Both run the epoch as one or more compiled
*segments* of a fixed number of steps (see :func:`make_segment_fn`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from famr_jax.errors import FamrError
from famr_jax.engine.parallel import ScaleConfig, ShardedData
from famr_jax.engine.progress import progress
from famr_jax.engine.resume import ResumeConfig

# The optimizers every minibatch method's config may name (see ``make_optimizer`` of each method).
OPTIMIZERS = ("sgd", "momentum", "adam")


def check_descent_settings(*, epochs: int, lr: float, batch_size: int, optimizer: str | None = None,
                           lam: float | None = None, steps: int | None = None) -> None:
  """Raises :class:`FamrError` on settings no minibatch method can run with.

  The one place the configs of training, FAMR, its variants, the baselines and
  the zero-shot methods check what they share (each adds its own fields).

  Example:
    >>> check_descent_settings(epochs=1, lr=0.1, batch_size=8, optimizer="sgd", lam=0.0)
    >>> check_descent_settings(epochs=0, lr=0.1, batch_size=8)
    Traceback (most recent call last):
    ...
    famr_jax.errors.FamrError: epochs must be positive, got 0
  """
  if epochs <= 0:
    raise FamrError(f"epochs must be positive, got {epochs}")
  if not lr > 0:
    raise FamrError(f"learning rate must be positive, got {lr}")
  if lam is not None and lam < 0:
    raise FamrError(f"the anchor strength lambda must be non-negative, got {lam}")
  if batch_size <= 0:
    raise FamrError(f"batch size must be positive, got {batch_size}")
  if optimizer is not None and optimizer not in OPTIMIZERS:
    raise FamrError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
  if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps <= 0):
    raise FamrError(f"the step budget (steps) must be a positive integer, got {steps}")

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
                  batch_size: int, metrics_fn: MetricsFn | None = None, *, step_limit: bool = False):
  """Builds ``epoch(params, opt_state, data, context, key) -> (params, opt_state, metrics)``.

  ``data`` is a tuple of arrays with a shared leading axis; it is an argument
  (not a closed-over constant) so the compiled program does not embed the
  data set. ``metrics`` holds the mean training loss of the epoch plus
  whatever ``metrics_fn(params, context)`` returns.

  With ``step_limit`` the epoch takes one more argument, ``limit`` (an int32
  scalar, traced: one compiled program serves every value): only the first
  ``limit`` minibatches of the epoch's permutation update the params; the
  rest are skipped by ``lax.cond`` (not computed). That is how a run with a
  step budget ends part-way through its last epoch.
  """

  def update(carry, indices, weights):
    params, opt_state, data, context = carry
    batch = tuple(a[indices] for a in data)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, weights, context)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state, data, context), (loss, jnp.sum(weights))

  def run(params, opt_state, data, context, key, limit):
    batches = epoch_batches(key, data[0].shape[0], batch_size)
    carry = (params, opt_state, data, context)
    if step_limit:
      # Skipped steps return zeros shaped like a real step's (loss, count).
      outputs = jax.eval_shape(update, carry, batches.indices[0], batches.weights[0])[1]

      def skip(c, *_):
        return c, jax.tree.map(lambda o: jnp.zeros(o.shape, o.dtype), outputs)

      def body(c, spec):
        indices, weights, i = spec
        return jax.lax.cond(i < limit, update, skip, c, indices, weights)
      xs = (batches.indices, batches.weights, jnp.arange(batches.indices.shape[0]))
    else:
      body = lambda c, spec: update(c, *spec)
      xs = (batches.indices, batches.weights)
    (params, opt_state, _, _), (losses, counts) = jax.lax.scan(body, carry, xs)
    metrics = dict(metrics_fn(params, context)) if metrics_fn is not None else {}
    metrics["loss"] = jnp.sum(losses * counts) / jnp.maximum(jnp.sum(counts), 1)
    return params, opt_state, metrics

  if step_limit:
    return jax.jit(run)
  return jax.jit(lambda params, opt_state, data, context, key: run(params, opt_state, data, context, key, None))


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
  """Static shape of a sharded / accumulated / checkpointed epoch (see :func:`plan_segments`)."""
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


def make_segment_fn(loss_fn: LossFn, optimizer: optax.GradientTransformation, plan: SegmentPlan, *,
                    key_impl: Any = None, metrics_fn: MetricsFn | None = None, mesh: Any = None):
  """Builds ``segment(params, opt_state, data, context, key_data, epoch, start, loss_acc)``.

  One call runs steps ``start .. start + plan.segment_steps`` of epoch
  ``epoch`` (the minibatches of :func:`epoch_batches` with key
  ``fold_in(wrap_key_data(key_data), epoch)``, as in :func:`minibatch_descent`),
  and returns ``(params, opt_state, loss_acc, metrics)``: ``loss_acc`` is the
  epoch's running ``(sum of weighted losses, number of examples)``;
  ``metrics`` holds the running mean ``loss`` and, when one call is the whole
  epoch, ``metrics_fn(params, context)``. With a ``mesh`` every (micro)batch is constrained to be
  sharded over its ``"data"`` axis; XLA inserts the gradient reduction.
  Unjitted: the caller jits it with its shardings.
  """
  from famr_jax.engine.parallel import batch_sharding

  rows = plan.num_segments * plan.segment_steps
  extra_cols = plan.padded_batch - plan.batch_size
  micro = plan.padded_batch // plan.grad_accum
  masked = rows > plan.num_batches

  def constrain(a):
    return a if mesh is None else jax.lax.with_sharding_constraint(a, batch_sharding(mesh))

  def epoch_plan(key_data, epoch):
    key = jax.random.fold_in(jax.random.wrap_key_data(key_data, impl=key_impl), epoch)
    b = epoch_batches(key, plan.num_examples, plan.batch_size)
    indices, weights = b.indices, b.weights
    if extra_cols:
      indices = jnp.pad(indices, ((0, 0), (0, extra_cols)))
      weights = jnp.pad(weights, ((0, 0), (0, extra_cols)))
    if rows > plan.num_batches:
      indices = jnp.pad(indices, ((0, rows - plan.num_batches), (0, 0)))
      weights = jnp.pad(weights, ((0, rows - plan.num_batches), (0, 0)))
    return indices, weights, jnp.arange(rows) < plan.num_batches

  def value_and_grads(params, data, context, indices, weights):
    if plan.grad_accum == 1:
      batch = tuple(constrain(a[indices]) for a in data)
      return jax.value_and_grad(loss_fn)(params, batch, constrain(weights), context)
    total = jnp.sum(weights)

    def microbatch(acc, spec):
      # The loss is a weighted mean over its batch plus batch-free terms, so
      # weighting each microbatch's gradient by its share of the examples
      # gives exactly the gradient of the whole minibatch.
      idx, w = spec
      batch = tuple(constrain(a[idx]) for a in data)
      loss, grads = jax.value_and_grad(loss_fn)(params, batch, constrain(w), context)
      count = jnp.sum(w)
      share = count / jnp.maximum(total, 1.0)
      keep = count > 0
      grads = jax.tree.map(lambda g: jnp.where(keep, g * share.astype(g.dtype), jnp.zeros_like(g)), grads)
      acc_loss, acc_grads = acc
      return (acc_loss + jnp.where(keep, loss * share, 0.0), jax.tree.map(jnp.add, acc_grads, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss, grads), _ = jax.lax.scan(
        microbatch, (jnp.zeros((), jnp.float32), zeros),
        (indices.reshape(plan.grad_accum, micro), weights.reshape(plan.grad_accum, micro)))
    return loss, grads

  def segment(params, opt_state, data, context, key_data, epoch, start, loss_acc):
    indices, weights, active = epoch_plan(key_data, epoch)
    if plan.num_segments > 1:
      indices = jax.lax.dynamic_slice_in_dim(indices, start, plan.segment_steps)
      weights = jax.lax.dynamic_slice_in_dim(weights, start, plan.segment_steps)
      active = jax.lax.dynamic_slice_in_dim(active, start, plan.segment_steps)

    def step(carry, spec):
      params, opt_state, loss_sum, count = carry
      idx, w, is_active = spec

      def update(operands):
        p, s = operands
        loss, grads = value_and_grads(p, data, context, idx, w)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, jnp.asarray(loss, jnp.float32)

      if masked:   # steps past the epoch's end (last segment) change nothing
        params, opt_state, loss = jax.lax.cond(
            is_active, update, lambda ops: (*ops, jnp.zeros((), jnp.float32)), (params, opt_state))
      else:
        params, opt_state, loss = update((params, opt_state))
      n = jnp.sum(w)
      return (params, opt_state, loss_sum + loss * n, count + n), None

    (params, opt_state, loss_sum, count), _ = jax.lax.scan(
        step, (params, opt_state, loss_acc[0], loss_acc[1]), (indices, weights, active))
    metrics = {}
    if metrics_fn is not None and plan.num_segments == 1:
      metrics = dict(metrics_fn(params, context))
    metrics["loss"] = loss_sum / jnp.maximum(count, 1.0)   # the epoch's mean loss after its last segment
    return params, opt_state, (loss_sum, count), metrics

  return segment


class DescentResult(NamedTuple):
  """Output of :func:`minibatch_descent`."""
  params: Params
  history: list[dict[str, float]]   # one dict of metrics per epoch
  compile_s: float                  # time to compile the epoch function
  run_s: float                      # time of all epochs, compile excluded


def minibatch_descent(loss_fn: LossFn, params: Params, data: Sequence[Any] | ShardedData,
                      optimizer: optax.GradientTransformation, *, epochs: int,
                      batch_size: int, key: jax.Array, context: Any = None,
                      metrics_fn: MetricsFn | None = None,
                      initial_metrics: bool = False,
                      desc: str = "epochs", show_progress: bool = True,
                      scale: ScaleConfig | None = None,
                      resume: ResumeConfig | None = None,
                      resume_meta: Mapping[str, Any] | None = None,
                      max_steps: int | None = None) -> DescentResult:
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
    scale: devices, gradient accumulation (a :class:`famr_jax.engine.parallel.ScaleConfig`;
      its ``compute_dtype`` is applied by the callers that build the loss from
      an ``apply_fn``, see :func:`famr_jax.engine.parallel.compute_dtype_apply_fn`).
      With ``data_parallel`` the results equal the single-device ones up to
      float reduction order; params come back as ordinary
      single-device arrays (global replicated arrays in a multi-process run).
    resume: resumable checkpoints (a :class:`famr_jax.engine.resume.ResumeConfig`):
      a rerun with the same arguments continues from the newest checkpoint.
    resume_meta: JSON-able description of the caller's settings; a resume
      whose description (or the engine's own settings, data shapes or key)
      differs is refused, naming the keys.
    max_steps: a step budget replacing ``epochs``: this many optimizer steps in
      all, the last epoch cut short (see :func:`step_schedule`). Single-process,
      unsharded runs only.

  Returns:
    A :class:`DescentResult`.

  Raises:
    famr_jax.engine.resume.RunStopped: ``resume.stop_after_steps`` was reached.

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

  if ((scale is not None and not scale.is_default) or (resume is not None and resume.enabled)
      or isinstance(data, ShardedData)):
    if max_steps is not None:
      raise FamrError("a step budget (steps) runs on one device without resumable checkpoints; "
                      "give epochs (--epochs) instead")
    return _scaled_descent(loss_fn, params, data, optimizer, epochs=epochs, batch_size=batch_size,
                           key=key, context=context, metrics_fn=metrics_fn,
                           initial_metrics=initial_metrics, desc=desc, show_progress=show_progress,
                           scale=scale or ScaleConfig(), resume=resume, resume_meta=resume_meta)
  data = tuple(jnp.asarray(a) for a in data)
  opt_state = optimizer.init(params)
  limited = max_steps is not None
  epochs, last_steps = step_schedule(data[0].shape[0], batch_size, epochs=epochs, max_steps=max_steps)
  epoch_fn = make_epoch_fn(loss_fn, optimizer, batch_size, metrics_fn, step_limit=limited)
  extra = lambda limit: (jnp.asarray(limit, jnp.int32),) if limited else ()
  history: list[dict[str, float]] = []
  if initial_metrics and metrics_fn is not None:
    m0 = jax.jit(metrics_fn)(params, context)
    history.append({"epoch": 0, **{k: float(v) for k, v in m0.items()}})

  t0 = time.perf_counter()
  compiled = epoch_fn.lower(params, opt_state, data, context, jax.random.key(0), *extra(0)).compile()
  compile_s = time.perf_counter() - t0

  per_epoch = steps_per_epoch(data[0].shape[0], batch_size)
  device_metrics = []
  t0 = time.perf_counter()
  for epoch in progress(range(epochs), desc=desc, enabled=show_progress):
    limit = last_steps if epoch == epochs - 1 else per_epoch
    params, opt_state, metrics = compiled(params, opt_state, data, context,
                                          jax.random.fold_in(key, epoch), *extra(limit))
    if show_progress:   # one scalar per epoch: an honest progress bar; otherwise epochs queue up
      metrics["loss"].block_until_ready()
    device_metrics.append(metrics)
  jax.block_until_ready(params)
  run_s = time.perf_counter() - t0
  for epoch, metrics in enumerate(jax.device_get(device_metrics), start=1):
    history.append({"epoch": epoch, **{k: float(v) for k, v in metrics.items()}})
  return DescentResult(params, history, compile_s, run_s)


def _typed_key(key: jax.Array) -> jax.Array:
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)   # a legacy uint32 key: the same bits


def _tree_spec(tree: Any) -> dict[str, list]:
  from famr_jax.io.checkpoints import tree_shapes
  return tree_shapes(jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), tree))


def _data_digest(arrays: Sequence[np.ndarray], max_bytes: int = 1 << 26) -> str:
  """A BLAKE2 digest of the data (every row up to 64 MiB per array, evenly spaced rows beyond)."""
  import hashlib
  h = hashlib.blake2b(digest_size=16)
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str((a.shape, a.dtype.str)).encode())
    stride = max(1, -(-a.nbytes // max_bytes)) if a.nbytes > max_bytes else 1
    h.update(np.ascontiguousarray(a[::stride]).tobytes())
  return h.hexdigest()


class PreparedDescent(NamedTuple):
  """Everything placed on the devices, and the jitted segment, before the first step.

  ``segment(params, opt_state, data, context, key_data, scalar(epoch),
  scalar(start), zero_acc)`` runs ``plan.segment_steps`` steps (see
  :func:`make_segment_fn`); ``metrics`` is ``metrics_fn`` jitted with the same
  shardings (None without one). Built by :func:`prepare_descent`.
  """
  segment: Any
  metrics: Any
  params: Params
  opt_state: Any
  data: tuple
  context: Any
  key_data: Any
  zero_acc: Any
  scalar: Callable[[int], Any]
  plan: SegmentPlan
  mesh: Any
  num_examples: int
  data_digest: str | None


def prepare_descent(loss_fn: LossFn, params: Params, data: Sequence[Any] | ShardedData,
                    optimizer: optax.GradientTransformation, *, batch_size: int, key: jax.Array,
                    context: Any = None, metrics_fn: MetricsFn | None = None,
                    scale: ScaleConfig | None = None, segment_steps: int | None = None,
                    digest: bool = False) -> PreparedDescent:
  """Places params, optimizer state, data and context on the mesh and jits the segment.

  The first half of :func:`minibatch_descent` with a ``scale`` or ``resume``,
  public so that benchmarks time exactly the engine's program.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np, optax
    >>> loss = lambda p, b, w, c: jnp.sum(w * (b[0] - p) ** 2) / jnp.sum(w)
    >>> d = prepare_descent(loss, jnp.zeros(()), (np.arange(8.0),), optax.sgd(0.1), batch_size=4,
    ...                     key=jax.random.key(0), scale=ScaleConfig(data_parallel=True))
    >>> p, s, acc, m = d.segment(d.params, d.opt_state, d.data, d.context, d.key_data, d.scalar(0),
    ...                          d.scalar(0), d.zero_acc)
    >>> d.plan.num_batches, float(m["loss"]) > 0
    (2, True)
  """
  from famr_jax.engine import parallel

  scale = (scale or ScaleConfig()).validate()
  mesh = parallel.make_data_mesh(scale.num_devices) if scale.sharded else None
  num_devices = 1 if mesh is None else mesh.size

  # Data: rows sharded over the mesh (padding rows at the end are never sampled).
  if isinstance(data, ShardedData):
    if mesh is None:
      raise FamrError("ShardedData needs a device mesh: pass ScaleConfig(data_parallel=True)")
    arrays, n = tuple(data.arrays), int(data.num_examples)
    data_digest = None   # each process holds only its rows: the shapes are checked instead
  else:
    host = tuple(np.asarray(a) for a in data)
    data_digest = _data_digest(host) if digest else None
    n = int(host[0].shape[0])
    if any(a.shape[0] != n for a in host):
      raise FamrError("data arrays must share their first axis")
    arrays = parallel.shard_rows(host, mesh).arrays if mesh is not None else tuple(jnp.asarray(a) for a in host)
  plan = plan_segments(n, batch_size, num_devices=num_devices, grad_accum=scale.grad_accum,
                       segment_steps=segment_steps)

  key = _typed_key(key)
  key_impl = jax.random.key_impl(key)
  key_data = np.asarray(jax.random.key_data(key))

  # Placement: params, optimizer state and context replicated (or FSDP-sharded).
  if mesh is not None:
    rep = parallel.replicated(mesh)
    shard = lambda tree: parallel.tree_shardings(tree, mesh, fsdp=scale.fsdp, min_size=scale.fsdp_min_size)
    param_sh = shard(params)
    params = parallel.put_tree(params, param_sh)
    opt_sh = shard(jax.eval_shape(optimizer.init, params))
    opt_state = jax.jit(optimizer.init, out_shardings=opt_sh)(params)
    ctx_sh = shard(context)
    context = parallel.put_tree(context, ctx_sh)
    data_sh = tuple(parallel.batch_sharding(mesh) for _ in arrays)
    in_sh = (param_sh, opt_sh, data_sh, ctx_sh, rep, rep, rep, (rep, rep))
    out_sh = (param_sh, opt_sh, (rep, rep), rep)
    put_rep = lambda x: parallel.put_tree(x, jax.tree.map(lambda _: rep, x))
    jit = lambda f: jax.jit(f, in_shardings=in_sh, out_shardings=out_sh)
    jit_metrics = lambda f: jax.jit(f, in_shardings=(param_sh, ctx_sh), out_shardings=rep)
  else:
    params = jax.tree.map(jnp.asarray, params)
    opt_state = optimizer.init(params)
    put_rep = lambda x: jax.tree.map(jnp.asarray, x)
    jit = jax.jit
    jit_metrics = jax.jit

  segment = jit(make_segment_fn(loss_fn, optimizer, plan, key_impl=key_impl, metrics_fn=metrics_fn, mesh=mesh))
  return PreparedDescent(
      segment=segment, metrics=jit_metrics(metrics_fn) if metrics_fn is not None else None,
      params=params, opt_state=opt_state, data=arrays, context=context, key_data=put_rep(key_data),
      zero_acc=put_rep((np.zeros((), np.float32), np.zeros((), np.float32))),
      scalar=lambda v: put_rep(np.asarray(v, np.int32)), plan=plan, mesh=mesh, num_examples=n,
      data_digest=data_digest)


def _scaled_descent(loss_fn: LossFn, params: Params, data: Sequence[Any] | ShardedData,
                    optimizer: optax.GradientTransformation, *, epochs: int, batch_size: int,
                    key: jax.Array, context: Any, metrics_fn: MetricsFn | None, initial_metrics: bool,
                    desc: str, show_progress: bool, scale: ScaleConfig,
                    resume: ResumeConfig | None, resume_meta: Mapping[str, Any] | None) -> DescentResult:
  """:func:`minibatch_descent` on a device mesh and/or with checkpoints (segmented epochs)."""
  import time

  from famr_jax.engine import parallel
  from famr_jax.engine.resume import Resumer, RunStopped

  scale = scale.validate()
  if epochs <= 0:
    raise FamrError(f"epochs must be positive, got {epochs}")
  resume = resume.validate() if resume is not None and resume.enabled else None
  prep = prepare_descent(loss_fn, params, data, optimizer, batch_size=batch_size, key=key, context=context,
                         metrics_fn=metrics_fn, scale=scale,
                         segment_steps=resume.checkpoint_every if resume is not None else None,
                         digest=resume is not None)
  params, opt_state, arrays, context = prep.params, prep.opt_state, prep.data, prep.context
  plan, mesh, n, digest = prep.plan, prep.mesh, prep.num_examples, prep.data_digest
  zero_acc, key_data_dev, scalar = prep.zero_acc, prep.key_data, prep.scalar
  key_data = np.asarray(jax.random.key_data(_typed_key(key)))

  # Resume (checked before compiling, so a refused resume costs nothing): the
  # newest checkpoint of a run with the same fingerprint.
  epoch, seg, loss_acc, step = 0, 0, zero_acc, 0
  history: list[dict[str, float]] = []
  resumer, restored = None, None
  if resume is not None:
    fingerprint = {
        "engine": {"epochs": epochs, "batch_size": batch_size, "num_examples": n,
                   "example_shapes": [[list(a.shape[1:]), str(a.dtype)] for a in arrays],
                   "params": _tree_spec(params), "optimizer_state": _tree_spec(opt_state),
                   "key": key_data.tolist(), "compute_dtype": scale.compute_dtype,
                   "checkpoint_every": resume.checkpoint_every, "initial_metrics": initial_metrics,
                   "data_digest": digest},
        "run": dict(resume_meta or {})}
    resumer = Resumer(resume, fingerprint)
    try:
      restored = resumer.restore({"params": params, "opt_state": opt_state, "loss_acc": loss_acc})
    except BaseException:
      resumer.close()
      raise
    if restored is not None:
      state, meta = restored
      params, opt_state, loss_acc = state["params"], state["opt_state"], tuple(state["loss_acc"])
      epoch, seg, step = int(meta["epoch"]), int(meta["segment"]), int(meta["step"])
      history = [dict(h) for h in meta["history"]]
      logging.getLogger("famr_jax").info("resuming %s from step %d of %d (%s)", desc, step,
                                         epochs * plan.num_batches, resumer.directory)

  t0 = time.perf_counter()
  compiled = prep.segment.lower(params, opt_state, arrays, context, key_data_dev, scalar(0), scalar(0),
                                zero_acc).compile()
  metrics_compiled = None
  if metrics_fn is not None and (plan.num_segments > 1 or (initial_metrics and restored is None)):
    metrics_compiled = prep.metrics.lower(params, context).compile()
  compile_s = time.perf_counter() - t0

  if initial_metrics and metrics_fn is not None and restored is None:
    m0 = jax.device_get(metrics_compiled(params, context))
    history.append({"epoch": 0, **{k: float(v) for k, v in m0.items()}})

  pending: list[tuple[int, Any]] = []   # (epoch, device metrics) not yet fetched

  def flush():
    for e, m in jax.device_get(pending):
      history.append({"epoch": e, **{k: float(v) for k, v in m.items()}})
    pending.clear()

  def save():
    flush()
    resumer.save(step, {"params": params, "opt_state": opt_state, "loss_acc": loss_acc},
                 {"epoch": epoch, "segment": seg, "step": step, "history": history})

  done_here = 0
  last_saved = step
  t0 = time.perf_counter()
  try:
    bar = progress(range(epoch, epochs), desc=desc, enabled=show_progress, total=epochs - epoch)
    for _ in bar:
      while seg < plan.num_segments:
        params, opt_state, loss_acc, metrics = compiled(
            params, opt_state, arrays, context, key_data_dev, scalar(epoch), scalar(seg * plan.segment_steps),
            loss_acc)
        steps = min(plan.segment_steps, plan.num_batches - seg * plan.segment_steps)
        step += steps
        done_here += steps
        seg += 1
        if seg == plan.num_segments:   # the epoch is complete
          metrics = dict(metrics)
          if metrics_compiled is not None and plan.num_segments > 1:
            metrics = {**metrics_compiled(params, context), "loss": metrics["loss"]}
          metrics["loss"].block_until_ready()   # one scalar per epoch: honest progress
          pending.append((epoch + 1, metrics))
          epoch, seg, loss_acc = epoch + 1, 0, zero_acc
        if resumer is not None:
          due = step // resume.checkpoint_every > last_saved // resume.checkpoint_every
          stop = resume.stop_after_steps is not None and done_here >= resume.stop_after_steps
          if due or stop or (epoch == epochs and seg == 0):
            save()
            last_saved = step
          if stop and not (epoch == epochs and seg == 0):
            raise RunStopped(step, str(resumer.directory))
        if seg == 0:
          break
    jax.block_until_ready(params)
    run_s = time.perf_counter() - t0
    flush()
  finally:
    if resumer is not None:
      resumer.close()
  if mesh is not None:
    if scale.fsdp:
      params = parallel.gather_replicated(params, mesh)
    if jax.process_count() == 1:
      # Hand back ordinary (uncommitted, default-device) arrays, so callers can
      # mix them with any other array; multi-process runs keep global arrays.
      params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), params)
  return DescentResult(params, history, compile_s, run_s)
