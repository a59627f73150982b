"""Orbax checkpoints of params (and named extra pytrees) plus a JSON description.

Layout of a checkpoint directory::

  DIR/famr_jax.json   what the params are: model, data set, config, shapes
  DIR/params/         the params pytree (Orbax StandardCheckpointer)
  DIR/<extra>/        optional extra pytrees (e.g. a diagonal Fisher)

Nothing is unpickled: Orbax stores arrays with TensorStore and the
description is JSON. Saving never replaces an existing directory unless
``overwrite=True``, and then only after the new checkpoint is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from famr_jax.errors import FamrError
from famr_jax.io.outputs import is_famr_output, replace_file, staged_directory, write_marker

FORMAT = "famr-jax-checkpoint/1"
METADATA_FILE = "famr_jax.json"
Params = Any


class Checkpoint(NamedTuple):
  """A restored checkpoint."""
  params: Params
  metadata: dict[str, Any]
  extras: dict[str, Params]


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def tree_shapes(tree: Params) -> dict[str, list]:
  """``{"a/b": [shape, dtype]}`` for every leaf of a pytree.

  Example:
    >>> import jax.numpy as jnp
    >>> tree_shapes({"fc": {"kernel": jnp.zeros((2, 3))}})
    {'fc/kernel': [[2, 3], 'float32']}
  """
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_str(p): [list(np.shape(v)), str(np.dtype(getattr(v, "dtype", None) or np.asarray(v).dtype))]
          for p, v in leaves}


def _template_from_shapes(shapes: dict[str, list]) -> dict:
  """Rebuilds a nested-dict abstract pytree from :func:`tree_shapes` output."""
  root: dict = {}
  for path, (shape, dtype) in shapes.items():
    node = root
    parts = path.split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise FamrError(f"corrupt checkpoint description: {path!r} lies under an array")
    if parts[-1] in node:
      raise FamrError(f"corrupt checkpoint description: {path!r} is both an array and a folder")
    node[parts[-1]] = _abstract_array(tuple(shape), np.dtype(dtype))
  return root


def _abstract_array(shape, dtype, sharding=None) -> jax.ShapeDtypeStruct:
  """An abstract array placed on ``sharding``, or on this process's default device.

  Orbax otherwise restores onto the devices the checkpoint was *saved* from, so a
  checkpoint written on a CPU machine would not load on a GPU one ("Topology mismatch").
  """
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def _json_default(obj):
  if isinstance(obj, (np.integer,)):
    return int(obj)
  if isinstance(obj, (np.floating,)):
    return float(obj)
  if isinstance(obj, (tuple, set)):
    return list(obj)
  raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _check_keys(tree: Params) -> None:
  """Refuses a params key that would not round-trip through the ``a/b`` paths of the description."""
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    for k in path:
      name = str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
      if "/" in name or not name:
        raise FamrError(f"cannot save a params key {name!r}: keys may not be empty or contain '/'")


def write_checkpoint(directory: str | os.PathLike, params: Params, metadata: dict[str, Any] | None = None, *,
                     extras: dict[str, Params] | None = None) -> Path:
  """Writes a checkpoint into ``directory``, which must be new or empty (a caller's staging folder).

  :func:`save_checkpoint` is this inside the output protocol (``famr_jax.io.outputs``); a run that
  writes several files into one output calls this on a path inside its staging folder.
  """
  import orbax.checkpoint as ocp

  target = Path(directory).expanduser().resolve()
  extras = dict(extras or {})
  for name in extras:
    if name in ("params", METADATA_FILE) or not name.isidentifier():
      raise FamrError(f"invalid extra name {name!r}")
  _check_keys(params)
  for tree in extras.values():
    _check_keys(tree)
  shapes = tree_shapes(params)
  description = {
      "format": FORMAT,
      **complete_model_metadata(metadata or {}, shapes),
      "param_shapes": shapes,
      "extras": {name: tree_shapes(tree) for name, tree in extras.items()},
  }
  text = json.dumps(description, indent=2, default=_json_default)  # fail before writing anything
  checkpointer = None
  try:
    target.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(target / "params", params)
    for name, tree in extras.items():
      checkpointer.save(target / name, tree)
    checkpointer.wait_until_finished()
    (target / METADATA_FILE).write_text(text)
  except BaseException as e:
    if checkpointer is not None:   # any failure: stop its writer threads before the caller removes the folder
      with contextlib.suppress(Exception):
        checkpointer.close()
    if isinstance(e, (OSError, ValueError, RuntimeError)):   # Orbax reports a full disk as a ValueError
      raise FamrError(f"cannot write the checkpoint {target}: {write_failure(e)}") from None
    raise
  return target


def infer_num_classes(model_name: str, image_shape, param_shapes: dict[str, list],
                      overrides: dict | None = None) -> int | None:
  """The class count of a famr-jax model's params (:func:`tree_shapes`), or None when it cannot tell.

  The model is built abstractly with 2 and 3 classes; the first array axis that grows with the class
  count (the head's) gives it: ``axis = base + step * num_classes``.

  Example:
    >>> from famr_jax import models
    >>> m = models.create_model("mlp", 7, (8, 8, 1))
    >>> p = models.init_params(m, jax.random.key(0), (8, 8, 1))
    >>> infer_num_classes("mlp", [8, 8, 1], tree_shapes(p))
    7
  """
  from famr_jax import models
  if model_name not in models.MODEL_NAMES:
    return None
  shape = tuple(int(d) for d in image_shape)
  try:
    probes = [tree_shapes(jax.eval_shape(lambda n=n: models.init_params(
        models.create_model(model_name, n, shape, **dict(overrides or {})), jax.random.key(0), shape)))
        for n in (2, 3)]
  except (FamrError, TypeError, ValueError):
    return None
  for name, (two, _) in probes[0].items():
    three = probes[1][name][0]
    stored = param_shapes.get(name, [None])[0]
    if two == three or stored is None or len(stored) != len(two):
      continue
    axis = next(i for i, (a, b) in enumerate(zip(two, three)) if a != b)
    step = three[axis] - two[axis]
    n, rest = divmod(stored[axis] - (two[axis] - 2 * step), step)
    return int(n) if rest == 0 and n >= 2 else None
  return None


def complete_model_metadata(metadata: dict[str, Any], param_shapes: dict[str, list]) -> dict[str, Any]:
  """``metadata`` with ``num_classes`` filled in from the params when it names a famr-jax model and its
  ``image_shape`` but not the class count (so :func:`famr_jax.load_model` needs nothing more)."""
  if "num_classes" in metadata or "model" not in metadata or "image_shape" not in metadata:
    return dict(metadata)
  try:
    n = infer_num_classes(str(metadata["model"]), metadata["image_shape"], param_shapes,
                          metadata.get("model_overrides"))
  except (TypeError, ValueError):   # a malformed image_shape: validate_model_metadata names it on loading
    n = None
  return dict(metadata) if n is None else {**metadata, "num_classes": n}


def write_failure(error: BaseException) -> str:
  """The reason of a failed write in a few words (the OS's, when Orbax buries it in a long message)."""
  text = str(error)
  for reason in ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied"):
    if reason in text:
      return reason
  return getattr(error, "strerror", None) or (text.splitlines() or [type(error).__name__])[0][:160]


def save_checkpoint(directory: str | os.PathLike, params: Params, metadata: dict[str, Any] | None = None, *,
                    extras: dict[str, Params] | None = None, overwrite: bool = False,
                    inputs=()) -> Path:
  """Saves ``params`` (and ``extras``) with Orbax and ``metadata`` as JSON.

  Written through the output protocol (``famr_jax.io.outputs.staged_directory``): staged, then
  published by one rename, with the famr-jax marker.

  Args:
    directory: checkpoint directory (made absolute: Orbax needs absolute paths).
    params: the params pytree (keys may not contain "/").
    metadata: JSON-serializable description (model name, data set, config...). For a famr-jax model,
      ``{"model": NAME, "image_shape": [H, W, C]}`` is enough for :func:`famr_jax.load_model`:
      ``num_classes`` is stored from the params when not given.
    extras: optional named pytrees stored beside the params.
    overwrite: replace an existing famr-jax directory (only once the new one is complete).
    inputs: paths the checkpoint must not overlap.

  Returns:
    The absolute checkpoint path.

  Raises:
    FamrError: the directory exists and ``overwrite`` is False, or is not famr-jax's.

  Example:
    >>> import tempfile, jax.numpy as jnp
    >>> d = tempfile.mkdtemp() + "/ckpt"
    >>> _ = save_checkpoint(d, {"w": jnp.ones(2)}, {"model": "toy"})
    >>> load_checkpoint(d).metadata["model"]
    'toy'
  """
  target = Path(directory).expanduser().resolve()
  _check_keys(params)
  json.dumps(metadata or {}, default=_json_default)   # fail before claiming anything
  with staged_directory(target, overwrite, command="checkpoint", inputs=inputs) as staging:
    write_checkpoint(staging, params, metadata, extras=extras)
  return target


def add_extra(directory: str | os.PathLike, name: str, tree: Params, metadata_update: dict[str, Any],
              *, overwrite: bool = True) -> Path:
  """Adds (or replaces) one extra pytree in an existing checkpoint, touching nothing else in it.

  The extra is written through a staging folder inside the checkpoint and renamed to ``DIR/name``;
  then the description is replaced atomically (``famr_jax.io.outputs.replace_file``). An existing
  ``DIR/name`` is replaced only if famr-jax wrote it (it carries the output marker).
  """
  path = Path(directory).expanduser().resolve()
  metadata = read_metadata(path)
  if name in ("params", METADATA_FILE) or not name.isidentifier():
    raise FamrError(f"invalid extra name {name!r}")
  _check_keys(tree)
  import orbax.checkpoint as ocp
  existing = path / name
  if name in (metadata.get("extras") or {}) and existing.is_dir() and not is_famr_output(existing):
    write_marker(existing, "extra")   # the description lists it: famr-jax wrote it (before markers)
  with staged_directory(existing, overwrite, command="extra") as staging:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(staging / "tree", tree)
    checkpointer.wait_until_finished()
    # Orbax wants a fresh folder: move its files up into the staging folder itself.
    for entry in (staging / "tree").iterdir():
      os.rename(entry, staging / entry.name)
    (staging / "tree").rmdir()
  extras = dict(metadata.get("extras") or {})
  extras[name] = tree_shapes(tree)
  description = {**metadata, **metadata_update, "extras": extras}
  replace_file(path / METADATA_FILE, json.dumps(description, indent=2, default=_json_default))
  return path


MAX_LEAVES = 100_000
MAX_ELEMENTS = 1 << 34          # 64 GiB of float32: beyond any model famr-jax builds
_DTYPES = {"float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
           "uint16", "uint32", "uint64", "bool", "complex64", "complex128"}


def _check_shapes(shapes: Any, what: str, where: Path) -> None:
  """Validates a ``{"a/b": [shape, dtype]}`` table from an untrusted description."""
  if not isinstance(shapes, dict) or len(shapes) > MAX_LEAVES:
    raise FamrError(f"{where} is corrupt: {what} is not a table of at most {MAX_LEAVES} arrays")
  total = 0
  for name, entry in shapes.items():
    ok = (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list) and len(entry[0]) <= 8
          and all(type(d) is int and 0 <= d < 1 << 31 for d in entry[0]) and entry[1] in _DTYPES
          and name and all(name.split("/")))
    if not ok:
      raise FamrError(f"{where} is corrupt: {what} entry {str(name)[:60]!r} is not [shape, dtype]")
    n = 1
    for d in entry[0]:
      n *= d
    total += n
  if total > MAX_ELEMENTS:
    raise FamrError(f"{where} declares {total:,} parameters in {what}, more than famr-jax loads ({MAX_ELEMENTS:,})")


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
  """The JSON description of a checkpoint, validated, or a one-line :class:`FamrError` naming the file."""
  path = Path(directory).expanduser().resolve()
  if not path.is_dir():
    raise FamrError(f"no checkpoint at {path}: the directory does not exist")
  meta_file = path / METADATA_FILE
  if not meta_file.is_file() or not (path / "params").is_dir():
    raise FamrError(f"{path} is not a famr-jax checkpoint (no {METADATA_FILE} and params/)")
  try:
    if meta_file.stat().st_size > 64 << 20:
      raise FamrError(f"{meta_file} is corrupt: larger than 64 MiB")
    metadata = json.loads(meta_file.read_text())
  except (ValueError, UnicodeDecodeError, RecursionError) as e:
    raise FamrError(f"{meta_file} is corrupt: {str(e).splitlines()[0][:120]}") from None
  except OSError as e:
    raise FamrError(f"cannot read {meta_file}: {e.strerror}") from None
  if not isinstance(metadata, dict):
    raise FamrError(f"{meta_file} is corrupt: not a JSON object")
  if metadata.get("format") != FORMAT:
    raise FamrError(f"{path} has checkpoint format {metadata.get('format')!r}, expected {FORMAT!r}")
  _check_shapes(metadata.get("param_shapes"), "param_shapes", meta_file)
  extras = metadata.get("extras", {})
  if not isinstance(extras, dict) or not all(isinstance(k, str) and k.isidentifier() and k != "params"
                                             for k in extras):
    raise FamrError(f"{meta_file} is corrupt: extras is not a table of named arrays")
  for name, shapes in extras.items():
    _check_shapes(shapes, f"extra {name!r}", meta_file)
  return metadata


# What a failed Orbax restore leaves behind: the reads of the other arrays, closed when collected
# (each raises Orbax's "Encountered error while reading array index" again, or "Event loop is closed").
_RESTORE_LEFTOVERS = ("Encountered error while reading array index", "Event loop is closed")


def _quiet_restore_leftovers() -> None:
  """Drops (from then on) the unraisable exceptions and tracebacks of a failed restore's abandoned reads.

  They are raised while an abandoned coroutine is closed, at a garbage collection or at exit, where
  Python prints them as "Exception ignored in" tracebacks after the one-line error; nothing can
  retrieve them. Any other unraisable exception still goes to the previous hook.
  """
  import sys
  leftover = lambda exc: any(text in str(exc) for text in _RESTORE_LEFTOVERS)
  if not getattr(sys.unraisablehook, "famr_restore_leftovers", False):
    unraisable_hook = sys.unraisablehook

    def on_unraisable(unraisable):
      if not leftover(unraisable.exc_value):
        unraisable_hook(unraisable)
    on_unraisable.famr_restore_leftovers = True
    sys.unraisablehook = on_unraisable
  if not getattr(sys.excepthook, "famr_restore_leftovers", False):
    # TensorStore's reads that finish after Orbax closed its event loop print through sys.excepthook
    except_hook = sys.excepthook

    def on_exception(kind, value, traceback):
      import threading
      import traceback as tb
      late_read = (leftover(value) and threading.current_thread() is not threading.main_thread()
                   and any(frame.name == "call_soon_threadsafe" for frame in tb.extract_tb(traceback)))
      if not late_read:   # anything else, an uncaught error of the program above all, is printed as ever
        except_hook(kind, value, traceback)
    on_exception.famr_restore_leftovers = True
    sys.excepthook = on_exception


def restore_failure(error: BaseException) -> str:
  """The reason of a failed restore in one short line: TensorStore's own, without its spec dump.

  Example:
    >>> cause = ValueError('OUT_OF_RANGE: Error reading "fc.kernel/0.0" in OCDBT database at local file '
    ...                    '"/c/params/": Requested byte range [0, 2421) is not valid for value of size 1000')
    >>> wrapped = Exception("Encountered error while reading array index: (slice(0, 64, 1),). See full "
    ...                     "TensorStore details: <bound method pybind11_detail_function_record_v1_...")
    >>> wrapped.__cause__ = cause
    >>> restore_failure(wrapped)
    'fc.kernel: Requested byte range [0, 2421) is not valid for value of size 1000'
  """
  import re
  root = error
  while root.__cause__ is not None or root.__context__ is not None:
    root = root.__cause__ or root.__context__
  text = " ".join((str(root).strip().splitlines() or [type(root).__name__])[0].split())
  text = text.split(" See full TensorStore details")[0].split("<bound method")[0].strip()
  found = re.match(r'^[A-Z_]+: Error reading "([^"/]+)[^"]*" in .*?": (.+)$', text)
  if found:
    text = f"{found.group(1)}: {found.group(2)}"
  return text[:160] or type(root).__name__


def _restore(checkpointer, folder: Path, abstract) -> Params:
  """One Orbax restore; a truncated or corrupt file is one line naming the folder, not a traceback."""
  import gc
  if not folder.is_dir():
    raise FamrError(f"{folder} is missing: the checkpoint is incomplete")
  _quiet_restore_leftovers()   # before: the abandoned reads of a failure may report while it unwinds
  try:
    return checkpointer.restore(folder, abstract)
  except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types for damaged files
    reason = restore_failure(e)
  gc.collect()   # the abandoned reads are closed now, quietly
  raise FamrError(f"cannot read the arrays in {folder}: corrupt or truncated ({reason})")


def check_compatible(stored: dict[str, list], template: Params, what: str = "checkpoint") -> None:
  """Refuses a template whose leaves differ from the stored shapes, naming the first difference."""
  expected = tree_shapes(template)
  if set(expected) != set(stored):
    missing = sorted(set(expected) - set(stored))[:3]
    extra = sorted(set(stored) - set(expected))[:3]
    raise FamrError(f"the {what} holds a different architecture: "
                    f"params missing {missing or 'none'}, unexpected {extra or 'none'}")
  for name, (shape, _) in expected.items():
    if list(stored[name][0]) != list(shape):
      raise FamrError(f"the {what} holds a different architecture: {name} has shape "
                      f"{tuple(stored[name][0])}, the model expects {tuple(shape)}")


def load_checkpoint(directory: str | os.PathLike, *, template: Params | None = None) -> Checkpoint:
  """Restores a checkpoint written by :func:`save_checkpoint`.

  Args:
    directory: the checkpoint directory.
    template: optional params pytree (arrays or ``jax.ShapeDtypeStruct``) of
      the architecture the caller expects; a checkpoint of another
      architecture is refused with a :class:`FamrError`. Without it, the
      params come back as nested dicts.

  Returns:
    A :class:`Checkpoint` (params, metadata, extras).
  """
  import orbax.checkpoint as ocp

  path = Path(directory).expanduser().resolve()
  metadata = read_metadata(path)
  stored = metadata["param_shapes"]
  if template is not None:
    check_compatible(stored, template)
    abstract = jax.tree.map(
        lambda a: _abstract_array(np.shape(a), a.dtype, getattr(a, "sharding", None)), template)
  else:
    abstract = _template_from_shapes(stored)
  checkpointer = ocp.StandardCheckpointer()
  params = _restore(checkpointer, path / "params", abstract)
  extras = {name: _restore(checkpointer, path / name, _template_from_shapes(shapes))
            for name, shapes in metadata.get("extras", {}).items()}
  return Checkpoint(params, metadata, extras)
