"""The model zoo: every famr-jax model by name, built and initialised.

Example:
  >>> import jax
  >>> model = create_model('mlp', num_classes=10, image_shape=(8, 8, 1))
  >>> sorted(init_params(model, jax.random.key(0), (8, 8, 1)))
  ['fc1', 'fc2', 'head']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
import operator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from famr_jax.errors import FamrError
from famr_jax.models.alexnet import ALEXNET_MIN_SIZE, AlexNet
from famr_jax.models.karpathynet import KarpathyNet
from famr_jax.models.lenet5 import LeNet5
from famr_jax.models.logistic import LogisticRegression
from famr_jax.models.mlp import MLP
from famr_jax.models.resnet import RESNET_LAYOUTS, ResNet, resnet_from_layout
from famr_jax.models.vit import ViT, vit_from_preset

Params = dict[str, Any]
ApplyFn = Callable[[Params, jax.Array], jax.Array]

MODEL_NAMES: tuple[str, ...] = (
    'logistic', 'mlp', 'lenet5', 'karpathynet',
    'vit_nano', 'vit_micro', 'vit_ti', 'vit_s', 'vit_b', 'vit_l',
    'alexnet', 'resnet18', 'resnet34', 'resnet50', 'resnet18_cifar',
)

_CLASSES: dict[str, type[nn.Module]] = {
    'logistic': LogisticRegression,
    'mlp': MLP,
    'lenet5': LeNet5,
    'karpathynet': KarpathyNet,
    'alexnet': AlexNet,
}
RESNET_OVERRIDES = ('width', 'stage_sizes')   # for small test-sized ResNets


def check_image_shape(image_shape: Any) -> tuple[int, int, int]:
  try:
    shape = tuple(int(s) for s in image_shape)
    ok = len(shape) == 3 and all(s > 0 for s in shape) and shape == tuple(image_shape)
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise FamrError(f'image_shape must be three positive integers (H, W, C), got {image_shape!r}')
  return shape


def create_model(
    name: str, num_classes: int, image_shape: tuple[int, int, int], **overrides: Any
) -> nn.Module:
  """Builds a model by name.

  Args:
    name: one of ``MODEL_NAMES``.
    num_classes: number of output logits (>= 2).
    image_shape: ``(H, W, C)`` of the inputs (ViT presets derive the patch
      size from it).
    **overrides: constructor fields to change, e.g. ``hidden=(256,)`` for
      ``mlp`` or ``depth=2, patch_size=4`` for a ViT preset.

  Returns:
    An unbound Flax module; use ``init_params`` and ``make_apply_fn``.

  Raises:
    FamrError: unknown name, bad class count or image shape, or an override the
      model does not have or cannot use.

  Example:
    >>> create_model('mlp', 10, (8, 8, 1), hidden=(32,)).layer_names
    ('fc1', 'head')
  """
  if name not in MODEL_NAMES:
    raise FamrError(f'unknown model {name!r}; valid models: {", ".join(MODEL_NAMES)}')
  try:  # Python or NumPy integer (data loaders may hand over np.int64)
    n_classes = None if isinstance(num_classes, bool) else operator.index(num_classes)
  except TypeError:
    n_classes = None
  if n_classes is None or n_classes < 2:
    raise FamrError(f'num_classes must be an integer >= 2, got {num_classes!r}')
  num_classes = n_classes
  height, width, _ = check_image_shape(image_shape)

  if name in RESNET_LAYOUTS:
    return _create_resnet(name, num_classes, overrides)
  if name == 'alexnet' and min(height, width) < ALEXNET_MIN_SIZE:
    raise FamrError(f'alexnet needs images of at least {ALEXNET_MIN_SIZE}x{ALEXNET_MIN_SIZE}, got {height}x{width}')
  if name in _CLASSES:
    cls = _CLASSES[name]
    base: dict[str, Any] = {'num_classes': num_classes}
  else:
    cls = ViT
    preset = vit_from_preset(name, num_classes, (height, width, 1))
    base = {k: getattr(preset, k) for k in
            ('num_classes', 'patch_size', 'hidden_dim', 'depth', 'num_heads', 'mlp_dim')}

  fields = [f.name for f in dataclasses.fields(cls) if f.name not in ('parent', 'name')]
  for key in overrides:
    if key not in fields or key == 'num_classes':
      raise FamrError(
          f'model {name!r} has no override {key!r}; valid overrides: '
          f'{", ".join(f for f in fields if f != "num_classes") or "none"}'
      )
  kwargs = {**base, **overrides}
  _check_fields(name, kwargs, height, width)
  if 'hidden' in kwargs:
    kwargs['hidden'] = tuple(kwargs['hidden'])  # modules must be hashable
  return cls(**kwargs)


def _create_resnet(name: str, num_classes: int, overrides: Mapping[str, Any]) -> ResNet:
  for key, value in overrides.items():
    if key not in RESNET_OVERRIDES:
      raise FamrError(f'model {name!r} has no override {key!r}; valid overrides: {", ".join(RESNET_OVERRIDES)}')
    values = value if key == 'stage_sizes' else (value,)
    if (not isinstance(values, (tuple, list)) or not values
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)):
      raise FamrError(f'{name}: {key} must be {"a tuple of " if key == "stage_sizes" else "a "}'
                      f'positive integer{"s" if key == "stage_sizes" else ""}, got {value!r}')
  return resnet_from_layout(name, num_classes, **overrides)


def _check_fields(name: str, kwargs: Mapping[str, Any], height: int, width: int) -> None:
  """One-line FamrError for an override value the model cannot use."""
  def positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0

  if 'hidden' in kwargs:
    hidden = kwargs['hidden']
    if not isinstance(hidden, (tuple, list)) or not all(positive_int(h) for h in hidden):
      raise FamrError(f'{name}: hidden must be a tuple of positive integers, got {hidden!r}')
  for key in ('patch_size', 'hidden_dim', 'depth', 'num_heads', 'mlp_dim'):
    if key in kwargs and not positive_int(kwargs[key]):
      raise FamrError(f'{name}: {key} must be a positive integer, got {kwargs[key]!r}')
  if 'hidden_dim' in kwargs and kwargs['hidden_dim'] % kwargs['num_heads']:
    raise FamrError(
        f'{name}: hidden_dim {kwargs["hidden_dim"]} is not a multiple of num_heads {kwargs["num_heads"]}'
    )
  if 'patch_size' in kwargs and (height % kwargs['patch_size'] or width % kwargs['patch_size']):
    raise FamrError(
        f'{name}: patch_size {kwargs["patch_size"]} does not tile a {height}x{width} image'
    )


def init_params(model: nn.Module, key: jax.Array, image_shape: tuple[int, int, int]) -> Params:
  """Initial float32 params of ``model`` for images of ``image_shape``.

  Args:
    model: a module from ``create_model``.
    key: a ``jax.random`` key.
    image_shape: ``(H, W, C)``.

  Returns:
    The plain ``params`` dict (top-level keys = stage names), float32.

  Example:
    >>> import jax
    >>> model = create_model('logistic', 10, (8, 8, 1))
    >>> init_params(model, jax.random.key(0), (8, 8, 1))['fc']['kernel'].shape
    (64, 10)
  """
  shape = check_image_shape(image_shape)
  x = jnp.zeros((1, *shape), jnp.float32)
  # Init is a one-shot program whose cost is XLA compile time (mostly the
  # threefry bits of every param shape): compiling it without backend
  # optimizations is ~30% faster on CPU and the params are just as random
  # (still deterministic in `key`, but not bit-equal to `model.init`).
  if isinstance(key, jax.core.Tracer):  # under jit / vmap / eval_shape
    return flax.core.unfreeze(model.init(key, x)['params'])
  init = jax.jit(model.init).lower(key, x).compile(
      compiler_options={'xla_backend_optimization_level': 0}
  )
  return flax.core.unfreeze(init(key, x)['params'])
