"""Library workflows: a checkpoint restored with its data set, and the gold-standard retrain.

What the CLI's runs (:mod:`famr_jax.cli.runs`, :mod:`famr_jax.cli.compare_run`) and the experiments share:
:func:`load_model` (a ``famr-jax train`` checkpoint with its model and data set), :class:`DataConfig`
(which data set a run uses, as a checkpoint records it), :func:`train_and_recompute` and
:func:`retrain_gold_standard` (the original recipe from a fresh init on the retained data, BatchNorm
statistics recomputed).

Example:
  >>> DataConfig("digits", max_train=20).load().x_train.shape
  (20, 8, 8, 1)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import jax

from famr_jax import models
from famr_jax.data.datasets import Dataset, load_dataset
from famr_jax.data.forget import ForgetSet
from famr_jax.engine.parallel import ScaleConfig
from famr_jax.engine.resume import ResumeConfig
from famr_jax.engine.training import TrainConfig, check_finite, train_classifier
from famr_jax.errors import FamrError
from famr_jax.io.saved_model import checkpoint_data, load_model as load_saved_model
from famr_jax.validation import CheckedFields, nonfinite_leaf


@dataclasses.dataclass(frozen=True)
class DataConfig(CheckedFields):
  """Which data set a run uses.

  Attributes:
    dataset: ``digits``, ``fashion_mnist``, ``idx:DIR``, ``tfds:NAME`` or ``folder:DIR``.
    data_dir: where to look for the data set's files.
    max_train: optional stratified subsample of the training set (quick runs).
    max_test: optional stratified subsample of the test set.
    image_size: resize (tfds) or centre-crop (folder) every image to this square side.
  """
  dataset: str = "digits"
  data_dir: str | None = None
  max_train: int | None = None
  max_test: int | None = None
  image_size: int | None = None

  def load(self, seed: int = 0, preprocessing: dict | None = None) -> Dataset:
    """Loads the data set and refuses NaN/inf inputs (``preprocessing``: a checkpoint's image recipe)."""
    data = load_dataset(self.dataset, data_dir=self.data_dir, max_train=self.max_train,
                        max_test=self.max_test, seed=seed, image_size=self.image_size,
                        preprocessing=preprocessing)
    check_finite(f"data set {self.dataset}", data.x_train)
    check_finite(f"data set {self.dataset}", data.x_test)
    return data


def build_model(name: str, data: Dataset, overrides: dict | None = None):
  """Model, apply_fn for a data set (one place that knows the models package)."""
  model = models.create_model(name, data.num_classes, data.image_shape, **(overrides or {}))
  return model, models.make_apply_fn(model)


def config_dict(config: Any) -> dict:
  """A dataclass config as a JSON-ready dict."""
  return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A checkpoint restored with its model and data set."""
  model: Any
  apply_fn: Any
  params: Any
  metadata: dict
  data: Dataset


def load_model(checkpoint: str | os.PathLike) -> LoadedModel:
  """Restores a ``famr-jax train`` checkpoint, its model and its data set.

  A checkpoint whose params do not match the architecture its metadata
  names is refused with a one-line :class:`FamrError`.
  """
  saved = load_saved_model(checkpoint)
  metadata = saved.metadata
  if "data" not in metadata:
    raise FamrError(f"{checkpoint} records no data set (its metadata has no 'data')")
  metadata = {**metadata, "data": checkpoint_data(metadata, checkpoint)}   # relative paths resolved
  data_config = DataConfig(**metadata["data"])
  data = data_config.load(seed=int(metadata.get("seed", 0)), preprocessing=metadata.get("preprocessing"))
  if data.num_classes != metadata["num_classes"] or list(data.image_shape) != list(metadata["image_shape"]):
    raise FamrError(f"data set {data_config.dataset} no longer matches the checkpoint "
                    f"({data.num_classes} classes {data.image_shape} vs {metadata['num_classes']} "
                    f"{tuple(metadata['image_shape'])})")
  model, apply_fn, params = saved.model, saved.apply_fn, saved.params
  bad = nonfinite_leaf(params)
  if bad is not None:
    raise FamrError(f"{checkpoint} holds non-finite params (NaN or inf in {bad}): it is a diverged model")
  return LoadedModel(model, apply_fn, params, metadata, data)


def recorded_train_config(metadata: dict, where: Any) -> TrainConfig:
  """The training recipe a checkpoint records, checked (known keys, typed) like any untrusted input."""
  recipe = metadata.get("train_config")
  fields = {f.name for f in dataclasses.fields(TrainConfig)}
  if not isinstance(recipe, dict) or not set(recipe) <= fields:
    raise FamrError(f"{where}: the checkpoint metadata is invalid: train_config must be a table with keys "
                    f"among {', '.join(sorted(fields))}")
  timings = metadata.get("timings_s")
  if not (isinstance(timings, dict) and isinstance(timings.get("train"), (int, float))
          and isinstance(timings.get("compile", 0.0), (int, float))):
    raise FamrError(f"{where}: the checkpoint metadata is invalid: timings_s must hold numbers")
  try:
    config = TrainConfig(**recipe)
    config.validate()
  except (TypeError, ValueError) as e:
    raise FamrError(f"{where}: the checkpoint metadata is invalid: train_config: {str(e).splitlines()[0]}") from None
  return config


def original_recipe(checkpoint: str | os.PathLike, command: str) -> tuple[dict, TrainConfig]:
  """The metadata and training recipe of an original checkpoint, for a ``command`` that retrains it.

  Raises:
    FamrError: the checkpoint is an unlearned model, or records no training recipe (one line).
  """
  from famr_jax.io import checkpoints
  metadata = checkpoints.read_metadata(checkpoint)
  if "unlearned" in metadata:
    raise FamrError(f"{checkpoint} is already an unlearned model; {command} from the original checkpoint")
  if "train_config" not in metadata:
    raise FamrError(f"{checkpoint} records no training recipe, so the retrained reference cannot be made")
  return metadata, recorded_train_config(metadata, checkpoint)


def stats_extras(model) -> dict:
  """``{"batch_stats": ...}`` for a checkpoint of a BatchNorm model (its bound statistics), else ``{}``."""
  stats = models.batch_stats_of(model)
  return {} if stats is None else {models.BATCH_STATS: stats}


def train_and_recompute(model, apply_fn, params, x, y, train: TrainConfig, key, **kwargs):
  """Trains from scratch; a BatchNorm model trains with batch statistics, then gets recomputed running ones.

  Returns:
    ``(DescentResult, model, apply_fn)``: the model bound to its recomputed
    statistics and its eval-mode ``apply_fn`` (unchanged without BatchNorm).
  """
  if not models.has_batch_norm(model):
    return train_classifier(apply_fn, params, x, y, train, key, **kwargs), model, apply_fn
  result = train_classifier(models.make_train_apply_fn(model), params, x, y, train, key, **kwargs)
  model = models.with_batch_stats(model, models.recompute_batch_stats(model, result.params, x))
  return result, model, models.make_apply_fn(model)


class RetrainedModel(NamedTuple):
  """A gold-standard retrain: its params, cost and the model / ``apply_fn`` it is evaluated with."""
  params: Any
  run_s: float
  compile_s: float
  history: list
  model: Any      # a BatchNorm model is bound to its own recomputed statistics, not the original's
  apply_fn: Any


def retrain_gold_standard(model, apply_fn, data: Dataset, forget: ForgetSet, train: TrainConfig,
                          seed: int, show_progress: bool = True, *, scale: ScaleConfig | None = None,
                          resume: ResumeConfig | None = None) -> RetrainedModel:
  """The gold standard: the original recipe on the retained data, from a fresh init (a BatchNorm model
  trains with batch statistics and gets its own running statistics, see :func:`train_and_recompute`)."""
  keep = forget.retain_mask(len(data.y_train))
  init = models.init_params(model, jax.random.key(seed), data.image_shape)
  result, gold_model, gold_apply_fn = train_and_recompute(
      model, apply_fn, init, data.x_train[keep], data.y_train[keep], train,
      jax.random.fold_in(jax.random.key(seed), 7), show_progress=show_progress,
      desc="retrain (gold standard)", scale=scale, resume=resume)
  return RetrainedModel(result.params, result.run_s, result.compile_s, result.history, gold_model, gold_apply_fn)
