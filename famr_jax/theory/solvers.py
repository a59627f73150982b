"""Solvers on curvature operators: dense matrices, Lanczos and conjugate gradients.

* :func:`dense_operator` / :func:`dense_hessian`: the dense matrix of an
  operator by mapping it over the standard basis; refused (with the size it
  would take) above ``max_params``. No dense Hessian is built unless asked for.
* :func:`lanczos_extreme_eigenvalues`: ``lambda_min`` and ``lambda_max`` with
  HVPs only (Lanczos with full re-orthogonalization).
* :func:`conjugate_gradient` (jit-compiled core with typed diagnostics) and
  :func:`cg_solve` (the user-facing wrapper that raises :class:`FamrError`
  when CG meets non-positive curvature or does not converge);
  :func:`dense_solve` for small models.

The operators come from :mod:`famr_jax.theory.hvp`; all solvers follow the
dtype of the params and never flip x64.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.tree_util import Partial
import numpy as np

from famr_jax.errors import FamrError
from famr_jax.theory.hvp import as_operator, damped_operator, loss_hvp_operator
from famr_jax.theory.pytrees import (LossFn, Operator, Params, float_dtype, tree_axpy, tree_norm,
                                     tree_size, tree_vdot, tree_where)

DEFAULT_MAX_DENSE_PARAMS = 20_000

__all__ = [
    'CGInfo',
    'DEFAULT_MAX_DENSE_PARAMS',
    'LanczosResult',
    'cg_solve',
    'conjugate_gradient',
    'dense_hessian',
    'dense_operator',
    'dense_solve',
    'lanczos_extreme_eigenvalues',
]


# ----------------------------------------------------------------------------
# Dense matrices (small models only).


def _check_dense_size(num_params: int, max_params: int, dtype, what: str = 'Hessian') -> None:
  if num_params > max_params:
    nbytes = num_params * num_params * jnp.dtype(dtype).itemsize
    raise FamrError(
        f'refusing a dense {num_params}x{num_params} {what}: it would take {nbytes:,} bytes '
        f'({nbytes / 2**30:.2f} GiB), above max_params={max_params}; use '
        'lanczos_extreme_eigenvalues or cg_solve, which need only HVPs')


@functools.partial(jax.jit, static_argnames=('chunk_size',))
def _dense_operator_jit(operator: Partial, like: Params, chunk_size: int) -> jax.Array:
  flat, unravel = ravel_pytree(like)
  def column(e):
    return ravel_pytree(operator(unravel(e)))[0].astype(flat.dtype)
  # Row i of `rows` is A e_i, i.e. column i of A.
  rows = lax.map(column, jnp.eye(flat.size, dtype=flat.dtype), batch_size=chunk_size)
  return rows.T


def dense_operator(operator: Operator, like: Params, *,
                   max_params: int = DEFAULT_MAX_DENSE_PARAMS,
                   chunk_size: int = 64) -> jax.Array:
  """The dense ``[P, P]`` matrix of a linear operator on pytrees like ``like``.

  Built by mapping the operator over the standard basis (``chunk_size``
  columns at a time, vmapped), in the dtype of ``like``. Coordinates are
  those of ``jax.flatten_util.ravel_pytree(like)``.

  Args:
    operator: ``v -> A v`` on pytrees (a plain function or a ``Partial``).
    like: a pytree with the structure, shapes and dtype of ``v``.
    max_params: refuse (FamrError, with the size in bytes) above this ``P``.
    chunk_size: basis vectors per vmapped chunk.

  Raises:
    FamrError: if ``P > max_params``.

  Example:
    >>> import jax.numpy as jnp
    >>> dense_operator(lambda v: {'w': 3 * v['w']}, {'w': jnp.zeros(2)}).tolist()
    [[3.0, 0.0], [0.0, 3.0]]
  """
  flat, _ = ravel_pytree(like)
  _check_dense_size(int(flat.size), max_params, flat.dtype, 'matrix')
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise FamrError(f'chunk_size must be a positive integer, got {chunk_size!r}')
  return _dense_operator_jit(as_operator(operator), like, min(chunk_size, int(flat.size)))


def dense_hessian(loss_fn: LossFn, params: Params, *,
                  max_params: int = DEFAULT_MAX_DENSE_PARAMS,
                  chunk_size: int = 64) -> jax.Array:
  """Dense Hessian of ``loss_fn`` at ``params`` by HVPs over a basis.

  Coordinates are those of ``ravel_pytree(params)``. In float64 when x64 is
  enabled and params are float64.

  Raises:
    FamrError: above ``max_params`` parameters, stating the size in bytes.

  Example:
    >>> import jax.numpy as jnp
    >>> dense_hessian(lambda p: p[0] * p[1], jnp.ones(2)).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
  """
  flat, _ = ravel_pytree(params)
  _check_dense_size(int(flat.size), max_params, flat.dtype)
  return dense_operator(loss_hvp_operator(loss_fn, params), params,
                        max_params=max_params, chunk_size=chunk_size)


def dense_solve(matrix: jax.Array, b: Params, *, damping: float = 0.0,
                rtol: float | None = None) -> Params:
  """Solves ``(A + damping I) x = b`` for a symmetric positive definite dense ``A``.

  Uses ``eigh`` (of the symmetric part, NumPy, float64, on the host) so an
  indefinite or singular matrix is detected and reported instead of
  returning garbage. Not traceable (it raises on the host).

  Args:
    matrix: ``[P, P]`` symmetric matrix (e.g. from :func:`dense_hessian`).
    b: right-hand side, a flat vector or a pytree of ``P`` numbers in
      ``ravel_pytree`` order; the result has the same structure.
    damping: ``>= 0`` added to the diagonal.
    rtol: the smallest eigenvalue of ``A + damping I`` must exceed
      ``rtol * largest |eigenvalue|`` (default ``P * eps`` of the dtype).

  Raises:
    FamrError: negative damping, a shape mismatch, or a matrix that is not
      positive definite.

  Example:
    >>> import jax.numpy as jnp
    >>> dense_solve(jnp.array([[2., 0.], [0., 4.]]), jnp.array([2., 2.])).tolist()
    [1.0, 0.5]
  """
  _check_damping(damping, allow_zero=True)
  flat_b, unravel = ravel_pytree(b)
  matrix = jnp.asarray(matrix)
  p = int(flat_b.size)
  if matrix.shape != (p, p):
    raise FamrError(f'matrix shape {matrix.shape} does not match a right-hand side of {p} numbers')
  dtype = jnp.result_type(matrix.dtype, flat_b.dtype)
  # Host LAPACK in float64: XLA's CPU eigh is several times slower, and the
  # solve is a one-off that has to be checked on the host anyway.
  m = np.asarray(matrix, np.float64)
  evals, evecs = np.linalg.eigh(0.5 * (m + m.T))
  shifted = evals + float(damping)
  scale = float(np.max(np.abs(shifted)))
  tol = (p * float(jnp.finfo(dtype).eps)) if rtol is None else rtol
  lowest = float(shifted[0])
  if not lowest > tol * scale:
    raise FamrError(
        f'(H + {damping:g} I) is not positive definite: smallest eigenvalue {lowest:.3e}, '
        f'largest {float(shifted[-1]):.3e}; add damping or use a Gauss-Newton matrix')
  x = evecs @ ((evecs.T @ np.asarray(flat_b, np.float64)) / shifted)
  return unravel(jnp.asarray(x, dtype))


# ----------------------------------------------------------------------------
# Lanczos.


class LanczosResult(NamedTuple):
  """Extreme eigenvalues of a symmetric operator from a Lanczos run."""
  lambda_min: float         # smallest Ritz value (an upper bound on the true lambda_min)
  lambda_max: float         # largest Ritz value (a lower bound on the true lambda_max)
  ritz_values: np.ndarray   # all Ritz values, ascending (float64)
  num_iters: int            # Krylov dimension used


@functools.partial(jax.jit, static_argnames=('num_iters',))
def _lanczos_jit(operator: Partial, like: Params, key: jax.Array, num_iters: int):
  """Returns the Lanczos tridiagonal ``(alphas [k], betas [k - 1])``.

  The Krylov basis is kept as one ``[k + 1, P]`` array (the operator itself
  still acts on pytrees): a pytree basis compiles twice as slowly for no gain.
  """
  flat, unravel = ravel_pytree(like)
  dtype = flat.dtype
  eps = jnp.finfo(dtype).eps
  k = num_iters
  key_start, key_restart = jax.random.split(key)
  v0 = jax.random.normal(key_start, flat.shape, dtype)
  restart = jax.random.normal(key_restart, flat.shape, dtype)
  basis = jnp.zeros((k + 1, flat.size), dtype).at[0].set(v0 / jnp.linalg.norm(v0))

  def project_out(basis, w):
    # Classical Gram-Schmidt against every stored vector, twice ("twice is
    # enough"): full re-orthogonalization keeps the Ritz values free of ghosts.
    for _ in range(2):
      w = w - basis.T @ (basis @ w)
    return w

  def body(i, state):
    basis, alphas, betas = state
    v = basis[i]
    w = ravel_pytree(operator(unravel(v)))[0].astype(dtype)
    alpha = jnp.vdot(w, v)
    w = project_out(basis, w)
    beta = jnp.linalg.norm(w)
    scale = jnp.abs(alpha) + jnp.where(i > 0, betas[jnp.maximum(i - 1, 0)], 0) + 1e-30
    # Breakdown: the Krylov space is invariant. Continue with a new vector
    # orthogonal to the basis, coupled by beta = 0 (exact). The new vector is
    # a fixed random vector scrambled by sin (a PRNG call in the loop would
    # cost seconds of compile time).
    breakdown = beta <= 100 * eps * scale
    fresh = project_out(basis, jnp.sin((i + 1) * 997.0 * restart + i))
    nxt = jnp.where(breakdown, fresh / jnp.linalg.norm(fresh),
                    w / jnp.where(breakdown, 1.0, beta))
    return (basis.at[i + 1].set(nxt), alphas.at[i].set(alpha),
            betas.at[i].set(jnp.where(breakdown, 0.0, beta)))

  _, alphas, betas = lax.fori_loop(
      0, k, body, (basis, jnp.zeros((k,), dtype), jnp.zeros((k,), dtype)))
  return alphas, betas[:-1]


def lanczos_extreme_eigenvalues(operator: Operator, like: Params, key: jax.Array, *,
                                num_iters: int = 40) -> LanczosResult:
  """Extreme eigenvalues of a symmetric operator by Lanczos (HVPs only).

  Full re-orthogonalization (memory ``num_iters`` vectors of size ``P``),
  fixed iteration count, jit-compiled. ``num_iters`` is capped at ``P``,
  where the Ritz values are the exact eigenvalues. The smallest Ritz value
  approaches ``lambda_min`` from above, the largest ``lambda_max`` from below;
  both converge fastest for well separated extremes.

  Args:
    operator: ``v -> A v`` (e.g. :func:`dataset_hvp_operator`).
    like: pytree with the structure, shapes and dtype of ``v``.
    key: PRNG key of the random start vector.
    num_iters: Krylov dimension.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> op = lambda v: jnp.array([1., 2., 5.]) * v
    >>> r = lanczos_extreme_eigenvalues(op, jnp.zeros(3), jax.random.key(0), num_iters=3)
    >>> round(float(r.lambda_min), 4), round(float(r.lambda_max), 4)
    (1.0, 5.0)
  """
  if not isinstance(num_iters, int) or num_iters < 1:
    raise FamrError(f'num_iters must be a positive integer, got {num_iters!r}')
  k = min(num_iters, tree_size(like))
  alphas, betas = _lanczos_jit(as_operator(operator), like, key, k)
  # The k x k tridiagonal eigenproblem is tiny: solve it on the host in float64.
  tridiag = (np.diag(np.asarray(alphas, np.float64)) + np.diag(np.asarray(betas, np.float64), 1)
             + np.diag(np.asarray(betas, np.float64), -1))
  ritz = np.linalg.eigvalsh(tridiag)
  return LanczosResult(float(ritz[0]), float(ritz[-1]), ritz, k)


# ----------------------------------------------------------------------------
# Conjugate gradients.


class CGInfo(NamedTuple):
  """Diagnostics of a conjugate-gradient solve."""
  iterations: jax.Array          # CG steps taken
  residual_norm: jax.Array       # ||b - A x|| recomputed at the end (not the recursion's)
  converged: jax.Array           # the recursive residual reached the tolerance
  negative_curvature: jax.Array  # some direction had p^T A p <= 0: A is not positive definite
  min_curvature: jax.Array       # smallest p^T A p / p^T p seen (a Rayleigh quotient)


@functools.partial(jax.jit, static_argnames=('maxiter',))
def _cg_jit(operator: Partial, b: Params, x0: Params, tol: jax.Array, atol: jax.Array,
            maxiter: int):
  dtype = float_dtype(b)
  threshold = jnp.maximum(tol * tree_norm(b), atol)
  r0 = jax.tree.map(jnp.subtract, b, operator(x0))
  rs0 = tree_vdot(r0, r0)

  def cond(state):
    _, _, _, rs, it, neg, _ = state
    return (it < maxiter) & (jnp.sqrt(rs) > threshold) & ~neg

  def body(state):
    x, r, p, rs, it, neg, min_curv = state
    ap = operator(p)
    pap = tree_vdot(p, ap)
    bad = pap <= 0
    min_curv = jnp.minimum(min_curv, pap / tree_vdot(p, p))
    alpha = rs / jnp.where(bad, 1.0, pap)
    x_new = tree_axpy(alpha, p, x)
    r_new = tree_axpy(-alpha, ap, r)
    rs_new = tree_vdot(r_new, r_new)
    p_new = tree_axpy(rs_new / rs, p, r_new)
    # On non-positive curvature keep the last good iterate and stop.
    return (tree_where(bad, x, x_new), tree_where(bad, r, r_new), tree_where(bad, p, p_new),
            jnp.where(bad, rs, rs_new), it + jnp.where(bad, 0, 1), bad, min_curv)

  state = (x0, r0, r0, rs0, jnp.zeros((), jnp.int32), jnp.zeros((), bool),
           jnp.asarray(jnp.inf, dtype))
  x, _, _, rs, it, neg, min_curv = lax.while_loop(cond, body, state)
  true_res = tree_norm(jax.tree.map(jnp.subtract, b, operator(x)))
  converged = (jnp.sqrt(rs) <= threshold) & ~neg
  return x, CGInfo(it, true_res, converged, neg, min_curv)


def conjugate_gradient(operator: Operator, b: Params, *, x0: Params | None = None,
                       tol: float = 1e-10, atol: float = 0.0,
                       maxiter: int | None = None) -> tuple[Params, CGInfo]:
  """Matrix-free conjugate gradients for ``A x = b``; never raises on the result.

  The jit-compiled core (``lax.while_loop``). It stops when the recursive
  residual is ``<= max(tol ||b||, atol)``, after ``maxiter`` steps, or at the
  first direction with ``p^T A p <= 0`` (``A`` not positive definite), and
  reports which in :class:`CGInfo`. Use :func:`cg_solve` to have failures
  raised instead.

  Args:
    operator: symmetric ``v -> A v`` on pytrees like ``b``.
    b: right-hand side pytree.
    x0: start (default zeros).
    tol: relative tolerance on the residual.
    atol: absolute tolerance on the residual.
    maxiter: step limit (default ``min(2 P + 10, 10000)``).

  Returns:
    ``(x, info)``.

  Example:
    >>> import jax.numpy as jnp
    >>> x, info = conjugate_gradient(lambda v: jnp.array([2., 4.]) * v, jnp.array([2., 2.]))
    >>> x.tolist(), bool(info.converged)
    ([1.0, 0.5], True)
  """
  if maxiter is None:
    maxiter = min(2 * tree_size(b) + 10, 10_000)
  if not isinstance(maxiter, int) or maxiter < 1:
    raise FamrError(f'maxiter must be a positive integer, got {maxiter!r}')
  if not (tol >= 0 and atol >= 0 and math.isfinite(tol) and math.isfinite(atol)):
    raise FamrError(f'tol and atol must be finite and >= 0, got tol={tol!r}, atol={atol!r}')
  if x0 is None:
    x0 = jax.tree.map(jnp.zeros_like, b)
  dtype = float_dtype(b)
  return _cg_jit(as_operator(operator), b, x0, jnp.asarray(tol, dtype),
                 jnp.asarray(atol, dtype), maxiter)


def _check_damping(damping: float, *, allow_zero: bool) -> None:
  try:
    value = float(damping)
  except (TypeError, ValueError):
    raise FamrError(f'damping lambda must be a number, got {damping!r}') from None
  if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
    need = '>= 0' if allow_zero else '> 0'
    raise FamrError(f'damping lambda must be finite and {need}, got {damping!r}')


def cg_solve(operator: Operator, b: Params, *, damping: float = 0.0, tol: float = 1e-10,
             atol: float = 0.0, maxiter: int | None = None,
             x0: Params | None = None) -> tuple[Params, CGInfo]:
  """Solves ``(A + damping I) x = b`` by CG, raising instead of returning garbage.

  Args:
    operator: symmetric ``v -> A v`` (e.g. a Hessian operator).
    b: right-hand side pytree.
    damping: ``>= 0`` added to the diagonal.
    tol, atol, maxiter, x0: as in :func:`conjugate_gradient`.

  Returns:
    ``(x, info)`` of a converged solve.

  Raises:
    FamrError: negative damping; CG met a direction with ``p^T A p <= 0``
      (the damped operator is not positive definite: indefinite or singular);
      or CG did not reach the tolerance in ``maxiter`` steps.

  Example:
    >>> import jax.numpy as jnp
    >>> x, _ = cg_solve(lambda v: jnp.array([1., 3.]) * v, jnp.array([2., 2.]), damping=1.)
    >>> x.tolist()
    [1.0, 0.5]
  """
  _check_damping(damping, allow_zero=True)
  op = damped_operator(operator, damping) if damping else as_operator(operator)
  x, info = conjugate_gradient(op, b, x0=x0, tol=tol, atol=atol, maxiter=maxiter)
  if bool(info.negative_curvature):
    raise FamrError(
        f'conjugate gradients met non-positive curvature p^T A p / p^T p = '
        f'{float(info.min_curvature):.3e} after {int(info.iterations)} steps: (H + {damping:g} I) '
        'is not positive definite; add damping or use a Gauss-Newton operator')
  if not bool(info.converged):
    raise FamrError(
        f'conjugate gradients did not converge in {int(info.iterations)} steps: residual '
        f'{float(info.residual_norm):.3e} > tol {tol:g} * ||b|| {float(tree_norm(b)):.3e} '
        '(ill-conditioned or singular system; raise maxiter or add damping)')
  return x, info
