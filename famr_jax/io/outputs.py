"""The output protocol: how every famr-jax command writes, so that nothing already on disk is lost.

1. **Refuse before work.** :func:`check_output_target` refuses an output equal to, inside, or a
   parent of an input; an existing output unless the caller allows replacing it; and, even then, a
   folder without the famr-jax marker, the working directory, the home directory, the filesystem
   root or a parent of any of them.
2. **Claim.** A writer holds an exclusive lock (``fcntl.flock`` on ``.NAME.famr-lock`` beside the
   output) from before its work until its output is published, so a second writer to the same
   output fails at once with one line (an exclusive claim, not check-then-act). The kernel releases
   the lock of a killed process.
3. **Stage.** Everything is written into a private ``.NAME.famr-staging-XXXX`` folder beside the
   output, which records its owner (pid, host, command) in ``.famr-jax-staging``. The next writer of
   the same output (holding the lock, so the owner is dead or done) removes such leftovers and says so.
4. **Publish** by one rename. Replacing (``overwrite``) swaps the new and the old folder in one atomic
   ``renameat2(RENAME_EXCHANGE)`` and then deletes the old one, so a crash leaves the old or the new
   output in place, never neither. Where the kernel cannot swap, the old folder is renamed aside
   (``.NAME.famr-replaced-XXXX``) first; a crash between the two renames leaves it aside, and the
   next writer renames it back. Every published
   folder carries the marker ``.famr-jax-output`` (JSON: format, version, command, time).

Files added to an existing famr-jax folder (``famr-jax fisher`` next to a checkpoint) go through
:func:`replace_file` (a temporary file renamed over the old one) or a staged sub-folder, never by
rebuilding the folder.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from famr_jax.errors import FamrError

MARKER_FILE = ".famr-jax-output"
OWNER_FILE = ".famr-jax-staging"
MARKER_FORMAT = "famr-jax-output/1"
_STAGING_TAG = ".famr-staging-"
_ASIDE_TAG = ".famr-replaced-"
_LOCK_TAG = ".famr-lock"
_LOG = logging.getLogger("famr_jax")


class OutputExists(FamrError):
  """The output directory exists and the caller did not allow replacing it."""

  def __init__(self, target: Path):
    super().__init__(f"output directory {target} already exists: choose another, or allow overwriting it")
    self.target = target


class OutputBusy(FamrError):
  """Another famr-jax process is writing the same output."""


def resolve(path: str | os.PathLike) -> Path:
  """``path`` made absolute with symlinks resolved (what every comparison below uses)."""
  return Path(path).expanduser().resolve()


def portable_path(path: str | os.PathLike) -> str:
  """``path`` relative to the working directory, for results that are committed or shared (no machine paths).

  Example:
    >>> portable_path(os.path.join(os.getcwd(), "runs", "lenet5"))
    'runs/lenet5'
  """
  return os.path.relpath(os.path.abspath(os.fspath(path)))


def portable_command(argv: Iterable[str]) -> str:
  """A command line with every absolute path argument (also ``--flag=PATH``) made :func:`portable_path`.

  Example:
    >>> portable_command(["famr-jax", "compare", "--out=" + os.path.join(os.getcwd(), "runs", "b")])
    'famr-jax compare --out=runs/b'
  """
  def one(arg: str) -> str:
    flag, eq, value = arg.rpartition("=") if arg.startswith("-") and "=" in arg else ("", "", arg)
    return flag + eq + (portable_path(value) if os.path.isabs(value) else value)
  return " ".join(one(a) for a in argv)


def _within(inner: Path, outer: Path) -> bool:
  """``inner`` is ``outer`` or lies below it."""
  return inner == outer or outer in inner.parents


def is_famr_output(path: str | os.PathLike) -> bool:
  """A directory famr-jax published: it carries a readable ``.famr-jax-output`` marker.

  Example:
    >>> import tempfile
    >>> is_famr_output(tempfile.mkdtemp())
    False
  """
  marker = Path(path) / MARKER_FILE
  try:
    info = json.loads(marker.read_text())
  except (OSError, ValueError):
    return False
  return isinstance(info, dict) and info.get("format") == MARKER_FORMAT


def write_marker(directory: str | os.PathLike, command: str) -> None:
  """Writes the marker that lets a later ``overwrite`` replace this folder."""
  info = {"format": MARKER_FORMAT, "famr_jax_version": _version(), "command": command,
          "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  (Path(directory) / MARKER_FILE).write_text(json.dumps(info) + "\n")


def _version() -> str:
  import importlib.metadata
  try:
    return importlib.metadata.version("famr-jax")
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def _never_replaced() -> list[tuple[Path, str]]:
  places = [(Path(os.sep).resolve(), "the filesystem root"), (resolve(os.getcwd()), "the working directory")]
  with contextlib.suppress(RuntimeError, KeyError):
    places.append((resolve(Path.home()), "the home directory"))
  return places


def check_disjoint(a: str | os.PathLike, b: str | os.PathLike, what_a: str, what_b: str) -> None:
  """Refuses two paths of which one is, or lies inside, the other.

  Example:
    >>> check_disjoint("/tmp/run", "/tmp/run/resume", "the output", "the checkpoint directory")
    Traceback (most recent call last):
    ...
    famr_jax.errors.FamrError: the checkpoint directory /tmp/run/resume overlaps the output /tmp/run: keep them apart
  """
  pa, pb = resolve(a), resolve(b)
  if _within(pa, pb) or _within(pb, pa):
    raise FamrError(f"{what_b} {pb} overlaps {what_a} {pa}: keep them apart")


def check_replaceable(target: Path) -> None:
  """Refuses to replace anything but a folder famr-jax published (and never a protected place)."""
  for place, name in _never_replaced():
    if _within(place, target):
      raise FamrError(f"refusing to replace {target}: it is {name}" if place == target else
                      f"refusing to replace {target}: it contains {name}")
  if not target.is_dir() or target.is_symlink():
    raise FamrError(f"refusing to replace {target}: it is not a directory famr-jax wrote")
  if not is_famr_output(target):
    raise FamrError(f"refusing to replace {target}: it has no {MARKER_FILE} marker, so famr-jax did not "
                    "write it (move or delete it yourself)")


def _is_free(target: Path) -> bool:
  """Nothing there, or an empty directory (nothing to lose)."""
  if not os.path.lexists(target):
    return True
  return target.is_dir() and not target.is_symlink() and not any(target.iterdir())


def check_output_target(out: str | os.PathLike, overwrite: bool, *,
                        inputs: Iterable[str | os.PathLike] = ()) -> Path:
  """Validates an output directory before any work; returns it resolved.

  Args:
    out: the output directory.
    overwrite: whether an existing famr-jax output there may be replaced.
    inputs: paths the run reads (a checkpoint): the output may be none of them, lie inside one,
      or contain one.

  Raises:
    FamrError: any of the refusals of the module docstring.

  Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> check_output_target(os.path.join(d, "run"), overwrite=False).name
    'run'
  """
  target = resolve(out)
  for place, name in _never_replaced():
    if _within(place, target):
      raise FamrError(f"refusing to write to {target}: it is {name}" if place == target else
                      f"refusing to write to {target}: it contains {name}")
  for source in inputs:
    src = resolve(source)
    if _within(target, src):
      raise FamrError(f"the output {target} is {'the input' if target == src else 'inside the input'} "
                      f"{src}: write it elsewhere")
    if _within(src, target):
      raise FamrError(f"the output {target} contains the input {src}: write it elsewhere")
  if not _is_free(target):
    if not overwrite:
      raise OutputExists(target)
    check_replaceable(target)
  return target


def check_output_free(out: str | os.PathLike, overwrite: bool, *,
                      inputs: Iterable[str | os.PathLike] = ()) -> None:
  """:func:`check_output_target` without the return value (kept for callers of the old name).

  Example:
    >>> import os, tempfile
    >>> taken = tempfile.mkdtemp()
    >>> open(os.path.join(taken, "notes.txt"), "w").close()
    >>> check_output_free(taken, overwrite=False)
    Traceback (most recent call last):
    ...
    famr_jax.io.outputs.OutputExists: output directory ... already exists: choose another, or allow overwriting it
  """
  check_output_target(out, overwrite, inputs=inputs)


def _os_error(err: OSError, where: Path) -> FamrError:
  return FamrError(f"cannot write {where}: {err.strerror or err}")


def _process_info(command: str) -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
          "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


@contextlib.contextmanager
def claim_output(target: Path, command: str = "write") -> Iterator[None]:
  """Holds the exclusive claim on ``target`` (``flock`` on ``.NAME.famr-lock`` beside it).

  Raises:
    OutputBusy: another process holds it.
    FamrError: the parent folder cannot be written.
  """
  import fcntl

  lock_path = target.parent / f".{target.name}{_LOCK_TAG}"
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(20):
      fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace")
        os.close(fd)
        pid = json.loads(holder).get("pid", "?") if holder.startswith("{") else "?"
        raise OutputBusy(f"another famr-jax run (pid {pid}) is writing {target}: wait for it to finish "
                         "or choose another output") from None
      try:
        same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
      except FileNotFoundError:
        same = False
      if same:   # else the previous holder removed the file between our open and our lock: retry
        break
      os.close(fd)
    else:
      raise OutputBusy(f"could not claim {target}: its lock file keeps changing")
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(_process_info(command)).encode())
  except OSError as e:
    raise _os_error(e, target.parent) from None
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      os.unlink(lock_path)   # while still holding the lock; a waiter then sees a new inode and retries
    os.close(fd)


def recover_leftovers(target: Path) -> list[str]:
  """Cleans up what killed writers of ``target`` left beside it; returns what it did, one line each.

  Call only while holding :func:`claim_output` (then no live writer owns a leftover). A staging folder
  is removed only when it carries the owner file famr-jax writes first (or is empty); a folder renamed
  aside by an interrupted replacement is renamed back when ``target`` is missing, else removed.
  Anything else matching the names is reported and left alone.
  """
  done = []
  parent = target.parent
  if not parent.is_dir():
    return done
  for entry in sorted(parent.iterdir()):
    name = entry.name
    if not (name.startswith(f".{target.name}{_STAGING_TAG}") or name.startswith(f".{target.name}{_ASIDE_TAG}")):
      continue
    if not entry.is_dir() or entry.is_symlink():
      done.append(f"left {entry} alone: famr-jax does not write such a file")
      continue
    if _STAGING_TAG in name:
      owner = entry / OWNER_FILE
      # the owner file comes first and the marker last: a staging folder with either (or empty) is ours
      if owner.is_file() or not any(entry.iterdir()) or (entry / MARKER_FILE).is_file():
        info = _read_json(owner)
        shutil.rmtree(entry, ignore_errors=True)
        done.append(f"removed {entry}, left by an interrupted run (pid {info.get('pid', '?')})")
      else:
        done.append(f"left {entry} alone: it has neither {OWNER_FILE} nor {MARKER_FILE}, so famr-jax did not "
                    "create it")
    elif is_famr_output(entry):
      if os.path.lexists(target):
        shutil.rmtree(entry, ignore_errors=True)
        done.append(f"removed {entry}, the old output an interrupted replacement left")
      else:
        os.rename(entry, target)
        done.append(f"restored {target} from {entry}, left by an interrupted replacement")
    else:
      done.append(f"left {entry} alone: it has no {MARKER_FILE} marker")
  for line in done:
    _LOG.warning(line)
  return done


def _read_json(path: Path) -> dict:
  try:
    info = json.loads(path.read_text())
  except (OSError, ValueError):
    return {}
  return info if isinstance(info, dict) else {}


def _exchange(a: Path, b: Path) -> bool:
  """Swaps two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
  import ctypes
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  at_fdcwd, rename_exchange = -100, 2
  if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
    return False
  raise OSError(err, os.strerror(err), str(b))


def _publish(staging: Path, target: Path, overwrite: bool) -> None:
  """Moves the finished staging folder to ``target`` (replacing a famr-jax output if allowed).

  A replacement swaps the two folders atomically where the kernel can (then the old output sits at
  the staging name until it is deleted); elsewhere it renames the old one aside first.
  """
  if not _is_free(target):
    if not overwrite:
      raise OutputExists(target)
    check_replaceable(target)
    if _exchange(staging, target):
      shutil.rmtree(staging, ignore_errors=True)   # now the old output
      return
    aside = target.parent / f".{target.name}{_ASIDE_TAG}{uuid.uuid4().hex[:8]}"
    os.rename(target, aside)
    try:
      os.rename(staging, target)
    except BaseException:
      os.rename(aside, target)
      raise
    shutil.rmtree(aside, ignore_errors=True)
    return
  if target.is_dir():
    target.rmdir()   # empty: nothing lost; fails (kept) if something appeared meanwhile
  os.rename(staging, target)


@contextlib.contextmanager
def staged_directory(out: str | os.PathLike, overwrite: bool, *, command: str = "write",
                     inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
  """Yields a fresh private staging directory that becomes ``out`` only when the block succeeds.

  Enter it before the work: the claim on ``out`` is held for the whole block, so a second writer
  fails at once. On any exception (Ctrl-C included) the staging folder is removed and ``out`` is
  untouched.

  Args:
    out: the output directory.
    overwrite: replace an existing famr-jax output (only one carrying the marker).
    command: recorded in the marker.
    inputs: paths the output must not overlap (:func:`check_output_target`).

  Example:
    >>> import os, tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "run")
    >>> with staged_directory(out, overwrite=False) as staging:
    ...   _ = (staging / "report.json").write_text("{}")
    >>> sorted(os.listdir(out))
    ['.famr-jax-output', 'report.json']
  """
  inputs = tuple(inputs)
  target = check_output_target(out, overwrite, inputs=inputs)
  with claim_output(target, command):
    recover_leftovers(target)
    check_output_target(target, overwrite, inputs=inputs)   # again, now that we hold the claim
    staging = target.parent / f".{target.name}{_STAGING_TAG}{uuid.uuid4().hex[:8]}"
    try:
      staging.mkdir()
      (staging / OWNER_FILE).write_text(json.dumps(_process_info(command)) + "\n")
    except OSError as e:
      shutil.rmtree(staging, ignore_errors=True)
      raise _os_error(e, staging) from None
    try:
      yield staging
      write_marker(staging, command)
      (staging / OWNER_FILE).unlink()
      _publish(staging, target, overwrite)
    except OSError as e:
      if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTEMPTY):
        raise _os_error(e, target) from None
      raise
    finally:
      _remove_staging(staging)


def _remove_staging(staging: Path) -> None:
  """Removes a failed run's staging folder; a background writer (Orbax) may add files for a moment."""
  quiet = 0
  for _ in range(100):   # gone, and still gone a moment later (a late writer may recreate it)
    if os.path.lexists(staging):
      quiet = 0
      shutil.rmtree(staging, ignore_errors=True)
    else:
      quiet += 1
      if quiet >= 3:
        return
    time.sleep(0.05)


def replace_file(path: str | os.PathLike, text: str) -> None:
  """Replaces one file atomically (a temporary file beside it, renamed over it); nothing else changes.

  Example:
    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "meta.json")
    >>> replace_file(p, "{}")
    >>> open(p).read()
    '{}'
  """
  path = Path(path)
  tmp = path.parent / f".{path.name}{_STAGING_TAG}{uuid.uuid4().hex[:8]}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      tmp.unlink()
    raise _os_error(e, path) from None


def claim_resume_directory(directory: str | os.PathLike) -> Path:
  """Creates (or reuses) a folder of resumable checkpoints famr-jax owns; refuses a foreign one.

  A resume folder carries the marker; one that exists with other content and no marker belongs to
  someone else and is refused, so :func:`remove_resume_steps` never touches a user's files.
  """
  path = resolve(directory)
  if path.exists() and not _is_free(path) and not is_famr_output(path):
    raise FamrError(f"the checkpoint directory {path} holds files famr-jax did not write "
                    f"(no {MARKER_FILE} marker): choose an empty or new directory")
  try:
    path.mkdir(parents=True, exist_ok=True)
    if not is_famr_output(path):
      write_marker(path, "resume")
  except OSError as e:
    raise _os_error(e, path) from None
  return path


def is_step_folder(path: Path) -> bool:
  """A step folder an Orbax ``CheckpointManager`` writes: a number, or a temporary one of a number."""
  head = path.name.split(".", 1)[0]
  return path.is_dir() and not path.is_symlink() and head.isdigit()


def remove_resume_steps(directory: str | os.PathLike) -> None:
  """Deletes a finished run's step folders and marker, then the folder if that leaves it empty."""
  path = resolve(directory)
  if not path.is_dir() or not is_famr_output(path):
    return
  for entry in path.iterdir():
    if is_step_folder(entry):
      shutil.rmtree(entry, ignore_errors=True)
  (path / MARKER_FILE).unlink(missing_ok=True)
  with contextlib.suppress(OSError):
    path.rmdir()
