"""The minibatch engine: one step/epoch driver under training, retraining and every method.

:func:`minibatch_descent` minimizes ``loss_fn(params, batch, weights,
context)`` by an optax optimizer over random minibatches of ``data``. Every
method of famr-jax is such a loss plus a config over this one driver, so all
of them get the same batching, step budgets, gradient accumulation, data
parallelism, bf16 compute (by the callers' ``apply_fn``), resumable
checkpoints, per-epoch history and progress.

How it runs (chosen by measurement, see ``experiments/bench_engine.py``):

* **Loop form.** ``loop="steps"`` calls one compiled optimizer step per
  minibatch from Python, with buffer donation and asynchronous dispatch (no
  host sync inside an epoch); ``loop="scan"`` runs a whole epoch (or a
  segment of ``checkpoint_every`` steps) as one ``lax.scan``. ``"auto"`` picks
  ``steps`` on CPU, where XLA runs a convolution's backward pass several times
  slower inside a scan, and ``scan`` elsewhere, where per-step dispatch is the
  fixed cost that dominates small models.
* **Compile once.** Compiled programs are cached by the identity of
  ``(loss_fn, optimizer, metrics_fn)`` and the static plan; ``jit`` adds the
  shapes. Methods build their losses and optimizers with memoized factories,
  so a second identical call, or another seed, compiles nothing.
* **Data** are a jit argument (never a closed-over constant), gathered on
  device inside the step; the epoch's permutation is one small compiled call.
  Lazy array-likes (an image folder) stay on the host and are fed one
  minibatch per step instead (see :mod:`famr_jax.engine.streaming`).
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh

from famr_jax.engine import parallel
from famr_jax.engine import capture
from famr_jax.engine.batching import (EpochBatches, SegmentPlan, epoch_batches, padded_epoch, plan_segments,
                                      step_schedule, steps_per_epoch)
from famr_jax.engine.optimizers import OPTIMIZERS, check_descent_settings, freeze_outside, make_optimizer
from famr_jax.engine.parallel import ScaleConfig, ShardedData
from famr_jax.engine.progress import progress
from famr_jax.engine.resume import ResumeConfig, data_digest, open_resumer
from famr_jax.engine.loop_forms import LOOPS, loop_form, resolve_loop, set_loop_form
from famr_jax.engine.streaming import any_streamed, is_streamed, step_inputs
from famr_jax.errors import Diverged, FamrError
from famr_jax.validation import check_finite_params
from famr_jax import trace_settings

__all__ = ["DescentResult", "EpochBatches", "LOOPS", "LossFn", "MetricsFn", "OPTIMIZERS", "SegmentPlan",
           "bind_static", "check_descent_settings", "epoch_batches", "freeze_outside", "loop_form", "make_optimizer",
           "minibatch_descent", "plan_segments", "prepare_descent", "resolve_loop", "set_loop_form", "step_schedule", "steps_per_epoch", "typed_key"]

Params = Any
Batch = tuple[jax.Array, ...]
# loss_fn(params, batch, weights, context) -> scalar; ``weights`` is 1 for
# real examples and 0 for the padding that fills the last minibatch;
# ``context`` is any pytree the loss needs besides the batch (the anchor
# params, say). It is passed as a jit argument, never closed over, so large
# arrays are not baked into the compiled program as constants.
LossFn = Callable[[Params, Batch, jax.Array, Any], jax.Array]
MetricsFn = Callable[[Params, Any], dict[str, jax.Array]]


class DescentResult(NamedTuple):
  """Output of :func:`minibatch_descent`."""
  params: Params
  history: list[dict[str, float]]   # one dict of metrics per epoch
  compile_s: float                  # time to compile (0 when every program came from the cache)
  run_s: float                      # time of all epochs, compile excluded
  opt_state: Any = None             # the final optimizer state (to continue a run, e.g. SCRUB's phases)


@functools.lru_cache(maxsize=1024)
def bind_static(fn: Callable, *static: Any) -> Callable:
  """``functools.partial(fn, *static)``, memoized: the same arguments give the same function object.

  Methods build their losses and metrics this way, from module-level
  functions and hashable static settings (the ``apply_fn``, a frozen config),
  so the engine's program cache (keyed by function identity) finds them again
  on the next call, seed or method.

  Example:
    >>> import operator
    >>> bind_static(operator.add, 1) is bind_static(operator.add, 1), bind_static(operator.add, 1)(2)
    (True, 3)
  """
  return functools.partial(fn, *static)


def typed_key(key: Any) -> jax.Array:
  """A new-style typed PRNG key from either kind (``jax.random.key`` or ``PRNGKey``).

  Example:
    >>> import jax
    >>> bool(jax.random.key_data(typed_key(jax.random.PRNGKey(3))).tolist()
    ...      == jax.random.key_data(jax.random.key(3)).tolist())
    True
  """
  if isinstance(key, (int, np.integer)) or key is None:
    raise FamrError(f"key must be a JAX PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), got {key!r}")
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  if key.dtype != jnp.uint32 or key.shape != (2,):
    raise FamrError(f"key must be a JAX PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)); "
                    f"got an array of shape {tuple(key.shape)} and dtype {key.dtype}")
  return jax.random.wrap_key_data(key)   # a legacy uint32[2] key: the same bits


# ----------------------------------------------------------------------------- compiled programs

class _Program(NamedTuple):
  segment: Any     # jitted (params, opt_state, data, context, indices, weights, start, limit, loss_acc)
  epoch: Any       # jitted (key_data, epoch) -> (indices, weights)
  metrics: Any     # jitted (params, context, loss_acc) -> dict, incl. the epoch's mean "loss"


_PROGRAMS: "collections.OrderedDict[Any, _Program]" = collections.OrderedDict()
_MAX_PROGRAMS = 128


def _value_and_grads(loss_fn, plan: SegmentPlan, constrain, params, data, context, indices, weights):
  if plan.grad_accum == 1:
    batch = tuple(constrain(a[indices]) for a in data)
    return jax.value_and_grad(loss_fn)(params, batch, constrain(weights), context)
  total = jnp.sum(weights)
  micro = plan.padded_batch // plan.grad_accum

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


def make_segment_fn(loss_fn: LossFn, optimizer: optax.GradientTransformation, plan: SegmentPlan, *,
                    mesh: Any = None, masked: bool = True):
  """Builds ``segment(params, opt_state, data, context, indices, weights, start, limit, loss_acc)``.

  One call runs rows ``start .. start + plan.segment_steps`` of the epoch's
  ``(indices, weights)`` (see :func:`famr_jax.engine.batching.padded_epoch`);
  with ``masked``, rows at or past ``limit`` change nothing (the end of an
  epoch, or of a step budget). ``loss_acc`` is the epoch's running ``(sum of
  weighted losses, number of examples)``. A one-step segment has no scan: it
  is the body of the Python step loop. With a ``mesh`` every (micro)batch is
  constrained to be sharded over its ``"data"`` axis; XLA inserts the
  gradient reduction. Unjitted: the caller jits it with its shardings.
  """
  def constrain(a):
    return a if mesh is None else jax.lax.with_sharding_constraint(a, parallel.batch_sharding(mesh))

  def update(params, opt_state, data, context, idx, w):
    loss, grads = _value_and_grads(loss_fn, plan, constrain, params, data, context, idx, w)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, jnp.asarray(loss, jnp.float32)

  def segment(params, opt_state, data, context, indices, weights, start, limit, loss_acc):
    loss_sum, count = loss_acc
    if plan.segment_steps == 1:
      idx, w = indices[start], weights[start]
      params, opt_state, loss = update(params, opt_state, data, context, idx, w)
      n = jnp.sum(w)
      return params, opt_state, (loss_sum + loss * n, count + n)
    idx = jax.lax.dynamic_slice_in_dim(indices, start, plan.segment_steps)
    ws = jax.lax.dynamic_slice_in_dim(weights, start, plan.segment_steps)
    rows = start + jnp.arange(plan.segment_steps)

    def step(carry, spec):
      params, opt_state, loss_sum, count = carry
      i, w, row = spec
      if masked:
        params, opt_state, loss = jax.lax.cond(
            row < limit, lambda p, s: update(p, s, data, context, i, w),
            lambda p, s: (p, s, jnp.zeros((), jnp.float32)), params, opt_state)
        n = jnp.where(row < limit, jnp.sum(w), 0.0)
      else:
        params, opt_state, loss = update(params, opt_state, data, context, i, w)
        n = jnp.sum(w)
      return (params, opt_state, loss_sum + loss * n, count + n), None

    (params, opt_state, loss_sum, count), _ = jax.lax.scan(step, (params, opt_state, loss_sum, count),
                                                           (idx, ws, rows))
    return params, opt_state, (loss_sum, count)

  return segment


def _program(loss_fn, optimizer, metrics_fn, plan: SegmentPlan, mesh, masked: bool, key_impl,
             shardings) -> _Program:
  sh_leaves, sh_tree = jax.tree.flatten(shardings)
  # Rows past the epoch's end (padding to whole segments) or past a step budget must be skipped; a
  # scan that never has such rows keeps no lax.cond in its body.
  masked = masked or plan.num_segments * plan.segment_steps > plan.num_batches
  cache_key = (loss_fn, optimizer, metrics_fn, plan, mesh, masked, str(key_impl), tuple(sh_leaves), sh_tree)
  if cache_key in _PROGRAMS:
    _PROGRAMS.move_to_end(cache_key)
    return _PROGRAMS[cache_key]

  def epoch(key_data, e):
    return padded_epoch(jax.random.fold_in(jax.random.wrap_key_data(key_data, impl=key_impl), e), plan)

  def metrics(params, context, loss_acc):
    out = dict(metrics_fn(params, context)) if metrics_fn is not None else {}
    out["loss"] = loss_acc[0] / jnp.maximum(loss_acc[1], 1.0)
    return out

  steps_fn = make_segment_fn(loss_fn, optimizer, plan, mesh=mesh, masked=masked)

  def segment(*args):
    if plan.segment_steps == 1:
      return steps_fn(*args)
    with trace_settings.in_loop_body():   # a scan's body: XLA:CPU wants the im2col convolution there
      return steps_fn(*args)

  if shardings is None:
    program = _Program(jax.jit(segment, donate_argnums=(0, 1, 8)), jax.jit(epoch), jax.jit(metrics))
  else:
    param_sh, opt_sh, data_sh, ctx_sh, rep = shardings
    program = _Program(
        jax.jit(segment, in_shardings=(param_sh, opt_sh, data_sh, ctx_sh, rep, rep, rep, rep, (rep, rep)),
                out_shardings=(param_sh, opt_sh, (rep, rep)), donate_argnums=(0, 1, 8)),
        jax.jit(epoch, in_shardings=(rep, rep), out_shardings=(rep, rep)),
        jax.jit(metrics, in_shardings=(param_sh, ctx_sh, (rep, rep)), out_shardings=rep))
  _PROGRAMS[cache_key] = program
  while len(_PROGRAMS) > _MAX_PROGRAMS:
    _PROGRAMS.popitem(last=False)
  return program


# ----------------------------------------------------------------------------- placement

def _own_copy(tree: Any) -> Any:
  # The step donates its params and optimizer state: never donate the caller's buffers.
  def copy(a):
    if isinstance(a, jax.Array):
      return jax.device_put(a, a.sharding, may_alias=False)
    return jnp.array(a, copy=True)
  return jax.tree.map(copy, tree)


class PreparedDescent(NamedTuple):
  """Everything placed on the devices, and the compiled-program handles, before the first step.

  ``program.segment(params, opt_state, data, context, indices, weights,
  scalar(start), scalar(limit), zero_acc())`` runs ``plan.segment_steps`` steps
  of the epoch whose ``(indices, weights)`` come from ``program.epoch(key_data,
  scalar(epoch))`` (see :func:`make_segment_fn`). Built by :func:`prepare_descent`.
  """
  program: _Program
  params: Params
  opt_state: Any
  data: tuple
  context: Any
  key_data: Any
  zero_acc: Callable[[], Any]   # a fresh (device) running-loss accumulator: the step donates it
  scalar: Callable[[int], Any]
  plan: SegmentPlan
  mesh: Any
  num_examples: int
  data_digest: str | None
  streamed: bool = False   # data are host array-likes fed one minibatch per step (segment_steps 1)
  put: Callable[[Any], Any] | None = None   # places a streamed minibatch as the program expects


def prepare_descent(loss_fn: LossFn, params: Params, data: Sequence[Any] | ShardedData,
                    optimizer: optax.GradientTransformation, *, batch_size: int, key: jax.Array,
                    context: Any = None, metrics_fn: MetricsFn | None = None,
                    scale: ScaleConfig | None = None, segment_steps: int | None = None,
                    masked: bool = False, digest: bool = False, opt_state: Any = None) -> PreparedDescent:
  """Places params, optimizer state, data and context on the devices and fetches the programs.

  The first half of :func:`minibatch_descent`, public so that benchmarks time
  exactly the engine's program. ``masked``: a caller may end an epoch early
  (a step budget), so a scan skips its rows at or past ``limit`` (padding rows
  are always skipped).

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np, optax
    >>> loss = lambda p, b, w, c: jnp.sum(w * (b[0] - p) ** 2) / jnp.sum(w)
    >>> d = prepare_descent(loss, jnp.zeros(()), (np.arange(8.0),), optax.sgd(0.1), batch_size=4,
    ...                     key=jax.random.key(0))
    >>> idx, w = d.program.epoch(d.key_data, d.scalar(0))
    >>> p, s, acc = d.program.segment(d.params, d.opt_state, d.data, d.context, idx, w, d.scalar(0),
    ...                               d.scalar(2), d.zero_acc())
    >>> d.plan.num_batches, float(acc[1])
    (2, 8.0)
  """
  scale = (scale or ScaleConfig()).validate()
  # One placement path for one device and many: explicit shardings on a mesh (this process's first
  # device when unsharded), so every call of a program sees the same argument placements and the
  # compiled step is found again instead of recompiled for committed-vs-uncommitted inputs.
  if scale.sharded:
    mesh = parallel.make_data_mesh(scale.num_devices)
  else:
    mesh = Mesh(np.array(jax.local_devices()[:1]), (parallel.DATA_AXIS,), axis_types=(AxisType.Auto,))
  if isinstance(data, ShardedData):
    if not scale.sharded:
      raise FamrError("ShardedData needs a device mesh: pass ScaleConfig(data_parallel=True)")
    arrays, n, fingerprint_digest = tuple(data.arrays), int(data.num_examples), None   # shapes are checked instead
  else:
    streamed = any_streamed(data)
    if streamed and (scale.sharded or scale.grad_accum != 1 or segment_steps != 1):
      raise FamrError("streamed data (an image folder) run one step per call on one device, "
                      "without gradient accumulation")
    host = tuple(a if (isinstance(a, jax.Array) and not scale.sharded) or is_streamed(a) else np.asarray(a)
                 for a in data)
    n = int(host[0].shape[0])
    if any(a.shape[0] != n for a in host):
      raise FamrError("data arrays must share their first axis")
    fingerprint_digest = data_digest([np.asarray(a) for a in host]) if digest and not streamed else None
    arrays = (host if streamed else parallel.shard_rows(host, mesh).arrays if scale.sharded
              else tuple(jax.device_put(a, parallel.replicated(mesh)) for a in host))
  plan = plan_segments(n, batch_size, num_devices=mesh.size, grad_accum=scale.grad_accum,
                       segment_steps=segment_steps)
  key = typed_key(key)
  key_impl = jax.random.key_impl(key)
  key_data = np.asarray(jax.random.key_data(key))
  rep = parallel.replicated(mesh)
  shard = lambda tree: parallel.tree_shardings(tree, mesh, fsdp=scale.fsdp, min_size=scale.fsdp_min_size)
  param_sh = shard(params)
  params = _own_copy(parallel.put_tree(params, param_sh))
  opt_sh = shard(jax.eval_shape(optimizer.init, params))
  opt_state = (jax.jit(optimizer.init, out_shardings=opt_sh)(params) if opt_state is None
               else _own_copy(parallel.put_tree(opt_state, opt_sh)))
  ctx_sh = shard(context)
  context = parallel.put_tree(context, ctx_sh)
  shardings = (param_sh, opt_sh, tuple(parallel.batch_sharding(mesh) if scale.sharded else rep for _ in arrays),
               ctx_sh, rep)
  put_rep = lambda x: parallel.put_tree(x, jax.tree.map(lambda _: rep, x))
  program = _program(loss_fn, optimizer, metrics_fn, plan, mesh if scale.sharded else None, masked, key_impl,
                     shardings)
  return PreparedDescent(
      program=program, params=params, opt_state=opt_state, data=arrays, context=context,
      key_data=put_rep(key_data), zero_acc=lambda: put_rep((jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))),
      scalar=lambda v: np.asarray(v, np.int32), plan=plan, mesh=mesh if scale.sharded else None, num_examples=n,
      data_digest=fingerprint_digest, streamed=not isinstance(data, ShardedData) and streamed,
      put=lambda a: jax.device_put(a, rep))


# ----------------------------------------------------------------------------- the driver

class _Position(NamedTuple):
  epoch: int = 0
  row: int = 0     # steps done in the current epoch
  step: int = 0    # steps done in the whole run


def _run(prep: PreparedDescent, **kwargs) -> tuple[Params, Any, list[dict[str, float]], float, float]:
  """Runs the epochs of a prepared descent; returns ``(params, opt_state, history, compile_s, run_s)``.

  Compilation happens on first calls; JAX's compile events time it apart from ``run_s``.
  """
  with parallel.CompileCounter() as clock:
    return _run_epochs(prep, clock=clock, **kwargs)


def _run_epochs(prep: PreparedDescent, *, clock: parallel.CompileCounter, epochs: int, last_steps: int, loop: str,
                desc: str, show_progress: bool, resumer, resume: ResumeConfig | None, restored,
                initial_metrics: bool, has_metrics: bool) -> tuple[Params, Any, list[dict[str, float]], float, float]:
  program, plan = prep.program, prep.plan
  params, opt_state, loss_acc, pos, history = prep.params, prep.opt_state, prep.zero_acc(), _Position(), []
  if restored is not None:
    state, meta = restored
    params, opt_state, loss_acc = state["params"], state["opt_state"], tuple(state["loss_acc"])
    pos, history = _Position(int(meta["epoch"]), int(meta["row"]), int(meta["step"])), list(meta["history"])
    total = (epochs - 1) * plan.num_batches + last_steps
    logging.getLogger("famr_jax").info("resuming %s from step %d of %d (%s)", desc, pos.step, total,
                                       resumer.directory)
  t0 = time.perf_counter()
  if initial_metrics and has_metrics and restored is None:
    m0 = jax.device_get(program.metrics(params, prep.context, prep.zero_acc()))
    history.append({"epoch": 0, **{k: float(v) for k, v in m0.items() if k != "loss"}})
  # (epoch, step, device metrics) not yet fetched: no host sync per step. Metrics already computed are
  # fetched at an epoch's end without waiting, so a divergence stops the run an epoch or two later.
  pending: list[tuple[int, int, Any]] = []

  def fetch(entries):
    for e, at, m in jax.device_get(entries):
      loss = float(m.get("loss", 0.0))
      if not np.isfinite(loss):
        raise Diverged(desc, at, f"the loss of epoch {e} is {loss}")
      history.append({"epoch": e, **{k: float(v) for k, v in m.items()}})

  def flush():
    fetch(list(pending))
    pending.clear()

  def fetch_ready():
    ready = 0
    while ready < len(pending) and all(a.is_ready() for a in jax.tree.leaves(pending[ready][2])):
      ready += 1
    fetch(pending[:ready])
    del pending[:ready]

  width = 1 if loop == "steps" else plan.segment_steps
  every = resume.checkpoint_every if resume is not None else None
  last_saved, done_here = pos.step, 0
  for epoch in progress(range(pos.epoch, epochs), desc=desc, enabled=show_progress, total=epochs - pos.epoch):
    limit = last_steps if epoch == epochs - 1 else plan.num_batches
    indices, weights = program.epoch(prep.key_data, prep.scalar(epoch))
    if prep.streamed:   # host copies: each step gathers its minibatch's rows on the host
      indices, weights = np.asarray(indices), np.asarray(weights)
    row = pos.row if epoch == pos.epoch else 0
    while row < limit:
      if prep.streamed:
        batch, idx, w = step_inputs(prep.data, indices, weights, row, prep.put)
        params, opt_state, loss_acc = program.segment(params, opt_state, batch, prep.context, idx, w,
                                                      prep.scalar(0), prep.scalar(1), loss_acc)
      else:
        params, opt_state, loss_acc = program.segment(params, opt_state, prep.data, prep.context, indices,
                                                      weights, prep.scalar(row), prep.scalar(limit), loss_acc)
      steps = min(width, limit - row)
      row, done_here = row + steps, done_here + steps
      step = pos.step + done_here
      end_of_epoch = row == limit
      if end_of_epoch:
        metrics = program.metrics(params, prep.context, loss_acc)
        if show_progress:   # one scalar per epoch: an honest progress bar; otherwise epochs queue up
          metrics["loss"].block_until_ready()
        fetch_ready()
        pending.append((epoch + 1, step, metrics))
      if resumer is not None and (end_of_epoch or row % every == 0):
        stop = resume.stop_after_steps is not None and done_here >= resume.stop_after_steps
        finished = end_of_epoch and epoch == epochs - 1
        if step // every > last_saved // every or stop or finished:
          flush()
          check_finite_params(params, desc, step)   # a diverged state is never saved
          at = (epoch + 1, 0) if end_of_epoch else (epoch, row)
          resumer.save(step, {"params": params, "opt_state": opt_state,
                              "loss_acc": prep.zero_acc() if end_of_epoch else loss_acc},
                       # a copy: the save may serialize after later epochs have been appended
                       {"epoch": at[0], "row": at[1], "step": step, "history": list(history)})
          last_saved = step
        if stop and not finished:
          from famr_jax.engine.resume import RunStopped
          raise RunStopped(step, str(resumer.directory))
    loss_acc = prep.zero_acc()
  jax.block_until_ready(params)
  compile_s = clock.seconds
  run_s = max(time.perf_counter() - t0 - compile_s, 0.0)
  flush()
  check_finite_params(params, desc, pos.step + done_here)
  return params, opt_state, history, compile_s, run_s


def minibatch_descent(loss_fn: LossFn, params: Params, data: Sequence[Any] | ShardedData,
                      optimizer: optax.GradientTransformation, *, epochs: int,
                      batch_size: int, key: jax.Array, context: Any = None,
                      metrics_fn: MetricsFn | None = None, initial_metrics: bool = False,
                      desc: str = "epochs", show_progress: bool = True,
                      scale: ScaleConfig | None = None, resume: ResumeConfig | None = None,
                      resume_meta: Mapping[str, Any] | None = None, max_steps: int | None = None,
                      loop: str = "auto", opt_state: Any = None) -> DescentResult:
  """Minimizes ``loss_fn`` over ``data`` by minibatch steps of ``optimizer``.

  Args:
    loss_fn: ``loss_fn(params, batch, weights, context) -> scalar`` (see :data:`LossFn`).
      Pass the same function object (and optimizer, metrics_fn) again to reuse
      the compiled program.
    params: initial parameters (never modified: the engine works on a copy).
    data: arrays with a shared leading axis (e.g. ``(x, y)`` or ``(x,)``), or a
      :class:`famr_jax.engine.parallel.ShardedData`.
    optimizer: any optax transformation.
    epochs: number of passes over ``data``.
    batch_size: minibatch size (the last batch of an epoch is padded and masked).
    key: PRNG key, new- or old-style; epoch ``e`` shuffles with ``fold_in(key, e)``.
    context: pytree passed to ``loss_fn`` and ``metrics_fn`` (e.g. anchor params).
    metrics_fn: optional ``metrics_fn(params, context) -> dict`` evaluated after every epoch.
    initial_metrics: also evaluate ``metrics_fn`` before the first epoch (epoch 0 of the history).
    desc: progress-bar label.
    show_progress: draw a progress bar.
    scale: devices and gradient accumulation (a :class:`famr_jax.engine.parallel.ScaleConfig`;
      its ``compute_dtype`` is applied by the callers that build the loss from an
      ``apply_fn``, see :func:`famr_jax.engine.parallel.compute_dtype_apply_fn`). With
      ``data_parallel`` the results equal the single-device ones up to float
      reduction order; params come back as ordinary single-device arrays
      (global replicated arrays in a multi-process run).
    resume: resumable checkpoints (a :class:`famr_jax.engine.resume.ResumeConfig`):
      a rerun with the same arguments continues from the newest checkpoint.
    resume_meta: JSON-able description of the caller's settings; a resume whose
      description (or the engine's own settings, data shapes or key) differs is refused.
    max_steps: a step budget replacing ``epochs``: this many optimizer steps in
      all, the last epoch cut short (see :func:`famr_jax.engine.batching.step_schedule`).
    loop: ``"auto"``, ``"steps"`` or ``"scan"`` (see the module doc); the
      results are the same up to float reordering.
    opt_state: continue from this optimizer state instead of ``optimizer.init(params)``.

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
  if isinstance(epochs, bool) or int(epochs) != epochs or epochs <= 0:
    raise FamrError(f"epochs must be positive, got {epochs}")
  scale = (scale or ScaleConfig()).validate()
  resume = resume.validate() if resume is not None and resume.enabled else None
  loop = resolve_loop(loop)
  if not isinstance(data, ShardedData) and any_streamed(data):
    loop = "steps"   # a streamed minibatch is fed from the host at every step
  n = int(data.num_examples) if isinstance(data, ShardedData) else int(len(data[0]))
  epochs, last_steps = step_schedule(n, batch_size, epochs=int(epochs), max_steps=max_steps)
  if loop == "steps":
    segment_steps = 1
  else:
    segment_steps = resume.checkpoint_every if resume is not None else None
  key = typed_key(key)
  if capture.capturing():   # a farm records the run (famr_jax.engine.farm) instead of running it
    raise capture.DescentCaptured(capture.DescentCall(
        loss_fn, params, tuple(data) if not isinstance(data, ShardedData) else data, optimizer, int(epochs),
        int(batch_size), key, context, max_steps, opt_state,
        scale.sharded or scale.grad_accum != 1 or resume is not None))
  prep = prepare_descent(loss_fn, params, data, optimizer, batch_size=batch_size, key=key, context=context,
                         metrics_fn=metrics_fn, scale=scale, segment_steps=segment_steps,
                         masked=max_steps is not None, digest=resume is not None, opt_state=opt_state)
  resumer, restored = None, None
  if resume is not None:   # checked before compiling, so a refused resume costs nothing
    resumer, restored = open_resumer(resume, prep, epochs=epochs, batch_size=batch_size,
                                      key_data=jax.random.key_data(key), scale=scale,
                                      initial_metrics=initial_metrics, resume_meta=resume_meta)
  try:
    params, opt_state, history, compile_s, run_s = _run(
        prep, epochs=epochs, last_steps=last_steps, loop=loop, desc=desc, show_progress=show_progress,
        resumer=resumer, resume=resume, restored=restored, initial_metrics=initial_metrics,
        has_metrics=metrics_fn is not None)
  finally:
    if resumer is not None:
      resumer.close()
  if prep.mesh is not None:
    if scale.fsdp:
      params = parallel.gather_replicated(params, prep.mesh)
    if jax.process_count() == 1:
      # Hand back ordinary (uncommitted, default-device) arrays, so callers can
      # mix them with any other array; multi-process runs keep global arrays.
      params = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), params)
  return DescentResult(params, history, compile_s, run_s, opt_state)
