"""Weights from where users have them: torchvision, Hugging Face and timm files as famr-jax checkpoints.

``import_weights(source, weights, out, image_size=S)`` reads a ``.safetensors``
file (or a ``.pth`` through ``torch.load(weights_only=True)`` when torch is
installed), maps it onto a famr-jax model and writes an ordinary checkpoint
(``famr_jax.load_model`` and every command accept it) whose metadata says
where the weights came from: the source, the file and its SHA-256, the file's
class count, what happened to the head, and the preprocessing (mean, std,
resize, crop) of the recipe the weights were trained with.

Sources:

=======================================  ======================================================
``torchvision:resnet18|resnet34|``       torchvision's ``state_dict()`` of that architecture;
``resnet50|alexnet|resnet18_cifar``      ``resnet18_cifar`` is the CIFAR ResNet-18 (3x3 stem,
                                         no max pool) in torchvision's names. The input channel
                                         count (and a ResNet's first-stage width, if not 64)
                                         is read from ``conv1`` / ``features.0``.
``hf-vit`` / ``hf-vit:PRESET``           a Hugging Face ``google/vit-*`` file (ViTForImageClassification
                                         or ViTModel), into famr-jax's ViT
``timm:NAME``                            a timm ``vit_*`` file (class-token pooling)
=======================================  ======================================================

A ViT's preset (``vit_ti``/``s``/``b``/``l``, or the small ``vit_nano``/``micro``)
is recognised from its width, depth and MLP width (the head count is not stored in
the weights); the patch size is the file's, the position embeddings are resized to
the image size's patch grid.

Class count (``num_classes``, default: the file's): when it differs from the
file's, the classifier is re-initialised and the metadata says so: a ViT's head
to zeros (the ViT fine-tuning recipe, Dosovitskiy et al. 2021), a CNN's last
layer with the model's own initializer (LeCun normal kernel, zero bias) from
``seed`` (as torchvision fine-tuning replaces ``fc`` by a new layer). Every other key must be present with its exact
shape; a missing, unexpected or misshapen key is refused by name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from famr_jax import models
from famr_jax.errors import FamrError
from famr_jax.io import checkpoints, outputs
from famr_jax.io.saved_model import SavedModel
from famr_jax.io.torch_weights import head_classes, map_state_dict, read_state_dict, strip_wrapper_prefix
from famr_jax.io.vit_layouts import hf_to_bigvision, timm_to_bigvision, vit_shape
from famr_jax.io.vit_weights import vit_params_from_npz

TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50", "alexnet", "resnet18_cifar")
SOURCES = tuple(f"torchvision:{m}" for m in TORCHVISION_MODELS) + ("hf-vit", "hf-vit:PRESET", "timm:NAME")
_IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
_CIFAR10 = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]}
_INCEPTION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
_HEAD_STAGE = {"alexnet": "classifier_6"}   # ResNets: "fc"


@dataclasses.dataclass(frozen=True)
class Converted:
  """A state dict mapped onto a famr-jax model (before saving).

  Attributes:
    model_name: the famr-jax model name (``resnet18``, ``vit_b``, ...).
    model_overrides: constructor overrides (a ViT's ``patch_size``).
    model: the Flax module, with its BatchNorm statistics bound.
    params: float32 NumPy params.
    batch_stats: float32 NumPy running statistics, or None.
    num_classes: the model's class count.
    image_shape: ``(S, S, C)``.
    info: the ``imported`` metadata (source classes, head, ...).
    preprocessing: the recipe's mean, std, resize and crop.
  """
  model_name: str
  model_overrides: dict
  model: Any
  params: Any
  batch_stats: Any
  num_classes: int
  image_shape: tuple[int, int, int]
  info: dict
  preprocessing: dict


def _check_source(source: str) -> tuple[str, str]:
  kind, _, name = str(source).partition(":")
  ok = ((kind == "torchvision" and name in TORCHVISION_MODELS) or (kind == "hf-vit")
        or (kind == "timm" and name.startswith("vit")))
  if not ok:
    raise FamrError(f"unknown weight source {source!r}; valid: {', '.join(SOURCES)}")
  return kind, name


def _check_size(image_size: Any, num_classes: Any) -> None:
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0:
    raise FamrError(f"image size must be a positive integer, got {image_size!r}")
  if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
                                  or num_classes < 2):
    raise FamrError(f"num_classes must be an integer >= 2, got {num_classes!r}")


def _recipe(base: Mapping[str, list], channels: int, size: int, resize: int) -> dict:
  if channels != 3:   # the recipes are RGB: say so rather than invent per-channel values
    return {"mean": None, "std": None, "resize": resize, "crop": size,
            "note": f"the file has {channels} input channels; the RGB recipe does not apply"}
  return {**base, "resize": resize, "crop": size}


def lecun_normal_dense(features: int, classes: int, seed: int) -> dict:
  """A new Dense layer as flax initializes it: LeCun normal kernel (truncated at 2 std), zero bias (NumPy, seeded).

  Example:
    >>> lecun_normal_dense(4, 3, 0)["kernel"].shape
    (4, 3)
  """
  rng = np.random.default_rng(seed)
  draws = rng.standard_normal((features, classes))
  while np.any(np.abs(draws) > 2):   # truncate at two standard deviations by redrawing
    bad = np.abs(draws) > 2
    draws[bad] = rng.standard_normal(int(bad.sum()))
  std = np.sqrt(1.0 / features) / 0.87962566103423978   # flax's variance_scaling(1, fan_in, truncated_normal)
  return {"kernel": (draws * std).astype(np.float32), "bias": np.zeros((classes,), np.float32)}


def _convert_torchvision(arch: str, state_dict, image_size: int, num_classes: int | None, seed: int) -> Converted:
  first = "features.0.weight" if arch == "alexnet" else "conv1.weight"
  if first not in state_dict or np.ndim(state_dict[first]) != 4:
    raise FamrError(f"the weights are not torchvision's {arch}: missing key {first!r}")
  channels = int(np.shape(state_dict[first])[1])
  head = _HEAD_STAGE.get(arch, "fc")
  head_key = ("classifier.6" if arch == "alexnet" else "fc") + ".weight"
  source_classes = head_classes(state_dict, head_key)
  if source_classes is None:
    raise FamrError(f"the weights are not torchvision's {arch}: missing key {head_key!r}")
  classes = int(num_classes or source_classes or 0)
  shape = (image_size, image_size, channels)
  # A narrower ResNet of the same layout (first-stage width != 64) keeps its width; the depth is the named one's.
  width = int(np.shape(state_dict[first])[0])
  overrides = {"width": width} if arch != "alexnet" and width != 64 else {}
  model = models.create_model(arch, classes, shape, **overrides)
  # One abstract trace gives both shapes (params, and the running statistics of a BatchNorm model).
  variables = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *shape), np.float32))
  template = dict(variables["params"])
  stats_template = dict(variables[models.BATCH_STATS]) if models.has_batch_norm(model) else None
  params, stats, head_loaded = map_state_dict(state_dict, template, stats_template, architecture=arch,
                                              head_stage=head, stages=models.layer_names(model))
  head_info = "loaded"
  if not head_loaded:
    params[head] = lecun_normal_dense(template[head]["kernel"].shape[0], classes, seed)
    head_info = f"re-initialised ({source_classes} -> {classes} classes; LeCun normal kernel, zero bias, seed {seed})"
  if stats_template is not None:
    model = models.with_batch_stats(model, stats)
  base = _CIFAR10 if arch == "resnet18_cifar" else _IMAGENET
  resize = image_size if arch == "resnet18_cifar" else round(image_size * 256 / 224)
  return Converted(arch, overrides, model, params, stats if stats_template is not None else None, classes, shape,
                   {"source_classes": source_classes, "head": head_info},
                   _recipe(base, channels, image_size, resize))


def _vit_preset(dims: Mapping[str, int], wanted: str) -> str:
  matches = [name for name, cfg in models.VIT_PRESETS.items()
             if (cfg.hidden_dim, cfg.depth, cfg.mlp_dim) == (dims["hidden_dim"], dims["depth"], dims["mlp_dim"])]
  if wanted:
    if wanted not in models.VIT_PRESETS:
      raise FamrError(f"unknown ViT preset {wanted!r}; valid presets: {', '.join(models.VIT_PRESETS)}")
    if wanted not in matches:
      raise FamrError(f"the weights are not a {wanted}: width {dims['hidden_dim']}, depth {dims['depth']}, "
                      f"MLP width {dims['mlp_dim']}")
    return wanted
  if not matches:
    raise FamrError(f"the ViT weights (width {dims['hidden_dim']}, depth {dims['depth']}, MLP width "
                    f"{dims['mlp_dim']}) match no famr-jax ViT preset ({', '.join(models.VIT_PRESETS)})")
  return matches[0]


def _convert_vit(kind: str, name: str, state_dict, image_size: int, num_classes: int | None) -> Converted:
  layout = "hf" if kind == "hf-vit" else "timm"
  dims = vit_shape(state_dict, layout)
  preset = _vit_preset(dims, name if kind == "hf-vit" else "")
  heads = models.VIT_PRESETS[preset].num_heads
  arrays = (hf_to_bigvision if layout == "hf" else timm_to_bigvision)(state_dict, heads)
  classes = int(num_classes or dims["classes"] or 0)
  if classes < 2:
    raise FamrError("the weights have no classifier head: give the class count (num_classes)")
  shape = (image_size, image_size, dims["channels"])
  if image_size % dims["patch_size"]:
    raise FamrError(f"image size {image_size} is not a multiple of the weights' patch size {dims['patch_size']}")
  overrides = {"patch_size": dims["patch_size"]}
  model = models.create_model(preset, classes, shape, **overrides)
  template = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0), shape))
  params, info = vit_params_from_npz(arrays, template, head="auto")
  head_info = ("loaded" if not info["reinitialized"] else
               f"re-initialised to zeros ({dims['classes'] or 'no'} -> {classes} classes; the ViT fine-tuning recipe)")
  crop_pct = 0.9 if layout == "timm" else 1.0
  return Converted(preset, overrides, model, params, None, classes, shape,
                   {"source_classes": dims["classes"] or None, "head": head_info,
                    "position_embeddings": "resized" if info["resized"] else "as stored"},
                   _recipe(_INCEPTION, dims["channels"], image_size, round(image_size / crop_pct)))


def convert_weights(source: str, state_dict: Mapping[str, np.ndarray], *, image_size: int,
                    num_classes: int | None = None, seed: int = 0) -> Converted:
  """Maps a state dict (name -> array) onto a famr-jax model; no file is read or written.

  Args:
    source: ``torchvision:ARCH``, ``hf-vit[:PRESET]`` or ``timm:NAME`` (module doc).
    state_dict: the named arrays (``read_state_dict``); keys saved from a ``DataParallel`` / DDP
      wrapper (every one prefixed ``module.``) are read without the prefix.
    image_size: the side ``S`` of the square images the model will see.
    num_classes: the model's class count (default: the file's); another count
      re-initialises the head (module doc).
    seed: seed of a re-initialised CNN head.

  Returns:
    A :class:`Converted`.

  Raises:
    FamrError: an unknown source, or weights of another architecture (a
      missing, unexpected or misshapen key, named).
  """
  kind, name = _check_source(source)
  _check_size(image_size, num_classes)
  # DataParallel / DDP / torch.compile save the wrapped model's keys under a prefix
  state_dict = strip_wrapper_prefix({str(k): np.asarray(v) for k, v in state_dict.items()})
  if kind == "torchvision":
    return _convert_torchvision(name, state_dict, int(image_size), num_classes, int(seed))
  return _convert_vit(kind, name, state_dict, int(image_size), num_classes)


def file_sha256(path: str | os.PathLike) -> str:
  """SHA-256 of a file, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def import_weights(source: str, weights: str | os.PathLike, out: str | os.PathLike, *, image_size: int,
                   num_classes: int | None = None, seed: int = 0, metadata: Mapping[str, Any] | None = None,
                   overwrite: bool = False, channels: int | None = None) -> SavedModel:
  """Imports a torchvision / Hugging Face / timm weight file as a famr-jax checkpoint at ``out``.

  Args:
    source: ``torchvision:resnet18`` (``resnet34``, ``resnet50``, ``alexnet``,
      ``resnet18_cifar``), ``hf-vit`` (``hf-vit:vit_b``...) or ``timm:vit_...``.
    weights: a ``.safetensors`` file, or a ``.pth`` when torch is installed.
    out: the checkpoint directory to write (through the io output protocol).
    image_size: the side of the square input images.
    num_classes: the class count (default: the file's; another one
      re-initialises the head, said in the metadata).
    seed: seed of a re-initialised CNN head.
    metadata: extra metadata to store (e.g. the data set the CLI records).
    overwrite: replace ``out`` (only once the new checkpoint is complete).
    channels: the input channels the caller's data has (None: any); weights
      for another count are refused before anything is written.

  Returns:
    The imported model as :class:`famr_jax.io.saved_model.SavedModel` (what
    ``famr_jax.load_model(out)`` gives back).

  Raises:
    FamrError: see :func:`convert_weights` and ``read_state_dict``; an
      existing ``out`` without ``overwrite``.

  Example:
    >>> import tempfile, numpy as np
    >>> try:
    ...   import_weights("torchvision:vgg16", "w.safetensors", tempfile.mkdtemp() + "/m", image_size=32)
    ... except FamrError as e:
    ...   print(str(e).split(";")[0])
    unknown weight source 'torchvision:vgg16'
  """
  _check_source(source)
  _check_size(image_size, num_classes)
  path = Path(weights).expanduser()
  outputs.check_output_target(out, overwrite, inputs=(path,))
  converted = convert_weights(source, read_state_dict(path), image_size=image_size, num_classes=num_classes,
                              seed=seed)
  if channels is not None and converted.image_shape[2] != channels:
    raise FamrError(f"the weights take {converted.image_shape[2]}-channel images, the data set has {channels} "
                    "channels")
  meta = {
      "model": converted.model_name,
      "model_overrides": converted.model_overrides,
      "num_classes": converted.num_classes,
      "image_shape": list(converted.image_shape),
      **dict(metadata or {}),
      "imported": {"source": source, "file": str(path.resolve()), "sha256": file_sha256(path), **converted.info},
      "preprocessing": converted.preprocessing,
  }
  extras = {models.BATCH_STATS: converted.batch_stats} if converted.batch_stats is not None else None
  checkpoints.save_checkpoint(out, converted.params, meta, extras=extras, overwrite=overwrite, inputs=(path,))
  return SavedModel(converted.model, models.make_apply_fn(converted.model),
                    jax.tree.map(jax.numpy.asarray, converted.params), checkpoints.read_metadata(out))
