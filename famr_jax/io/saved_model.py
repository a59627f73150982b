"""Restoring a saved famr-jax model: the model, its ``apply_fn``, its params and its metadata.

No data set is read: a checkpoint's metadata names the architecture and the
input shape, which is all a model needs. (The CLI adds the data set on top.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax

from famr_jax import models
from famr_jax.errors import FamrError
from famr_jax.io import checkpoints

REQUIRED_METADATA = ("model", "num_classes", "image_shape")
MAX_CLASSES = 1_000_000
MAX_SIDE = 8192                 # pixels per image side, channels
MAX_WIDTH = 1 << 16             # any integer model setting (widths, heads, patch sizes)
MAX_DEPTH = 256                 # `depth` and the length of any list of layer widths
DATA_KEYS = ("dataset", "data_dir", "max_train", "max_test", "image_size")


PATH_SOURCES = ("idx:", "folder:")   # data set specs that name a directory


def absolute_data(data: Mapping[str, Any], bases: Sequence[Any] = (None,)) -> dict:
  """A checkpoint's ``data`` entry with its relative ``idx:`` / ``folder:`` / ``data_dir`` paths made absolute.

  Each relative path is joined to the first of ``bases`` (None: the working directory) where it exists,
  else to the first one. Saving stores ``absolute_data(data)``; loading resolves an older relative entry
  against the checkpoint's folder and its parent (where ``famr-jax train --out NAME`` ran), then the
  working directory, so a checkpoint works from any directory.

  Example:
    >>> absolute_data({"dataset": "folder:imgs", "data_dir": None}, bases=["/data"])
    {'dataset': 'folder:/data/imgs', 'data_dir': None}
  """
  def resolve(path: str) -> str:
    path = os.path.expanduser(path)
    if not path or os.path.isabs(path):
      return path
    joined = [os.path.abspath(os.path.join(os.fspath(b) if b is not None else os.getcwd(), path)) for b in bases]
    return next((j for j in joined if os.path.exists(j)), joined[0])
  out = dict(data)
  spec = out.get("dataset")
  if isinstance(spec, str) and spec.startswith(PATH_SOURCES):
    prefix, path = spec.split(":", 1)
    out["dataset"] = f"{prefix}:{resolve(path)}"
  if isinstance(out.get("data_dir"), str):
    out["data_dir"] = resolve(out["data_dir"])
  return out


def checkpoint_data(metadata: Mapping[str, Any], checkpoint: Any) -> dict:
  """The ``data`` entry of a checkpoint's metadata, its paths resolved (:func:`absolute_data`)."""
  folder = Path(checkpoint).expanduser().resolve()
  return absolute_data(metadata["data"], bases=(folder, folder.parent, None))


def _bad(where, what: str) -> FamrError:
  return FamrError(f"{where}: the checkpoint metadata is invalid: {what}")


def _check_override(where, key: str, value: Any) -> None:
  items = value if isinstance(value, (list, tuple)) else [value]
  if isinstance(value, (list, tuple)) and len(value) > MAX_DEPTH:
    raise _bad(where, f"model_overrides {key!r} lists {len(value)} entries (at most {MAX_DEPTH})")
  for v in items:
    if isinstance(v, bool) or v is None or isinstance(v, str) and len(v) <= 64:
      continue
    if isinstance(v, float) and v == v and abs(v) < 1e6:
      continue
    limit = MAX_DEPTH if key in ("depth", "num_layers") else MAX_WIDTH
    if not (type(v) is int and 0 <= v <= limit):
      raise _bad(where, f"model_overrides {key!r} = {str(value)[:40]} is outside 0..{limit}")


def validate_model_metadata(metadata: dict, where: Any = "checkpoint") -> None:
  """Checks an untrusted model description (types, ranges, known keys, bounded sizes) before any model
  is built, so a hostile or damaged file gives one line instead of a hang or a traceback.

  Example:
    >>> validate_model_metadata({"model": "mlp", "num_classes": 10, "image_shape": [8, 8, 1],
    ...                          "model_overrides": {"hidden": [100000]}})
    Traceback (most recent call last):
    ...
    famr_jax.errors.FamrError: checkpoint: the checkpoint metadata is invalid: model_overrides 'hidden' = [100000] is outside 0..65536
  """
  for key in REQUIRED_METADATA:
    if key not in metadata:
      raise FamrError(f"{where} is not a famr-jax model checkpoint (its metadata has no {key!r})")
  if metadata["model"] not in models.MODEL_NAMES:
    raise _bad(where, f"unknown model {str(metadata['model'])[:40]!r}")
  n = metadata["num_classes"]
  if type(n) is not int or not 2 <= n <= MAX_CLASSES:
    raise _bad(where, f"num_classes must be an integer in 2..{MAX_CLASSES}, got {str(n)[:40]}")
  shape = metadata["image_shape"]
  if not (isinstance(shape, list) and len(shape) == 3
          and all(type(d) is int and 1 <= d <= MAX_SIDE for d in shape)):
    raise _bad(where, f"image_shape must be 3 integers in 1..{MAX_SIDE}, got {str(shape)[:40]}")
  overrides = metadata.get("model_overrides") or {}
  if not isinstance(overrides, dict) or len(overrides) > 32:
    raise _bad(where, "model_overrides is not a small table")
  for key, value in overrides.items():
    if not (isinstance(key, str) and key.isidentifier()):
      raise _bad(where, f"model_overrides key {str(key)[:40]!r} is not a name")
    _check_override(where, key, value)
  data = metadata.get("data")
  if data is not None and not (isinstance(data, dict) and set(data) <= set(DATA_KEYS)):
    raise _bad(where, f"data must be a table with keys among {', '.join(DATA_KEYS)}")
  if "seed" in metadata and not (type(metadata["seed"]) is int and 0 <= metadata["seed"] < 1 << 63):
    raise _bad(where, "seed must be a non-negative integer")


class SavedModel(NamedTuple):
  """A model restored by :func:`load_model`."""
  model: Any                                   # the Flax module
  apply_fn: Callable[[Any, jax.Array], jax.Array]
  params: Any
  metadata: dict

  def __repr__(self) -> str:
    n = models.count_params(self.params)
    return (f"SavedModel(model={self.metadata.get('model')!r}, classes={self.metadata.get('num_classes')}, "
            f"image_shape={tuple(self.metadata.get('image_shape', ()))}, params={n:,})")


def load_model(checkpoint: str | os.PathLike) -> SavedModel:
  """Restores a famr-jax model checkpoint (``famr-jax train`` or ``unlearn`` output) without its data.

  A checkpoint whose params do not match the architecture its metadata names
  is refused with a one-line :class:`FamrError`.

  Example:
    >>> import jax, tempfile, os
    >>> m = models.create_model("logistic", 3, (2, 2, 1))
    >>> p = models.init_params(m, jax.random.key(0), (2, 2, 1))
    >>> d = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> _ = checkpoints.save_checkpoint(d, p, {"model": "logistic", "image_shape": [2, 2, 1]})
    >>> load_model(d)
    SavedModel(model='logistic', classes=3, image_shape=(2, 2, 1), params=15)
  """
  metadata = checkpoints.read_metadata(checkpoint)
  if "num_classes" not in metadata:   # a checkpoint saved before save_checkpoint stored it
    metadata = checkpoints.complete_model_metadata(metadata, metadata["param_shapes"])
  validate_model_metadata(metadata, checkpoint)
  image_shape = tuple(int(d) for d in metadata["image_shape"])
  model = models.create_model(metadata["model"], int(metadata["num_classes"]), image_shape,
                              **(metadata.get("model_overrides") or {}))
  template = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0), image_shape))
  restored = checkpoints.load_checkpoint(checkpoint, template=template)
  model = bind_saved_batch_stats(model, image_shape, restored, checkpoint)
  return SavedModel(model, models.make_apply_fn(model), restored.params, metadata)


def bind_saved_batch_stats(model: Any, image_shape: tuple[int, int, int], restored: checkpoints.Checkpoint,
                           checkpoint: Any) -> Any:
  """``model`` bound to the checkpoint's BatchNorm statistics (``batch_stats`` extra); unchanged without BatchNorm.

  Raises:
    FamrError: a BatchNorm model's checkpoint without statistics, or with
      statistics of another architecture.
  """
  if not models.has_batch_norm(model):
    return model
  stored = restored.metadata.get("extras", {}).get(models.BATCH_STATS)
  if stored is None:
    raise FamrError(f"{checkpoint} holds a BatchNorm model but no batch statistics (no "
                    f"'{models.BATCH_STATS}' extra)")
  checkpoints.check_compatible(stored, models.init_batch_stats(model, image_shape),
                               "checkpoint's batch statistics")
  return models.with_batch_stats(model, restored.extras[models.BATCH_STATS])
