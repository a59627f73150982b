"""SISA (method ``sisa``): exact deletion by sharded training, the exact reference row with its real cost.

Bourtoule et al., "Machine Unlearning" (IEEE S&P 2021): the training set is
split into ``shards`` disjoint parts; one model is trained on each, in
isolation, and predictions aggregate the shards' outputs (``mean`` logits or a
majority ``vote``). A deletion retrains, from the same initialization and
minibatch key, only the shards that held a deleted example, without it; every
other shard is untouched (bit-identical). The result is exactly what training
the ensemble without the deleted examples would have given, so no membership
signal of them remains. The paper's slicing (checkpoints within a shard) is
not implemented: a touched shard is retrained from its start.

Its cost is real: on a random 10% request every shard of a few is touched, so a
deletion costs about one full training (each shard has ``1/shards`` of the
data). And the model is an ensemble, not the user's checkpoint: the registry's
run trains the sharded ensemble on the full training set first (its
``train_s``, not counted as unlearning), then deletes; the result's
``apply_fn`` is the ensemble's aggregate (:func:`sisa_apply_fn`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.engine.descent import DescentResult
from famr_jax.engine.farm import stack_trees, unstack_tree
from famr_jax.engine.training import TrainConfig, train_classifier
from famr_jax.errors import FamrError
from famr_jax.validation import CheckedFields

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]
AGGREGATES = ("mean", "vote")


@dataclasses.dataclass(frozen=True)
class SISAConfig(CheckedFields):
  """Sharded, isolated training and exact deletion (method ``sisa``).

  Attributes:
    shards: number of disjoint shards (one model each).
    aggregate: ``mean`` (mean of the shards' logits) or ``vote`` (majority of their labels).
    epochs: each shard's training epochs (the training recipe's, :class:`famr_jax.engine.training.TrainConfig`).
    batch_size: minibatch size.
    lr: AdamW learning rate.
    weight_decay: AdamW decoupled weight decay.
  """
  shards: int = 5
  aggregate: Literal["mean", "vote"] = "mean"
  epochs: int = 30
  batch_size: int = 64
  lr: float = 1e-3
  weight_decay: float = 1e-4
  # The method's result is a shard ensemble (evaluated by its own apply_fn), not one model's params.

  def validate(self) -> "SISAConfig":
    """Raises :class:`FamrError` on an invalid setting."""
    if isinstance(self.shards, bool) or int(self.shards) != self.shards or self.shards < 1:
      raise FamrError(f"shards must be a positive integer, got {self.shards}")
    if self.aggregate not in AGGREGATES:
      raise FamrError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {self.aggregate!r}")
    self.train_config().validate()
    return self

  def train_config(self) -> TrainConfig:
    """Each shard's training recipe."""
    return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay)


class SisaEnsemble(NamedTuple):
  """A sharded ensemble: the shards' params stacked on a leading axis, and who trained on what."""
  params: Params          # stacked over shards
  shard_of: np.ndarray    # [num_train] int: each training example's shard, -1 once deleted
  key: jax.Array          # the base key: shard i's init and minibatch keys derive from it


def assign_shards(key: jax.Array, num_train: int, shards: int) -> np.ndarray:
  """A uniformly random partition of ``range(num_train)`` into ``shards`` parts of near-equal size.

  Example:
    >>> import jax
    >>> np.bincount(assign_shards(jax.random.key(0), 10, 3)).tolist()
    [4, 3, 3]
  """
  if num_train < shards:
    raise FamrError(f"{shards} shards need at least as many training examples, got {num_train}")
  order = np.asarray(jax.random.permutation(key, num_train))
  shard_of = np.empty(num_train, np.int64)
  shard_of[order] = np.arange(num_train) % shards
  return shard_of


def _train_shard(apply_fn, init_fn, x, y, members, config: SISAConfig, key, i: int):
  init = init_fn(jax.random.fold_in(jax.random.fold_in(key, 1), i))
  return train_classifier(apply_fn, init, x[members], y[members], config.train_config(),
                          jax.random.fold_in(jax.random.fold_in(key, 2), i), show_progress=False)


def sisa_train(apply_fn: ApplyFn, init_fn: Callable[[jax.Array], Params], x: np.ndarray, y: np.ndarray,
               config: SISAConfig, key: jax.Array) -> tuple[SisaEnsemble, float]:
  """Trains one model per shard, in isolation: ``(ensemble, seconds)`` (the shards' run time, compilation excluded).

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> x = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int32)
    >>> e, _ = sisa_train(lambda p, x: x @ p, lambda k: jnp.zeros((2, 2)), x, y, SISAConfig(shards=2, epochs=2),
    ...                   jax.random.key(0))
    >>> e.params.shape, np.bincount(e.shard_of).tolist()
    ((2, 2, 2), [20, 20])
  """
  config.validate()
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
  shard_of = assign_shards(jax.random.fold_in(key, 0), len(y), int(config.shards))
  runs = [_train_shard(apply_fn, init_fn, x, y, np.flatnonzero(shard_of == i), config, key, i)
          for i in range(config.shards)]
  params = jax.block_until_ready(stack_trees([r.params for r in runs]))
  return SisaEnsemble(params, shard_of, key), sum(r.run_s for r in runs)


def sisa_delete(ensemble: SisaEnsemble, forget_indices, apply_fn: ApplyFn, init_fn: Callable[[jax.Array], Params],
                x: np.ndarray, y: np.ndarray, config: SISAConfig) -> tuple[SisaEnsemble, dict]:
  """Deletes ``forget_indices``: retrains exactly the shards that held one, from their own init and key.

  Returns ``(ensemble, info)``, ``info`` holding ``shards``, ``shards_retrained``
  (their ids under ``retrained``), ``retrain_s`` (the retraining's run time, compilation
  excluded, as the engine reports it) and ``compile_s``.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> x = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int32)
    >>> f, init = lambda p, x: x @ p, lambda k: jnp.zeros((2, 2))
    >>> e, _ = sisa_train(f, init, x, y, SISAConfig(shards=4, epochs=2), jax.random.key(0))
    >>> _, info = sisa_delete(e, [0], f, init, x, y, SISAConfig(shards=4, epochs=2))
    >>> info["shards_retrained"], info["shards"]
    (1, 4)
  """
  config.validate()
  forget = np.unique(np.asarray(forget_indices, np.int64))
  if forget.size and (forget.min() < 0 or forget.max() >= len(ensemble.shard_of)):
    raise FamrError(f"forget indices must lie in [0, {len(ensemble.shard_of)})")
  if int(config.shards) != int(jax.tree.leaves(ensemble.params)[0].shape[0]):
    raise FamrError("config.shards differs from the ensemble's number of shards")
  shard_of = ensemble.shard_of.copy()
  touched = sorted({int(s) for s in shard_of[forget] if s >= 0})
  shard_of[forget] = -1
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
  shards = [unstack_tree(ensemble.params, i) for i in range(config.shards)]
  run_s = compile_s = 0.0
  for i in touched:
    members = np.flatnonzero(shard_of == i)
    if members.size == 0:
      raise FamrError(f"shard {i} would have no training data left; use fewer shards")
    result = _train_shard(apply_fn, init_fn, x, y, members, config, ensemble.key, i)
    shards[i], run_s, compile_s = result.params, run_s + result.run_s, compile_s + result.compile_s
  params = jax.block_until_ready(stack_trees(shards)) if touched else ensemble.params
  info = {"shards": int(config.shards), "shards_retrained": len(touched), "retrained": touched,
          "retrain_s": run_s, "compile_s": compile_s}
  return SisaEnsemble(params, shard_of, ensemble.key), info


def aggregate_scores(logits: jax.Array, aggregate: str) -> jax.Array:
  """Per-shard logits ``[S, N, C]`` to one score per class: mean logits, or the log of a smoothed vote share.

  ``vote``: ``log((count + 1/2) / (S + C/2))``, so the argmax is the majority
  label (ties to the lowest class) and the scores are a log-distribution.

  Example:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[[2.0, 0.0]], [[0.0, 1.0]], [[3.0, 0.0]]])
    >>> [round(float(v), 4) for v in aggregate_scores(z, "mean")[0]], int(jnp.argmax(aggregate_scores(z, "vote")[0]))
    ([1.6667, 0.3333], 0)
  """
  if aggregate == "mean":
    return jnp.mean(logits, axis=0)
  s, c = logits.shape[0], logits.shape[-1]
  counts = jnp.sum(jax.nn.one_hot(jnp.argmax(logits, -1), c), axis=0)
  return jnp.log((counts + 0.5) / (s + 0.5 * c))


@functools.lru_cache(maxsize=64)
def sisa_apply_fn(apply_fn: ApplyFn, aggregate: str = "mean", single_ndim: int | None = None) -> ApplyFn:
  """``f(stacked_params, x) -> scores``: the ensemble's prediction (memoized, so jit finds it again).

  With ``single_ndim`` (the number of axes of one model's first params leaf),
  ``f`` also takes one model's params, which it applies as ``apply_fn`` does
  (evaluations score the original model with the same function).

  Example:
    >>> import jax.numpy as jnp
    >>> f = sisa_apply_fn(lambda p, x: x @ p, "mean", 2)
    >>> f(jnp.stack([jnp.eye(2), 3 * jnp.eye(2)]), jnp.ones((1, 2))).tolist(), f(jnp.eye(2), jnp.ones((1, 2))).tolist()
    ([[2.0, 2.0]], [[1.0, 1.0]])
  """
  if aggregate not in AGGREGATES:
    raise FamrError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")

  def ensemble(params, x):
    if single_ndim is not None and jnp.ndim(jax.tree.leaves(params)[0]) == single_ndim:
      return apply_fn(params, x)
    return aggregate_scores(jax.vmap(apply_fn, in_axes=(0, None))(params, x), aggregate)

  return ensemble


def run_sisa_task(task, config: SISAConfig) -> DescentResult:
  """The registry's adapter: trains the sharded ensemble on the training set, then deletes the request.

  ``run_s`` is the deletion's cost (the touched shards' retraining); the
  history's entry holds ``train_s`` (the ensemble's training), ``shards`` and
  ``shards_retrained``. The user's checkpoint is not used: SISA replaces it.
  """
  from famr_jax import models
  if task.model is None:
    raise FamrError("sisa trains fresh shard models: pass model")
  data = task.data
  init_fn = lambda k: models.init_params(task.model, k, data.image_shape)
  ensemble, train_s = sisa_train(task.apply_fn, init_fn, data.x_train, data.y_train, config, task.key)
  ensemble, info = sisa_delete(ensemble, task.forget.indices, task.apply_fn, init_fn, data.x_train, data.y_train,
                               config)
  history = [{"epoch": 0, "train_s": train_s, "shards": info["shards"], "shards_retrained": info["shards_retrained"],
              "retrain_s": info["retrain_s"]}]
  return DescentResult(ensemble.params, history, info["compile_s"], info["retrain_s"],
                       apply_fn=sisa_apply_fn(task.apply_fn, config.aggregate,
                                              int(np.ndim(jax.tree.leaves(task.params)[0]))))
