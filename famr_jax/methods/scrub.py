"""SCRUB (Kurmanji, Triantafillou, Hayes & Triantafillou, NeurIPS 2023): method ``scrub``.

A student, initialized at the trained model (the teacher), alternates two
phases each round (SCRUB's "epochs"):

* **max phase** (only in the first ``max_epochs`` rounds, SCRUB's ``msteps``):
  steps that *ascend* ``d(x) = T^2 KL(p_teacher^T(x) || p_student^T(x))`` on
  forget minibatches (``p^T`` the softmax at temperature ``T``), pushing the
  student away from the teacher where it must forget;
* **min phase**: steps that descend ``gamma CE(student(x), y) + alpha d(x)`` (alpha: ``kl_weight``)
  on retained minibatches, keeping it close to the teacher (and correct)
  elsewhere.

Both phases share one optimizer state, as in the authors' code. Each phase
is one run of the engine (:func:`famr_jax.engine.descent.minibatch_descent`,
one epoch with a step budget, continuing the shared optimizer state); the
rounds are a short Python loop. Like the other baselines, the retained data are ``retain_ratio``
random retained samples per forget sample (a fresh draw each round), in
minibatches of the same size, so a min phase has ``retain_ratio`` times the
steps of a max phase (the authors' min phase is a whole pass over the
retained set: many more steps than the max phase, which is what repairs the
damage of the unbounded ascent). The authors' loss settings are the
defaults (``gamma`` 0.99, ``alpha`` 0.001, ``T`` 4, 2 max rounds); the
schedule is tuned on digits (BUILD_NOTES.md).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax import losses
from famr_jax.engine.batching import monitor_rows
from famr_jax.errors import FamrError
from famr_jax.validation import CheckedFields, apply_renamed
from famr_jax.engine.descent import (DescentResult, bind_static, check_descent_settings, make_optimizer,
                                     minibatch_descent, steps_per_epoch)
from famr_jax.engine.forward import batched_apply
from famr_jax.engine.parallel import ScaleConfig, compute_dtype_apply_fn
# The pure losses live in famr_jax.losses; they stay importable from here.
from famr_jax.losses import scrub_max_loss, scrub_min_loss
from famr_jax.methods.variants import pair_retained

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class SCRUBConfig(CheckedFields):
  """SCRUB (method ``scrub``).

  ``alpha`` (the paper's name of ``kl_weight``: FAMR's ``alpha`` means another
  thing) and ``weight_decay`` (the old name of ``coupled_weight_decay``: the
  other configs' ``weight_decay`` is AdamW's decoupled one) still work as
  keywords, with a ``DeprecationWarning``.

  Attributes:
    epochs: rounds; each is a max phase (the first ``max_epochs`` rounds only)
      then a min phase.
    max_epochs: rounds that begin with a max phase (SCRUB's ``msteps``).
    lr: step size (both phases).
    batch_size: samples per step (forget samples in the max phase, retained
      ones in the min phase).
    optimizer: ``sgd``, ``momentum`` (SGD, 0.9) or ``adam``.
    retain_ratio: retained samples per forget sample in each round (so min
      phases take ``retain_ratio`` times the steps of max phases).
    kl_weight: the paper's alpha: weight of the teacher-student KL in the min phase.
    gamma: weight of the retained cross-entropy in the min phase.
    temperature: the distillation temperature ``T``.
    steps: a per-round step budget: each max phase stops after this many
      steps, each min phase after ``retain_ratio`` times as many (none = one
      pass over the forget set / its retained draw).
    coupled_weight_decay: coupled L2 weight decay (added to the gradient, as torch's SGD does).

  The coupled weight decay (the authors' 5e-4) matters: the student starts
  *at* the teacher, where ``d`` and its gradient are zero, so the first max
  steps move only by this decay (and by the min phase after it).
  """
  epochs: int = 3
  max_epochs: int = 2
  lr: float = 5e-4
  batch_size: int = 32
  optimizer: Literal["sgd", "momentum", "adam"] = "adam"
  retain_ratio: int = 1
  kl_weight: float = 0.001
  gamma: float = 0.99
  temperature: float = 4.0
  steps: int | None = None
  coupled_weight_decay: float = 5e-4
  alpha: dataclasses.InitVar[float | None] = None          # deprecated name of kl_weight
  weight_decay: dataclasses.InitVar[float | None] = None   # deprecated name of coupled_weight_decay

  def __post_init__(self, alpha: float | None = None, weight_decay: float | None = None) -> None:
    apply_renamed(self, {"alpha": ("kl_weight", alpha), "weight_decay": ("coupled_weight_decay", weight_decay)})
    super().__post_init__()

  def validate(self) -> "SCRUBConfig":
    """Raises :class:`FamrError` on an invalid setting."""
    check_descent_settings(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                           optimizer=self.optimizer, steps=self.steps)
    if self.max_epochs < 0:
      raise FamrError(f"max_epochs must be non-negative, got {self.max_epochs}")
    if self.retain_ratio <= 0:
      raise FamrError(f"retain_ratio must be positive, got {self.retain_ratio}")
    if self.kl_weight < 0 or self.gamma < 0:
      raise FamrError(f"kl_weight and gamma must be non-negative, got {self.kl_weight} and {self.gamma}")
    if self.coupled_weight_decay < 0:
      raise FamrError(f"weight decay must be non-negative, got {self.coupled_weight_decay}")
    if not self.temperature > 0:
      raise FamrError(f"the temperature must be positive, got {self.temperature}")
    return self


def forget_accuracy_metrics(apply_fn: ApplyFn, params: Params, monitor_xy: tuple) -> dict[str, jax.Array]:
  """``{"forget_acc": ...}`` on a monitored sample of the forget set (the engine's ``metrics_fn``)."""
  return {"forget_acc": losses.accuracy(apply_fn(params, monitor_xy[0]), monitor_xy[1])}


def _with_config(loss_fn, config, params, batch, weights, context):
  del context
  return loss_fn(params, batch, weights, config)


def scrub_unlearn(apply_fn: ApplyFn, params: Params, x_forget: np.ndarray, y_forget: np.ndarray,
                  config: SCRUBConfig, key: jax.Array, *,
                  retain_data: tuple[np.ndarray, np.ndarray], show_progress: bool = True,
                  scale: ScaleConfig | None = None) -> DescentResult:
  """Runs SCRUB from the trained ``params`` (the teacher, and the student's start).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: the trained params.
    x_forget: forget inputs.
    y_forget: forget labels (only to monitor forget accuracy).
    config: a :class:`SCRUBConfig`.
    key: PRNG key (minibatch orders, retained draws).
    retain_data: ``(x, y)`` retained training data.
    show_progress: unused (rounds are few); kept for the registry's interface.
    scale: optional :class:`famr_jax.engine.parallel.ScaleConfig` for every phase
      (data parallel, FSDP, bfloat16 forward pass in the steps, gradient
      accumulation). SCRUB runs several descents, so it does not resume.

  Returns:
    A :class:`famr_jax.engine.descent.DescentResult`; ``history`` has one entry
    per phase (``phase``: ``max`` or ``min``, with the forget accuracy).

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> apply_fn = lambda p, x: x @ p
    >>> x = np.eye(2, dtype=np.float32)
    >>> r = scrub_unlearn(apply_fn, 3 * jnp.eye(2), x[:1].repeat(4, 0), np.zeros(4, np.int32),
    ...                   SCRUBConfig(epochs=3, max_epochs=2), jax.random.key(0),
    ...                   retain_data=(x[1:].repeat(4, 0), np.ones(4, np.int32)))
    >>> [h["phase"] for h in r.history]
    ['max', 'min', 'max', 'min', 'min']
  """
  del show_progress
  config.validate()
  x_forget = np.asarray(x_forget, np.float32)
  y_forget = np.asarray(y_forget, np.int32)
  n_f = x_forget.shape[0]
  if n_f == 0:
    raise FamrError("the forget set is empty")
  x_pool, y_pool = np.asarray(retain_data[0], np.float32), np.asarray(retain_data[1], np.int32)
  if x_pool.shape[0] == 0:
    raise FamrError("scrub needs retained data")

  optimizer = make_optimizer(config.optimizer, config.lr, config.coupled_weight_decay)
  monitor = monitor_rows(key, n_f)
  monitor_xy = (jnp.asarray(x_forget[monitor]), jnp.asarray(y_forget[monitor]))
  metrics_fn = bind_static(forget_accuracy_metrics, apply_fn)
  n_r = n_f * config.retain_ratio
  max_steps, min_steps = steps_per_epoch(n_f, config.batch_size), steps_per_epoch(n_r, config.batch_size)
  if config.steps is not None:
    max_steps, min_steps = min(config.steps, max_steps), min(config.steps * config.retain_ratio, min_steps)
    # Draw only the retained samples a budgeted min phase visits (it takes a random order of its
    # draw, so the first min_steps minibatches of n_r draws and a draw of that many are alike).
    n_r = min(n_r, min_steps * config.batch_size)

  # The teacher's logits, once: on the forget set, and on each round's fresh retained draw.
  t0 = time.perf_counter()
  forget_data = (jnp.asarray(x_forget), batched_apply(apply_fn, params, x_forget))
  retain_rounds = []
  for r in range(config.epochs):
    draw = pair_retained(jax.random.fold_in(key, 1000 + r), n_r, x_pool.shape[0], 1).reshape(-1)
    retain_rounds.append((jnp.asarray(x_pool[draw]), jnp.asarray(y_pool[draw]),
                          batched_apply(apply_fn, params, x_pool[draw])))
  jax.block_until_ready(retain_rounds)
  run_s, compile_s = time.perf_counter() - t0, 0.0

  # bfloat16 runs the steps' forward passes only; the teacher's logits and the history stay float32.
  forward = compute_dtype_apply_fn(apply_fn, scale.compute_dtype) if scale is not None else apply_fn
  phases, opt_state = [], None
  for r in range(config.epochs):
    for phase, loss_fn, data, steps, k in (
        ("max", bind_static(scrub_max_loss, forward), forget_data, max_steps, 2 * r),
        ("min", bind_static(scrub_min_loss, forward), retain_rounds[r], min_steps, 2 * r + 1)):
      if phase == "max" and r >= config.max_epochs:
        continue
      out = minibatch_descent(bind_static(_with_config, loss_fn, config), params, data, optimizer, epochs=1,
                              max_steps=steps, batch_size=config.batch_size, key=jax.random.fold_in(key, k),
                              context=monitor_xy, metrics_fn=metrics_fn, show_progress=False,
                              opt_state=opt_state, scale=scale)
      params, opt_state = out.params, out.opt_state
      compile_s, run_s = compile_s + out.compile_s, run_s + out.run_s
      phases.append({"phase": phase, **out.history[-1], "epoch": r + 1})
  return DescentResult(params, phases, compile_s, run_s, opt_state)


def run_scrub_task(task, config: SCRUBConfig) -> DescentResult:
  """The registry's adapter: SCRUB on an :class:`famr_jax.methods.registry.UnlearnTask`."""
  resume = getattr(task, "resume", None)
  if resume is not None and resume.enabled:
    raise FamrError("scrub runs several descents and cannot resume: pass resume=None")
  data, forget = task.data, task.forget
  keep = forget.retain_mask(len(data.y_train))
  idx = forget.indices
  return scrub_unlearn(task.apply_fn, task.params, data.x_train[idx], data.y_train[idx], config, task.key,
                       retain_data=(data.x_train[keep], data.y_train[keep]), show_progress=task.show_progress,
                       scale=getattr(task, "scale", None))
