"""Progress bars for loops that take more than a few seconds."""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


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
  return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False,
              dynamic_ncols=True)
