"""2-D convolutions whose forward pass and two gradients are chosen separately, by measurement.

A convolution ``y = x * k`` (NHWC input, HWIO kernel, explicit padding, any
stride) has three computations a training step needs: the forward pass, the
input gradient ``dx`` and the weight gradient ``dk``. XLA:CPU's
``lax.conv_general_dilated`` is slow on some of them for the small convolutions
of LeNet5 / KarpathyNet (a 1 -> 6 channel 5x5 conv ran 7x slower than
PyTorch's), and no single formulation wins all three, so each is done by one
of:

============  ================================================================
formulation   computation
============  ================================================================
``"shifted"`` ``kh * kw`` shifted slices of the padded input, each multiplied
              by one kernel tap and summed (few input channels); for ``dk``:
              one small contraction per tap
``"im2col"``  the ``kh * kw`` slices concatenated on the channel axis, then one
              matmul (``dk``: the patches' transpose times ``dy``)
``"lax"``     ``lax.conv_general_dilated`` (and its own transposes for ``dk``)
============  ================================================================

``dx`` is the forward convolution of the (stride-dilated) output gradient with
the flipped, channel-swapped kernel, so it is computed by any of the forward
formulations. :func:`conv2d` wraps the choice in a ``jax.custom_vjp``; each
formulation's own rule is exact (not an autodiff of the other), and the choice
changes no value beyond float32 summation order (``tests/test_conv_formulations.py``).

Which formulation does which part is a :class:`ConvPlan`, read by
:func:`measured_plan` from ``conv_plans.json``, a small table written by
``experiments/bench_conv.py`` (fastest median of each part, per backend and
convolution shape). Shapes or backends the table has no entry for get
``lax.conv`` for every part (``ConvPlan()``), which is also what a GPU gets:
cuDNN's convolution is the fast one there (not measured in this table).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp

from famr_jax.errors import FamrError

PARTS_FORMULATIONS: tuple[str, ...] = ('shifted', 'im2col', 'lax')
Pads = tuple[tuple[int, int], tuple[int, int]]
_DIMS = ('NHWC', 'HWIO', 'NHWC')
TABLE_PATH = os.path.join(os.path.dirname(__file__), 'conv_plans.json')


class ConvPlan(NamedTuple):
  """Which formulation computes each part of a convolution (``"shifted"``, ``"im2col"`` or ``"lax"``).

  Example:
    >>> ConvPlan()
    ConvPlan(forward='lax', input_grad='lax', weight_grad='lax')
  """
  forward: str = 'lax'
  input_grad: str = 'lax'
  weight_grad: str = 'lax'


def _check_plan(plan: ConvPlan) -> ConvPlan:
  plan = ConvPlan(*plan)
  for part, formulation in zip(ConvPlan._fields, plan):
    if formulation not in PARTS_FORMULATIONS:
      raise FamrError(f'conv plan: {part} must be one of {", ".join(PARTS_FORMULATIONS)}, '
                      f'got {formulation!r}')
  return plan


def _pad(x: jax.Array, padding: Pads) -> jax.Array:
  # lax.pad takes negative pads (crops), which the input gradient's padding can need.
  if not any(p for pair in padding for p in pair):
    return x
  zero = jnp.zeros((), x.dtype)
  return lax.pad(x, zero, ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))


def _out_size(size: int, k: int, s: int, lo: int, hi: int) -> int:
  return (size + lo + hi - k) // s + 1


def _taps(xp: jax.Array, kh: int, kw: int, strides: Sequence[int], out_h: int, out_w: int):
  """The ``kh * kw`` strided windows of a padded input, row-major over the taps."""
  n, _, _, c = xp.shape
  sh, sw = strides
  return [lax.slice(xp, (0, i, j, 0), (n, i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, c),
                    (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]


def _geometry(x, kernel, strides, padding):
  kh, kw = kernel.shape[:2]
  out_h = _out_size(x.shape[1], kh, strides[0], *padding[0])
  out_w = _out_size(x.shape[2], kw, strides[1], *padding[1])
  if out_h <= 0 or out_w <= 0:
    raise FamrError(f'Conv: a {kh}x{kw} kernel does not fit the padded '
                    f'{x.shape[1] + sum(padding[0])}x{x.shape[2] + sum(padding[1])} input')
  return kh, kw, out_h, out_w


def forward_lax(x, kernel, strides, padding, precision=None):
  """``lax.conv_general_dilated`` on NHWC x HWIO (what ``flax.linen.Conv`` computes).

  Example:
    >>> forward_lax(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2)), (1, 1), ((0, 0), (0, 0))).shape
    (1, 2, 2, 2)
  """
  return lax.conv_general_dilated(x, kernel, tuple(strides), tuple(map(tuple, padding)),
                                  dimension_numbers=_DIMS, precision=precision)


def forward_im2col(x, kernel, strides, padding, precision=None):
  """The convolution as patches (slices concatenated on channels) times the reshaped kernel.

  Example:
    >>> forward_im2col(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2)), (1, 1), ((0, 0), (0, 0)))[0, 0, 0]
    Array([9., 9.], dtype=float32)
  """
  kh, kw, out_h, out_w = _geometry(x, kernel, strides, padding)
  cin, cout = kernel.shape[2:]
  xp = _pad(x, padding)
  n = xp.shape[0]
  if (kh, kw) == tuple(strides):
    # Non-overlapping windows (a ViT patch embedding): the patches are a reshape, not kh * kw slices.
    xp = xp[:, :out_h * kh, :out_w * kw]
    patches = xp.reshape(n, out_h, kh, out_w, kw, cin).transpose(0, 1, 3, 2, 4, 5)
  else:
    # Patch channel order (i, j, c) is the kernel's row-major order: it reshapes without a transpose.
    patches = jnp.concatenate(_taps(xp, kh, kw, strides, out_h, out_w), axis=-1)
  patches = patches.reshape(n, out_h, out_w, kh * kw * cin)
  return jnp.matmul(patches, kernel.reshape(kh * kw * cin, cout), precision=precision)


def forward_shifted(x, kernel, strides, padding, precision=None):
  """The convolution as a sum over taps and input channels of window x kernel-row products.

  ``kh * kw * cin`` broadcast multiply-adds; fast where ``cin`` is small (a
  first layer on grey or RGB images).

  Example:
    >>> forward_shifted(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 2)), (1, 1), ((0, 0), (0, 0)))[0, 0, 0]
    Array([9., 9.], dtype=float32)
  """
  del precision   # elementwise products: no matmul precision to pass
  kh, kw, out_h, out_w = _geometry(x, kernel, strides, padding)
  cin = kernel.shape[2]
  y = None
  for t, window in enumerate(_taps(_pad(x, padding), kh, kw, strides, out_h, out_w)):
    i, j = divmod(t, kw)
    for c in range(cin):
      term = window[..., c:c + 1] * kernel[i, j, c]
      y = term if y is None else y + term
  return y


FORWARDS = {'lax': forward_lax, 'im2col': forward_im2col, 'shifted': forward_shifted}


def input_grad(dy, kernel, in_hw, strides, padding, formulation='lax', precision=None):
  """``dx`` of the convolution: the stride-dilated ``dy`` convolved with the flipped, swapped kernel.

  Args:
    dy: ``[N, out_h, out_w, cout]``.
    kernel: ``[kh, kw, cin, cout]``.
    in_hw: the input's ``(H, W)``.
    strides, padding: the forward convolution's.
    formulation: the forward formulation that computes it.
    precision: passed to the matmul / conv.

  Returns:
    ``[N, H, W, cin]``.

  Example:
    >>> input_grad(jnp.ones((1, 2, 2, 1)), jnp.ones((3, 3, 1, 1)), (4, 4), (1, 1), ((0, 0), (0, 0)))[0, :, :, 0]
    Array([[1., 2., 2., 1.],
           [2., 4., 4., 2.],
           [2., 4., 4., 2.],
           [1., 2., 2., 1.]], dtype=float32)
  """
  kh, kw = kernel.shape[:2]
  pads = []
  for size, k, s, (lo, hi), out in zip(in_hw, (kh, kw), strides, padding, dy.shape[1:3]):
    rest = size + lo + hi - k - (out - 1) * s   # rows past the last window: they get zero gradient
    pads.append((k - 1 - lo, k - 1 - hi + rest))
  if tuple(strides) != (1, 1):
    zero = jnp.zeros((), dy.dtype)
    dy = lax.pad(dy, zero, ((0, 0, 0), (0, 0, strides[0] - 1), (0, 0, strides[1] - 1), (0, 0, 0)))
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  return FORWARDS[formulation](dy, flipped, (1, 1), tuple(pads), precision)


def weight_grad(x, dy, kernel_hw, strides, padding, formulation='lax', precision=None):
  """``dk[i, j, c, o] = sum over n, h, w of x_pad[n, i + s h, j + s w, c] dy[n, h, w, o]``.

  Example:
    >>> weight_grad(jnp.ones((1, 4, 4, 1)), jnp.ones((1, 2, 2, 1)), (3, 3), (1, 1), ((0, 0), (0, 0)))[..., 0, 0]
    Array([[4., 4., 4.],
           [4., 4., 4.],
           [4., 4., 4.]], dtype=float32)
  """
  kh, kw = kernel_hw
  cin, cout = x.shape[-1], dy.shape[-1]
  if formulation == 'lax':
    def fwd(k):
      return forward_lax(x, k, strides, padding, precision)
    _, vjp = jax.vjp(fwd, jnp.zeros((kh, kw, cin, cout), x.dtype))
    return vjp(dy)[0]
  out_h, out_w = dy.shape[1:3]
  windows = _taps(_pad(x, padding), kh, kw, strides, out_h, out_w)
  if formulation == 'im2col':
    patches = jnp.concatenate(windows, axis=-1).reshape(-1, kh * kw * cin)
    dk = jnp.matmul(patches.T, dy.reshape(-1, cout), precision=precision)
    return dk.reshape(kh, kw, cin, cout)
  dy2 = dy.reshape(-1, cout)
  taps = [jnp.matmul(w.reshape(-1, cin).T, dy2, precision=precision) for w in windows]
  return jnp.stack(taps).reshape(kh, kw, cin, cout)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, kernel, strides, padding, plan, precision):
  return FORWARDS[plan.forward](x, kernel, strides, padding, precision)


def _conv_fwd(x, kernel, strides, padding, plan, precision):
  return _conv(x, kernel, strides, padding, plan, precision), (x, kernel)


def _conv_bwd(strides, padding, plan, precision, residuals, dy):
  x, kernel = residuals
  dx = input_grad(dy, kernel, x.shape[1:3], strides, padding, plan.input_grad, precision)
  dk = weight_grad(x, dy, kernel.shape[:2], strides, padding, plan.weight_grad, precision)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1),
           padding: Pads = ((0, 0), (0, 0)), plan: ConvPlan = ConvPlan(),
           precision: Any = None) -> jax.Array:
  """NHWC x HWIO cross-correlation with the forward pass and each gradient done as ``plan`` says.

  Args:
    x: ``[N, H, W, cin]``.
    kernel: ``[kh, kw, cin, cout]``.
    strides: ``(sh, sw)``.
    padding: explicit ``((lo, hi), (lo, hi))`` zero padding.
    plan: the formulation of each part (all ``lax.conv`` by default).
    precision: passed to the matmuls / convolutions.

  Returns:
    ``[N, out_h, out_w, cout]``, what ``lax.conv_general_dilated`` returns.

  Example:
    >>> x, k = jnp.ones((2, 6, 6, 1)), jnp.ones((5, 5, 1, 3))
    >>> plan = ConvPlan('shifted', 'im2col', 'shifted')
    >>> pads = ((2, 2), (2, 2))
    >>> bool(jnp.allclose(conv2d(x, k, (1, 1), pads, plan), conv2d(x, k, (1, 1), pads)))
    True
  """
  strides = tuple(int(s) for s in strides)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(x, kernel, strides, padding, _check_plan(plan), precision)


def shape_key(x_shape: Sequence[int], kernel_shape: Sequence[int], strides: Sequence[int],
              padding: Pads) -> str:
  """The table's key of a convolution: input ``H x W x cin``, kernel, strides, padding (no batch).

  Example:
    >>> shape_key((128, 28, 28, 1), (5, 5, 1, 6), (1, 1), ((2, 2), (2, 2)))
    '28x28x1 k5x5x6 s1x1 p2,2,2,2'
  """
  h, w, c = x_shape[-3:]
  kh, kw, _, cout = kernel_shape
  pads = ','.join(str(int(p)) for pair in padding for p in pair)
  return f'{h}x{w}x{c} k{kh}x{kw}x{cout} s{strides[0]}x{strides[1]} p{pads}'


@functools.lru_cache(maxsize=None)
def _table(path: str = TABLE_PATH) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return {}


def measured_plan(x_shape, kernel_shape, strides, padding, dtype: Any = jnp.float32,
                  backend: str | None = None) -> ConvPlan:
  """The plan ``conv_plans.json`` records as fastest for this shape on ``backend`` (default: the current one).

  float32 only; any other dtype, backend or shape not in the table: ``ConvPlan()`` (``lax.conv``).

  Example:
    >>> measured_plan((128, 28, 28, 1), (5, 5, 1, 6), (1, 1), ((2, 2), (2, 2)), backend='gpu')
    ConvPlan(forward='lax', input_grad='lax', weight_grad='lax')
  """
  if jnp.dtype(dtype) != jnp.float32:
    return ConvPlan()
  backend = backend or jax.default_backend()
  entry = _table().get('plans', {}).get(backend, {}).get(shape_key(x_shape, kernel_shape, strides, padding))
  if entry is None:
    return ConvPlan()
  return _check_plan(ConvPlan(**{part: entry[part] for part in ConvPlan._fields}))
