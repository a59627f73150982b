"""``famr-jax import``: a torchvision / Hugging Face / timm weight file as a famr-jax checkpoint.

The checkpoint can also record the data set it will be unlearned on
(``--dataset``), so that ``famr-jax unlearn`` and ``evaluate`` accept it like a
``famr-jax train`` checkpoint; the data set's class count and image shape are
checked against the model before anything is written.
"""

from __future__ import annotations

import dataclasses

from famr_jax.workflows import DataConfig, config_dict
from famr_jax.engine.training import TrainConfig
from famr_jax.errors import FamrError
from famr_jax.io.saved_model import absolute_data


@dataclasses.dataclass(frozen=True)
class ImportRun:
  """``famr-jax import``.

  Attributes:
    source: torchvision:resnet18|resnet34|resnet50|alexnet|resnet18_cifar, hf-vit[:PRESET] or timm:vit_NAME.
    weights: the weight file (.safetensors; .pth only with torch installed, loaded with weights_only=True).
    out: the checkpoint directory to write.
    image_size: side of the square input images.
    num_classes: class count (default: the file's; another one re-initialises the head).
    seed: seed of a re-initialised CNN head.
    overwrite: replace out if it exists.
    data: the data set to record (None: none; unlearn then refuses the checkpoint).
  """
  source: str
  weights: str
  out: str
  image_size: int
  num_classes: int | None = None
  seed: int = 0
  overwrite: bool = False
  data: DataConfig | None = None


def import_model(run: ImportRun):
  """Runs ``famr-jax import``; returns the :class:`famr_jax.io.saved_model.SavedModel` written."""
  from famr_jax.io.weight_import import import_weights
  from famr_jax.version import __version__
  metadata = {"famr_jax_version": __version__}
  if run.data is not None:
    data_config = run.data
    if data_config.image_size is None and data_config.dataset.startswith(("folder:", "tfds:")):
      # these sources resize to any side: read them at the imported model's input size
      data_config = dataclasses.replace(data_config, image_size=run.image_size)
    run = dataclasses.replace(run, data=data_config)
    data = run.data.load(run.seed)
    if run.num_classes is not None and data.num_classes != run.num_classes:
      raise FamrError(f"data set {run.data.dataset} has {data.num_classes} classes, the import asks for "
                      f"{run.num_classes}")
    if tuple(data.image_shape[:2]) != (run.image_size, run.image_size):
      raise FamrError(f"data set {run.data.dataset} has {data.image_shape[0]}x{data.image_shape[1]} images, "
                      f"the import is for {run.image_size}x{run.image_size}")
    metadata = {**metadata, "data": absolute_data(config_dict(run.data)), "train_config": config_dict(TrainConfig()),
                "seed": run.seed, "timings_s": {"train": 0.0, "compile": 0.0}}
    num_classes = run.num_classes or data.num_classes
  else:
    num_classes = run.num_classes
  return import_weights(run.source, run.weights, run.out, image_size=run.image_size, num_classes=num_classes,
                        seed=run.seed, metadata=metadata, overwrite=run.overwrite,
                        channels=None if run.data is None else int(data.image_shape[2]))
