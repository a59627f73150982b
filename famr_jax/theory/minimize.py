"""Minimizers of ``sum_i loss(params, z_i) + coef/2 ||params - anchor||^2``: Newton and L-BFGS.

The theory checks need every minimum to a gradient-norm target in float64:
the training objectives (anchor zero, ``coef`` the weight decay) and the FAMR
objective (anchor ``theta0``, ``coef`` lambda). The value and gradient are
jitted once per (loss, shapes) with data, coef and anchor as traced
arguments, so a lambda sweep compiles once.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import optax

from famr_jax.theory import curvature
from famr_jax.theory.numerics import flatten64

__all__ = [
    'MinimizeInfo',
    'Objective',
    'anchored_grad',
    'anchored_hessian',
    'anchored_value',
    'gd_distances',
    'lbfgs_minimize',
    'lbfgs_minimize_objective',
    'newton_minimize',
    'tree_sq_dist',
]

Params = Any


def tree_sq_dist(a: Params, b: Params) -> jax.Array:
  """``||a - b||^2`` of two pytrees of the same structure.

  Example:
    >>> import jax.numpy as jnp
    >>> float(tree_sq_dist({'w': jnp.array([1., 2.])}, {'w': jnp.array([0., 0.])}))
    5.0
  """
  return curvature.tree_vdot(jax.tree.map(jnp.subtract, a, b), jax.tree.map(jnp.subtract, a, b))


@functools.partial(jax.jit, static_argnames=('example_loss', 'batch_size'))
def anchored_value(example_loss, params, data, coef, anchor, batch_size):
  """``sum_i example_loss(params, z_i) + coef/2 ||params - anchor||^2`` (jitted).

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p, b: (b * p) ** 2
    >>> float(anchored_value(loss, jnp.array(1.), jnp.arange(3.), 2.0, jnp.array(0.), 8))
    6.0
  """
  return (curvature.dataset_loss(example_loss, params, data, batch_size=batch_size)
          + 0.5 * coef * tree_sq_dist(params, anchor))


@functools.partial(jax.jit, static_argnames=('example_loss', 'batch_size'))
def anchored_grad(example_loss, params, data, coef, anchor, batch_size):
  """The gradient of :func:`anchored_value` (jitted).

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p, b: (b * p) ** 2
    >>> float(anchored_grad(loss, jnp.array(1.), jnp.arange(3.), 2.0, jnp.array(0.), 8))
    12.0
  """
  g = curvature.dataset_grad(example_loss, params, data, batch_size=batch_size)
  return jax.tree.map(lambda gi, p, a: gi + coef * (p - a), g, params, anchor)


def anchored_hessian(example_loss, params, data, coef, batch_size) -> np.ndarray:
  """The dense float64 Hessian of :func:`anchored_value` (at most 40,000 parameters).

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p, b: (b * p) ** 2
    >>> anchored_hessian(loss, jnp.ones(1), jnp.arange(3.), 2.0, 8).tolist()
    [[12.0]]
  """
  op = curvature.dataset_hvp_operator(example_loss, params, data, batch_size=batch_size,
                                      weight_decay=coef)
  return np.asarray(curvature.dense_operator(op, params, max_params=40_000), np.float64)


class Objective(NamedTuple):
  """``sum_i example_loss(params, z_i) + coef/2 ||params - anchor||^2`` over ``data``.

  Example:
    >>> import jax.numpy as jnp
    >>> obj = Objective(lambda p, b: (b * p) ** 2, jnp.arange(3.), 2.0, jnp.array(0.), 8)
    >>> obj.value(jnp.array(1.)), obj.grad_norm(jnp.array(1.))
    (6.0, 12.0)
  """
  example_loss: Callable
  data: Any
  coef: float
  anchor: Params
  batch_size: int

  def value(self, params) -> float:
    """The objective at ``params``."""
    return float(anchored_value(self.example_loss, params, self.data, self.coef, self.anchor,
                                self.batch_size))

  def grad(self, params) -> Params:
    """Its gradient, a pytree like ``params``."""
    return anchored_grad(self.example_loss, params, self.data, self.coef, self.anchor,
                         self.batch_size)

  def grad_norm(self, params) -> float:
    """The norm of its gradient."""
    return float(curvature.tree_norm(self.grad(params)))

  def hessian(self, params) -> np.ndarray:
    """Its dense float64 Hessian."""
    return anchored_hessian(self.example_loss, params, self.data, self.coef, self.batch_size)


class MinimizeInfo(NamedTuple):
  """How a minimization ended."""
  iterations: int
  grad_norm: float


def newton_minimize(obj: Objective, params: Params, *, grad_tol: float,
                    max_iters: int = 100) -> tuple[Params, MinimizeInfo]:
  """Newton's method with Armijo backtracking for a strongly convex objective.

  Example:
    >>> import jax.numpy as jnp
    >>> obj = Objective(lambda p, b: (b * p) ** 2, jnp.arange(3.), 2.0, jnp.array(1.), 8)
    >>> p, info = newton_minimize(obj, jnp.array(0.), grad_tol=1e-6)
    >>> round(float(p), 6), info.iterations
    (0.166667, 1)
  """
  _, unravel = ravel_pytree(params)
  theta = flatten64(params)
  value = obj.value(params)
  it = 0
  for it in range(1, max_iters + 1):
    g = flatten64(obj.grad(unravel(jnp.asarray(theta))))
    if np.linalg.norm(g) <= grad_tol:
      it -= 1
      break
    h = obj.hessian(unravel(jnp.asarray(theta)))
    step = -np.linalg.solve(0.5 * (h + h.T), g)
    slope = float(g @ step)
    t = 1.0
    while True:
      cand = theta + t * step
      cand_value = obj.value(unravel(jnp.asarray(cand)))
      # Near the minimum the decrease is below float64 resolution: the
      # quadratic model is then exact enough to take the full step.
      if cand_value <= value + 1e-4 * t * slope or -slope < 1e-12 * max(1.0, abs(value)):
        break
      t *= 0.5
      if t < 1e-12:
        break
    theta, value = cand, cand_value
  out = unravel(jnp.asarray(theta))
  return out, MinimizeInfo(it, obj.grad_norm(out))


def lbfgs_minimize(fun: Callable[[Params], jax.Array], params: Params, grad_tol, max_steps):
  """Minimizes ``fun`` with optax's L-BFGS (zoom line search) in one ``lax.while_loop``.

  Pure and jit-able (``max_steps`` and ``grad_tol`` may be traced); stops when the
  gradient norm falls under ``grad_tol`` or after ``max_steps`` steps.

  Returns:
    ``(params, steps)``.

  Example:
    >>> import jax.numpy as jnp
    >>> p, steps = lbfgs_minimize(lambda w: jnp.sum((w - 3.0) ** 2), jnp.zeros(2), 1e-6, 50)
    >>> [round(float(v), 4) for v in p]
    [3.0, 3.0]
  """
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(p, updates), state

  def keep_going(carry):
    _, state = carry
    count = optax.tree.get(state, 'count')
    grad_norm = optax.tree.norm(optax.tree.get(state, 'grad'))
    return (count == 0) | ((count < max_steps) & (grad_norm >= grad_tol))

  p, state = lax.while_loop(keep_going, step, (params, opt.init(params)))
  return p, optax.tree.get(state, 'count')


@functools.partial(jax.jit, static_argnames=('example_loss', 'batch_size', 'max_steps'))
def _lbfgs_jit(example_loss, params, data, coef, anchor, grad_tol, max_steps, batch_size):
  return lbfgs_minimize(lambda p: anchored_value(example_loss, p, data, coef, anchor, batch_size),
                        params, grad_tol, max_steps)


def lbfgs_minimize_objective(obj: Objective, params: Params, *, grad_tol: float,
                             max_steps: int) -> tuple[Params, MinimizeInfo]:
  """:func:`lbfgs_minimize` of an :class:`Objective`, jitted once per loss and shapes.

  Example:
    >>> import jax.numpy as jnp
    >>> obj = Objective(lambda p, b: (b * p) ** 2, jnp.arange(3.), 2.0, jnp.array(1.), 8)
    >>> p, info = lbfgs_minimize_objective(obj, jnp.array(0.), grad_tol=1e-5, max_steps=50)
    >>> round(float(p), 4), info.grad_norm <= 1e-5
    (0.1667, True)
  """
  out, count = _lbfgs_jit(obj.example_loss, params, obj.data, obj.coef, obj.anchor, grad_tol,
                          max_steps, obj.batch_size)
  return out, MinimizeInfo(int(count), obj.grad_norm(out))


@functools.partial(jax.jit, static_argnames=('example_loss', 'batch_size', 'steps'))
def gd_distances(example_loss, params, data, coef, anchor, eta, target, steps, batch_size):
  """Runs gradient descent on the anchored objective; returns ``||theta_t - target||``.

  Returns:
    ``(theta_steps, dists)`` with ``dists`` of length ``steps + 1`` (step 0 first).

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p, b: (b * p) ** 2
    >>> _, d = gd_distances(loss, jnp.array(1.), jnp.ones(1), 0.0, jnp.array(0.), 0.25,
    ...                     jnp.array(0.), 2, 8)
    >>> d.tolist()
    [1.0, 0.5, 0.25]
  """
  def step(p, _):
    g = anchored_grad(example_loss, p, data, coef, anchor, batch_size)
    p = jax.tree.map(lambda pi, gi: pi - eta * gi, p, g)
    return p, jnp.sqrt(tree_sq_dist(p, target))
  final, dists = lax.scan(step, params, None, length=steps)
  return final, jnp.concatenate([jnp.sqrt(tree_sq_dist(params, target))[None], dists])
