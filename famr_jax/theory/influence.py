"""Influence-function estimates of retraining without a forget set T.

Setting (FAMR paper, Section 3.2, with the sign of ERRATA item 6): ``theta0``
minimizes ``L_D(theta) = sum_{z in D} l(z; theta) + mu/2 ||theta||^2``. The
retained objective is ``L_R = sum_{z in D \\ T} l + mu/2 ||theta||^2``, with
Hessian ``H_R`` at ``theta0``. Because ``grad L_D(theta0) = 0``,
``grad L_R(theta0) = -g`` with

    g = sum_{z in T} grad l(z; theta0),

and one Newton step on ``L_R`` from ``theta0`` is the influence estimate of the
retrained weights

    theta_IF = theta0 + H_R^{-1} g           (not theta0 - H^{-1} g as in Eq. 7).

The damped estimate ``theta_lambda = theta0 + (H_R + lambda I)^{-1} g`` is what
the paper's Eq. 8 actually describes (ERRATA item 7); it is *not* the minimizer
of the FAMR objective, whose Hessian is that of the uniform-KL forget loss.

All functions work on any ``example_loss(params, batch) -> [B]`` and params
pytree; sums over data go batch by batch (see :mod:`famr_jax.theory.curvature`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp

from famr_jax.theory import curvature
from famr_jax.theory.curvature import CGInfo, ExampleLoss, Operator, Params
from famr_jax.theory.hvp import stack_batches
from famr_jax.errors import FamrError

__all__ = [
    'InfluenceEstimate',
    'actual_loss_change',
    'cross_entropy_example_loss',
    'damped_influence_estimate',
    'damped_influence_estimate_dense',
    'estimate_retrained_params',
    'forget_gradient',
    'influence_estimate',
    'influence_estimate_dense',
    'predicted_loss_change',
]

Batch = Any


class InfluenceEstimate(NamedTuple):
  """An influence estimate of retrained weights."""
  params: Params            # theta0 + delta
  delta: Params             # (H_R + lambda I)^{-1} g
  cg_info: CGInfo | None    # None for dense solves


def cross_entropy_example_loss(apply_fn: Callable[[Params, jax.Array], jax.Array]) -> ExampleLoss:
  """``example_loss(params, (x, y)) -> [B]`` softmax cross-entropy for ``apply_fn``.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = cross_entropy_example_loss(lambda p, x: x @ p)
    >>> round(float(loss(jnp.zeros((2, 4)), (jnp.ones((1, 2)), jnp.array([0])))[0]), 4)
    1.3863
  """
  def example_loss(params: Params, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    log_p = jax.nn.log_softmax(apply_fn(params, x), axis=-1)
    return -jnp.take_along_axis(log_p, y[:, None].astype(jnp.int32), axis=-1)[:, 0]
  return example_loss


def forget_gradient(example_loss: ExampleLoss, params: Params, forget_data: Batch, *,
                    batch_size: int = 256) -> Params:
  """``g = sum_{z in T} grad l(z; params)``, accumulated batch by batch.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p, b: 0.5 * (p - b) ** 2
    >>> float(forget_gradient(loss, jnp.array(1.), jnp.array([0., 2., 4.])))
    -3.0
  """
  return curvature.dataset_grad(example_loss, params, forget_data, batch_size=batch_size)


def _check_lambda(lam: float) -> float:
  try:
    value = float(lam)
  except (TypeError, ValueError):
    raise FamrError(f'lambda must be a number, got {lam!r}') from None
  if not (math.isfinite(value) and value > 0):
    raise FamrError(f'lambda must be finite and > 0 for the damped estimate, got {lam!r}')
  return value


def influence_estimate(params: Params, g: Params, retain_hvp: Operator, *,
                       damping: float = 0.0, tol: float = 1e-10,
                       maxiter: int | None = None) -> InfluenceEstimate:
  """``theta0 + (H_R + damping I)^{-1} g`` by matrix-free conjugate gradients.

  With ``damping = 0`` this is the influence (Newton) estimate ``theta_IF``.

  Args:
    params: ``theta0``.
    g: :func:`forget_gradient` at ``theta0``.
    retain_hvp: ``v -> H_R v``, e.g.
      ``curvature.dataset_hvp_operator(example_loss, theta0, retain_data, weight_decay=mu)``.
    damping: ``>= 0``.
    tol, maxiter: CG settings (relative residual tolerance, step limit).

  Raises:
    FamrError: ``H_R + damping I`` not positive definite (CG met ``p^T A p <= 0``,
      e.g. a non-convex model's indefinite Hessian) or CG did not converge.

  Example:
    >>> import jax.numpy as jnp
    >>> est = influence_estimate(jnp.zeros(2), jnp.array([1., 1.]), lambda v: 2 * v)
    >>> est.params.tolist()
    [0.5, 0.5]
  """
  delta, info = curvature.cg_solve(retain_hvp, g, damping=damping, tol=tol, maxiter=maxiter)
  return InfluenceEstimate(jax.tree.map(jnp.add, params, delta), delta, info)


def damped_influence_estimate(params: Params, g: Params, retain_hvp: Operator, lam: float, *,
                              tol: float = 1e-10, maxiter: int | None = None) -> InfluenceEstimate:
  """``theta_lambda = theta0 + (H_R + lam I)^{-1} g`` (Eq. 8, sign corrected), by CG.

  Raises:
    FamrError: ``lam <= 0`` (use :func:`influence_estimate` for the undamped
      step) or a failed CG solve.

  Example:
    >>> import jax.numpy as jnp
    >>> damped_influence_estimate(jnp.zeros(1), jnp.ones(1), lambda v: v, 1.0).params.tolist()
    [0.5]
  """
  return influence_estimate(params, g, retain_hvp, damping=_check_lambda(lam), tol=tol,
                            maxiter=maxiter)


def influence_estimate_dense(params: Params, g: Params, hessian: jax.Array, *,
                             damping: float = 0.0) -> InfluenceEstimate:
  """``theta0 + (H_R + damping I)^{-1} g`` with a dense ``H_R`` (small models).

  ``hessian`` is in ``ravel_pytree(params)`` coordinates (as built by
  :func:`famr_jax.theory.curvature.dense_operator`).

  Raises:
    FamrError: ``H_R + damping I`` not positive definite, or bad shapes.

  Example:
    >>> import jax.numpy as jnp
    >>> influence_estimate_dense(jnp.zeros(2), jnp.ones(2), 4 * jnp.eye(2)).params.tolist()
    [0.25, 0.25]
  """
  delta = curvature.dense_solve(hessian, g, damping=damping)
  return InfluenceEstimate(jax.tree.map(jnp.add, params, delta), delta, None)


def damped_influence_estimate_dense(params: Params, g: Params, hessian: jax.Array,
                                    lam: float) -> InfluenceEstimate:
  """Dense ``theta_lambda``; ``lam`` must be ``> 0``.

  Example:
    >>> import jax.numpy as jnp
    >>> damped_influence_estimate_dense(jnp.zeros(1), jnp.ones(1), jnp.eye(1), 1.0).params.tolist()
    [0.5]
  """
  return influence_estimate_dense(params, g, hessian, damping=_check_lambda(lam))


def estimate_retrained_params(example_loss: ExampleLoss, params: Params, retain_data: Batch,
                              forget_data: Batch, *, weight_decay: float = 0.0,
                              damping: float = 0.0, method: str = 'cg',
                              batch_size: int = 256, tol: float = 1e-10,
                              maxiter: int | None = None,
                              max_params: int = curvature.DEFAULT_MAX_DENSE_PARAMS
                              ) -> InfluenceEstimate:
  """One call: the influence estimate of the weights retrained on ``D \\ T``.

  Args:
    example_loss: ``example_loss(params, batch) -> [B]`` training loss.
    params: ``theta0``, a minimizer of ``sum_D l + weight_decay/2 ||theta||^2``.
    retain_data: ``D \\ T`` (pytree with a leading example axis).
    forget_data: ``T``.
    weight_decay: the ``mu`` of the training objective's L2 term.
    damping: ``>= 0``; ``> 0`` gives the damped estimate ``theta_lambda``.
    method: ``'cg'`` (matrix-free) or ``'dense'`` (builds ``H_R``; small models).
    batch_size: examples per accumulation step.
    tol, maxiter: CG settings.
    max_params: dense refusal threshold.

  Raises:
    FamrError: unknown method, negative damping, non-positive-definite
      ``H_R + damping I``, CG failure, or a model too large for ``'dense'``.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p, b: 0.5 * (p - b) ** 2          # theta0 = mean of D
    >>> d = jnp.array([0., 1., 2., 5.])
    >>> est = estimate_retrained_params(loss, jnp.mean(d), d[:3], d[3:])
    >>> round(float(est.params), 6)                      # = mean of D \\ T
    1.0
  """
  if method not in ('cg', 'dense'):
    raise FamrError(f"method must be 'cg' or 'dense', got {method!r}")
  g = forget_gradient(example_loss, params, forget_data, batch_size=batch_size)
  op = curvature.dataset_hvp_operator(example_loss, params, retain_data, batch_size=batch_size,
                                      weight_decay=weight_decay)
  if method == 'cg':
    return influence_estimate(params, g, op, damping=damping, tol=tol, maxiter=maxiter)
  hessian = curvature.dense_operator(op, params, max_params=max_params)
  return influence_estimate_dense(params, g, hessian, damping=damping)


def predicted_loss_change(example_loss: ExampleLoss, params: Params, delta: Params,
                          points: Batch, *, batch_size: int = 256) -> jax.Array:
  """First-order predicted change ``grad l(z; theta0) . delta`` for each point ``z``.

  One forward-mode pass per batch (``jax.jvp`` of the per-example losses).

  Args:
    example_loss: ``example_loss(params, batch) -> [B]``.
    params: ``theta0``.
    delta: the predicted parameter change (e.g. ``InfluenceEstimate.delta``).
    points: pytree with a leading example axis.
    batch_size: examples per step.

  Returns:
    ``[N]`` predicted loss changes.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p, b: p * b
    >>> predicted_loss_change(loss, jnp.array(1.), jnp.array(0.5), jnp.array([1., 2.])).tolist()
    [0.5, 1.0]
  """
  return _first_n(_directional_losses(example_loss, params, delta, points, batch_size), points)


def actual_loss_change(example_loss: ExampleLoss, params: Params, new_params: Params,
                       points: Batch, *, batch_size: int = 256) -> jax.Array:
  """``l(z; new_params) - l(z; params)`` for each point.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p, b: p * b
    >>> actual_loss_change(loss, jnp.array(1.), jnp.array(1.5), jnp.array([1., 2.])).tolist()
    [0.5, 1.0]
  """
  return _first_n(_loss_differences(example_loss, params, new_params, points, batch_size), points)


@functools.partial(jax.jit, static_argnames=('example_loss', 'batch_size'))
def _directional_losses(example_loss, params, delta, points, batch_size):
  batches, _ = stack_batches(points, batch_size)
  return lax.map(lambda b: jax.jvp(lambda p: example_loss(p, b), (params,), (delta,))[1], batches)


@functools.partial(jax.jit, static_argnames=('example_loss', 'batch_size'))
def _loss_differences(example_loss, params, new_params, points, batch_size):
  batches, _ = stack_batches(points, batch_size)
  return lax.map(lambda b: example_loss(new_params, b) - example_loss(params, b), batches)


def _first_n(stacked: jax.Array, points: Batch) -> jax.Array:
  """Drops the padding of the last batch."""
  return stacked.reshape(-1)[:int(jax.tree.leaves(points)[0].shape[0])]
