"""Vision Transformer (Dosovitskiy et al., 2021), the original pre-LN design.

Patch embedding by a strided conv, a learned class token, learned position
embeddings, ``depth`` pre-LayerNorm encoder blocks (multi-head self-attention
with q/k/v and output biases, then an MLP with exact GELU, each with a
residual), a final LayerNorm and a linear head on the class token. No dropout,
so a model is fully described by its ``params``.

Stages: ``"embed"`` (patchify + class token + position embeddings; the
``cls`` and ``pos_embedding`` params live in the ``embed`` subtree),
``"block_0"`` ... ``"block_{depth-1}"``, ``"norm"`` (final LayerNorm applied
to the class token: its output is the (N, hidden_dim) feature vector) and
``"head"``.

Presets (``vit_config``): the standard ViT-Ti/S/B/L with patch 16, whose
parameter counts at 224x224x3 and 1000 classes equal the published
5,717,416 / 22,050,664 / 86,567,656 / 304,326,632, and two CPU-sized presets,
``vit_nano`` and ``vit_micro``, whose patch size follows ``auto_patch_size``.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from famr_jax.errors import FamrError
from famr_jax.validation import CheckedFields
from famr_jax.models.base import run_stages
from famr_jax.models.layers import Conv

_LN_EPSILON = 1e-6  # as in the original ViT and timm


@dataclasses.dataclass(frozen=True)
class ViTConfig(CheckedFields):
  """Architecture of a ViT preset (everything except the class count).

  Attributes:
    hidden_dim: token width D.
    depth: number of encoder blocks.
    num_heads: attention heads (must divide ``hidden_dim``).
    mlp_dim: hidden width of each block's MLP.
    patch_size: square patch side; ``None`` means ``auto_patch_size(H, W)``.
  """

  hidden_dim: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int | None = 16


VIT_PRESETS: dict[str, ViTConfig] = {
    # CPU-sized presets: a few thousand to ~0.2M params at 10 classes.
    'vit_nano': ViTConfig(hidden_dim=32, depth=2, num_heads=2, mlp_dim=64, patch_size=None),
    'vit_micro': ViTConfig(hidden_dim=64, depth=4, num_heads=4, mlp_dim=128, patch_size=None),
    # Dosovitskiy et al. (2021) Table 1 and Touvron et al. (2021, DeiT) for Ti/S.
    'vit_ti': ViTConfig(hidden_dim=192, depth=12, num_heads=3, mlp_dim=768),
    'vit_s': ViTConfig(hidden_dim=384, depth=12, num_heads=6, mlp_dim=1536),
    'vit_b': ViTConfig(hidden_dim=768, depth=12, num_heads=12, mlp_dim=3072),
    'vit_l': ViTConfig(hidden_dim=1024, depth=24, num_heads=16, mlp_dim=4096),
}


def vit_config(preset: str) -> ViTConfig:
  """The architecture of a named ViT preset.

  Args:
    preset: one of ``VIT_PRESETS`` (``vit_nano``, ``vit_micro``, ``vit_ti``,
      ``vit_s``, ``vit_b``, ``vit_l``).

  Returns:
    The preset's ``ViTConfig``.

  Raises:
    FamrError: unknown preset.

  Example:
    >>> vit_config('vit_b').hidden_dim
    768
  """
  if preset not in VIT_PRESETS:
    raise FamrError(
        f'unknown ViT preset {preset!r}; valid presets: {", ".join(VIT_PRESETS)}'
    )
  return VIT_PRESETS[preset]


def auto_patch_size(height: int, width: int, max_tokens: int = 64) -> int:
  """Patch size for the small presets: the smallest divisor p >= 2 of gcd(H, W)
  giving at most ``max_tokens`` patches, else gcd(H, W).

  Patches must tile the image exactly, so p divides both sides; the token
  budget keeps attention cheap on a CPU. 8x8 -> 2 (16 tokens), 28x28 -> 4
  (49 tokens), 32x32 -> 4 (64 tokens), 224x224 -> 28 (64 tokens).

  Args:
    height: image height.
    width: image width.
    max_tokens: largest number of patches allowed.

  Returns:
    The patch side.

  Example:
    >>> auto_patch_size(28, 28)
    4
  """
  g = math.gcd(height, width)
  for p in range(2, g + 1):
    if g % p == 0 and (height // p) * (width // p) <= max_tokens:
      return p
  return g


def patch_size_for(config: ViTConfig, height: int, width: int) -> int:
  """The patch size a preset uses on an H x W image.

  A fixed ``patch_size`` (16 for Ti/S/B/L) is used when it tiles the image;
  otherwise (e.g. 28x28 or 8x8 with patch 16) the ``auto_patch_size`` rule
  applies, so every preset is defined on the small data sets.

  Example:
    >>> patch_size_for(vit_config('vit_b'), 224, 224), patch_size_for(vit_config('vit_b'), 28, 28)
    (16, 4)
  """
  p = config.patch_size
  if p is not None and height % p == 0 and width % p == 0:
    return p
  return auto_patch_size(height, width)


class Embed(nn.Module):
  """Patchify (strided conv), prepend the class token, add position embeddings."""

  patch_size: int
  hidden_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch_size
    # Stride = kernel: on CPU ("auto" im2col) a reshape + matmul, on GPU cuDNN.
    x = Conv(self.hidden_dim, (p, p), strides=(p, p), padding='VALID', name='patch')(x)
    n, h, w, d = x.shape
    x = x.reshape(n, h * w, d)
    cls = self.param('cls', nn.initializers.zeros, (1, 1, d), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, d)).astype(x.dtype), x], axis=1)
    pos = self.param(
        'pos_embedding', nn.initializers.normal(stddev=0.02), (1, h * w + 1, d), jnp.float32
    )
    return x + pos


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> exact GELU -> Dense(hidden_dim)."""

  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    dense = lambda f, name: nn.Dense(
        f, kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6), name=name)
    x = dense(self.mlp_dim, 'fc1')(x)
    x = nn.gelu(x, approximate=False)
    return dense(d, 'fc2')(x)


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.LayerNorm(epsilon=_LN_EPSILON, name='norm1')(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        kernel_init=nn.initializers.xavier_uniform(),
        name='attn',
    )(y)
    x = x + y
    y = nn.LayerNorm(epsilon=_LN_EPSILON, name='norm2')(x)
    return x + MlpBlock(self.mlp_dim, name='mlp')(y)


class ViT(nn.Module):
  """Vision Transformer classifier on NHWC images.

  Attributes:
    num_classes: number of output logits.
    patch_size: square patch side; H and W should be multiples of it (a
      remainder is dropped by the VALID patch conv; ``create_model`` refuses it).
    hidden_dim: token width D (a multiple of ``num_heads``).
    depth: number of encoder blocks.
    num_heads: attention heads.
    mlp_dim: MLP hidden width.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = ViT(num_classes=10, patch_size=2, hidden_dim=16, depth=1,
    ...             num_heads=2, mlp_dim=32)
    >>> model.layer_names
    ('embed', 'block_0', 'norm', 'head')
    >>> logits, v = jax.eval_shape(model.init_with_output, jax.random.key(0),
    ...                            jnp.zeros((3, 8, 8, 1)))
    >>> logits.shape, v['params']['embed']['pos_embedding'].shape
    ((3, 10), (1, 17, 16))
  """

  num_classes: int
  patch_size: int
  hidden_dim: int
  depth: int
  num_heads: int
  mlp_dim: int

  @property
  def layer_names(self) -> tuple[str, ...]:
    return ('embed', *(f'block_{i}' for i in range(self.depth)), 'norm', 'head')

  @nn.compact
  def __call__(
      self, x: jax.Array, *, start: str | None = None, stop: str | None = None
  ) -> jax.Array:
    def block(i: int):
      name = f'block_{i}'
      return name, lambda h: EncoderBlock(self.num_heads, self.mlp_dim, name=name)(h)

    stages = (
        ('embed', lambda h: Embed(self.patch_size, self.hidden_dim, name='embed')(h)),
        *(block(i) for i in range(self.depth)),
        # LayerNorm is per token, so normalizing only the class token equals
        # normalizing all tokens and then taking the class token.
        ('norm', lambda h: nn.LayerNorm(epsilon=_LN_EPSILON, name='norm')(h[:, 0])),
        ('head', lambda h: nn.Dense(self.num_classes, name='head')(h)),
    )
    return run_stages(self, stages, x, start, stop)


def vit_from_preset(
    preset: str, num_classes: int, image_shape: tuple[int, int, int]
) -> ViT:
  """A ``ViT`` for a named preset on images of ``image_shape`` (H, W, C).

  Example:
    >>> vit_from_preset('vit_nano', 10, (8, 8, 1)).patch_size
    2
  """
  cfg = vit_config(preset)
  return ViT(
      num_classes=num_classes,
      patch_size=patch_size_for(cfg, image_shape[0], image_shape[1]),
      hidden_dim=cfg.hidden_dim,
      depth=cfg.depth,
      num_heads=cfg.num_heads,
      mlp_dim=cfg.mlp_dim,
  )
