"""PyTorch state dicts (torchvision layout) as famr-jax params and BatchNorm statistics.

Reading: ``.safetensors`` through ``safetensors.numpy`` (no torch needed, nothing
executed), PyTorch ``.pth`` / ``.pt`` only through ``torch.load(weights_only=True)``
and only when torch is installed; nothing is ever unpickled otherwise.

Names: a famr-jax param path maps to a torchvision key by dropping the ResNet
``stem`` stage, writing a ``name_N`` segment as ``name.N`` (``layer1_0`` ->
``layer1.0``, ``downsample_1`` -> ``downsample.1``, ``features_10`` ->
``features.10``) and renaming the leaf (``kernel`` and ``scale`` -> ``weight``,
``mean`` -> ``running_mean``, ``var`` -> ``running_var``). Layouts: conv
kernels ``(O, I, kh, kw)`` -> ``(kh, kw, I, O)``, linear weights transposed,
AlexNet's ``classifier.1`` input columns permuted from PyTorch's (C, H, W)
flatten order to famr-jax's NHWC (H, W, C). ``num_batches_tracked`` is not used.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
from typing import Any, Mapping

import jax
import numpy as np

from famr_jax.errors import FamrError

StateDict = dict[str, np.ndarray]
_INDEXED = re.compile(r"^(.+)_(\d+)$")
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
IGNORED_SUFFIXES = ("num_batches_tracked",)


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


def read_state_dict(path: str | os.PathLike) -> StateDict:
  """The named arrays of a ``.safetensors`` file, or of a ``.pth`` through ``torch.load(weights_only=True)``.

  Raises:
    FamrError: no such file, a corrupt file, a ``.pth`` without torch
      installed, or an unknown extension (one line each).

  Example:
    >>> try:
    ...   read_state_dict("missing.safetensors")
    ... except FamrError as e:
    ...   print(str(e)[:24])
    no weight file at missin
  """
  path = Path(path).expanduser()
  if not path.is_file():
    raise FamrError(f"no weight file at {path}")
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    try:
      from safetensors.numpy import load_file
    except ImportError:
      raise FamrError("reading .safetensors needs the safetensors package: pip install 'famr-jax[import]'") from None
    try:
      arrays = load_file(str(path))
    except Exception as e:   # safetensors raises its own error types for a bad header / truncated data
      raise FamrError(f"{path} is not a valid safetensors file: {_one_line(e)}") from None
    return {k: np.asarray(v) for k, v in arrays.items()}
  if suffix in (".pth", ".pt", ".bin"):
    return _read_torch(path)
  raise FamrError(f"unknown weight file type {path.name!r}: expected .safetensors, or .pth / .pt with torch installed")


def _read_torch(path: Path) -> StateDict:
  try:
    import torch
  except ImportError:
    raise FamrError(f"{path.name} is a PyTorch pickle: reading it needs torch (it is loaded with "
                    "weights_only=True, never unpickled otherwise); install torch or convert it to .safetensors") \
        from None
  try:
    loaded = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:   # a corrupt file or one holding more than tensors
    raise FamrError(f"cannot read {path} with torch.load(weights_only=True): {_one_line(e)}") from None
  if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
    loaded = loaded["state_dict"]
  if not isinstance(loaded, Mapping):
    raise FamrError(f"{path} holds a {type(loaded).__name__}, not a state dict of named tensors")
  out = {}
  for name, value in loaded.items():
    if not hasattr(value, "detach"):
      raise FamrError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
    out[str(name)] = value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
  return out


# Wrappers that prefix every key of the state dict they save: DataParallel / DistributedDataParallel
# (``module.``) and torch.compile (``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The state dict of the wrapped model: a :data:`WRAPPER_PREFIXES` prefix removed when *every* key has it.

  Example:
    >>> sorted(strip_wrapper_prefix({"module.fc.weight": 1, "module.fc.bias": 2}))
    ['fc.bias', 'fc.weight']
    >>> sorted(strip_wrapper_prefix({"module.fc.weight": 1, "fc.bias": 2}))   # not every key: kept as is
    ['fc.bias', 'module.fc.weight']
  """
  out = dict(state_dict)
  while out:
    prefix = next((p for p in WRAPPER_PREFIXES if all(str(k).startswith(p) for k in out)), None)
    if prefix is None:
      break
    out = {str(k)[len(prefix):]: v for k, v in out.items()}
  return out


def torch_key(path: tuple[str, ...]) -> str:
  """The torchvision state-dict key of a famr-jax param or statistic path.

  Example:
    >>> torch_key(("layer2_0", "downsample_1", "var")), torch_key(("stem", "conv1", "kernel"))
    ('layer2.0.downsample.1.running_var', 'conv1.weight')
    >>> torch_key(("classifier_6", "bias"))
    'classifier.6.bias'
  """
  parts = [p for p in path[:-1] if p != "stem"]
  names = []
  for part in parts:
    m = _INDEXED.match(part)
    names.append(f"{m.group(1)}.{m.group(2)}" if m else part)
  return ".".join(names + [_LEAF.get(path[-1], path[-1])])


def _paths(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
  return [(tuple(str(getattr(k, "key", k)) for k in p), leaf)
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _to_famr(path: tuple[str, ...], value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """A torch array in famr-jax's layout for the leaf ``path`` of ``shape``."""
  if path[-1] != "kernel":
    return value
  if value.ndim == 4:                                  # conv (O, I, kh, kw) -> (kh, kw, I, O)
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2 and path[0] == "classifier_1":    # AlexNet: (C, H, W) flatten -> (H, W, C)
    out_features, in_features = value.shape
    channels = shape[0] // 36 if shape[0] % 36 == 0 else None
    if channels is None or in_features != shape[0]:
      return value.T
    return value.reshape(out_features, channels, 6, 6).transpose(2, 3, 1, 0).reshape(in_features, out_features)
  return value.T


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  if path[-1] == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if path[-1] == "kernel" and len(shape) == 2:
    return (shape[1], shape[0])
  return shape


_SUBMODULE = re.compile(r"^(conv|bn|downsample_)(\d+)$")
_LEAF_ORDER = ("kernel", "scale", "bias", "mean", "var")


def _module_order(path: tuple[str, ...], stages: tuple[str, ...]) -> tuple:
  """Sort key putting famr-jax paths in torchvision's module order (conv1, bn1, conv2, ..., downsample)."""
  inner = []
  for part in path[1:-1]:
    m = _SUBMODULE.match(part)
    inner.append((100 if m.group(1) == "downsample_" else 0) + 2 * int(m.group(2)) + (m.group(1) == "bn")
                 if m else 0)
  stage = stages.index(path[0]) if path[0] in stages else len(stages)
  leaf = _LEAF_ORDER.index(path[-1]) if path[-1] in _LEAF_ORDER else len(_LEAF_ORDER)
  return (stage, tuple(inner), leaf)


def map_state_dict(state_dict: Mapping[str, np.ndarray], params_template: Any, stats_template: Any, *,
                   architecture: str, head_stage: str, stages: tuple[str, ...] = ()) -> tuple[dict, dict, bool]:
  """Maps a torchvision state dict onto famr-jax params and statistics, refusing any mismatch.

  Args:
    state_dict: torch key -> array.
    params_template: the model's params (arrays or ShapeDtypeStructs).
    stats_template: its ``batch_stats`` (None or {} without BatchNorm).
    architecture: the name used in messages.
    head_stage: the classifier stage; its shape may differ (another class count).
    stages: the model's stage names in order (to name the first offending key in module order).

  Returns:
    ``(params, batch_stats, head_loaded)``: float32 NumPy pytrees; the head
    stage's leaves are left out (and ``head_loaded`` False) when the file's
    class count differs from the model's.

  Raises:
    FamrError: a missing key, an unexpected key or a wrong shape, naming the
      first offending key in the model's order.
  """
  expected = [("params", p, leaf) for p, leaf in _paths(params_template)]
  expected += [("stats", p, leaf) for p, leaf in _paths(stats_template or {})]
  expected.sort(key=lambda e: _module_order(e[1], stages))
  wanted = {torch_key(p) for _, p, _ in expected}
  for key in state_dict:
    if key not in wanted and not key.endswith(IGNORED_SUFFIXES):
      raise FamrError(f"the weights are not torchvision's {architecture}: unexpected key {key!r}")
  head_keys = [torch_key(p) for _, p, _ in expected if p[0] == head_stage]
  head_loaded = all(k in state_dict and tuple(state_dict[k].shape) == _torch_shape(p, tuple(leaf.shape))
                    for (_, p, leaf), k in zip([e for e in expected if e[1][0] == head_stage], head_keys))
  out: dict[str, dict] = {"params": {}, "stats": {}}
  for kind, path, leaf in expected:
    key, shape = torch_key(path), tuple(leaf.shape)
    if key not in state_dict:
      raise FamrError(f"the weights are not torchvision's {architecture}: missing key {key!r}")
    if path[0] == head_stage and not head_loaded:
      value = np.asarray(state_dict[key])
      if value.ndim != len(shape) or (path[-1] == "kernel" and value.shape[-1] != _torch_shape(path, shape)[-1]):
        raise FamrError(f"the weights are not torchvision's {architecture}: key {key!r} has shape "
                        f"{tuple(value.shape)}, expected {_torch_shape(path, shape)} (up to the class count)")
      continue
    value = np.asarray(state_dict[key])
    if tuple(value.shape) != _torch_shape(path, shape):
      raise FamrError(f"the weights are not torchvision's {architecture}: key {key!r} has shape "
                      f"{tuple(value.shape)}, expected {_torch_shape(path, shape)}")
    node = out[kind]
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = np.ascontiguousarray(_to_famr(path, value, shape), dtype=np.float32)
  return out["params"], out["stats"], head_loaded


def head_classes(state_dict: Mapping[str, np.ndarray], key: str) -> int | None:
  """The class count of the classifier ``key`` (a ``(classes, features)`` weight), or None."""
  value = state_dict.get(key)
  return int(value.shape[0]) if value is not None and np.ndim(value) == 2 else None
