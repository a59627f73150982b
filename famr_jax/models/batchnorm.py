"""BatchNorm for the core's ``apply_fn(params, x)`` contract: running statistics bound to the model.

The unlearning methods, the Fisher and the curvature code differentiate, anchor,
dampen and measure *every leaf of params*. BatchNorm's running mean and variance
are not parameters: a gradient step, an L2 anchor, SSD's dampening or a noise
injection must never touch them. So they are not in ``params`` at all. They are
*bound to the model*: ``with_batch_stats(model, stats)`` returns the same
architecture carrying its statistics (a hashable :class:`BatchStats` field), and
every function ``famr_jax.models`` builds from that model (``make_apply_fn``,
feature, layer-input and tail functions) normalizes with them as constants, in
eval mode. Consequences, for every method at once:

* the statistics are frozen: no gradient reaches them (they are closed-over
  constants, not arguments), optimizers, anchors and ``param_distance`` never see
  them, the Fisher and curvature are over trainable params only;
* evaluation and attacks use eval-mode statistics, as PyTorch's ``model.eval()``;
* a checkpoint stores them as its ``batch_stats`` extra beside ``params``;
  ``load_model`` binds them again.

Where statistics must be *recomputed* (training from scratch, the retrain gold
standard), the training forward uses batch statistics
(``make_train_apply_fn``: each BatchNorm normalizes with its minibatch's mean
and biased variance, as ``model.train()``) and :func:`recompute_batch_stats`
afterwards sets the running statistics to the population mean and biased
variance of every BatchNorm's input over the training data (in train-mode
forward passes: "precise BN", Wu and Johnson 2021), instead of an exponential
moving average. A model without bound statistics (``create_model``) uses the
initial ones (mean 0, variance 1), like a freshly built PyTorch model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import hashlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BATCH_STATS = 'batch_stats'
"""Flax collection (and checkpoint extra) holding the running statistics."""
BATCH_MOMENTS = 'batch_moments'
"""Collection the train-mode forward sows each BatchNorm's batch moments into."""
EPSILON = 1e-5   # torch.nn.BatchNorm2d's default, used by torchvision's ResNets


class BatchStats:
  """Running statistics made hashable (by content), so a Flax module can carry them as a field.

  Two instances with the same arrays are equal and hash alike, so a model bound
  to the same statistics finds its compiled programs again.

  Example:
    >>> import numpy as np
    >>> a = BatchStats({'bn': {'mean': np.zeros(2), 'var': np.ones(2)}})
    >>> a == BatchStats({'bn': {'mean': np.zeros(2), 'var': np.ones(2)}}), a.tree['bn']['var'].dtype
    (True, dtype('float32'))
  """

  def __init__(self, tree: Any):
    self.tree = jax.tree.map(lambda a: np.asarray(a, np.float32), tree)
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(self.tree)[0]:
      digest.update(jax.tree_util.keystr(path).encode())
      digest.update(str(leaf.shape).encode())
      digest.update(np.ascontiguousarray(leaf).tobytes())
    self.digest = digest.hexdigest()

  def __hash__(self) -> int:
    return hash(self.digest)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, BatchStats) and other.digest == self.digest

  def __repr__(self) -> str:
    return f'BatchStats({len(jax.tree.leaves(self.tree))} arrays, sha256 {self.digest[:12]})'


class BatchNorm(nn.Module):
  """``torch.nn.BatchNorm2d`` on NHWC: params ``scale``, ``bias``; statistics ``mean``, ``var``.

  Eval mode (``train=False``) normalizes with the running statistics of the
  ``batch_stats`` collection, or with the initial ones (0, 1) when the
  collection is not given. Train mode normalizes with the batch's mean and
  biased variance over (N, H, W) and sows them (mean and mean square) into
  ``batch_moments``; it never writes ``batch_stats`` (see
  :func:`recompute_batch_stats`).

  Attributes:
    epsilon: added to the variance (1e-5, torch's default).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> v = BatchNorm().init(jax.random.key(0), jnp.ones((2, 3, 3, 4)))
    >>> sorted(v['params']), sorted(v['batch_stats'])
    (['bias', 'scale'], ['mean', 'var'])
  """

  epsilon: float = EPSILON

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    if self.is_initializing() or self.has_variable(BATCH_STATS, 'mean'):
      mean = self.variable(BATCH_STATS, 'mean', lambda: jnp.zeros((c,), jnp.float32)).value
      var = self.variable(BATCH_STATS, 'var', lambda: jnp.ones((c,), jnp.float32)).value
    else:
      mean, var = jnp.zeros((c,), jnp.float32), jnp.ones((c,), jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = x.mean(axes)
      mean_square = jnp.square(x).mean(axes)
      var = jnp.maximum(mean_square - jnp.square(mean), 0.0)
      self.sow(BATCH_MOMENTS, 'moments', (jax.lax.stop_gradient(mean), jax.lax.stop_gradient(mean_square)),
               init_fn=tuple, reduce_fn=lambda _, new: new)
    return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias


def has_batch_norm(model: Any) -> bool:
  """Whether ``model`` is a famr-jax model with BatchNorm (it has a ``batch_stats`` field).

  Example:
    >>> has_batch_norm(object())
    False
  """
  return isinstance(model, nn.Module) and 'batch_stats' in getattr(model, '__dataclass_fields__', {})


def batch_stats_of(model: Any) -> Any:
  """The running statistics bound to ``model`` (a pytree of float32 arrays), or None.

  Example:
    >>> batch_stats_of(object()) is None
    True
  """
  stats = getattr(model, 'batch_stats', None) if has_batch_norm(model) else None
  return None if stats is None else stats.tree


def model_variables(model: Any, params: Any) -> dict[str, Any]:
  """The Flax variables to apply ``model`` with: its params, plus its bound statistics if any.

  Example:
    >>> model_variables(object(), {'w': 1})
    {'params': {'w': 1}}
  """
  stats = batch_stats_of(model)
  return {'params': params} if stats is None else {'params': params, BATCH_STATS: stats}


def iterate_moments(moments: Any) -> Iterator[tuple[tuple[str, ...], tuple[jax.Array, jax.Array]]]:
  """``(path of a BatchNorm, (mean, mean square))`` for each entry of a ``batch_moments`` collection."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      moments, is_leaf=lambda t: isinstance(t, tuple) and len(t) == 2 and hasattr(t[0], 'shape'))[0]:
    keys = tuple(str(getattr(k, 'key', k)) for k in path)
    # The sown value is stored under the sow name 'moments'; the BatchNorm is its parent.
    yield tuple(k for k in keys if k != 'moments'), leaf


def accumulate_moments(
    moments_fn: Callable[[Any, jax.Array], Any], params: Any, batches: Iterator[np.ndarray]
) -> dict:
  """Population mean and biased variance of every BatchNorm's input over ``batches``.

  ``moments_fn(params, x)`` returns the ``batch_moments`` collection of one
  train-mode forward pass. Each batch is weighted by its size, so the result is
  the mean and variance over all examples (of train-mode activations).
  """
  total = 0
  sums: dict[tuple[str, ...], list[np.ndarray]] = {}
  for x in batches:
    n = int(x.shape[0])
    total += n
    for path, (mean, mean_square) in iterate_moments(moments_fn(params, x)):
      m, s = np.asarray(mean, np.float64) * n, np.asarray(mean_square, np.float64) * n
      if path in sums:
        sums[path][0] += m
        sums[path][1] += s
      else:
        sums[path] = [m, s]
  stats: dict = {}
  for path, (m, s) in sums.items():
    mean = m / total
    node = stats
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = {'mean': mean.astype(np.float32),
                      'var': np.maximum(s / total - mean * mean, 0.0).astype(np.float32)}
  return stats
