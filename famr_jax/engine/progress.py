"""Progress bars for loops that take more than a few seconds."""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

_METHOD: contextvars.ContextVar[str | None] = contextvars.ContextVar("famr_jax_progress_method", default=None)


@contextlib.contextmanager
def method_label(name: str) -> Iterator[None]:
  """Inside this block every progress bar names the method that runs (``famr-plus: FAMR variant``).

  Example:
    >>> with method_label("famr-plus"):
    ...   bar_label("FAMR variant")
    'famr-plus'
    >>> bar_label("FAMR variant")
    'FAMR variant'
  """
  token = _METHOD.set(name)
  try:
    yield
  finally:
    _METHOD.reset(token)


def bar_label(desc: str) -> str:
  """A bar's label: the running method's name (:func:`method_label`) where one is set, else ``desc``."""
  return _METHOD.get() or desc


def progress(iterable: Iterable[T], *, desc: str, enabled: bool = True,
             total: int | None = None) -> Iterable[T]:
  """Wraps ``iterable`` in a tqdm bar on stderr.

  Disabled when ``enabled`` is False or ``FAMR_JAX_NO_PROGRESS=1``, so tests
  and notebooks can silence it.

  Example:
    >>> list(progress(range(3), desc="demo", enabled=False))
    [0, 1, 2]
  """
  if not enabled or os.environ.get("FAMR_JAX_NO_PROGRESS") == "1":
    return iterable
  from tqdm.auto import tqdm
  return tqdm(iterable, desc=bar_label(desc), total=total, file=sys.stderr, leave=False,
              dynamic_ncols=True)
