"""Hessian-vector products, sums over a data set, and operators that pass through jit.

* :func:`hvp`: exact Hessian-vector product by forward-over-reverse
  (``jax.jvp`` of ``jax.grad``), about the cost of two to three gradients.
* :func:`gauss_newton_hvp`: ``J^T H_out J v`` with ``J`` the Jacobian of the
  model output and ``H_out`` the Hessian of the loss w.r.t. the logits
  (softmax cross-entropy: ``diag(p) - p p^T``). Always positive semi-definite.
* :func:`dataset_loss`, :func:`dataset_grad`, :func:`dataset_hvp`,
  :func:`dataset_gauss_newton_hvp`: sums over a data set, accumulated batch by
  batch in a ``lax.scan`` so memory does not grow with the data set.
* Operators (:func:`loss_hvp_operator`, :func:`dataset_hvp_operator`,
  :func:`gauss_newton_operator`, :func:`damped_operator`) are
  ``jax.tree_util.Partial`` objects: pytrees, so the params and data they close
  over go *through* ``jit`` as arguments instead of being baked into the
  compiled program as constants.

The solvers that consume these operators are in :mod:`famr_jax.theory.solvers`;
:mod:`famr_jax.theory.curvature` re-exports both.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp
from jax.tree_util import Partial

from famr_jax.errors import FamrError
from famr_jax.theory.pytrees import (ApplyFn, Batch, ExampleLoss, LossFn, Operator, OutputHVP,
                                     Params, float_dtype, tree_axpy)

__all__ = [
    'as_operator',
    'damped_operator',
    'dataset_gauss_newton_hvp',
    'dataset_grad',
    'dataset_hvp',
    'dataset_hvp_operator',
    'dataset_loss',
    'gauss_newton_hvp',
    'gauss_newton_operator',
    'hvp',
    'loss_hvp_operator',
    'output_hvp_from_loss',
    'softmax_output_hvp',
    'stack_batches',
    'validate_data',
]


# ----------------------------------------------------------------------------
# Hessian-vector products.


def hvp(loss_fn: LossFn, params: Params, v: Params) -> Params:
  """Exact Hessian-vector product ``H v`` of ``loss_fn`` at ``params``.

  Forward-over-reverse: ``jax.jvp(jax.grad(loss_fn), (params,), (v,))``. Works
  on any params pytree; ``v`` has the structure of ``params``.

  Args:
    loss_fn: ``loss_fn(params) -> scalar``.
    params: the point where the Hessian is taken.
    v: the direction.

  Returns:
    ``H v`` with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p: jnp.sum(p['w'] ** 3)
    >>> hvp(loss, {'w': jnp.array([1., 2.])}, {'w': jnp.array([1., 1.])})['w'].tolist()
    [6.0, 12.0]
  """
  return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def softmax_output_hvp(logits: jax.Array, u: jax.Array) -> jax.Array:
  """``(diag(p) - p p^T) u`` per example: the logit Hessian of softmax cross-entropy.

  It does not depend on the label, and it is positive semi-definite.

  Example:
    >>> import jax.numpy as jnp
    >>> softmax_output_hvp(jnp.zeros((1, 2)), jnp.array([[1., 0.]])).tolist()
    [[0.25, -0.25]]
  """
  p = jax.nn.softmax(logits, axis=-1)
  return p * u - p * jnp.sum(p * u, axis=-1, keepdims=True)


def output_hvp_from_loss(logit_loss: Callable[[jax.Array], jax.Array]) -> OutputHVP:
  """Builds ``output_hvp(logits, u)`` from any loss of the logits.

  Args:
    logit_loss: ``logit_loss(logits) -> [B]`` per-example losses (close over
      the labels if the loss needs them).

  Returns:
    ``output_hvp(logits, u) = d^2 sum(logit_loss) / d logits^2 . u``.

  Example:
    >>> import jax.numpy as jnp
    >>> sq = output_hvp_from_loss(lambda z: 0.5 * jnp.sum(z ** 2, axis=-1))
    >>> sq(jnp.zeros((1, 2)), jnp.array([[1., 2.]])).tolist()
    [[1.0, 2.0]]
  """
  def output_hvp(logits: jax.Array, u: jax.Array) -> jax.Array:
    return hvp(lambda z: jnp.sum(logit_loss(z)), logits, u)
  return output_hvp


def gauss_newton_hvp(apply_fn: ApplyFn, params: Params, x: jax.Array, v: Params,
                     output_hvp: OutputHVP = softmax_output_hvp) -> Params:
  """Gauss-Newton product ``J^T H_out J v`` for the summed loss over a batch.

  ``J`` is the Jacobian of ``apply_fn(params, x)`` w.r.t. params, ``H_out`` the
  Hessian of the loss w.r.t. the model output (default: softmax cross-entropy,
  ``diag(p) - p p^T``). One linearization of the model gives both ``J v``
  (forward) and ``J^T`` (its transpose).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: the point.
    x: a batch of inputs.
    v: the direction (structure of ``params``).
    output_hvp: ``output_hvp(logits, u) -> H_out u``.

  Returns:
    ``sum_i J_i^T H_out,i J_i v`` with the structure of ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda p, x: x @ p['w']
    >>> p = {'w': jnp.zeros((1, 2))}
    >>> gauss_newton_hvp(apply_fn, p, jnp.ones((1, 1)), {'w': jnp.array([[1., 0.]])})['w'].tolist()
    [[0.25, -0.25]]
  """
  logits, forward = jax.linearize(lambda p: apply_fn(p, x), params)
  transpose = jax.linear_transpose(forward, params)
  return transpose(output_hvp(logits, forward(v)).astype(logits.dtype))[0]


# ----------------------------------------------------------------------------
# Sums over a data set, batch by batch.


def stack_batches(data: Batch, batch_size: int) -> tuple[Batch, jax.Array]:
  """Reshapes ``[N, ...]`` leaves to ``[num_batches, batch_size, ...]`` plus a mask.

  The last batch is padded by repeating the last example (edge padding keeps
  every padded loss finite); the boolean mask excludes the padding.

  Raises:
    FamrError: no leaves, leaves without a common leading axis, an empty
      data set, or a ``batch_size`` that is not a positive integer.

  Example:
    >>> import jax.numpy as jnp
    >>> batches, mask = stack_batches(jnp.arange(3.), 2)
    >>> batches.tolist(), mask.tolist()
    ([[0.0, 1.0], [2.0, 2.0]], [[True, True], [True, False]])
  """
  leaves = jax.tree.leaves(data)
  if not leaves:
    raise FamrError('data pytree has no array leaves')
  sizes = {int(jnp.shape(a)[0]) if jnp.ndim(a) else -1 for a in leaves}
  if len(sizes) != 1 or -1 in sizes:
    raise FamrError(f'every data leaf needs the same leading (example) axis, got sizes {sorted(sizes)}')
  n = sizes.pop()
  if n == 0:
    raise FamrError('data set is empty')
  if not isinstance(batch_size, int) or batch_size < 1:
    raise FamrError(f'batch_size must be a positive integer, got {batch_size!r}')
  bs = min(batch_size, n)
  num_batches = -(-n // bs)
  pad = num_batches * bs - n

  def stack(a):
    a = jnp.asarray(a)
    if pad:
      a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)], axis=0)
    return a.reshape((num_batches, bs) + a.shape[1:])

  mask = (jnp.arange(num_batches * bs) < n).reshape(num_batches, bs)
  return jax.tree.map(stack, data), mask


def validate_data(data: Batch, batch_size: int) -> None:
  """Raises the one-line FamrError of ``stack_batches`` now, without computing anything.

  Example:
    >>> import jax.numpy as jnp
    >>> try:
    ...   validate_data((jnp.ones(3), jnp.ones(2)), 2)
    ... except FamrError as err:
    ...   print(err)
    every data leaf needs the same leading (example) axis, got sizes [2, 3]
  """
  jax.eval_shape(lambda d: stack_batches(d, batch_size), data)


def _accumulate(step, init, xs):
  """``lax.scan`` over batches; a single batch is called directly.

  A one-step scan still compiles to a while loop, which costs XLA noticeably
  more compile time inside the nested loops of CG, Lanczos and L-BFGS.
  """
  if jax.tree.leaves(xs)[0].shape[0] == 1:
    return step(init, jax.tree.map(lambda a: a[0], xs))
  return lax.scan(step, init, xs)


def _masked_batch_loss(example_loss: ExampleLoss, params: Params, batch: Batch,
                       mask: jax.Array, dtype) -> jax.Array:
  losses = example_loss(params, batch)
  if losses.shape != mask.shape:
    raise FamrError(
        f'example_loss must return one loss per example, shape {mask.shape}, got {losses.shape}')
  return jnp.sum(jnp.where(mask, losses, 0)).astype(dtype)


@functools.partial(jax.jit, static_argnames=('example_loss', 'batch_size'))
def dataset_loss(example_loss: ExampleLoss, params: Params, data: Batch, *,
                 batch_size: int = 256) -> jax.Array:
  """``sum_i l(params, z_i)`` over a data set, accumulated batch by batch.

  Args:
    example_loss: ``example_loss(params, batch) -> [B]`` per-example losses;
      ``batch`` has the structure of ``data`` with a leading axis of ``B``.
    params: the point.
    data: pytree of arrays with a common leading axis ``N`` (e.g. ``(x, y)``).
    batch_size: examples per scan step (memory does not grow with ``N``).

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p, b: (b * p['a']) ** 2
    >>> float(dataset_loss(loss, {'a': jnp.array(2.)}, jnp.arange(5.), batch_size=2))
    120.0
  """
  batches, mask = stack_batches(data, batch_size)
  dtype = float_dtype(params)

  def step(total, xs):
    batch, m = xs
    return total + _masked_batch_loss(example_loss, params, batch, m, dtype), None

  total, _ = _accumulate(step, jnp.zeros((), dtype), (batches, mask))
  return total


@functools.partial(jax.jit, static_argnames=('example_loss', 'batch_size'))
def dataset_grad(example_loss: ExampleLoss, params: Params, data: Batch, *,
                 batch_size: int = 256) -> Params:
  """Gradient of ``sum_i l(params, z_i)``, accumulated batch by batch.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p, b: (b * p['a']) ** 2
    >>> float(dataset_grad(loss, {'a': jnp.array(2.)}, jnp.arange(5.), batch_size=2)['a'])
    120.0
  """
  batches, mask = stack_batches(data, batch_size)
  dtype = float_dtype(params)

  def step(total, xs):
    batch, m = xs
    g = jax.grad(lambda p: _masked_batch_loss(example_loss, p, batch, m, dtype))(params)
    return jax.tree.map(jnp.add, total, g), None

  total, _ = _accumulate(step, jax.tree.map(jnp.zeros_like, params), (batches, mask))
  return total


@functools.partial(jax.jit, static_argnames=('example_loss', 'batch_size'))
def dataset_hvp(example_loss: ExampleLoss, params: Params, v: Params, data: Batch, *,
                batch_size: int = 256) -> Params:
  """Exact ``H v`` of ``sum_i l(params, z_i)``, accumulated batch by batch.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p, b: (b * p['a']) ** 2
    >>> p, v = {'a': jnp.array(2.)}, {'a': jnp.array(1.)}
    >>> float(dataset_hvp(loss, p, v, jnp.arange(5.), batch_size=2)['a'])  # 2 * sum b^2
    60.0
  """
  batches, mask = stack_batches(data, batch_size)
  dtype = float_dtype(params)

  def step(total, xs):
    batch, m = xs
    hv = hvp(lambda p: _masked_batch_loss(example_loss, p, batch, m, dtype), params, v)
    return jax.tree.map(jnp.add, total, hv), None

  total, _ = _accumulate(step, jax.tree.map(jnp.zeros_like, params), (batches, mask))
  return total


@functools.partial(jax.jit, static_argnames=('apply_fn', 'batch_size', 'output_hvp'))
def dataset_gauss_newton_hvp(apply_fn: ApplyFn, params: Params, v: Params, x: jax.Array, *,
                             batch_size: int = 256,
                             output_hvp: OutputHVP = softmax_output_hvp) -> Params:
  """``sum_i J_i^T H_out,i J_i v`` over a data set, batch by batch.

  Example:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda p, x: x @ p['w']
    >>> p, v = {'w': jnp.zeros((1, 2))}, {'w': jnp.array([[1., 0.]])}
    >>> dataset_gauss_newton_hvp(apply_fn, p, v, jnp.ones((3, 1)), batch_size=2)['w'].tolist()
    [[0.75, -0.75]]
  """
  batches, mask = stack_batches(x, batch_size)

  def step(total, xs):
    batch, m = xs
    def masked_hvp(logits, u):
      hu = output_hvp(logits, u)
      return jnp.where(m.reshape(m.shape + (1,) * (hu.ndim - 1)), hu, 0)
    gv = gauss_newton_hvp(apply_fn, params, batch, v, masked_hvp)
    return jax.tree.map(jnp.add, total, gv), None

  total, _ = _accumulate(step, jax.tree.map(jnp.zeros_like, params), (batches, mask))
  return total


# ----------------------------------------------------------------------------
# Operators: pytree-valued linear maps that can be passed through jit.


def as_operator(matvec: Operator) -> Partial:
  """Wraps a plain ``v -> A v`` function as a ``jax.tree_util.Partial``.

  Arrays a plain closure captures become compile-time constants; prefer the
  ``*_operator`` builders, which carry params and data as pytree leaves.

  Example:
    >>> import jax.numpy as jnp
    >>> op = as_operator(lambda v: 2 * v)
    >>> op(jnp.ones(2)).tolist()
    [2.0, 2.0]
  """
  return matvec if isinstance(matvec, Partial) else Partial(matvec)


@functools.lru_cache(maxsize=None)
def _loss_hvp_kernel(loss_fn: LossFn):
  return functools.partial(hvp, loss_fn)


def loss_hvp_operator(loss_fn: LossFn, params: Params) -> Partial:
  """The operator ``v -> H v`` of ``loss_fn`` at ``params``.

  Example:
    >>> import jax.numpy as jnp
    >>> op = loss_hvp_operator(lambda p: jnp.sum(p ** 2), jnp.ones(2))
    >>> op(jnp.array([1., 0.])).tolist()
    [2.0, 0.0]
  """
  return Partial(_loss_hvp_kernel(loss_fn), params)


@functools.lru_cache(maxsize=None)
def _dataset_hvp_kernel(example_loss: ExampleLoss, batch_size: int):
  def kernel(params, data, weight_decay, v):
    hv = dataset_hvp(example_loss, params, v, data, batch_size=batch_size)
    return tree_axpy(weight_decay, v, hv)
  return kernel


def dataset_hvp_operator(example_loss: ExampleLoss, params: Params, data: Batch, *,
                         batch_size: int = 256, weight_decay: float = 0.0) -> Partial:
  """``v -> (sum_i Hess l(params, z_i) + weight_decay I) v`` over a data set.

  ``weight_decay`` is the curvature of an L2 term ``weight_decay/2 ||params||^2``
  in the training objective.

  Example:
    >>> import jax.numpy as jnp
    >>> loss = lambda p, b: (b * p['a']) ** 2
    >>> op = dataset_hvp_operator(loss, {'a': jnp.array(2.)}, jnp.arange(5.), weight_decay=1.)
    >>> float(op({'a': jnp.array(1.)})['a'])
    61.0
  """
  validate_data(data, batch_size)
  return Partial(_dataset_hvp_kernel(example_loss, batch_size), params, data,
                 jnp.asarray(weight_decay, float_dtype(params)))


@functools.lru_cache(maxsize=None)
def _gauss_newton_kernel(apply_fn: ApplyFn, batch_size: int, output_hvp: OutputHVP):
  def kernel(params, x, weight_decay, v):
    gv = dataset_gauss_newton_hvp(apply_fn, params, v, x, batch_size=batch_size,
                                  output_hvp=output_hvp)
    return tree_axpy(weight_decay, v, gv)
  return kernel


def gauss_newton_operator(apply_fn: ApplyFn, params: Params, x: jax.Array, *,
                          batch_size: int = 256, weight_decay: float = 0.0,
                          output_hvp: OutputHVP = softmax_output_hvp) -> Partial:
  """``v -> (sum_i J_i^T H_out,i J_i + weight_decay I) v`` over inputs ``x``.

  Positive semi-definite (definite with ``weight_decay > 0``), so CG always
  converges on it, unlike on an indefinite exact Hessian.

  Example:
    >>> import jax.numpy as jnp
    >>> op = gauss_newton_operator(lambda p, x: x @ p, jnp.zeros((1, 2)), jnp.ones((3, 1)))
    >>> op(jnp.array([[1., 0.]])).tolist()
    [[0.75, -0.75]]
  """
  validate_data(x, batch_size)
  return Partial(_gauss_newton_kernel(apply_fn, batch_size, output_hvp), params, x,
                 jnp.asarray(weight_decay, float_dtype(params)))


def _damped_kernel(operator, damping, v):
  return tree_axpy(damping, v, operator(v))


def damped_operator(operator: Operator, damping: float) -> Partial:
  """``v -> A v + damping * v``.

  Example:
    >>> import jax.numpy as jnp
    >>> damped_operator(lambda v: 2 * v, 0.5)(jnp.ones(1)).tolist()
    [2.5]
  """
  return Partial(_damped_kernel, as_operator(operator), jnp.asarray(damping))

