"""Weight-name layouts of ViT checkpoints for the tests, NumPy only (no torch)."""

import numpy as np


def hf_to_timm(sd):
  """The same weights in timm's VisionTransformer names (fused qkv)."""
  out = {"cls_token": sd["vit.embeddings.cls_token"], "pos_embed": sd["vit.embeddings.position_embeddings"],
         "patch_embed.proj.weight": sd["vit.embeddings.patch_embeddings.projection.weight"],
         "patch_embed.proj.bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
         "norm.weight": sd["vit.layernorm.weight"], "norm.bias": sd["vit.layernorm.bias"],
         "head.weight": sd["classifier.weight"], "head.bias": sd["classifier.bias"]}
  depth = len({k.split(".")[3] for k in sd if k.startswith("vit.encoder.layer.")})
  for i in range(depth):
    p, q = f"vit.encoder.layer.{i}.", f"blocks.{i}."
    att = p + "attention.attention."
    out[q + "attn.qkv.weight"] = np.concatenate([sd[att + n + ".weight"] for n in ("query", "key", "value")])
    out[q + "attn.qkv.bias"] = np.concatenate([sd[att + n + ".bias"] for n in ("query", "key", "value")])
    for a, b in (("norm1", "layernorm_before"), ("norm2", "layernorm_after"), ("attn.proj", "attention.output.dense"),
                 ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
      out[q + a + ".weight"], out[q + a + ".bias"] = sd[p + b + ".weight"], sd[p + b + ".bias"]
  return out
