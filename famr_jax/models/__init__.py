"""Flax models and the functional interface the unlearning code uses.

Every model is a sequence of named *stages* (see ``famr_jax.models.base``):
``layer_names(model)`` lists them, their params live under top-level keys equal
to their names, and ``model.apply(variables, h, start=a, stop=b)`` runs stages
``a`` to ``b`` (defaults: first and last) on the input of stage ``a``. Stage
outputs are also sown as ``intermediates['stage_outputs'][name]``.
The algorithms never import a model class: they take the functions built here
(``apply_fn(params, x) -> logits``, feature, layer-input and tail functions) and
plain params dicts.

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = create_model('mlp', num_classes=10, image_shape=(8, 8, 1))
  >>> layer_names(model)
  ('fc1', 'fc2', 'head')
  >>> params = init_params(model, jax.random.key(0), (8, 8, 1))
  >>> count_params(params)
  17226
  >>> x = jnp.ones((2, 8, 8, 1))
  >>> h = make_layer_input_fn(model, 'head')(params, x)
  >>> h.shape
  (2, 64)
  >>> logits = make_tail_apply_fn(model, 'head')(params, h)
  >>> bool(jnp.allclose(logits, make_apply_fn(model)(params, x)))
  True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import math
import operator
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from famr_jax.errors import FamrError
from famr_jax.models.alexnet import ALEXNET_MIN_SIZE, AlexNet
from famr_jax.models.base import STAGE_OUTPUTS, stage_index
from famr_jax.models.batchnorm import (BATCH_MOMENTS, BATCH_STATS, BatchNorm, BatchStats, accumulate_moments,
                                       batch_stats_of, has_batch_norm, model_variables)
from famr_jax.models.karpathynet import KarpathyNet
from famr_jax.models.layers import Conv, conv_formulation, set_conv_formulation
from famr_jax.models.lenet5 import LeNet5
from famr_jax.models.logistic import LogisticRegression
from famr_jax.models.mlp import MLP
from famr_jax.models.resnet import RESNET_LAYOUTS, ResNet, resnet_from_layout
from famr_jax.models.vit import VIT_PRESETS, ViT, ViTConfig, auto_patch_size, vit_config, vit_from_preset

__all__ = [
    'MODEL_NAMES',
    'AlexNet',
    'BatchNorm',
    'BatchStats',
    'ResNet',
    'batch_stats_of',
    'has_batch_norm',
    'init_batch_stats',
    'make_train_apply_fn',
    'recompute_batch_stats',
    'with_batch_stats',
    'Conv',
    'KarpathyNet',
    'LeNet5',
    'LogisticRegression',
    'MLP',
    'ViT',
    'ViTConfig',
    'VIT_PRESETS',
    'auto_patch_size',
    'conv_formulation',
    'count_params',
    'create_model',
    'init_params',
    'layer_names',
    'make_apply_fn',
    'make_apply_with_features_fn',
    'make_feature_fn',
    'make_layer_input_fn',
    'make_tail_apply_fn',
    'merge_params',
    'set_conv_formulation',
    'split_params',
    'tail_param_mask',
    'vit_config',
]

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


def _check_image_shape(image_shape: Any) -> tuple[int, int, int]:
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
  height, width, _ = _check_image_shape(image_shape)

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
  shape = _check_image_shape(image_shape)
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


@functools.lru_cache(maxsize=256)   # one function per (model, layer): compiled steps are reused
def make_apply_fn(model: nn.Module) -> ApplyFn:
  """``apply_fn(params, x) -> logits`` for an NHWC float batch ``x``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = create_model('logistic', 10, (8, 8, 1))
    >>> params = init_params(model, jax.random.key(0), (8, 8, 1))
    >>> make_apply_fn(model)(params, jnp.ones((4, 8, 8, 1))).shape
    (4, 10)
  """
  def apply_fn(params: Params, x: jax.Array) -> jax.Array:
    return model.apply(model_variables(model, params), x)
  return apply_fn


def layer_names(model: nn.Module) -> tuple[str, ...]:
  """The model's stage names, in order (the valid split points).

  Example:
    >>> layer_names(create_model('karpathynet', 10, (32, 32, 3)))
    ('conv1', 'conv2', 'conv3', 'fc')
  """
  return tuple(model.layer_names)


@functools.lru_cache(maxsize=256)   # one function per (model, layer): compiled steps are reused
def make_feature_fn(model: nn.Module, layer: str) -> ApplyFn:
  """``fn(params, x) -> output of stage layer`` (works under jit and grad).

  Runs the model with ``stop=layer``, so the later stages are neither traced
  nor computed (for several features plus the logits in one pass, use
  ``make_apply_with_features_fn``, which reads the sown ``intermediates``).

  Raises:
    FamrError: unknown layer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = create_model('mlp', 10, (8, 8, 1))
    >>> params = init_params(model, jax.random.key(0), (8, 8, 1))
    >>> make_feature_fn(model, 'fc1')(params, jnp.ones((2, 8, 8, 1))).shape
    (2, 128)
  """
  stage_index(layer_names(model), layer)

  def feature_fn(params: Params, x: jax.Array) -> jax.Array:
    return model.apply(model_variables(model, params), x, stop=layer)
  return feature_fn


def make_apply_with_features_fn(
    model: nn.Module, layers: Sequence[str]
) -> Callable[[Params, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]:
  """``fn(params, x) -> (logits, {layer: output of stage layer})`` in one forward pass.

  For objectives that need the logits and several features at once (FAMR's
  uniform-KL + Gram style loss).

  Raises:
    FamrError: an unknown layer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = create_model('mlp', 10, (8, 8, 1))
    >>> params = init_params(model, jax.random.key(0), (8, 8, 1))
    >>> logits, feats = make_apply_with_features_fn(model, ['fc1', 'fc2'])(
    ...     params, jnp.ones((2, 8, 8, 1)))
    >>> logits.shape, feats['fc1'].shape, feats['fc2'].shape
    ((2, 10), (2, 128), (2, 64))
  """
  layers = tuple(layers)
  for layer in layers:
    stage_index(layer_names(model), layer)

  def apply_with_features_fn(params: Params, x: jax.Array):
    logits, state = model.apply(model_variables(model, params), x, mutable=['intermediates'])
    outputs = state['intermediates'][STAGE_OUTPUTS]
    return logits, {layer: outputs[layer] for layer in layers}
  return apply_with_features_fn


@functools.lru_cache(maxsize=256)   # one function per (model, layer): compiled steps are reused
def make_layer_input_fn(model: nn.Module, layer: str) -> ApplyFn:
  """``fn(params, x) -> the activation that enters stage layer`` (x for the first).

  Raises:
    FamrError: unknown layer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = create_model('mlp', 10, (8, 8, 1))
    >>> params = init_params(model, jax.random.key(0), (8, 8, 1))
    >>> make_layer_input_fn(model, 'fc2')(params, jnp.ones((2, 8, 8, 1))).shape
    (2, 128)
  """
  names = layer_names(model)
  i = stage_index(names, layer)
  if i == 0:
    return lambda params, x: x
  return make_feature_fn(model, names[i - 1])


@functools.lru_cache(maxsize=256)   # one function per (model, layer): compiled steps are reused
def make_tail_apply_fn(model: nn.Module, layer: str) -> ApplyFn:
  """``fn(params, h) -> logits``: the model's own stages from ``layer`` on, applied to ``h``.

  ``h`` is the input of stage ``layer`` (see ``make_layer_input_fn``);
  ``params`` may be the full dict or only the tail (``split_params``).

  Raises:
    FamrError: unknown layer.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = create_model('mlp', 10, (8, 8, 1))
    >>> params = init_params(model, jax.random.key(0), (8, 8, 1))
    >>> make_tail_apply_fn(model, 'head')(params, jnp.ones((5, 64))).shape
    (5, 10)
  """
  stage_index(layer_names(model), layer)

  def tail_apply_fn(params: Params, h: jax.Array) -> jax.Array:
    return model.apply(model_variables(model, params), h, start=layer)
  return tail_apply_fn


def _tail_keys(model: nn.Module, params: Mapping[str, Any], layer: str) -> frozenset[str]:
  names = layer_names(model)
  i = stage_index(names, layer)
  foreign = [k for k in params if k not in names]
  if foreign:
    raise FamrError(
        f'params have keys {foreign} that are not layers of {type(model).__name__} '
        f'(layers: {", ".join(names)})'
    )
  tail = frozenset(names[i:]) & frozenset(params)
  if not tail or all(not jax.tree.leaves(params[k]) for k in tail):
    raise FamrError(
        f'splitting at {layer!r} leaves an empty tail; valid layers: {", ".join(names)}'
    )
  return tail


def tail_param_mask(model: nn.Module, params: Mapping[str, Any], layer: str) -> Params:
  """Pytree of bools like ``params``: True on the params of stages at/after ``layer``.

  Suitable for ``optax.masked`` (train only the tail) or to zero head gradients.

  Raises:
    FamrError: unknown layer, params of another model, or an empty tail.

  Example:
    >>> import jax
    >>> model = create_model('mlp', 10, (8, 8, 1))
    >>> params = init_params(model, jax.random.key(0), (8, 8, 1))
    >>> mask = tail_param_mask(model, params, 'fc2')
    >>> mask['fc1']['kernel'], mask['fc2']['kernel'], mask['head']['bias']
    (False, True, True)
  """
  tail = _tail_keys(model, params, layer)
  return {k: jax.tree.map(lambda _, t=(k in tail): t, v) for k, v in params.items()}


def split_params(
    model: nn.Module, params: Mapping[str, Any], layer: str
) -> tuple[Params, Params]:
  """Splits params by top-level key into ``(head, tail)`` at stage ``layer``.

  The tail holds the stages at/after ``layer``; the head the stages before it
  (empty when ``layer`` is the first stage).

  Raises:
    FamrError: unknown layer, params of another model, or an empty tail.

  Example:
    >>> import jax
    >>> model = create_model('mlp', 10, (8, 8, 1))
    >>> params = init_params(model, jax.random.key(0), (8, 8, 1))
    >>> head, tail = split_params(model, params, 'fc2')
    >>> sorted(head), sorted(tail)
    (['fc1'], ['fc2', 'head'])
  """
  tail = _tail_keys(model, params, layer)
  return (
      {k: v for k, v in params.items() if k not in tail},
      {k: v for k, v in params.items() if k in tail},
  )


def merge_params(head: Mapping[str, Any], tail: Mapping[str, Any]) -> Params:
  """Inverse of ``split_params``: the union of two disjoint top-level dicts.

  Raises:
    FamrError: the two share a key.

  Example:
    >>> merge_params({'a': 1}, {'b': 2})
    {'a': 1, 'b': 2}
  """
  shared = sorted(set(head) & set(tail))
  if shared:
    raise FamrError(f'head and tail params share layers {shared}')
  return {**head, **tail}


def count_params(params: Any) -> int:
  """Total number of scalars in a params pytree (arrays or ``jax.ShapeDtypeStruct``).

  Example:
    >>> import jax.numpy as jnp
    >>> count_params({'w': jnp.zeros((3, 4)), 'b': jnp.zeros(4)})
    16
  """
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


# ----------------------------------------------------------------------------- BatchNorm statistics
# (design: famr_jax.models.batchnorm)


def with_batch_stats(model: nn.Module, batch_stats: Any) -> nn.Module:
  """``model`` carrying the running statistics ``batch_stats`` (its functions normalize with them).

  Args:
    model: a model with BatchNorm (``has_batch_norm``), e.g. a ResNet.
    batch_stats: the ``batch_stats`` pytree (``init_batch_stats`` structure).

  Raises:
    FamrError: a model without BatchNorm, or statistics of another structure.

  Example:
    >>> import jax
    >>> model = create_model('resnet18_cifar', 10, (8, 8, 1), width=4, stage_sizes=(1,))
    >>> stats = init_batch_stats(model, (8, 8, 1))
    >>> batch_stats_of(with_batch_stats(model, stats))['stem']['bn1']['var'].tolist()
    [1.0, 1.0, 1.0, 1.0]
  """
  if not has_batch_norm(model):
    raise FamrError(f'{type(model).__name__} has no BatchNorm: it takes no batch statistics')
  if batch_stats is None:
    return model.clone(batch_stats=None)
  return model.clone(batch_stats=BatchStats(batch_stats))


def init_batch_stats(model: nn.Module, image_shape: tuple[int, int, int]) -> Params:
  """The initial running statistics of a BatchNorm model (means 0, variances 1), as NumPy arrays.

  Example:
    >>> model = create_model('resnet18_cifar', 10, (8, 8, 1), width=4, stage_sizes=(1,))
    >>> sorted(init_batch_stats(model, (8, 8, 1)))
    ['layer1_0', 'stem']
  """
  shape = _check_image_shape(image_shape)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *shape), jnp.float32))
  stats = flax.core.unfreeze(abstract.get(BATCH_STATS, {}))
  import numpy as np   # pylint: disable=import-outside-toplevel
  return jax.tree_util.tree_map_with_path(
      lambda path, s: (np.ones if str(getattr(path[-1], 'key', '')) == 'var' else np.zeros)(s.shape, np.float32),
      stats)


@functools.lru_cache(maxsize=64)
def make_train_apply_fn(model: nn.Module) -> ApplyFn:
  """``apply_fn(params, x) -> logits`` in training mode: every BatchNorm normalizes with its batch's moments.

  The same function as ``make_apply_fn`` for a model without BatchNorm. Used to
  train from scratch (``train``, the retrain gold standard); the methods that
  start from a trained model use eval-mode statistics (``make_apply_fn``).

  Example:
    >>> import jax
    >>> model = create_model('resnet18_cifar', 10, (8, 8, 1), width=4, stage_sizes=(1,))
    >>> params = jax.eval_shape(lambda: init_params(model, jax.random.key(0), (8, 8, 1)))
    >>> jax.eval_shape(make_train_apply_fn(model), params, jax.ShapeDtypeStruct((2, 8, 8, 1), 'float32')).shape
    (2, 10)
  """
  if not has_batch_norm(model):
    return make_apply_fn(model)

  def train_apply_fn(params: Params, x: jax.Array) -> jax.Array:
    return model.apply(model_variables(model, params), x, train=True)
  return train_apply_fn


@functools.lru_cache(maxsize=64)
def _moments_fn(model: nn.Module):
  def moments(params, x):
    _, state = model.apply(model_variables(model, params), x, train=True, mutable=[BATCH_MOMENTS])
    return state[BATCH_MOMENTS]
  return jax.jit(moments)


def recompute_batch_stats(model: nn.Module, params: Params, x: Any, *, batch_size: int = 256) -> Params:
  """Running statistics recomputed over data: every BatchNorm's population mean and biased variance.

  Runs ``x`` in batches through the train-mode forward (earlier BatchNorms
  normalize with their batch's moments, as in training) and averages each
  BatchNorm's batch mean and mean square, weighted by batch size, over all of
  ``x`` ("precise BN"). With ``batch_size >= len(x)`` the result is exactly the
  mean and variance of each BatchNorm's input over ``x``.

  Args:
    model: a model with BatchNorm.
    params: its params.
    x: NHWC inputs (NumPy or JAX).
    batch_size: examples per forward pass.

  Returns:
    The ``batch_stats`` pytree (float32 NumPy), for ``with_batch_stats``.

  Raises:
    FamrError: a model without BatchNorm, no examples, or a bad batch size.

  Example:
    >>> import numpy as np
    >>> mlp = create_model('mlp', 10, (8, 8, 1))
    >>> try:
    ...   recompute_batch_stats(mlp, {}, np.ones((3, 8, 8, 1), np.float32))
    ... except FamrError as e:
    ...   print(e)
    MLP has no BatchNorm: there are no statistics to recompute
  """
  if not has_batch_norm(model):
    raise FamrError(f'{type(model).__name__} has no BatchNorm: there are no statistics to recompute')
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
    raise FamrError(f'batch_size must be a positive integer, got {batch_size!r}')
  n = int(x.shape[0])
  if n == 0:
    raise FamrError('recomputing batch statistics needs at least one example')
  fn = _moments_fn(model)
  return accumulate_moments(fn, params, (x[i:i + batch_size] for i in range(0, n, batch_size)))
