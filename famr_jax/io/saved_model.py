"""Restoring a saved famr-jax model: the model, its ``apply_fn``, its params and its metadata.

No data set is read: a checkpoint's metadata names the architecture and the
input shape, which is all a model needs. (The CLI adds the data set on top.)
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import jax

from famr_jax import models
from famr_jax.errors import FamrError
from famr_jax.io import checkpoints

REQUIRED_METADATA = ("model", "num_classes", "image_shape")


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
    >>> _ = checkpoints.save_checkpoint(d, p, {"model": "logistic", "num_classes": 3, "image_shape": [2, 2, 1]})
    >>> load_model(d)
    SavedModel(model='logistic', classes=3, image_shape=(2, 2, 1), params=15)
  """
  metadata = checkpoints.read_metadata(checkpoint)
  for key in REQUIRED_METADATA:
    if key not in metadata:
      raise FamrError(f"{checkpoint} is not a famr-jax model checkpoint (its metadata has no {key!r})")
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
