"""Loop forms of the engine: a Python loop of jitted steps or one ``lax.scan`` per segment.

``loop="auto"`` means steps on CPU and scan on GPU/TPU (measured: ``experiments/bench_engine.py``),
unless :func:`set_loop_form` or :func:`loop_form` says otherwise.
"""

from __future__ import annotations

import contextlib

import jax

from famr_jax.errors import FamrError

__all__ = ["LOOPS", "loop_form", "resolve_loop", "set_loop_form"]

LOOPS = ("auto", "steps", "scan")
_DEFAULT_LOOP = ["auto"]   # what "auto" means; set by loop_form / set_loop_form


def set_loop_form(loop: str) -> None:
  """Sets what ``loop="auto"`` means for every later descent (``"auto"`` restores the per-backend choice).

  Example:
    >>> set_loop_form("scan"); resolve_loop("auto")
    'scan'
    >>> set_loop_form("auto")
  """
  if loop not in LOOPS:
    raise FamrError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}")
  _DEFAULT_LOOP[0] = loop


@contextlib.contextmanager
def loop_form(loop: str):
  """Within the block, ``loop="auto"`` means ``loop`` (benchmarks, tests).

  Example:
    >>> with loop_form("steps"):
    ...   resolve_loop("auto")
    'steps'
  """
  previous = _DEFAULT_LOOP[0]
  set_loop_form(loop)
  try:
    yield
  finally:
    _DEFAULT_LOOP[0] = previous


def resolve_loop(loop: str) -> str:
  """``"steps"`` or ``"scan"`` for ``loop`` on the default backend (see the module doc).

  Example:
    >>> resolve_loop("scan")
    'scan'
  """
  if loop not in LOOPS:
    raise FamrError(f"loop must be one of {', '.join(LOOPS)}, got {loop!r}")
  if loop == "auto":
    loop = _DEFAULT_LOOP[0]
  if loop != "auto":
    return loop
  return "steps" if jax.default_backend() == "cpu" else "scan"
