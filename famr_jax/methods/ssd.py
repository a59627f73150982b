"""Selective Synaptic Dampening (SSD; Foster, Schoepf & Brintrup, AAAI 2024): method ``ssd``.

A one-shot, retraining-free baseline. With ``[]_D`` and ``[]_Df`` the diagonal
importances of the training loss over the whole training set ``D`` and over the
forget set ``D_f``, every parameter that is far more important to the forget
set than to the data as a whole is shrunk towards zero::

    beta_i  = min(lam * []_D,i / []_Df,i, 1)   if []_Df,i > alpha * []_D,i
              1                                 otherwise
    theta_i <- beta_i * theta_i

``alpha`` (the selection weight, ``SSDConfig.selection_weight``) and ``lam``
(the dampening constant, ``SSDConfig.dampening``) are the paper's two
hyperparameters (its defaults: 10 and 1); the config names them apart from
FAMR's ``alpha`` and ``lam``, which mean other things. There are no gradient
steps: the cost is one gradient pass over the forget set and one over the
training set.

Two importances (``SSDConfig.importance``):

* ``minibatch`` (the config class's default, as the authors' code computes it; what
  ``famr_jax.unlearn("ssd", ...)`` runs is ``fisher``, :mod:`famr_jax.methods.defaults`): the squared
  gradient of the *minibatch* mean loss, averaged over minibatches of
  ``batch_size`` (consecutive chunks of a random permutation). A forget
  minibatch (e.g. one class) has coherent gradients where a mixed training
  minibatch's partly cancel, so the ratio ``[]_Df / []_D`` can exceed
  ``|D| / |D_f|`` and ``alpha = 10`` selects weights even when the forget set is
  a tenth of the data. The ratio depends on the batch size.
* ``fisher``: the per-example diagonal empirical Fisher
  (:func:`famr_jax.theory.fisher.diagonal_fisher`), the quantity the paper's text
  names; ``[]_D`` is then the checkpoint's stored Fisher when it has one
  (``famr-jax train --fisher``). Per-example, ``[]_Df / []_D <= |D| / |D_f|``,
  so ``alpha = 10`` can select nothing on a 10-class data set (measured on
  digits: BUILD_NOTES.md).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax import losses
from famr_jax.errors import FamrError
from famr_jax.validation import CheckedFields, apply_renamed
from famr_jax.engine.descent import DescentResult, bind_static
from famr_jax.engine.forward import timed_call
from famr_jax.theory.fisher import accumulator_dtype, chunked_fisher, padded_chunks

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class SSDConfig(CheckedFields):
  """Selective Synaptic Dampening (method ``ssd``).

  ``alpha`` and ``lam`` (the paper's names, and this config's until they were
  renamed: FAMR's ``alpha`` and ``lam`` mean other things) still work as
  keywords, with a ``DeprecationWarning``.

  Attributes:
    selection_weight: the paper's alpha: parameter ``i`` is dampened when its
      forget-set importance exceeds ``selection_weight`` times its training-set importance.
    dampening: the paper's lambda: a selected parameter is scaled by
      ``min(dampening * []_D,i / []_Df,i, 1)``.
    importance: ``minibatch`` (squared minibatch gradients, as the authors'
      code) or ``fisher`` (the per-example diagonal empirical Fisher; the
      checkpoint's stored one serves as ``[]_D`` when there).
    batch_size: the minibatch of ``minibatch`` importances (also the chunk of
      per-example gradients for ``fisher``).
  """
  selection_weight: float = 10.0
  dampening: float = 1.0
  importance: Literal["minibatch", "fisher"] = "minibatch"
  batch_size: int = 32
  alpha: dataclasses.InitVar[float | None] = None   # deprecated name of selection_weight
  lam: dataclasses.InitVar[float | None] = None     # deprecated name of dampening

  def __post_init__(self, alpha: float | None = None, lam: float | None = None) -> None:
    apply_renamed(self, {"alpha": ("selection_weight", alpha), "lam": ("dampening", lam)})
    super().__post_init__()

  def validate(self) -> "SSDConfig":
    """Raises :class:`FamrError` on an invalid setting."""
    if not self.selection_weight > 0:
      raise FamrError(f"SSD's selection weight must be positive, got {self.selection_weight}")
    if not self.dampening > 0:
      raise FamrError(f"SSD's dampening constant must be positive, got {self.dampening}")
    if self.importance not in ("minibatch", "fisher"):
      raise FamrError(f"SSD's importance must be minibatch or fisher, got {self.importance!r}")
    if self.batch_size <= 0:
      raise FamrError(f"batch size must be positive, got {self.batch_size}")
    return self


def dampening_factors(importance_full: Params, importance_forget: Params, alpha: float,
                      lam: float) -> Params:
  """SSD's per-parameter factor ``beta``: ``min(lam []_D / []_Df, 1)`` where ``[]_Df > alpha []_D``, else 1.

  Example:
    >>> import jax.numpy as jnp
    >>> dampening_factors(jnp.array([1.0, 1.0, 0.0]), jnp.array([5.0, 20.0, 3.0]), 10.0, 1.0).tolist()
    [1.0, 0.05000000074505806, 0.0]
  """
  def beta(full, forget):
    selected = forget > alpha * full
    ratio = lam * full / jnp.where(selected, forget, 1.0)   # forget > 0 wherever selected
    return jnp.where(selected, jnp.minimum(ratio, 1.0), 1.0)
  return jax.tree.map(beta, importance_full, importance_forget)


def dampen(params: Params, importance_full: Params, importance_forget: Params, alpha: float,
           lam: float) -> Params:
  """``params`` with SSD's dampening applied (a pure function of the three pytrees).

  Example:
    >>> import jax.numpy as jnp
    >>> dampen(jnp.array([2.0, 2.0]), jnp.array([1.0, 1.0]), jnp.array([5.0, 20.0]), 10.0, 1.0).tolist()
    [2.0, 0.10000000149011612]
  """
  factors = dampening_factors(importance_full, importance_forget, alpha, lam)
  return jax.tree.map(lambda p, b: (p * b).astype(jnp.result_type(p)), params, factors)


def minibatch_importance(apply_fn: ApplyFn, params: Params, x: np.ndarray, y: np.ndarray, *,
                         batch_size: int, key: jax.Array) -> Params:
  """Squared gradient of the minibatch mean cross-entropy, averaged over minibatches (SSD's importance).

  The minibatches are consecutive chunks of ``jax.random.permutation(key, N)``;
  the last one may be short (its gradient is the mean over its own examples).
  One jitted ``lax.scan``.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> apply_fn = lambda p, x: x @ p
    >>> imp = minibatch_importance(apply_fn, jnp.zeros((1, 2)), np.ones((4, 1), np.float32),
    ...                            np.zeros(4, np.int32), batch_size=4, key=jax.random.key(0))
    >>> imp.tolist()   # one batch, gradient [-0.5, 0.5]
    [[0.25, 0.25]]
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.int32)
  n = x.shape[0]
  if n == 0:
    raise FamrError("an importance needs at least one example")
  if batch_size <= 0:
    raise FamrError(f"batch size must be positive, got {batch_size}")
  idx, weights = _minibatch_indices(n, batch_size, key)
  return _minibatch_importance(apply_fn, params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(idx),
                               jnp.asarray(weights))


def _minibatch_indices(n: int, batch_size: int, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """``[num_batches, batch]`` rows of ``permutation(key, n)`` (the last padded) and 0/1 weights."""
  idx, weights = padded_chunks(n, min(batch_size, n))   # the Fisher's chunking, in a random order
  return np.asarray(jax.random.permutation(key, n))[idx], weights


@functools.partial(jax.jit, static_argnums=(0,))
def _minibatch_importance(apply_fn, params, x, y, idx, weights):
  def batch_loss(p, b_idx, b_w):
    ce = losses.cross_entropy(apply_fn(p, x[b_idx]), y[b_idx])
    return jnp.sum(ce * b_w) / jnp.sum(b_w)

  def body(acc, spec):
    g = jax.grad(batch_loss)(params, *spec)
    return jax.tree.map(lambda a, gi: a + jnp.square(gi).astype(a.dtype), acc, g), None

  zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), accumulator_dtype(p)), params)
  total, _ = jax.lax.scan(body, zeros, (idx, weights))
  return jax.tree.map(lambda t: t / idx.shape[0], total)


def _fisher_importance(apply_fn, n, params, x, y, idx, weights):
  return chunked_fisher(apply_fn, params, x, y, idx, weights, n)


def _dampen_by(alpha, lam, params, importance_full, importance_forget):
  return dampen(params, importance_full, importance_forget, alpha, lam)


def ssd_unlearn(apply_fn: ApplyFn, params: Params, x_forget: np.ndarray, y_forget: np.ndarray,
                config: SSDConfig, key: jax.Array, *, train_data: tuple[np.ndarray, np.ndarray] | None = None,
                importance_full: Params | None = None) -> DescentResult:
  """Runs SSD: the two importances, then one dampening of ``params``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: the trained params.
    x_forget: forget inputs.
    y_forget: forget labels.
    config: an :class:`SSDConfig`.
    key: PRNG key (the minibatch orders of ``minibatch`` importances).
    train_data: ``(x, y)``, the whole training set (forget set included, as in
      the paper); needed unless ``importance_full`` is given.
    importance_full: a precomputed ``[]_D`` of the config's kind (e.g. the
      checkpoint's stored Fisher for ``importance="fisher"``).

  Returns:
    A :class:`famr_jax.engine.descent.DescentResult` (an empty history: no steps).

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> apply_fn = lambda p, x: x @ p
    >>> x = np.eye(2, dtype=np.float32)
    >>> x_train = np.concatenate([x[:1], np.repeat(x[1:], 5, 0)])   # e0 once (forgotten), e1 five times
    >>> r = ssd_unlearn(apply_fn, jnp.eye(2), x[:1], np.zeros(1, np.int32),
    ...                 SSDConfig(selection_weight=1.5, importance="fisher"), jax.random.key(0),
    ...                 train_data=(x_train, np.array([0, 1, 1, 1, 1, 1], np.int32)))
    >>> np.asarray(r.params, np.float64).round(4).tolist()   # e0's weights scaled by []_D / []_Df = 1/6
    [[0.1667, 0.0], [0.0, 1.0]]
  """
  config.validate()
  x_forget = np.asarray(x_forget, np.float32)
  y_forget = np.asarray(y_forget, np.int32)
  if x_forget.shape[0] == 0:
    raise FamrError("the forget set is empty")
  if importance_full is None and train_data is None:
    raise FamrError("SSD needs the training set's importance: the training data or a precomputed one")
  timer = {"compile": 0.0, "run": 0.0}

  def timed(fn, *args):   # compiled apart from running (reported apart, as for descent methods)
    out, compile_s, run_s = timed_call(fn, *args)
    timer["compile"] += compile_s
    timer["run"] += run_s
    return out

  def importance(x, y, k):
    t0 = time.perf_counter()
    n = x.shape[0]
    if config.importance == "fisher":
      idx, weights = padded_chunks(n, min(config.batch_size, n))
      fn = bind_static(_fisher_importance, apply_fn, n)
    else:
      idx, weights = _minibatch_indices(n, config.batch_size, k)
      fn = bind_static(_minibatch_importance, apply_fn)
    data = (jnp.asarray(x), jnp.asarray(y), jnp.asarray(idx), jnp.asarray(weights))
    timer["run"] += time.perf_counter() - t0   # moving the data to the device
    return timed(fn, params, *data)

  if importance_full is None:
    importance_full = importance(np.asarray(train_data[0], np.float32), np.asarray(train_data[1], np.int32),
                                 jax.random.fold_in(key, 0))
  importance_forget = importance(x_forget, y_forget, jax.random.fold_in(key, 1))
  dampen_fn = bind_static(_dampen_by, config.selection_weight, config.dampening)
  new_params = timed(dampen_fn, params, importance_full, importance_forget)
  return DescentResult(new_params, [], timer["compile"], timer["run"])


def run_ssd_task(task, config: SSDConfig) -> DescentResult:
  """The registry's adapter: SSD on an :class:`famr_jax.methods.registry.UnlearnTask`."""
  from famr_jax.io.checkpoints import read_metadata
  from famr_jax.theory.fisher import FISHER_EXTRA, load_fisher
  config.validate()
  data, forget = task.data, task.forget
  checkpoint = getattr(task, "checkpoint", None)
  importance_full = None
  if (config.importance == "fisher" and checkpoint
      and FISHER_EXTRA in read_metadata(checkpoint).get("extras", {})):
    importance_full = load_fisher(checkpoint, like=task.params)   # computed once after training
  idx = forget.indices
  return ssd_unlearn(task.apply_fn, task.params, data.x_train[idx], data.y_train[idx], config, task.key,
                     train_data=(data.x_train, data.y_train), importance_full=importance_full)
