"""Original ViT ``.npz`` checkpoints (vit_jax / big_vision layout) as famr-jax ViT params.

The public ImageNet-21k/1k ViT releases (google-research/vision_transformer,
big_vision) are ``.npz`` files of named arrays::

  embedding/kernel                         (P, P, C, D)  -> embed/patch/kernel
  embedding/bias                           (D,)          -> embed/patch/bias
  cls                                      (1, 1, D)     -> embed/cls
  Transformer/posembed_input/pos_embedding (1, N+1, D)   -> embed/pos_embedding
  Transformer/encoderblock_{i}/LayerNorm_0/{scale,bias}                 -> block_{i}/norm1
  Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value,out}/{kernel,bias}
                                                                        -> block_{i}/attn/...
  Transformer/encoderblock_{i}/LayerNorm_2/{scale,bias}                 -> block_{i}/norm2
  Transformer/encoderblock_{i}/MlpBlock_3/Dense_{0,1}/{kernel,bias}     -> block_{i}/mlp/fc{1,2}
  Transformer/encoder_norm/{scale,bias}    -> norm
  head/{kernel,bias}                       -> head

Variants read too: a leading ``params/``, big_vision's module numbering
(``LayerNorm_0/1``, ``MultiHeadDotProductAttention_0``, ``MlpBlock_0``: the
lower LayerNorm index is the first norm), big_vision's top-level
``pos_embedding``, and scanned blocks (``Transformer/encoderblock/...`` with a
leading depth axis). The attention kernels already have flax's
``(D, heads, head_dim)`` layout, so every array maps without transposition.

Position embeddings are resized to the model's patch grid by bilinear
interpolation (``scipy.ndimage.zoom(order=1)``, as vit_jax does when
fine-tuning at another resolution); the class-token row is kept. The head is
loaded when its shape matches, otherwise zero-initialized (the ViT
fine-tuning recipe). One difference to know: vit_jax's MLP uses the tanh
approximation of GELU, famr-jax's ViT (like timm) the exact one; the weights
transfer, the activations differ by at most ~1e-3.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal, Mapping

import numpy as np

from famr_jax.errors import FamrError

Params = Any
_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/(.+)$")
_MODULE = re.compile(r"^(LayerNorm|MultiHeadDotProductAttention|MlpBlock)_(\d+)/(.+)$")


def _unstack_scanned(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """``Transformer/encoderblock/X`` with a leading depth axis -> ``encoderblock_{i}/X``."""
  out = {}
  for name, value in arrays.items():
    if name.startswith("Transformer/encoderblock/"):
      rest = name[len("Transformer/encoderblock/"):]
      for i in range(value.shape[0]):
        out[f"Transformer/encoderblock_{i}/{rest}"] = value[i]
    else:
      out[name] = value
  return out


def _block_names(arrays: Mapping[str, np.ndarray], index: int) -> dict[str, str]:
  """famr-jax param path (inside ``block_{index}``) -> npz name, for one encoder block."""
  modules: dict[str, set[int]] = {"LayerNorm": set(), "MultiHeadDotProductAttention": set(), "MlpBlock": set()}
  prefix = f"Transformer/encoderblock_{index}/"
  for name in arrays:
    if name.startswith(prefix):
      m = _MODULE.match(name[len(prefix):])
      if m:
        modules[m.group(1)].add(int(m.group(2)))
  if len(modules["LayerNorm"]) != 2 or len(modules["MultiHeadDotProductAttention"]) != 1 \
      or len(modules["MlpBlock"]) != 1:
    raise FamrError(f"encoder block {index} of the checkpoint does not have the ViT layout "
                    f"(found modules {sorted((k, sorted(v)) for k, v in modules.items())})")
  ln1, ln2 = sorted(modules["LayerNorm"])
  (att,), (mlp,) = modules["MultiHeadDotProductAttention"], modules["MlpBlock"]
  names = {}
  for ours, theirs in (("norm1", f"LayerNorm_{ln1}"), ("norm2", f"LayerNorm_{ln2}")):
    for leaf in ("scale", "bias"):
      names[f"{ours}/{leaf}"] = prefix + f"{theirs}/{leaf}"
  for proj in ("query", "key", "value", "out"):
    for leaf in ("kernel", "bias"):
      names[f"attn/{proj}/{leaf}"] = prefix + f"MultiHeadDotProductAttention_{att}/{proj}/{leaf}"
  for ours, theirs in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
    for leaf in ("kernel", "bias"):
      names[f"mlp/{ours}/{leaf}"] = prefix + f"MlpBlock_{mlp}/{theirs}/{leaf}"
  return names


def resize_pos_embedding(pos: np.ndarray, num_tokens: int) -> np.ndarray:
  """Resizes ``(1, 1 + g0*g0, D)`` position embeddings to ``(1, num_tokens, D)``.

  The class-token row is kept; the ``g0 x g0`` grid is zoomed bilinearly to
  ``g1 x g1`` (``g1 = sqrt(num_tokens - 1)``).

  Example:
    >>> import numpy as np
    >>> resize_pos_embedding(np.zeros((1, 5, 8)), 17).shape
    (1, 17, 8)
  """
  import scipy.ndimage

  old_grid = int(round(np.sqrt(pos.shape[1] - 1)))
  new_grid = int(round(np.sqrt(num_tokens - 1)))
  if old_grid * old_grid != pos.shape[1] - 1 or new_grid * new_grid != num_tokens - 1:
    raise FamrError(f"cannot resize position embeddings of {pos.shape[1]} tokens to {num_tokens}: "
                    "both must be a class token plus a square patch grid")
  grid = pos[0, 1:].reshape(old_grid, old_grid, -1).astype(np.float64)
  zoom = (new_grid / old_grid, new_grid / old_grid, 1)
  grid = scipy.ndimage.zoom(grid, zoom, order=1)
  return np.concatenate([pos[:, :1], grid.reshape(1, new_grid * new_grid, -1).astype(pos.dtype)], axis=1)


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flat(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _nest(flat: Mapping[str, Any]) -> dict:
  root: dict = {}
  for path, value in flat.items():
    node = root
    parts = path.split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return root


def vit_params_from_npz(arrays: Mapping[str, np.ndarray], template: Params, *,
                        head: Literal["auto", "load", "reinit"] = "auto") -> tuple[Params, dict]:
  """Maps the arrays of an original ViT checkpoint onto a famr-jax ViT's params.

  Args:
    arrays: name -> array, as in the ``.npz`` file.
    template: the target model's params (arrays or ``jax.ShapeDtypeStruct``),
      e.g. ``models.init_params(create_model('vit_b', 100, (224, 224, 3)), key, ...)``.
    head: ``"load"`` the classifier head (shapes must match), ``"reinit"`` it
      (zeros; the checkpoint's head and pre-logits layer are ignored), or
      ``"auto"``: load it when its shape matches, else reinit.

  Returns:
    ``(params, info)``: float32 numpy params shaped like ``template``, and
    ``info`` with the lists ``resized``, ``reinitialized`` and ``ignored`` (npz
    names not used).

  Raises:
    FamrError: a missing array, a shape that does not fit, or a
      representation (pre-logits) layer with ``head="load"``.
  """
  if head not in ("auto", "load", "reinit"):
    raise FamrError(f"head must be auto, load or reinit, got {head!r}")
  arrays = {(k[len("params/"):] if k.startswith("params/") else k): np.asarray(v) for k, v in arrays.items()}
  arrays = _unstack_scanned(arrays)
  target = _flat(template)
  depth = len({p.split("/")[0] for p in target if p.startswith("block_")})
  if not depth or "embed/pos_embedding" not in target:
    raise FamrError("the template is not a famr-jax ViT's params (no embed/ and block_ stages)")

  names = {"embed/patch/kernel": "embedding/kernel", "embed/patch/bias": "embedding/bias",
           "embed/cls": "cls", "norm/scale": "Transformer/encoder_norm/scale",
           "norm/bias": "Transformer/encoder_norm/bias", "head/kernel": "head/kernel",
           "head/bias": "head/bias",
           "embed/pos_embedding": ("Transformer/posembed_input/pos_embedding"
                                   if "Transformer/posembed_input/pos_embedding" in arrays else "pos_embedding")}
  ckpt_depth = len({m.group(1) for m in map(_BLOCK.match, arrays) if m})
  if ckpt_depth != depth:
    raise FamrError(f"the checkpoint has {ckpt_depth} encoder blocks, the model {depth}")
  for i in range(depth):
    names.update({f"block_{i}/{k}": v for k, v in _block_names(arrays, i).items()})

  head_shapes_match = all(names[f"head/{leaf}"] in arrays
                          and tuple(arrays[names[f"head/{leaf}"]].shape) == tuple(np.shape(target[f"head/{leaf}"]))
                          for leaf in ("kernel", "bias"))
  load_head = head == "load" or (head == "auto" and head_shapes_match)
  if load_head and any(k.startswith("pre_logits/") for k in arrays):
    raise FamrError("the checkpoint has a pre-logits (representation) layer that famr-jax's ViT lacks: "
                    "load it with head='reinit' to fine-tune a new head")

  params, info = {}, {"resized": [], "reinitialized": [], "ignored": []}
  used = set()
  for path, leaf in target.items():
    shape, dtype = tuple(np.shape(leaf)), np.dtype(getattr(leaf, "dtype", np.float32))
    if path.startswith("head/") and not load_head:
      params[path] = np.zeros(shape, dtype)
      info["reinitialized"].append(path)
      continue
    name = names.get(path)
    if name is None or name not in arrays:
      raise FamrError(f"the checkpoint has no array {name or path!r} (for {path})")
    value = arrays[name]
    used.add(name)
    if path == "embed/pos_embedding" and value.shape != shape and value.shape[2:] == shape[2:]:
      value = resize_pos_embedding(value, shape[1])
      info["resized"].append(path)
    if tuple(value.shape) != shape:
      raise FamrError(f"checkpoint array {name} has shape {tuple(value.shape)}, the model's {path} "
                      f"needs {shape}")
    params[path] = value.astype(dtype)
  info["ignored"] = sorted(set(arrays) - used)
  return _nest(params), info


def load_vit_npz(path: str | os.PathLike, template: Params, *,
                 head: Literal["auto", "load", "reinit"] = "auto") -> tuple[Params, dict]:
  """Loads an original ViT ``.npz`` checkpoint into famr-jax ViT params (no pickle).

  See :func:`vit_params_from_npz` for ``template``, ``head`` and the result.

  Example:
    >>> import jax, numpy as np, tempfile
    >>> from famr_jax import models
    >>> model = models.create_model("vit_nano", 10, (8, 8, 1))
    >>> p0 = models.init_params(model, jax.random.key(0), (8, 8, 1))
    >>> f = tempfile.mkdtemp() + "/none.npz"
    >>> try:
    ...   load_vit_npz(f, p0)
    ... except Exception as e:
    ...   print(type(e).__name__)
    FamrError
  """
  path = os.fspath(path)
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except FileNotFoundError:
    raise FamrError(f"no ViT checkpoint at {path}") from None
  except (ValueError, OSError) as e:
    raise FamrError(f"cannot read {path} as an .npz checkpoint: {e}") from None
  return vit_params_from_npz(arrays, template, head=head)
