"""Data, models and forget sets of the theory checks (float64, flat inputs).

The convex model is multinomial logistic regression; the non-convex one a
one-hidden-layer MLP. The loss factories are cached so that every call
returns the same function object: jitted code keyed on it compiles once.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.errors import FamrError
from famr_jax.losses import uniform_kl
from famr_jax.theory import influence
from famr_jax.theory.config import TheoryConfig

__all__ = ['forget_mask', 'kl_loss_for', 'load_data', 'logistic_apply', 'split_sets', 'tanh_mlp_apply',
           'tanh_mlp_init', 'weighted_ce_for']


def load_data(config: TheoryConfig) -> dict:
  """The configured data set, inputs flattened to float64 ``[N, d]``, labels int32."""
  from famr_jax.data.datasets import load_dataset  # pylint: disable=import-outside-toplevel
  ds = load_dataset(config.dataset, max_train=config.max_train or None,
                    max_test=config.max_test or None, seed=config.seed)
  flat = lambda a: jnp.asarray(a.reshape(a.shape[0], -1), jnp.float64)
  return dict(x_train=flat(ds.x_train), y_train=jnp.asarray(ds.y_train, jnp.int32),
              x_test=flat(ds.x_test), y_test=jnp.asarray(ds.y_test, jnp.int32),
              num_classes=ds.num_classes, image_shape=ds.image_shape)


def forget_mask(config: TheoryConfig, which: str, y: np.ndarray, key: jax.Array) -> np.ndarray:
  """The boolean mask of forget set ``which`` (``'class'`` or ``'samples'``) over labels ``y``.

  Raises:
    FamrError: the forget class is not in ``y``, or the sample count is not below ``len(y)``.

  Example:
    >>> forget_mask(TheoryConfig(forget_class=1), 'class', np.array([0, 1, 1]), None).tolist()
    [False, True, True]
  """
  if which == 'class':
    if config.forget_class >= int(y.max()) + 1:
      raise FamrError(f'forget_class {config.forget_class} is not a class of the data set')
    mask = y == config.forget_class
  else:
    if config.num_forget_samples >= len(y):
      raise FamrError(f'num_forget_samples {config.num_forget_samples} >= training set size {len(y)}')
    idx = np.asarray(jax.random.choice(key, len(y), (config.num_forget_samples,), replace=False))
    mask = np.zeros(len(y), bool)
    mask[idx] = True
  return mask


def logistic_apply(params, x):
  """The convex model: multinomial logistic regression ``x W + b`` on flat inputs.

  Example:
    >>> logistic_apply({'w': jnp.ones((2, 3)), 'b': jnp.zeros(3)}, jnp.ones((1, 2))).tolist()
    [[2.0, 2.0, 2.0]]
  """
  return x.reshape(x.shape[0], -1) @ params['w'] + params['b']


@functools.lru_cache(maxsize=None)
def kl_loss_for(apply_fn):
  """Per-example uniform KL of ``apply_fn`` (cached: one function object, one compile).

  Example:
    >>> kl_loss_for(logistic_apply) is kl_loss_for(logistic_apply)
    True
  """
  def kl_loss(params, x):
    return uniform_kl(apply_fn(params, x))
  return kl_loss


def split_sets(data: dict, mask: np.ndarray):
  """Full, retained and forget sets as 0/1-weighted copies of the training set.

  Returns:
    ``(full, retain, forget, forget_x, retain_x, test)``: the first three and
    ``test`` are ``(x, y, weights)`` of the full length (one compile for all),
    ``forget_x`` and ``retain_x`` the inputs on and off the mask.

  Example:
    >>> data = dict(x_train=jnp.eye(3), y_train=jnp.arange(3), x_test=jnp.eye(3)[:1],
    ...             y_test=jnp.zeros(1, jnp.int32))
    >>> with jax.enable_x64(True):
    ...   full, retain, forget, forget_x, retain_x, test = split_sets(data, np.array([1, 0, 0], bool))
    >>> retain[2].tolist(), forget_x.shape, retain_x.shape
    ([0.0, 1.0, 1.0], (1, 3), (2, 3))
  """
  x, y = data['x_train'], data['y_train']
  ones = jnp.ones(len(y), jnp.float64)
  keep = jnp.asarray(~mask, jnp.float64)
  drop = jnp.asarray(mask, jnp.float64)
  test = (data['x_test'], data['y_test'], jnp.ones(len(data['y_test']), jnp.float64))
  return ((x, y, ones), (x, y, keep), (x, y, drop), x[np.flatnonzero(mask)],
          x[np.flatnonzero(~mask)], test)


@functools.lru_cache(maxsize=None)
def weighted_ce_for(apply_fn):
  """Per-example 0/1-weighted cross-entropy of ``apply_fn`` (cached like kl_loss_for).

  Example:
    >>> ce = weighted_ce_for(logistic_apply)
    >>> p = {'w': jnp.zeros((1, 2)), 'b': jnp.zeros(2)}
    >>> [round(float(v), 4) for v in ce(p, (jnp.ones((2, 1)), jnp.zeros(2, jnp.int32), jnp.array([1., 0.])))]
    [0.6931, 0.0]
  """
  ce = influence.cross_entropy_example_loss(apply_fn)

  def weighted_ce(params, batch):
    x, y, w = batch
    return w * ce(params, (x, y))
  return weighted_ce


def tanh_mlp_apply(params, x):
  """A smooth one-hidden-layer MLP (same parameter layout as famr_jax.models' MLP).

  Example:
    >>> with jax.enable_x64(True):
    ...   p = tanh_mlp_init(jax.random.key(0), 4, 3, 2)
    ...   out = tanh_mlp_apply(p, jnp.ones((5, 4)))
    >>> out.shape
    (5, 2)
  """
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params['fc1']['kernel'] + params['fc1']['bias'])
  return h @ params['head']['kernel'] + params['head']['bias']


def tanh_mlp_init(key, d, hidden, c):
  """LeCun-normal kernels, zero biases (one PRNG call: each compiles for a second)."""
  z = jax.random.normal(key, (d * hidden + hidden * c,), jnp.float64)
  return {'fc1': {'kernel': z[:d * hidden].reshape(d, hidden) / math.sqrt(d),
                  'bias': jnp.zeros((hidden,), jnp.float64)},
          'head': {'kernel': z[d * hidden:].reshape(hidden, c) / math.sqrt(hidden),
                   'bias': jnp.zeros((c,), jnp.float64)}}
