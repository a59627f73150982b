"""Pytree arithmetic and the type aliases shared by :mod:`famr_jax.theory`.

Every curvature routine treats a params pytree as one flat vector; these are
the vector operations it needs, leaf by leaf, without flattening.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.errors import FamrError

Params = Any
Batch = Any
LossFn = Callable[[Params], jax.Array]
ExampleLoss = Callable[[Params, Batch], jax.Array]
ApplyFn = Callable[[Params, jax.Array], jax.Array]
OutputHVP = Callable[[jax.Array, jax.Array], jax.Array]
Operator = Callable[[Params], Params]

__all__ = [
    'float_dtype',
    'tree_axpy',
    'tree_norm',
    'tree_size',
    'tree_vdot',
    'tree_where',
]


def tree_vdot(a: Params, b: Params) -> jax.Array:
  """Inner product ``<a, b>`` of two pytrees of the same structure.

  Example:
    >>> import jax.numpy as jnp
    >>> float(tree_vdot({'w': jnp.array([1., 2.])}, {'w': jnp.array([3., 4.])}))
    11.0
  """
  parts = [jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  return functools.reduce(jnp.add, parts)


def tree_norm(a: Params) -> jax.Array:
  """Euclidean norm of a pytree, as if it were one flat vector.

  Example:
    >>> import jax.numpy as jnp
    >>> float(tree_norm({'w': jnp.array([3., 4.])}))
    5.0
  """
  return jnp.sqrt(tree_vdot(a, a))


def tree_axpy(alpha: jax.Array, x: Params, y: Params) -> Params:
  """``alpha * x + y`` leaf by leaf, in the dtype of ``y``.

  Example:
    >>> import jax.numpy as jnp
    >>> tree_axpy(2.0, {'w': jnp.array([1., 2.])}, {'w': jnp.array([1., 1.])})['w'].tolist()
    [3.0, 5.0]
  """
  return jax.tree.map(lambda xi, yi: (alpha * xi + yi).astype(yi.dtype), x, y)


def tree_where(pred: jax.Array, a: Params, b: Params) -> Params:
  """``a`` where the scalar ``pred`` holds, else ``b``, leaf by leaf (traceable).

  Example:
    >>> import jax.numpy as jnp
    >>> tree_where(jnp.array(False), {'w': jnp.ones(2)}, {'w': jnp.zeros(2)})['w'].tolist()
    [0.0, 0.0]
  """
  return jax.tree.map(lambda ai, bi: jnp.where(pred, ai, bi), a, b)


def float_dtype(tree: Params) -> jnp.dtype:
  """The common (promoted) dtype of a pytree's leaves.

  Raises:
    FamrError: the pytree has no leaves.

  Example:
    >>> import jax.numpy as jnp
    >>> float_dtype({'w': jnp.ones(2, jnp.float32), 'b': jnp.ones(1, jnp.bfloat16)})
    dtype('float32')
  """
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise FamrError('params pytree has no array leaves')
  return jnp.result_type(*[jnp.asarray(x).dtype for x in leaves])


def tree_size(tree: Params) -> int:
  """The number of scalars in a pytree (``P`` of a params pytree).

  Example:
    >>> import jax.numpy as jnp
    >>> tree_size({'w': jnp.ones((2, 3)), 'b': jnp.ones(3)})
    9
  """
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))
