"""The functional interface the unlearning code uses: apply, feature and tail functions, param splits.

The algorithms never import a model class: they take the functions built here
(``apply_fn(params, x) -> logits``, feature, layer-input and tail functions) and
plain params dicts.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from famr_jax.models.zoo import create_model, init_params
  >>> model = create_model('logistic', 10, (8, 8, 1))
  >>> params = init_params(model, jax.random.key(0), (8, 8, 1))
  >>> make_apply_fn(model)(params, jnp.ones((4, 8, 8, 1))).shape
  (4, 10)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import functools
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from famr_jax.errors import FamrError
from famr_jax.models.base import STAGE_OUTPUTS, stage_index
from famr_jax.models.batchnorm import (BATCH_MOMENTS, BATCH_STATS, BatchStats, accumulate_moments,
                                       has_batch_norm, model_variables)
from famr_jax.models.zoo import check_image_shape

Params = dict[str, Any]
ApplyFn = Callable[[Params, jax.Array], jax.Array]


@functools.lru_cache(maxsize=256)   # one function per (model, layer): compiled steps are reused
def make_apply_fn(model: nn.Module) -> ApplyFn:
  """``apply_fn(params, x) -> logits`` for an NHWC float batch ``x``.

  Example:
    >>> from famr_jax.models.zoo import create_model, init_params
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
    >>> from famr_jax.models.zoo import create_model
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
    >>> from famr_jax.models.zoo import create_model, init_params
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
    >>> from famr_jax.models.zoo import create_model, init_params
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
    >>> from famr_jax.models.zoo import create_model, init_params
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
    >>> from famr_jax.models.zoo import create_model, init_params
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
    >>> from famr_jax.models.zoo import create_model, init_params
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
    >>> from famr_jax.models.zoo import create_model, init_params
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
    >>> from famr_jax.models.zoo import create_model
    >>> from famr_jax.models.batchnorm import batch_stats_of
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
    >>> from famr_jax.models.zoo import create_model
    >>> model = create_model('resnet18_cifar', 10, (8, 8, 1), width=4, stage_sizes=(1,))
    >>> sorted(init_batch_stats(model, (8, 8, 1)))
    ['layer1_0', 'stem']
  """
  shape = check_image_shape(image_shape)
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
    >>> from famr_jax.models.zoo import create_model, init_params
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
    >>> from famr_jax.models.zoo import create_model
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
