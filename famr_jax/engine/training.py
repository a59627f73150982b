"""Training from scratch: the original model and the gold-standard retrain.

The gold standard of unlearning is the same training recipe run on the
retained data only, from a fresh initialization; :func:`train_classifier`
serves both, so the two differ in their data alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from famr_jax import losses
from famr_jax.errors import FamrError
from famr_jax.validation import (PROBE_ROWS, CheckedFields, check_images, check_labels, check_logits_fn,
                                 check_params_finite)
from famr_jax.engine.descent import (DescentResult, bind_static, check_descent_settings, freeze_outside,
                                     make_optimizer, minibatch_descent)
from famr_jax.engine.forward import batched_apply
from famr_jax.engine.streaming import is_streamed
from famr_jax.engine.parallel import ScaleConfig, ShardedData, compute_dtype_apply_fn
from famr_jax.engine.resume import ResumeConfig

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class TrainConfig(CheckedFields):
  """How to train a classifier (AdamW on softmax cross-entropy).

  Attributes:
    epochs: passes over the training set.
    batch_size: minibatch size.
    lr: AdamW learning rate.
    weight_decay: AdamW decoupled weight decay.
  """
  epochs: int = 30
  batch_size: int = 64
  lr: float = 1e-3
  weight_decay: float = 1e-4

  def validate(self) -> "TrainConfig":
    """Raises :class:`FamrError` on a non-positive epoch count, batch size or lr."""
    check_descent_settings(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)
    if self.weight_decay < 0:
      raise FamrError(f"weight decay must be non-negative, got {self.weight_decay}")
    return self


def check_finite(name: str, array: np.ndarray) -> None:
  """Refuses inputs with NaN or inf (one-line :class:`FamrError`); a streamed array is decoded, finite, images."""
  if is_streamed(array):
    return
  if not np.all(np.isfinite(array)):
    raise FamrError(f"{name} contains NaN or inf values")


def cross_entropy_loss(apply_fn: ApplyFn, params: Params, batch: tuple, weights: jax.Array,
                       context: Any = None) -> jax.Array:
  """Weighted mean softmax cross-entropy of a minibatch ``(x, y)`` or ``(x, y, example_weights)`` (the engine's
  ``loss_fn`` once bound).

  Example:
    >>> import jax.numpy as jnp
    >>> round(float(cross_entropy_loss(lambda p, x: x, None, (jnp.zeros((2, 2)), jnp.array([0, 1])),
    ...                                jnp.ones(2))), 4)
    0.6931
  """
  del context
  xb, yb = batch[0], batch[1]
  if len(batch) > 2:   # per-example weights: a row of weight 0 keeps its place in the order, not its loss
    weights = weights * batch[2]
  return jnp.sum(weights * losses.cross_entropy(apply_fn(params, xb), yb)) / jnp.maximum(jnp.sum(weights), 1.0)


def eval_accuracy(apply_fn: ApplyFn, params: Params, eval_xy: tuple) -> dict[str, jax.Array]:
  """``{"eval_acc": ...}`` on a monitor set ``(x, y)`` (the engine's ``metrics_fn`` once bound)."""
  return {"eval_acc": losses.accuracy(batched_apply(apply_fn, params, eval_xy[0]), eval_xy[1])}


def train_classifier(apply_fn: ApplyFn, params: Params, x: np.ndarray, y: np.ndarray,
                     config: TrainConfig, key: jax.Array, *,
                     optimizer: optax.GradientTransformation | None = None,
                     trainable_mask: Params | None = None,
                     eval_data: tuple[np.ndarray, np.ndarray] | None = None,
                     show_progress: bool = True, desc: str = "train",
                     scale: ScaleConfig | None = None,
                     resume: ResumeConfig | None = None, plan_only: bool = False,
                     example_weights: np.ndarray | None = None) -> DescentResult:
  """Trains ``params`` by minibatch cross-entropy descent.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: initial parameters (a fresh init for the original model and for
      the gold-standard retrain).
    x: training inputs.
    y: integer labels.
    config: a :class:`TrainConfig`.
    key: PRNG key for the minibatch order.
    optimizer: overrides the default ``optax.adamw(lr, weight_decay=...)``.
    trainable_mask: optional pytree of bools; False leaves stay fixed.
    eval_data: optional ``(x, y)``; its accuracy is recorded every epoch.
    show_progress: draw a progress bar over epochs.
    desc: progress-bar label.
    scale: optional :class:`famr_jax.engine.parallel.ScaleConfig` (data parallel over
      devices, FSDP, bfloat16 forward pass, gradient accumulation). With it,
      ``x`` may be a :class:`famr_jax.engine.parallel.ShardedData` holding ``(x, y)``
      (each process's own rows in a multi-process run) and ``y`` None.
    resume: optional :class:`famr_jax.engine.resume.ResumeConfig`: save resumable
      checkpoints; rerunning the same call continues where it stopped.
    plan_only: return the training as a :class:`famr_jax.engine.plan.DescentPlan` instead of running it.
    example_weights: optional ``[N]`` non-negative weights of the examples in each minibatch's mean loss;
      a row of weight 0 keeps its place in the minibatch order and contributes nothing (a retrain that
      shares its original's order: the audit's paired farm).

  Returns:
    A :class:`famr_jax.engine.descent.DescentResult` (params, per-epoch
    history with ``loss`` and, with ``eval_data``, ``eval_acc``, and timings).

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int32)
    >>> apply_fn = lambda p, x: x @ p["w"] + p["b"]
    >>> p0 = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
    >>> r = train_classifier(apply_fn, p0, x, y, TrainConfig(epochs=20, lr=0.1),
    ...                      jax.random.key(0), show_progress=False)
    >>> float(jnp.mean(jnp.argmax(apply_fn(r.params, x), -1) == y)) > 0.9
    True
  """
  config.validate()
  sharded = isinstance(x, ShardedData)
  if sharded:
    if y is not None or len(x.arrays) != 2:
      raise FamrError("pass ShardedData holding (x, y) as x, and y=None")
    for shard in x.arrays[0].addressable_shards:
      check_finite("training inputs", np.asarray(shard.data))
  elif is_streamed(x):   # a streamed set (an image folder) is decoded batch by batch: finite by construction
    y = check_labels(y, None, "training labels y")
    if len(x) != len(y):
      raise FamrError(f"training inputs x and labels y differ in length: {len(x)} and {len(y)}")
    check_params_finite(params, "initial params")
  else:
    x = check_images(x, "training inputs x")
    y = check_labels(y, None, "training labels y")
    if len(x) != len(y):
      raise FamrError(f"training inputs x and labels y differ in length: {len(x)} and {len(y)}")
    check_params_finite(params, "initial params")
    num_classes = check_logits_fn(apply_fn, params, x[:PROBE_ROWS], None)
    if len(y) and int(y.max()) >= num_classes:
      raise FamrError(f"training labels y must lie in [0, {num_classes}) (the model's classes), got {int(y.max())}")
  if optimizer is None:
    optimizer = make_optimizer("adamw", config.lr, config.weight_decay)
  optimizer = freeze_outside(optimizer, trainable_mask)
  forward = compute_dtype_apply_fn(apply_fn, scale.compute_dtype) if scale is not None else apply_fn
  loss_fn = bind_static(cross_entropy_loss, forward)
  metrics_fn, context = None, None
  if eval_data is not None:
    context = (jnp.asarray(eval_data[0], jnp.float32), jnp.asarray(eval_data[1], jnp.int32))
    metrics_fn = bind_static(eval_accuracy, apply_fn)

  data = x if sharded else (x if is_streamed(x) else np.asarray(x, np.float32), np.asarray(y, np.int32))
  if example_weights is not None:
    example_weights = np.asarray(example_weights, np.float32)
    if sharded or example_weights.shape != (len(y),) or not np.all(np.isfinite(example_weights)) \
        or np.any(example_weights < 0) or not np.any(example_weights > 0):
      raise FamrError(f"example_weights must be {len(y) if not sharded else 'N'} finite non-negative numbers, "
                      "not all zero, one per training example (and the data not sharded)")
    data = data + (example_weights,)
  return minibatch_descent(loss_fn, params, data,
                           optimizer, epochs=config.epochs, batch_size=config.batch_size, key=key,
                           context=context, metrics_fn=metrics_fn, desc=desc, show_progress=show_progress,
                           scale=scale, resume=resume, plan_only=plan_only,
                           resume_meta={"train": dataclasses.asdict(config),
                                        "eval_data": eval_data is not None,
                                        "frozen_leaves": trainable_mask is not None})
