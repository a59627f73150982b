"""A descent as a value: everything one minibatch-engine run would do, built without running it.

:func:`famr_jax.engine.descent.minibatch_descent` with ``plan_only=True``
validates its arguments and returns a :class:`DescentPlan` instead of running:
the loss, the optimizer, the schedule (epochs, batch size, step budget) and the
batches (the data and the key whose ``fold_in(key, e)`` permutes epoch ``e``),
with the initial params and the loss's context. The library's builders pass
``plan_only`` through (``train_classifier``, and the registered methods that
are one descent, through ``UnlearnTask.plan_only``), so a caller gets the plan
of a training or an unlearning from the ordinary code, and
:func:`famr_jax.engine.farm.vmapped_descent` runs N plans as one program over a
model axis (:func:`famr_jax.engine.farm.run_plan` runs one, as the engine would).
"""

from __future__ import annotations

from typing import Any, NamedTuple


class DescentPlan(NamedTuple):
  """One minibatch descent, described: run it with :func:`famr_jax.engine.farm.run_plan` (one) or
  :func:`famr_jax.engine.farm.vmapped_descent` (many sharing loss, optimizer and schedule).

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from famr_jax.engine.descent import minibatch_descent
    >>> loss = lambda p, b, w, c: jnp.sum(w * (b[0] - p) ** 2)
    >>> plan = minibatch_descent(loss, jnp.zeros(()), (jnp.arange(4.0),), optax.sgd(0.1), epochs=2,
    ...                          batch_size=2, key=jax.random.key(0), plan_only=True)
    >>> plan.epochs, plan.batch_size, plan.max_steps
    (2, 2, None)
  """
  loss_fn: Any        # loss_fn(params, batch, weights, context) -> scalar
  optimizer: Any      # an optax transformation (a fresh state: optimizer.init(params))
  params: Any         # the initial params
  data: tuple         # arrays sharing their leading axis: the examples the batches draw from
  context: Any        # the loss's context pytree
  key: Any            # a typed PRNG key: epoch e's permutation is drawn from fold_in(key, e)
  epochs: int
  batch_size: int
  max_steps: int | None   # a step budget replacing epochs (famr_jax.engine.batching.step_schedule)
