"""Settings read when a function is traced: which formulation an ``"auto"`` convolution takes.

The engine's scan and the impressions' scan ask for the loop-friendly
convolution with :func:`in_loop_body`; :class:`famr_jax.models.layers.Conv`
reads the setting when it is traced. It lives here, below both, so that the
engine imports no model code and the models import no engine code.

XLA:CPU runs a convolution's backward pass several times slower inside a
``lax.scan`` than in a lone jitted step, and the im2col matmul has no such
penalty (``experiments/bench_engine.py``); elsewhere ``lax.conv`` (cuDNN on
GPUs) is the fast one.

Example:
  >>> with conv_formulation('im2col'):
  ...   resolve_formulation('auto')
  'im2col'
  >>> resolve_formulation('auto')
  'lax'
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
from typing import Any, Literal

import jax

from famr_jax.errors import FamrError

Formulation = Literal['auto', 'im2col', 'lax', 'measured']
FORMULATIONS: tuple[str, ...] = ('auto', 'im2col', 'lax', 'measured')

# What "auto" means when set (by conv_formulation / set_conv_formulation);
# None: decided by the backend.
_AUTO_OVERRIDE: str | None = None


def _check_formulation(formulation: Any) -> str:
  if formulation not in FORMULATIONS:
    raise FamrError(
        f'unknown conv formulation {formulation!r}; valid: {", ".join(FORMULATIONS)}'
    )
  return formulation


def set_conv_formulation(formulation: Formulation) -> str | None:
  """Sets what ``"auto"`` resolves to for every ``Conv`` traced from now on.

  ``"auto"`` restores the per-backend choice. Modules built with an explicit
  ``formulation`` are not affected.

  Args:
    formulation: ``"auto"``, ``"im2col"`` or ``"lax"``.

  Returns:
    The previous setting (``None`` for the per-backend choice), to restore it.

  Raises:
    FamrError: an unknown formulation.

  Example:
    >>> previous = set_conv_formulation('lax')
    >>> resolve_formulation('auto')
    'lax'
    >>> _ = set_conv_formulation(previous or 'auto')
  """
  global _AUTO_OVERRIDE
  _check_formulation(formulation)
  previous = _AUTO_OVERRIDE
  _AUTO_OVERRIDE = None if formulation == 'auto' else formulation
  return previous


@contextlib.contextmanager
def conv_formulation(formulation: Formulation) -> Iterator[None]:
  """Context manager: ``"auto"`` convolutions use ``formulation`` inside it.

  Only tracing inside the block is affected (see the module docstring): jit
  the function to compare inside the block.

  Raises:
    FamrError: an unknown formulation.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from famr_jax.models.layers import Conv
    >>> conv = Conv(4, (3, 3), padding='SAME')
    >>> x = jnp.ones((1, 6, 6, 2))
    >>> params = conv.init(jax.random.key(0), x)
    >>> with conv_formulation('lax'):
    ...   y_lax = jax.jit(conv.apply)(params, x)
    >>> with conv_formulation('im2col'):
    ...   y_col = jax.jit(conv.apply)(params, x)
    >>> bool(jnp.allclose(y_lax, y_col, atol=1e-5))
    True
  """
  previous = set_conv_formulation(formulation)
  try:
    yield
  finally:
    set_conv_formulation(previous or 'auto')


def formulation_is_set() -> bool:
  """Whether a :func:`conv_formulation` (or :func:`set_conv_formulation`) setting is in force.

  Example:
    >>> formulation_is_set()
    False
  """
  return _AUTO_OVERRIDE is not None


def resolve_formulation(formulation: Formulation = 'auto') -> str:
  """The concrete formulation (``"im2col"`` or ``"lax"``) for ``formulation`` now.

  Example:
    >>> resolve_formulation('lax')
    'lax'
  """
  _check_formulation(formulation)
  if formulation != 'auto':
    return formulation
  if _AUTO_OVERRIDE is not None:
    return _AUTO_OVERRIDE
  # lax.conv (cuDNN on GPUs) everywhere by default; code that traces a convolution's backward pass
  # inside a loop body on XLA:CPU, where it is slow, asks for im2col with `in_loop_body`.
  return 'lax'


@contextlib.contextmanager
def in_loop_body() -> Iterator[None]:
  """Within the block, ``"auto"`` convolutions traced on XLA:CPU use im2col (a no-op elsewhere).

  For code that traces a convolution's backward pass inside a ``lax.scan`` or
  loop body, which XLA:CPU runs several times slower than the same step
  alone; the im2col matmul has no such penalty (``experiments/bench_engine.py``).
  An explicit :func:`conv_formulation` setting wins.

  Example:
    >>> with in_loop_body():
    ...   resolve_formulation('auto') == ('im2col' if jax.default_backend() == 'cpu' else 'lax')
    True
  """
  if _AUTO_OVERRIDE is not None or jax.default_backend() != 'cpu':
    yield
    return
  with conv_formulation('im2col'):
    yield
