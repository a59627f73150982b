"""Exact curvature of a loss on any params pytree: HVPs, Gauss-Newton, Lanczos, CG.

Everything here takes plain functions and pytrees, never a model class:

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
* :func:`dense_operator` / :func:`dense_hessian`: the dense matrix of an
  operator by mapping it over the standard basis; refused (with the size it
  would take) above ``max_params``. No dense Hessian is built unless asked for.
* :func:`lanczos_extreme_eigenvalues`: ``lambda_min`` and ``lambda_max`` with
  HVPs only (Lanczos with full re-orthogonalization).
* :func:`conjugate_gradient` (jit-compiled core with typed diagnostics) and
  :func:`cg_solve` (the user-facing wrapper that raises :class:`FamrError`
  when CG meets non-positive curvature or does not converge);
  :func:`dense_solve` for small models.

The code lives in :mod:`famr_jax.theory.pytrees` (pytree arithmetic),
:mod:`famr_jax.theory.hvp` (products, data-set sums, operators) and
:mod:`famr_jax.theory.solvers` (dense, Lanczos, CG); this module is their
single import point.

Precision: all functions follow the dtype of the params. For float64 enable
x64 in the *caller's* scope (``with jax.enable_x64(True): ...``); this module
never flips it.
"""

from famr_jax.theory.hvp import (as_operator, damped_operator, dataset_gauss_newton_hvp, dataset_grad,
                                 dataset_hvp, dataset_hvp_operator, dataset_loss, gauss_newton_hvp,
                                 gauss_newton_operator, hvp, loss_hvp_operator, output_hvp_from_loss,
                                 softmax_output_hvp)
from famr_jax.theory import pytrees
from famr_jax.theory.pytrees import tree_norm, tree_vdot
from famr_jax.theory.solvers import (CGInfo, DEFAULT_MAX_DENSE_PARAMS, LanczosResult, cg_solve,
                                     conjugate_gradient, dense_hessian, dense_operator, dense_solve,
                                     lanczos_extreme_eigenvalues)

# Type aliases, re-exported for annotations (influence and user code).
Params = pytrees.Params
Batch = pytrees.Batch
LossFn = pytrees.LossFn
ExampleLoss = pytrees.ExampleLoss
ApplyFn = pytrees.ApplyFn
OutputHVP = pytrees.OutputHVP
Operator = pytrees.Operator

__all__ = [
    'CGInfo',
    'DEFAULT_MAX_DENSE_PARAMS',
    'LanczosResult',
    'as_operator',
    'cg_solve',
    'conjugate_gradient',
    'damped_operator',
    'dataset_gauss_newton_hvp',
    'dataset_grad',
    'dataset_hvp',
    'dataset_hvp_operator',
    'dataset_loss',
    'dense_hessian',
    'dense_operator',
    'dense_solve',
    'gauss_newton_hvp',
    'gauss_newton_operator',
    'hvp',
    'lanczos_extreme_eigenvalues',
    'loss_hvp_operator',
    'output_hvp_from_loss',
    'softmax_output_hvp',
    'tree_norm',
    'tree_vdot',
]

