"""Hugging Face (``google/vit-*``) and timm (``vit_*``) ViT state dicts in big_vision's names.

Both PyTorch layouts are rewritten into the ``.npz`` names of
``famr_jax.io.vit_weights`` (whose position-embedding resize and head logic
then apply unchanged). Linear weights ``(out, in)`` become kernels ``(in, out)``;
attention projections are split into Flax's ``(D, heads, head_dim)`` (q/k/v) and
``(heads, head_dim, D)`` (out) kernels, heads being the major index of the
feature axis in both libraries; the patch conv ``(D, C, P, P)`` becomes
``(P, P, C, D)``; timm's fused ``qkv`` rows are ``[q; k; v]``.

Hugging Face names (``ViTForImageClassification``; a ``ViTModel``'s names
without the ``vit.`` prefix are accepted too, and its ``pooler`` is ignored)::

  vit.embeddings.cls_token / position_embeddings / patch_embeddings.projection.{weight,bias}
  vit.encoder.layer.{i}.layernorm_before / layernorm_after.{weight,bias}
  vit.encoder.layer.{i}.attention.attention.{query,key,value}.{weight,bias}
  vit.encoder.layer.{i}.attention.output.dense.{weight,bias}
  vit.encoder.layer.{i}.intermediate.dense / output.dense.{weight,bias}
  vit.layernorm.{weight,bias}, classifier.{weight,bias}

timm names (``VisionTransformer`` with a class token, ``global_pool='token'``)::

  cls_token, pos_embed, patch_embed.proj.{weight,bias}
  blocks.{i}.norm1 / norm2.{weight,bias}, blocks.{i}.attn.qkv / proj.{weight,bias}
  blocks.{i}.mlp.fc1 / fc2.{weight,bias}, norm.{weight,bias}, head.{weight,bias}

LayerNorm epsilon: famr-jax's ViT uses timm's 1e-6; Hugging Face's configs say
1e-12 (a relative difference below 1e-6 on unit-variance tokens).
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from famr_jax.errors import FamrError

Arrays = dict[str, np.ndarray]
HF_IGNORED = ("vit.pooler.", "pooler.")


def _depth(state_dict: Mapping[str, np.ndarray], pattern: str) -> int:
  found = {int(m.group(1)) for m in map(re.compile(pattern).match, state_dict) if m}
  return max(found) + 1 if found else 0


def _take(state_dict: Mapping[str, np.ndarray], used: set, key: str, what: str) -> np.ndarray:
  if key not in state_dict:
    raise FamrError(f"the weights are not a {what} ViT: missing key {key!r}")
  used.add(key)
  return np.asarray(state_dict[key], np.float32)


def _attention(prefix: str, q, k, v, out_w, out_b, heads: int, arrays: Arrays) -> None:
  d = out_w.shape[0]
  if d % heads:
    raise FamrError(f"hidden size {d} is not a multiple of {heads} heads")
  hd = d // heads
  for name, (w, b) in zip(("query", "key", "value"), (q, k, v)):
    arrays[f"{prefix}/{name}/kernel"] = w.T.reshape(w.shape[1], heads, hd)
    arrays[f"{prefix}/{name}/bias"] = b.reshape(heads, hd)
  arrays[f"{prefix}/out/kernel"] = out_w.T.reshape(heads, hd, d)
  arrays[f"{prefix}/out/bias"] = out_b


def _refuse_unused(state_dict: Mapping[str, np.ndarray], used: set, what: str, ignored=()) -> None:
  for key in state_dict:
    if key not in used and not key.startswith(ignored):
      raise FamrError(f"the weights are not a {what} ViT famr-jax can load: unexpected key {key!r}")


def hf_to_bigvision(state_dict: Mapping[str, np.ndarray], num_heads: int) -> Arrays:
  """A Hugging Face ViT state dict in big_vision's names (see the module doc).

  Raises:
    FamrError: a missing or unexpected key, named.
  """
  if not any(k.startswith("vit.") for k in state_dict):
    state_dict = {f"vit.{k}" if not k.startswith("classifier.") else k: v for k, v in state_dict.items()}
  used: set = set()
  take = lambda key: _take(state_dict, used, key, "Hugging Face")   # noqa: E731
  arrays: Arrays = {
      "embedding/kernel": take("vit.embeddings.patch_embeddings.projection.weight").transpose(2, 3, 1, 0),
      "embedding/bias": take("vit.embeddings.patch_embeddings.projection.bias"),
      "cls": take("vit.embeddings.cls_token"),
      "Transformer/posembed_input/pos_embedding": take("vit.embeddings.position_embeddings"),
      "Transformer/encoder_norm/scale": take("vit.layernorm.weight"),
      "Transformer/encoder_norm/bias": take("vit.layernorm.bias"),
  }
  if "classifier.weight" in state_dict:
    arrays["head/kernel"], arrays["head/bias"] = take("classifier.weight").T, take("classifier.bias")
  depth = _depth(state_dict, r"^vit\.encoder\.layer\.(\d+)\.")
  for i in range(depth):
    src, dst = f"vit.encoder.layer.{i}.", f"Transformer/encoderblock_{i}/"
    for ours, theirs in (("LayerNorm_0", "layernorm_before"), ("LayerNorm_2", "layernorm_after")):
      arrays[dst + f"{ours}/scale"], arrays[dst + f"{ours}/bias"] = (take(src + f"{theirs}.weight"),
                                                                     take(src + f"{theirs}.bias"))
    qkv = [(take(src + f"attention.attention.{n}.weight"), take(src + f"attention.attention.{n}.bias"))
           for n in ("query", "key", "value")]
    _attention(dst + "MultiHeadDotProductAttention_1", *qkv, take(src + "attention.output.dense.weight"),
               take(src + "attention.output.dense.bias"), num_heads, arrays)
    for ours, theirs in (("Dense_0", "intermediate.dense"), ("Dense_1", "output.dense")):
      arrays[dst + f"MlpBlock_3/{ours}/kernel"] = take(src + f"{theirs}.weight").T
      arrays[dst + f"MlpBlock_3/{ours}/bias"] = take(src + f"{theirs}.bias")
  _refuse_unused(state_dict, used, "Hugging Face", HF_IGNORED)
  return arrays


def timm_to_bigvision(state_dict: Mapping[str, np.ndarray], num_heads: int) -> Arrays:
  """A timm ViT state dict in big_vision's names (see the module doc).

  Raises:
    FamrError: a missing or unexpected key, named (e.g. ``fc_norm`` of a
      mean-pooled model, or register tokens).
  """
  used: set = set()
  take = lambda key: _take(state_dict, used, key, "timm")   # noqa: E731
  arrays: Arrays = {
      "embedding/kernel": take("patch_embed.proj.weight").transpose(2, 3, 1, 0),
      "embedding/bias": take("patch_embed.proj.bias"),
      "cls": take("cls_token"),
      "Transformer/posembed_input/pos_embedding": take("pos_embed"),
      "Transformer/encoder_norm/scale": take("norm.weight"),
      "Transformer/encoder_norm/bias": take("norm.bias"),
  }
  if "head.weight" in state_dict:
    arrays["head/kernel"], arrays["head/bias"] = take("head.weight").T, take("head.bias")
  depth = _depth(state_dict, r"^blocks\.(\d+)\.")
  for i in range(depth):
    src, dst = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
    for ours, theirs in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
      arrays[dst + f"{ours}/scale"], arrays[dst + f"{ours}/bias"] = (take(src + f"{theirs}.weight"),
                                                                     take(src + f"{theirs}.bias"))
    w, b = take(src + "attn.qkv.weight"), take(src + "attn.qkv.bias")
    d = w.shape[1]
    qkv = [(w[j * d:(j + 1) * d], b[j * d:(j + 1) * d]) for j in range(3)]
    _attention(dst + "MultiHeadDotProductAttention_1", *qkv, take(src + "attn.proj.weight"),
               take(src + "attn.proj.bias"), num_heads, arrays)
    for ours, theirs in (("Dense_0", "mlp.fc1"), ("Dense_1", "mlp.fc2")):
      arrays[dst + f"MlpBlock_3/{ours}/kernel"] = take(src + f"{theirs}.weight").T
      arrays[dst + f"MlpBlock_3/{ours}/bias"] = take(src + f"{theirs}.bias")
  _refuse_unused(state_dict, used, "timm")
  return arrays


def vit_shape(state_dict: Mapping[str, np.ndarray], layout: str) -> dict[str, int]:
  """``hidden_dim``, ``depth``, ``mlp_dim``, ``patch_size``, ``channels`` and ``classes`` (0: no head) of a ViT state dict.

  Raises:
    FamrError: the keys that give them are missing.
  """
  if layout == "hf":
    prefix = "vit." if any(k.startswith("vit.") for k in state_dict) else ""
    patch, mlp = f"{prefix}embeddings.patch_embeddings.projection.weight", f"{prefix}encoder.layer.0.intermediate.dense.weight"
    depth, head = _depth(state_dict, rf"^{re.escape(prefix)}encoder\.layer\.(\d+)\."), "classifier.weight"
  else:
    patch, mlp, head = "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "head.weight"
    depth = _depth(state_dict, r"^blocks\.(\d+)\.")
  what = "Hugging Face" if layout == "hf" else "timm"
  for key in (patch, mlp):
    if key not in state_dict:
      raise FamrError(f"the weights are not a {what} ViT: missing key {key!r}")
  d, c, p, _ = np.shape(state_dict[patch])
  classes = int(np.shape(state_dict[head])[0]) if head in state_dict else 0
  return {"hidden_dim": int(d), "depth": depth, "mlp_dim": int(np.shape(state_dict[mlp])[0]),
          "patch_size": int(p), "channels": int(c), "classes": classes}
