"""A farm of models trained as one program: N engine runs vmapped over a leading model axis.

Shadow models for membership inference (:mod:`famr_jax.audit`) are many runs of
the same recipe that differ only in their seeds, initial params and data. Built
through the usual code paths with ``plan_only=True`` (``train_classifier``, a
method through ``UnlearnTask.plan_only``), each run is a value, a
:class:`famr_jax.engine.plan.DescentPlan`; :func:`vmapped_descent` then runs all
of them through the engine's own step
(:func:`famr_jax.engine.descent.make_segment_fn`), ``jax.vmap``-ed over the
model axis, one compiled call per step for the whole farm. Per-model inputs
(params, PRNG keys, data and context leaves that differ between runs) are
stacked; leaves every run shares are passed once (``in_axes=None``).

Each model sees exactly the minibatches its own run would (the epoch's
permutation comes from its key as in the engine), so the farm equals the runs
one by one up to float reordering (``tests/test_audit.py`` checks it).
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.engine import parallel
from famr_jax.engine.batching import padded_epoch, plan_segments, step_schedule
from famr_jax.engine.descent import DescentResult, make_segment_fn, minibatch_descent
from famr_jax.engine.plan import DescentPlan
from famr_jax.engine.progress import progress
from famr_jax.errors import FamrError

FARM_MODES = ("auto", "vmap", "loop")
# What "auto" means, per measurement (experiments/bench_farm.py, docs/results.md, issue 14): on XLA:CPU one
# vmapped step for 8 MLPs ran 1.7x faster than 8 runs one by one; for LeNet5, vmap turns each convolution
# into a grouped one, which XLA:CPU ran at 0.67x the loop's speed. Other backends: vmap.
_AUTO = {"cpu_conv": "loop", "default": "vmap"}


class FarmResult(NamedTuple):
  """The models of a farm: ``params`` stacked over a leading model axis, and the farm's cost."""
  params: Any
  compile_s: float
  run_s: float
  mode: str       # "vmap" or "loop": how it ran


def stack_trees(trees: Sequence[Any]) -> Any:
  """Stacks pytrees of equal structure along a new leading axis.

  Example:
    >>> stack_trees([{"w": jnp.zeros(2)}, {"w": jnp.ones(2)}])["w"].shape
    (2, 2)
  """
  return jax.tree.map(lambda *leaves: jnp.stack([jnp.asarray(l) for l in leaves]), *trees)


def unstack_tree(tree: Any, i: int) -> Any:
  """Model ``i`` of a stacked pytree.

  Example:
    >>> float(unstack_tree({"w": jnp.arange(3.0)}, 2)["w"])
    2.0
  """
  return jax.tree.map(lambda a: a[i], tree)


def run_plan(plan: DescentPlan, *, show_progress: bool = False, desc: str = "plan") -> DescentResult:
  """Runs one plan as the engine would have run the call that built it (without its metrics).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> loss = lambda p, b, w, c: jnp.sum(w * (b[0] - p) ** 2) / jnp.sum(w)
    >>> plan = minibatch_descent(loss, jnp.zeros(()), (jnp.arange(4.0),), optax.sgd(0.5), epochs=20,
    ...                          batch_size=4, key=jax.random.key(0), plan_only=True)
    >>> round(float(run_plan(plan).params), 3)
    1.5
  """
  return minibatch_descent(plan.loss_fn, plan.params, plan.data, plan.optimizer, epochs=plan.epochs,
                           batch_size=plan.batch_size, key=plan.key, context=plan.context,
                           max_steps=plan.max_steps, show_progress=show_progress, desc=desc)


def plan_of(run: Callable[..., Any], what: str = "the run") -> DescentPlan:
  """The plan ``run(plan_only=True)`` returns (one-line error if it returns none: it is no single descent)."""
  plan = run(plan_only=True)
  if not isinstance(plan, DescentPlan):
    raise FamrError(f"{what} makes no single minibatch-engine descent plan, so it cannot be vmapped")
  return plan


def _same(a, b) -> bool:
  if a is b:
    return True
  a, b = np.asarray(a), np.asarray(b)
  return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))


def _stack_or_share(trees: Sequence[Any], what: str) -> tuple[Any, Any]:
  """``(tree, in_axes)``: leaves equal in every run passed once (axis None), the others stacked (axis 0)."""
  flat = [jax.tree.flatten(t) for t in trees]
  treedef = flat[0][1]
  if any(d != treedef for _, d in flat):
    raise FamrError(f"the runs' {what} differ in structure, so they cannot share one program")
  leaves, axes = [], []
  for column in zip(*(f for f, _ in flat)):
    shapes = {np.shape(c) for c in column}
    if len(shapes) != 1:
      raise FamrError(f"the runs' {what} differ in shape ({sorted(shapes)}), so they cannot share one program")
    if all(_same(column[0], c) for c in column[1:]):
      leaves.append(jnp.asarray(column[0]))
      axes.append(None)
    else:
      leaves.append(jnp.stack([jnp.asarray(c) for c in column]))
      axes.append(0)
  return jax.tree.unflatten(treedef, leaves), jax.tree.unflatten(treedef, axes)


def check_plans(plans: Sequence[DescentPlan]) -> None:
  """Refuses plans that cannot be one vmapped program (one line naming what differs)."""
  if not plans:
    raise FamrError("a farm needs at least one run")
  c0 = plans[0]
  for c in plans:
    if not isinstance(c, DescentPlan):
      raise FamrError(f"a farm runs DescentPlan values, got {type(c).__name__}")
    if c.loss_fn is not c0.loss_fn or c.optimizer is not c0.optimizer:
      raise FamrError("the runs of a farm must share their loss and optimizer (the same method and config)")
    if (c.epochs, c.batch_size, c.max_steps) != (c0.epochs, c0.batch_size, c0.max_steps):
      raise FamrError("the runs of a farm must share epochs, batch size and step budget")


_PROGRAMS: "collections.OrderedDict[Any, tuple]" = collections.OrderedDict()


def _programs(c0: DescentPlan, plan, data_axes, ctx_axes) -> tuple:
  impl = jax.random.key_impl(c0.key)
  cache_key = (c0.loss_fn, c0.optimizer, plan, str(jax.tree.structure(data_axes, is_leaf=lambda x: x is None)),
               tuple(jax.tree.leaves(data_axes, is_leaf=lambda x: x is None)),
               str(jax.tree.structure(ctx_axes, is_leaf=lambda x: x is None)),
               tuple(jax.tree.leaves(ctx_axes, is_leaf=lambda x: x is None)), str(impl))
  if cache_key in _PROGRAMS:
    return _PROGRAMS[cache_key]
  step = make_segment_fn(c0.loss_fn, c0.optimizer, plan, masked=False)   # the engine's one-step body

  def epoch(key_data, e):
    return padded_epoch(jax.random.fold_in(jax.random.wrap_key_data(key_data, impl=impl), e), plan)

  programs = (jax.jit(jax.vmap(c0.optimizer.init)),
              jax.jit(jax.vmap(epoch, in_axes=(0, None))),
              jax.jit(jax.vmap(step, in_axes=(0, 0, data_axes, ctx_axes, 0, 0, None, None, 0)),
                      donate_argnums=(0, 1, 8)))
  _PROGRAMS[cache_key] = programs
  while len(_PROGRAMS) > 32:
    _PROGRAMS.popitem(last=False)
  return programs


def vmapped_descent(plans: Sequence[DescentPlan], *, show_progress: bool = False,
                    desc: str = "farm") -> FarmResult:
  """Runs the descent ``plans`` as one program over a leading model axis (model ``i`` equals
  ``run_plan(plans[i])`` up to float reordering).

  Args:
    plans: :class:`famr_jax.engine.plan.DescentPlan` values sharing loss, optimizer and schedule.
    show_progress: a progress bar over epochs.
    desc: its label.

  Returns:
    A :class:`FarmResult` (``mode="vmap"``).

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from famr_jax.engine.training import TrainConfig, train_classifier
    >>> x = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int32)
    >>> apply_fn = lambda p, x: x @ p
    >>> plan = lambda s: train_classifier(apply_fn, jnp.zeros((2, 2)), x, y, TrainConfig(epochs=2, lr=0.1),
    ...                                   jax.random.key(s), plan_only=True)
    >>> vmapped_descent([plan(0), plan(1)]).params.shape
    (2, 2, 2)
  """
  check_plans(plans)
  c0 = plans[0]
  n = int(np.shape(c0.data[0])[0])
  epochs, last_steps = step_schedule(n, c0.batch_size, epochs=c0.epochs, max_steps=c0.max_steps)
  plan = plan_segments(n, c0.batch_size, segment_steps=1)
  data, data_axes = _stack_or_share([c.data for c in plans], "data")
  context, ctx_axes = _stack_or_share([c.context for c in plans], "contexts")
  init, epoch_fn, step = _programs(c0, plan, data_axes, ctx_axes)
  params = stack_trees([c.params for c in plans])
  key_data = jnp.stack([jax.random.key_data(c.key) for c in plans])
  zero_acc = lambda: (jnp.zeros(len(plans), jnp.float32), jnp.zeros(len(plans), jnp.float32))
  with parallel.CompileCounter() as clock:
    t0 = time.perf_counter()
    opt_state = init(params)
    for e in progress(range(epochs), desc=desc, enabled=show_progress, total=epochs):
      indices, weights = epoch_fn(key_data, np.asarray(e, np.int32))
      acc = zero_acc()
      for row in range(last_steps if e == epochs - 1 else plan.num_batches):
        params, opt_state, acc = step(params, opt_state, data, context, indices, weights, np.asarray(row, np.int32),
                                      np.asarray(row + 1, np.int32), acc)
    jax.block_until_ready(params)
  return FarmResult(params, clock.seconds, max(time.perf_counter() - t0 - clock.seconds, 0.0), "vmap")


def auto_mode(params: Any) -> str:
  """What ``mode="auto"`` runs for a model with ``params`` on the default backend (see :data:`_AUTO`).

  Example:
    >>> auto_mode({"fc": {"kernel": jnp.zeros((64, 10))}})
    'vmap'
  """
  conv = any(np.ndim(leaf) == 4 for leaf in jax.tree.leaves(params))
  return _AUTO["cpu_conv"] if (conv and jax.default_backend() == "cpu") else _AUTO["default"]


def run_farm(runs: Sequence[Callable[..., Any]], *, mode: str = "auto", what: str = "the runs",
             show_progress: bool = False, desc: str = "farm") -> FarmResult:
  """Runs N engine runs as a farm; each run is ``run(plan_only=False)``, e.g.
  ``lambda plan_only=False: train_classifier(..., plan_only=plan_only)``.

  ``mode="vmap"`` asks each run for its :class:`famr_jax.engine.plan.DescentPlan`
  (``run(plan_only=True)``) and runs them as one vmapped program
  (:func:`vmapped_descent`); ``"loop"`` calls them one by one (``run()``; the
  engine's program cache compiles once) and stacks their params; ``"auto"``
  picks by :func:`auto_mode` from the first plan's params.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from famr_jax.engine.training import TrainConfig, train_classifier
    >>> x = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int32)
    >>> runs = [lambda plan_only=False, s=s: train_classifier(lambda p, x: x @ p, jnp.zeros((2, 2)), x, y,
    ...           TrainConfig(epochs=2), jax.random.key(s), show_progress=False, plan_only=plan_only) for s in range(3)]
    >>> run_farm(runs, mode="loop").params.shape
    (3, 2, 2)
  """
  if mode not in FARM_MODES:
    raise FamrError(f"farm mode must be one of {', '.join(FARM_MODES)}, got {mode!r}")
  if not runs:
    raise FamrError("a farm needs at least one run")
  if mode != "loop":
    plans = [plan_of(r, what) for r in runs]
    if mode == "auto":
      mode = auto_mode(plans[0].params)
    if mode == "vmap":
      return vmapped_descent(plans, show_progress=show_progress, desc=desc)
  results = [r() for r in progress(runs, desc=desc, enabled=show_progress, total=len(runs))]
  params = stack_trees([r.params for r in results])
  return FarmResult(params, float(sum(r.compile_s for r in results)), float(sum(r.run_s for r in results)), "loop")
