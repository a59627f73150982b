"""Standard unlearning baselines in the registry's interface, so one table compares them with FAMR.

* ``retrain``: the gold standard, the training recipe on the retained data from
  a fresh initialization (:func:`famr_jax.engine.training.train_classifier`).
* ``ft``: fine-tune on retained data (cross-entropy), relying on catastrophic
  forgetting.
* ``ga``: gradient ascent on the forget set's cross-entropy.
* ``neggrad+``: ``w_r CE(retain) - w_f CE(forget)`` (Kurmanji et al. 2023).
* ``rl``: random labels on the forget set plus cross-entropy on retained data
  (as in SalUn's RL).
* ``salun``: a weight-saliency mask (the top ``saliency`` fraction of weights by
  ``|grad CE(forget)|`` at theta0), then RL updating only the salient weights
  (Fan et al. 2024).

Every descent baseline runs on the shared minibatch engine with the same data
stream as the FAMR variants: one epoch is one pass over the forget set, each
forget minibatch paired with ``retain_ratio`` random retained samples per
forget sample (:func:`famr_jax.methods.variants.pair_retained`), so their costs are
comparable epoch for epoch.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax import losses
from famr_jax.engine.batching import monitor_rows
from famr_jax.errors import FamrError
from famr_jax.validation import CheckedFields
from famr_jax.engine.descent import DescentResult, bind_static, check_descent_settings, make_optimizer, minibatch_descent
from famr_jax.engine.forward import batched_apply, timed_call
from famr_jax.engine.parallel import ScaleConfig, compute_dtype_apply_fn
from famr_jax.engine.resume import ResumeConfig
from famr_jax.engine.training import TrainConfig, train_classifier
# The pure loss lives in famr_jax.losses; it stays importable from here.
from famr_jax.losses import baseline_loss
from famr_jax.methods.variants import pair_retained

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]
BASELINES = ("ft", "ga", "neggrad+", "rl", "salun")


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class GAConfig(CheckedFields):
  """Gradient ascent on the forget set (method ``ga``).

  Attributes:
    epochs: passes over the forget set.
    lr: step size.
    batch_size: forget samples per step.
    optimizer: ``sgd``, ``momentum`` (SGD, 0.9) or ``adam``.
    steps: a step budget replacing ``epochs`` (every baseline has it): this many
      optimizer steps in all, whatever the forget set's size (none = ``epochs`` passes).
  """
  epochs: int = 1
  lr: float = 0.01
  batch_size: int = 32
  optimizer: Literal["sgd", "momentum", "adam"] = "momentum"
  steps: int | None = None

  def validate(self):
    """Raises :class:`FamrError` on an invalid setting."""
    check_descent_settings(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                           optimizer=self.optimizer, steps=self.steps)
    for name in ("retain_ratio",):
      if getattr(self, name, 1) <= 0:
        raise FamrError(f"{name} must be positive")
    for name in ("w_f", "w_r"):
      if getattr(self, name, 0.0) < 0:
        raise FamrError(f"{name} must be non-negative")
    if not 0.0 < getattr(self, "saliency", 0.5) <= 1.0:
      raise FamrError(f"saliency must lie in (0, 1], got {self.saliency}")
    return self


@dataclasses.dataclass(frozen=True)
class FTConfig(GAConfig):
  """Fine-tuning on retained data (method ``ft``).

  Attributes:
    epochs: passes over the forget set (each forget sample brings ``retain_ratio`` retained ones).
    lr: step size.
    batch_size: forget samples per step.
    optimizer: ``sgd``, ``momentum`` (SGD, 0.9) or ``adam``.
    retain_ratio: retained samples per forget sample in each step.
  """
  retain_ratio: int = 1


@dataclasses.dataclass(frozen=True)
class NegGradPlusConfig(FTConfig):
  """NegGrad+ (method ``neggrad+``): ``w_r CE(retain) - w_f CE(forget)``.

  Attributes:
    epochs: passes over the forget set.
    lr: step size.
    batch_size: forget samples per step.
    optimizer: ``sgd``, ``momentum`` (SGD, 0.9) or ``adam``.
    retain_ratio: retained samples per forget sample in each step.
    w_f: weight of the (ascended) forget cross-entropy.
    w_r: weight of the retained cross-entropy.
  """
  w_f: float = 0.5
  w_r: float = 0.5


@dataclasses.dataclass(frozen=True)
class RLConfig(FTConfig):
  """Random labels (method ``rl``): CE to random wrong labels on forget + CE on retained.

  Attributes:
    epochs: passes over the forget set.
    lr: step size.
    batch_size: forget samples per step.
    optimizer: ``sgd``, ``momentum`` (SGD, 0.9) or ``adam``.
    retain_ratio: retained samples per forget sample in each step.
    w_r: weight of the retained cross-entropy.
  """
  w_r: float = 1.0


@dataclasses.dataclass(frozen=True)
class SalUnConfig(RLConfig):
  """SalUn (method ``salun``): RL on the salient weights only.

  Attributes:
    epochs: passes over the forget set.
    lr: step size.
    batch_size: forget samples per step.
    optimizer: ``sgd``, ``momentum`` (SGD, 0.9) or ``adam``.
    retain_ratio: retained samples per forget sample in each step.
    w_r: weight of the retained cross-entropy.
    saliency: fraction of weights (largest ``|grad CE(forget)|``) that may change.
  """
  saliency: float = 0.5


# ----------------------------------------------------------------------------- pure pieces


def random_wrong_labels(key: jax.Array, labels: np.ndarray, allowed: np.ndarray) -> np.ndarray:
  """A random label per example, drawn uniformly from ``allowed`` classes other than its own.

  Example:
    >>> import jax, numpy as np
    >>> r = random_wrong_labels(jax.random.key(0), np.array([0, 1, 2]), np.array([True, True, True]))
    >>> bool(np.all(r != np.array([0, 1, 2])))
    True
  """
  labels = np.asarray(labels, np.int32)
  classes = np.flatnonzero(np.asarray(allowed))
  if classes.size == 0 or (classes.size == 1 and np.any(labels == classes[0])):
    raise FamrError("random labels need at least one other allowed class")
  # Per example, the allowed classes other than its own, and a uniform pick among them.
  choices = np.broadcast_to(classes, (labels.size, classes.size))
  valid = choices != labels[:, None]
  u = np.asarray(jax.random.uniform(key, (labels.size, classes.size)))
  scores = np.where(valid, u, -1.0)
  return choices[np.arange(labels.size), np.argmax(scores, axis=1)].astype(np.int32)


def saliency_mask(grads: Params, fraction: float) -> Params:
  """1.0 on the ``fraction`` of entries with the largest ``|grad|`` over the whole pytree, else 0.0.

  Example:
    >>> import jax.numpy as jnp
    >>> saliency_mask({"a": jnp.array([3.0, -1.0]), "b": jnp.array([0.5, -4.0])}, 0.5)["a"].tolist()
    [1.0, 0.0]
  """
  leaves = jax.tree.leaves(grads)
  flat = jnp.concatenate([jnp.abs(g).reshape(-1) for g in leaves])
  k = max(1, int(round(fraction * flat.size)))
  threshold = jnp.sort(flat)[flat.size - k]
  return jax.tree.map(lambda g: (jnp.abs(g) >= threshold).astype(jnp.float32), grads)


# ----------------------------------------------------------------------------- runs


class _Context(NamedTuple):
  mask: Params | None        # SalUn's saliency mask (1 = may change)
  monitor_x: jax.Array
  monitor_y: jax.Array


def baseline_minibatch_loss(method: str, apply_fn: ApplyFn, config: Any, params: Params, batch: tuple,
                            weights: jax.Array, ctx: _Context) -> jax.Array:
  """:func:`baseline_loss`, through SalUn's saliency mask (the engine's ``loss_fn`` once bound)."""
  if ctx.mask is not None:   # gradient only through the salient weights
    params = jax.tree.map(lambda q, m: m * q + (1.0 - m) * jax.lax.stop_gradient(q), params, ctx.mask)
  return baseline_loss(method, apply_fn, params, batch, weights, config)


def baseline_history(apply_fn: ApplyFn, params: Params, ctx: _Context) -> dict[str, jax.Array]:
  """Forget accuracy on a monitored sample of the forget set (the engine's ``metrics_fn`` once bound)."""
  return {"forget_acc": losses.accuracy(apply_fn(params, ctx.monitor_x), ctx.monitor_y)}


def forget_set_gradient(apply_fn: ApplyFn, params: Params, x: jax.Array, y: jax.Array) -> Params:
  """Gradient of the mean cross-entropy over the whole forget set (SalUn's saliency), in chunks."""
  return jax.grad(lambda q: jnp.mean(losses.cross_entropy(batched_apply(apply_fn, q, x, 512), y)))(params)


def salient_weights(apply_fn: ApplyFn, fraction: float, params: Params, x: jax.Array, y: jax.Array) -> Params:
  """SalUn's mask: :func:`saliency_mask` of :func:`forget_set_gradient` at ``params`` (one program)."""
  return saliency_mask(forget_set_gradient(apply_fn, params, x, y), fraction)


def baseline_unlearn(method: str, apply_fn: ApplyFn, params: Params, x_forget: np.ndarray,
                     y_forget: np.ndarray, config: Any, key: jax.Array, *,
                     retain_data: tuple[np.ndarray, np.ndarray] | None = None,
                     forget_classes: tuple[int, ...] = (), num_classes: int | None = None,
                     show_progress: bool = True, scale: ScaleConfig | None = None,
                     resume: ResumeConfig | None = None, plan_only: bool = False) -> DescentResult:
  """Runs the descent baseline ``method`` (``ft``, ``ga``, ``neggrad+``, ``rl`` or ``salun``).

  Args:
    method: the baseline's name.
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: the trained params.
    x_forget: forget inputs.
    y_forget: forget labels.
    config: the method's config (:class:`GAConfig`, :class:`FTConfig`, ...).
    key: PRNG key (minibatch order, retained pairing, random labels).
    retain_data: ``(x, y)`` retained training data (every method but ``ga``).
    forget_classes: forgotten classes: random labels are drawn among the retained classes.
    num_classes: the model's class count (default: from the logits).
    show_progress: progress bar.
    scale: optional :class:`famr_jax.engine.parallel.ScaleConfig` (data parallel,
      FSDP, bfloat16 forward pass in the steps, gradient accumulation).
    resume: optional :class:`famr_jax.engine.resume.ResumeConfig`: save resumable
      checkpoints; rerunning the same call continues where it stopped.
    plan_only: return the descent as a :class:`famr_jax.engine.plan.DescentPlan` instead of running it
      (the one-off passes it needs run; a farm vmaps such plans).

  Returns:
    A :class:`famr_jax.engine.descent.DescentResult`.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> apply_fn = lambda p, x: x @ p
    >>> x = np.eye(2, dtype=np.float32)[:1].repeat(4, 0)
    >>> r = baseline_unlearn("ga", apply_fn, 3 * jnp.eye(2), x, np.zeros(4, np.int32),
    ...                      GAConfig(epochs=20, lr=0.5), jax.random.key(0), show_progress=False)
    >>> int(jnp.argmax((x @ r.params)[0]))
    1
  """
  if method not in BASELINES:
    raise FamrError(f"unknown baseline {method!r}; valid: {', '.join(BASELINES)}")
  config.validate()
  x_forget = np.asarray(x_forget, np.float32)
  y_forget = np.asarray(y_forget, np.int32)
  if x_forget.shape[0] == 0:
    raise FamrError("the forget set is empty")
  t0 = time.perf_counter()
  data = _baseline_data(method, apply_fn, params, x_forget, y_forget, config, key, retain_data=retain_data,
                        forget_classes=forget_classes, num_classes=num_classes)
  extra_compile, extra_run = 0.0, time.perf_counter() - t0
  mask = None
  if method == "salun":
    # Saliency of SalUn: |gradient of the forgetting loss| on the whole forget set at theta0.
    mask, extra_compile, run_s = timed_call(bind_static(salient_weights, apply_fn, config.saliency), params,
                                            jnp.asarray(x_forget), jnp.asarray(y_forget))
    extra_run += run_s
  monitor = monitor_rows(key, x_forget.shape[0])
  ctx = _Context(mask, jnp.asarray(x_forget[monitor]), jnp.asarray(y_forget[monitor]))
  # bfloat16 runs the steps' forward passes only; the history stays float32.
  forward = compute_dtype_apply_fn(apply_fn, scale.compute_dtype) if scale is not None else apply_fn
  meta = {"baseline": method, "config": dataclasses.asdict(config),
          "forget_classes": [int(c) for c in forget_classes]}
  result = minibatch_descent(bind_static(baseline_minibatch_loss, method, forward, config), params, data,
                             make_optimizer(config.optimizer, config.lr),
                             epochs=config.epochs, batch_size=config.batch_size, key=key, context=ctx,
                             metrics_fn=bind_static(baseline_history, apply_fn), initial_metrics=True, desc=method,
                             show_progress=show_progress, max_steps=config.steps, scale=scale, resume=resume,
                             resume_meta=meta, plan_only=plan_only)
  if plan_only:
    return result
  return result._replace(compile_s=result.compile_s + extra_compile, run_s=result.run_s + extra_run)


def _baseline_data(method, apply_fn, params, x_forget, y_forget, config, key, *, retain_data, forget_classes,
                   num_classes) -> tuple:
  """The engine's data: ``(x_f, y_f)`` (random wrong labels for ``rl`` / ``salun``), plus ``(x_r, y_r)``
  of ``retain_ratio`` paired retained samples per forget sample for every method but ``ga``."""
  labels = y_forget
  if method in ("rl", "salun"):
    if num_classes is None:
      num_classes = int(jax.eval_shape(apply_fn, params, jnp.asarray(x_forget[:1])).shape[-1])
    allowed = np.ones(num_classes, bool)
    allowed[list(forget_classes)] = False
    labels = random_wrong_labels(jax.random.fold_in(key, 4), y_forget, allowed)
  if method == "ga":
    return (x_forget, labels)
  if retain_data is None:
    raise FamrError(f"{method} needs retained data: pass retain_data")
  x_pool, y_pool = np.asarray(retain_data[0], np.float32), np.asarray(retain_data[1], np.int32)
  pick = pair_retained(jax.random.fold_in(key, 1), x_forget.shape[0], x_pool.shape[0], config.retain_ratio)
  return (x_forget, labels, x_pool[pick], y_pool[pick])


def retrain_unlearn(apply_fn: ApplyFn, init_params: Params, x_retain: np.ndarray, y_retain: np.ndarray,
                    config: TrainConfig, key: jax.Array, *, show_progress: bool = True,
                    scale: ScaleConfig | None = None, resume: ResumeConfig | None = None,
                    plan_only: bool = False) -> DescentResult:
  """The ``retrain`` method: the training recipe on the retained data from ``init_params``.

  ``scale``, ``resume`` and ``plan_only`` are :func:`famr_jax.engine.training.train_classifier`'s.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> x = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
    >>> r = retrain_unlearn(lambda p, x: x @ p, jnp.zeros((2, 2)), x, (x[:, 0] > 0).astype(np.int32),
    ...                     TrainConfig(epochs=5, lr=0.1), jax.random.key(0), show_progress=False)
    >>> len(r.history)
    5
  """
  return train_classifier(apply_fn, init_params, x_retain, y_retain, config, key, show_progress=show_progress,
                          desc="retrain", scale=scale, resume=resume, plan_only=plan_only)


# ----------------------------------------------------------------------------- registry

BASELINE_CONFIGS = {"ft": FTConfig, "ga": GAConfig, "neggrad+": NegGradPlusConfig, "rl": RLConfig,
                    "salun": SalUnConfig}


def baseline_task_runner(name: str):
  """The registry's adapter for the descent baseline ``name``: ``run(task, config)``."""
  def run(task, config) -> DescentResult:
    data, forget = task.data, task.forget
    keep = forget.retain_mask(len(data.y_train))
    idx = forget.indices
    return baseline_unlearn(name, task.apply_fn, task.params, data.x_train[idx], data.y_train[idx], config,
                            task.key, retain_data=(data.x_train[keep], data.y_train[keep]),
                            forget_classes=forget.classes, num_classes=forget.num_classes,
                            show_progress=task.show_progress, scale=getattr(task, "scale", None),
                            resume=getattr(task, "resume", None), plan_only=getattr(task, "plan_only", False))
  return run


def run_retrain_task(task, config: TrainConfig) -> DescentResult:
  """The registry's adapter: the gold standard (the training recipe on the retained data)."""
  from famr_jax import models
  if task.model is None:
    raise FamrError("retrain needs the model (to initialize it afresh): pass model")
  data, forget = task.data, task.forget
  keep = forget.retain_mask(len(data.y_train))
  # A fresh init drawn from the task's key (the gold standard of `compare` uses another one).
  init = models.init_params(task.model, jax.random.fold_in(task.key, 11), data.image_shape)
  return retrain_unlearn(task.apply_fn, init, data.x_train[keep], data.y_train[keep], config,
                         jax.random.fold_in(task.key, 12), show_progress=task.show_progress,
                         scale=getattr(task, "scale", None), resume=getattr(task, "resume", None),
                         plan_only=getattr(task, "plan_only", False))
