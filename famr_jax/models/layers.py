"""A 2-D convolution with a per-backend formulation switch.

XLA:CPU runs the backward pass of ``lax.conv_general_dilated`` several times
slower inside a ``lax.scan`` (or any loop body) than in a lone jitted step; the
same convolution written as *im2col* (the ``kh * kw`` shifted slices of the
padded input concatenated on the channel axis, then one matmul against the
kernel reshaped to ``[kh * kw * cin, cout]``) has no such penalty and was
measured ~4x faster for LeNet5 training on CPU in a scan (but slower than
``lax`` in a Python loop of jitted steps). On a GPU, cuDNN's convolution is
the fast one. So :class:`Conv` chooses by where it is traced:

==============  =============================================================
formulation    computation
==============  =============================================================
``"auto"``     ``"lax"``, except ``"im2col"`` on CPU inside :func:`in_loop_body`
               (the engine's scan, the impressions' scan); ``conv_formulation``
               can redefine it
``"im2col"``   slices + concatenate + matmul; a non-overlapping conv (stride
               equal to the kernel, e.g. a ViT patch embedding) is a reshape
               + matmul instead
``"lax"``      ``lax.conv_general_dilated`` (what ``flax.linen.Conv`` does)
``"measured"`` forward, input gradient and weight gradient each by the
               formulation ``conv_ops.measured_plan`` reads from the committed
               table ``conv_plans.json`` (``experiments/bench_conv.py`` writes
               it); ``lax`` for shapes and backends it has no entry for
==============  =============================================================

A ``Conv`` whose formulation is ``"auto"`` and which is traced with no setting
in force (no :func:`conv_formulation`, no :func:`in_loop_body` on CPU) uses
``"measured"``; :func:`resolve_formulation` then answers ``"lax"``, the family
the measured plan falls back to.

The params are those of ``flax.linen.Conv`` (``kernel`` ``[kh, kw, cin,
cout]`` and ``bias`` ``[cout]``, same initializers), so checkpoints of either
load into the other and both formulations compute the same function.

The formulation is read when a function is traced: a jitted function keeps the
formulation it was compiled with, so build (or re-jit) it inside
``conv_formulation`` to compare formulations.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
from flax.linen.linear import default_kernel_init
import jax
from jax import lax
import jax.numpy as jnp

from famr_jax.errors import FamrError
from famr_jax.models import conv_ops
# The trace-time setting lives below models and engine both; re-exported here, where users look for it.
from famr_jax.trace_settings import (FORMULATIONS, Formulation, conv_formulation, formulation_is_set, in_loop_body,  # noqa: F401
                                     resolve_formulation, set_conv_formulation)

def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
  if isinstance(value, int) and not isinstance(value, bool):
    value = (value, value)
  value = tuple(value)
  if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
    raise FamrError(f'Conv: {what} must be a positive int or two of them, got {value!r}')
  return value


def explicit_padding(
    padding: Any, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int]]:
  """``((lo, hi), (lo, hi))`` for ``"SAME"``, ``"VALID"``, an int or per-axis pads.

  The padding forms of ``flax.linen.Conv`` used by the models (no circular,
  reflect or causal padding).

  Raises:
    FamrError: a padding this layer does not support.

  Example:
    >>> explicit_padding('SAME', (28, 28), (5, 5), (1, 1))
    ((2, 2), (2, 2))
    >>> explicit_padding(((2, 2), 0), (8, 8), (5, 5), (1, 1))
    ((2, 2), (0, 0))
  """
  if isinstance(padding, str):
    if padding.upper() not in ('SAME', 'VALID'):
      raise FamrError(f'Conv: padding must be SAME, VALID or explicit, got {padding!r}')
    pads = lax.padtype_to_pads(tuple(spatial), tuple(kernel), tuple(strides), padding.upper())
    return tuple((int(lo), int(hi)) for lo, hi in pads)
  if isinstance(padding, int) and not isinstance(padding, bool):
    return ((padding, padding), (padding, padding))
  try:
    pads = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
    ok = len(pads) == 2 and all(
        len(p) == 2 and all(isinstance(v, int) and v >= 0 for v in p) for p in pads)
  except TypeError:
    ok = False
  if not ok:
    raise FamrError(f'Conv: padding must be SAME, VALID, an int or two (lo, hi) pairs, got {padding!r}')
  return pads


def conv2d_im2col(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int] = (1, 1),
    padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0)),
    precision: Any = None,
) -> jax.Array:
  """NHWC x HWIO cross-correlation as slices + concatenate + one matmul.

  Args:
    x: ``[N, H, W, cin]``.
    kernel: ``[kh, kw, cin, cout]``.
    strides: ``(sh, sw)``.
    padding: explicit ``((lo, hi), (lo, hi))`` zero padding.
    precision: passed to the matmul.

  Returns:
    ``[N, out_h, out_w, cout]``, what ``lax.conv_general_dilated`` returns.

  Example:
    >>> import jax.numpy as jnp
    >>> conv2d_im2col(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2))).shape
    (1, 2, 2, 2)
  """
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  if any(p for pair in padding for p in pair):
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  n, height, width, _ = x.shape
  out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
  if out_h <= 0 or out_w <= 0:
    raise FamrError(
        f'Conv: a {kh}x{kw} kernel does not fit the padded {height}x{width} input')
  if (kh, kw) == (sh, sw):
    # Non-overlapping windows (a ViT patch embedding): the patches are a
    # reshape of the cropped input, not kh * kw slices.
    x = x[:, :out_h * kh, :out_w * kw]
    patches = x.reshape(n, out_h, kh, out_w, kw, cin).transpose(0, 1, 3, 2, 4, 5)
  else:
    # Patch channel order (i, j, c) is the row-major order of the kernel's
    # first three axes, so the kernel reshapes without a transpose.
    patches = jnp.concatenate([
        lax.slice(x, (0, i, j, 0), (n, i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, cin),
                  (1, sh, sw, 1))
        for i in range(kh) for j in range(kw)
    ], axis=-1)
  patches = patches.reshape(n, out_h, out_w, kh * kw * cin)
  return jnp.matmul(patches, kernel.reshape(kh * kw * cin, cout), precision=precision)


class Conv(nn.Module):
  """2-D convolution, NHWC: ``flax.linen.Conv``'s params with a formulation switch.

  Same param names, shapes and initializers as ``nn.Conv(features,
  kernel_size, strides, padding)``, so a model can swap one for the other and
  keep its checkpoints. Inputs are ``[..., H, W, C]`` (leading batch axes are
  flattened for the convolution, a missing one is added, as in ``nn.Conv``).

  Attributes:
    features: output channels.
    kernel_size: ``(kh, kw)`` or an int.
    strides: ``(sh, sw)`` or an int.
    padding: ``"SAME"``, ``"VALID"``, an int, or per-axis ``(lo, hi)`` pairs.
    use_bias: add a bias.
    formulation: ``"auto"`` (im2col on CPU, lax elsewhere; see
      ``conv_formulation``), ``"im2col"`` or ``"lax"``.
    dtype: computation dtype (``None``: promoted from inputs and params).
    param_dtype: dtype of the params.
    precision: matmul / conv precision.
    kernel_init: kernel initializer (``nn.Conv``'s LeCun normal).
    bias_init: bias initializer (zeros).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> conv = Conv(6, (5, 5), padding=((2, 2), (2, 2)), formulation='im2col')
    >>> y, v = conv.init_with_output(jax.random.key(0), jnp.ones((2, 28, 28, 1)))
    >>> y.shape, v['params']['kernel'].shape, v['params']['bias'].shape
    ((2, 28, 28, 6), (5, 5, 1, 6), (6,))
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Any = 'SAME'
  use_bias: bool = True
  formulation: Formulation = 'auto'
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel_size = _pair(self.kernel_size, 'kernel_size')
    strides = _pair(self.strides, 'strides')
    formulation = resolve_formulation(self.formulation)
    measured = formulation == 'measured' or (self.formulation == 'auto' and not formulation_is_set())
    if x.ndim < 3:
      raise FamrError(f'Conv: input must be [..., H, W, C], got shape {x.shape}')
    batch_shape = x.shape[:-3]
    x = x.reshape((math.prod(batch_shape), *x.shape[-3:]))
    kernel = self.param('kernel', self.kernel_init, (*kernel_size, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    padding = explicit_padding(self.padding, x.shape[1:3], kernel_size, strides)
    if measured:
      plan = conv_ops.measured_plan(x.shape, kernel.shape, strides, padding, x.dtype)
      y = conv_ops.conv2d(x, kernel, strides, padding, plan, self.precision)
    elif formulation == 'im2col':
      y = conv2d_im2col(x, kernel, strides, padding, self.precision)
    else:
      y = lax.conv_general_dilated(
          x, kernel, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          precision=self.precision)
    if bias is not None:
      y = y + bias
    return y.reshape((*batch_shape, *y.shape[1:]))
