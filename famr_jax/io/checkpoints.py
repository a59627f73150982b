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

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from famr_jax.errors import FamrError
from famr_jax.io.outputs import check_output_free, staged_directory

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


def save_checkpoint(directory: str | os.PathLike, params: Params, metadata: dict[str, Any] | None = None, *,
                    extras: dict[str, Params] | None = None, overwrite: bool = False) -> Path:
  """Saves ``params`` (and ``extras``) with Orbax and ``metadata`` as JSON.

  Args:
    directory: checkpoint directory (made absolute: Orbax needs absolute paths).
    params: the params pytree.
    metadata: JSON-serializable description (model name, data set, config...).
    extras: optional named pytrees stored beside the params.
    overwrite: replace an existing directory (only once the new one is complete).

  Returns:
    The absolute checkpoint path.

  Raises:
    FamrError: the directory exists and ``overwrite`` is False.

  Example:
    >>> import tempfile, jax.numpy as jnp
    >>> d = tempfile.mkdtemp() + "/ckpt"
    >>> _ = save_checkpoint(d, {"w": jnp.ones(2)}, {"model": "toy"})
    >>> load_checkpoint(d).metadata["model"]
    'toy'
  """
  import orbax.checkpoint as ocp

  target = Path(directory).expanduser().resolve()
  check_output_free(target, overwrite)
  extras = dict(extras or {})
  for name in extras:
    if name in ("params", METADATA_FILE) or not name.isidentifier():
      raise FamrError(f"invalid extra name {name!r}")
  description = {
      "format": FORMAT,
      **(metadata or {}),
      "param_shapes": tree_shapes(params),
      "extras": {name: tree_shapes(tree) for name, tree in extras.items()},
  }
  text = json.dumps(description, indent=2, default=_json_default)  # fail before writing anything
  with staged_directory(target, overwrite) as staging:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(staging / "params", params)
    for name, tree in extras.items():
      checkpointer.save(staging / name, tree)
    checkpointer.wait_until_finished()
    (staging / METADATA_FILE).write_text(text)
  return target


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
  """The JSON description of a checkpoint, or a one-line :class:`FamrError`."""
  path = Path(directory).expanduser().resolve()
  if not path.is_dir():
    raise FamrError(f"no checkpoint at {path}: the directory does not exist")
  meta_file = path / METADATA_FILE
  if not meta_file.is_file() or not (path / "params").is_dir():
    raise FamrError(f"{path} is not a famr-jax checkpoint (no {METADATA_FILE} and params/)")
  try:
    metadata = json.loads(meta_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise FamrError(f"{meta_file} is corrupt: {e}") from None
  if metadata.get("format") != FORMAT:
    raise FamrError(f"{path} has checkpoint format {metadata.get('format')!r}, expected {FORMAT!r}")
  return metadata


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
  params = checkpointer.restore(path / "params", abstract)
  extras = {name: checkpointer.restore(path / name, _template_from_shapes(shapes))
            for name, shapes in metadata.get("extras", {}).items()}
  return Checkpoint(params, metadata, extras)
