"""Writing outputs without losing anything: a staging directory published by one rename.

A run writes into ``.NAME.staging-XXXX`` beside its output and renames it to
``NAME`` only when everything is written, so a crash or a refused input never
leaves a half-written output, and an existing output is replaced only when the
caller allows it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from famr_jax.errors import FamrError


class OutputExists(FamrError):
  """The output directory exists and the caller did not allow replacing it."""

  def __init__(self, target: Path):
    super().__init__(f"output directory {target} already exists: choose another, or allow overwriting it")
    self.target = target


def check_output_free(out: str | os.PathLike, overwrite: bool) -> None:
  """Refuses an existing output directory (unless ``overwrite``) before any work is done.

  Example:
    >>> import tempfile
    >>> check_output_free(tempfile.mkdtemp(), overwrite=True)
    >>> check_output_free(tempfile.gettempdir(), overwrite=False)
    Traceback (most recent call last):
    ...
    famr_jax.io.outputs.OutputExists: output directory ... already exists: choose another, or allow overwriting it
  """
  target = Path(out).expanduser().resolve()
  if target.exists() and not overwrite:
    raise OutputExists(target)


@contextlib.contextmanager
def staged_directory(out: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
  """Yields a fresh staging directory that replaces ``out`` only on success.

  Example:
    >>> import os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "run")
    >>> with staged_directory(out, overwrite=False) as staging:
    ...   _ = (staging / "report.json").write_text("{}")
    >>> os.listdir(out)
    ['report.json']
  """
  target = Path(out).expanduser().resolve()
  check_output_free(target, overwrite)
  target.parent.mkdir(parents=True, exist_ok=True)
  staging = target.parent / f".{target.name}.staging-{uuid.uuid4().hex[:8]}"
  staging.mkdir()
  try:
    yield staging
    if target.exists():
      shutil.rmtree(target)
    staging.rename(target)
  finally:
    if staging.exists():
      shutil.rmtree(staging, ignore_errors=True)
