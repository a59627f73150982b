"""FAMR variants: what to aim the forget set at, and how to anchor the rest, as composable options.

The paper's FAMR (``famr``) minimizes
``mean KL(u || p_theta(x_f)) + lam/2 ||theta - theta0||^2`` over the forget
set. Both halves have a measurable cost (BUILD_NOTES.md, issue 2): a uniform
output is not what a model retrained without the forget set outputs, and an
isotropic parameter anchor does not know which directions the retained
classes depend on. Every variant here is FAMR's one objective
(:func:`famr_jax.methods.objective.famr_loss`)

``J(theta) = alpha * mean_f KL(t(x_f) || p_theta(x_f))``
``        + A(theta - theta0)``
``        + retain_weight * mean_r KL(p_theta0(x_r) || p_theta(x_r))``

with three independent choices (:class:`FAMRVariantConfig`; the named
methods are presets, :data:`famr_jax.methods.objective.PRESETS`):

* ``target`` ``t``: ``uniform`` (the paper) or ``retrain``: the original
  model's predictive distribution with the forgotten classes removed and
  renormalized (:func:`retrain_target`), what a retrained model predicts on a
  forgotten-class image, to first order;
* ``anchor`` ``A(d)``: ``l2`` (``lam/2 ||d||^2``), ``fisher``
  (``1/2 d^T (c F + lam I) d``, ``F`` the diagonal empirical Fisher of the
  training loss stored with the checkpoint, :mod:`famr_jax.theory.fisher`), or
  ``gauss-newton`` / ``hessian`` (``1/2 d^T (c H + lam I) d``, ``H`` the
  exact Gauss-Newton matrix / Hessian of the retained loss at ``theta0`` on
  the step's retained minibatch, one HVP per step, :func:`curvature_anchor`);
* a function-space anchor (``retain_weight > 0``): the KL from the original
  model's predictions on retained samples (``function_data="retain"``) or, with
  no retained data at all, on class impressions of the retained classes
  (``function_data="impressions"``);

plus ``train_from``: freeze every stage before it (head frozen / tail only);
its input is then computed once and only the tail runs per step.

Retained samples (for the function anchor and the exact-curvature anchors) are
paired with the forget set: ``retain_ratio`` random retained samples per
forget sample, drawn once with the key, so one epoch is one pass over the
forget set and costs ``1 + retain_ratio`` forward/backward passes per forget
sample.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from famr_jax import losses
from famr_jax.engine.batching import monitor_rows
from famr_jax.errors import FamrError
from famr_jax.engine.descent import (DescentResult, bind_static, check_descent_settings, freeze_outside,
                                     make_optimizer, minibatch_descent)
from famr_jax.engine.forward import batched_apply, timed_call
from famr_jax.engine.streaming import is_streamed
from famr_jax.engine.optimizers import StaticMask
from famr_jax.engine.parallel import ScaleConfig, compute_dtype_apply_fn
from famr_jax.engine.resume import ResumeConfig
# The objective's pure pieces live in famr_jax.losses and methods.objective; they stay importable from here.
from famr_jax.losses import curvature_anchor, fisher_anchor, retrain_target, target_kl  # noqa: F401
from famr_jax.methods.defaults import default_overrides
from famr_jax.methods.impressions import ImpressionSettings
from famr_jax.methods.objective import (ANCHORS, TARGETS, FAMRTerms, RetainedBatch, famr_loss,  # noqa: F401
                                        retained_matvec)

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]

FUNCTION_DATA = ("retain", "impressions")


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class FAMRVariantConfig(ImpressionSettings):
  """One FAMR variant: target, anchor, function anchor and frozen head, composable.

  Attributes:
    epochs: passes over the forget set.
    lr: step size.
    lam: anchor strength lambda (Eq. 1's; the ``lam I`` of every parameter anchor, ``>= 0``).
    steps: a step budget replacing ``epochs``: this many optimizer steps in all,
      whatever the forget set's size (none = ``epochs`` passes).
    batch_size: forget-set minibatch size.
    optimizer: ``sgd`` (Algorithm 1), ``momentum`` (SGD, 0.9) or ``adam``.
    alpha: weight of the forget term ``KL(t || p)`` on forget samples (Eq. 5's alpha; ``t`` the method's
      target: uniform in the paper's FAMR).
    target: forget-sample target t: ``uniform`` (the paper) or ``retrain``
      (the original prediction with the forgotten classes removed and
      renormalized; class forgetting only).
    anchor: parameter anchor: ``l2``, ``fisher`` (stored diagonal Fisher),
      ``gauss-newton`` or ``hessian`` (exact, of the retained loss at theta0,
      one HVP per step on the retained minibatch).
    curvature_weight: weight c of F or H in the ``fisher`` / ``gauss-newton``
      / ``hessian`` anchors.
    retain_weight: weight of the function-space anchor ``KL(p0 || p)`` on retained samples or impressions (0 = none).
    function_data: where the function anchor (and the exact-curvature anchors)
      get retained samples: ``retain`` (retained training data) or
      ``impressions`` (class impressions of the retained classes; no retained
      data is read).
    retain_ratio: retained samples paired with each forget sample.
    train_from: first trainable stage (earlier stages are frozen and run once);
      none = every stage is trained.

  The impression fields (``function_data="impressions"``) are
  :class:`famr_jax.methods.impressions.ImpressionSettings`'; impressions are
  pixels, or activations at the input of ``train_from``. Here they default to
  ``impression_objective="logit"`` and ``impression_range="free"`` (the
  zero-shot methods' defaults are ``log_softmax`` and ``auto``).
  """
  epochs: int = 10
  lr: float = 0.1
  lam: float = 0.1
  batch_size: int = 32
  optimizer: Literal["sgd", "momentum", "adam"] = "sgd"
  alpha: float = 1.0
  target: Literal["uniform", "retrain"] = "uniform"
  anchor: Literal["l2", "fisher", "gauss-newton", "hessian"] = "l2"
  curvature_weight: float = 1.0
  retain_weight: float = 0.0
  function_data: Literal["retain", "impressions"] = "retain"
  retain_ratio: int = 1
  train_from: str | None = None
  steps: int | None = None
  impression_range: Literal["auto", "free", "nonnegative"] = "free"
  impression_objective: Literal["logit", "log_softmax"] = "logit"

  def validate(self) -> "FAMRVariantConfig":
    """Raises :class:`FamrError` on an invalid setting."""
    check_descent_settings(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                           optimizer=self.optimizer, lam=self.lam, steps=self.steps)
    if self.alpha < 0 or self.curvature_weight < 0 or self.retain_weight < 0:
      raise FamrError("alpha, curvature_weight and retain_weight must be non-negative")
    if self.target not in TARGETS:
      raise FamrError(f"unknown target {self.target!r}: choose one of {', '.join(TARGETS)}")
    if self.anchor not in ANCHORS:
      raise FamrError(f"unknown anchor {self.anchor!r}: choose one of {', '.join(ANCHORS)}")
    if self.function_data not in FUNCTION_DATA:
      raise FamrError(f"unknown function data {self.function_data!r}: choose one of {', '.join(FUNCTION_DATA)}")
    if self.retain_ratio <= 0:
      raise FamrError(f"retain_ratio must be positive, got {self.retain_ratio}")
    self.impression_config("pixel", None).validate()
    return self

  def terms(self) -> FAMRTerms:
    """The objective's terms (:class:`famr_jax.methods.objective.FAMRTerms`): target, anchor and weights.

    Example:
      >>> FAMRVariantConfig(target="retrain").terms().target
      'retrain'
    """
    return FAMRTerms(alpha=self.alpha, target=self.target, retain_weight=self.retain_weight, anchor=self.anchor,
                     lam=self.lam, curvature_weight=self.curvature_weight)

  @property
  def needs_retain_pool(self) -> bool:
    """Whether each step needs retained samples (function anchor or exact-curvature anchor)."""
    return self.terms().needs_retained

  @property
  def reads_retained_data(self) -> bool:
    """Whether the variant reads retained training data (False: forget set and checkpoint only)."""
    return self.needs_retain_pool and self.function_data == "retain"

  def make_optimizer(self) -> optax.GradientTransformation:
    """The optax transformation named by ``optimizer``."""
    return make_optimizer(self.optimizer, self.lr)


# ----------------------------------------------------------------------------- the objective


class VariantBatch(NamedTuple):
  """One minibatch of a variant: forget samples and their targets, plus paired retained samples.

  Attributes:
    x_forget: ``[B, ...]`` forget inputs (images, or the frozen head's output).
    target: ``[B, C]`` target distribution of each forget sample.
    x_retain: ``[B, k, ...]`` paired retained inputs (or None).
    y_retain: ``[B, k]`` their labels (or None).
    logits0_retain: ``[B, k, C]`` the original model's logits on them (or None).
  """
  x_forget: jax.Array
  target: jax.Array
  x_retain: jax.Array | None = None
  y_retain: jax.Array | None = None
  logits0_retain: jax.Array | None = None


def variant_objective(apply_fn: ApplyFn, params: Params, batch: VariantBatch, weights: jax.Array,
                      params0: Params, config: FAMRVariantConfig, fisher: Params | None = None) -> jax.Array:
  """The variant's minibatch objective ``J``: :func:`famr_jax.methods.objective.famr_loss` on a :class:`VariantBatch`.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits`` (the tail when the head is frozen).
    params: current params.
    batch: a :class:`VariantBatch`; the retained fields are needed when
      ``config.needs_retain_pool``.
    weights: ``[B]`` 0/1 weights (0 on padding); a paired retained sample
      takes its forget sample's weight.
    params0: the original params.
    config: a :class:`FAMRVariantConfig`.
    fisher: the diagonal Fisher (pytree like ``params``) for ``anchor="fisher"``.

  Example:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda p, x: x @ p["w"]
    >>> p0 = {"w": jnp.zeros((2, 3))}
    >>> b = VariantBatch(jnp.ones((4, 2)), jnp.full((4, 3), 1 / 3))
    >>> float(variant_objective(apply_fn, p0, b, jnp.ones(4), p0, FAMRVariantConfig()))
    0.0
  """
  retained = None
  if config.needs_retain_pool:
    if batch.x_retain is None:
      raise FamrError("this variant needs retained samples in its batches")
    k = batch.x_retain.shape[1]
    flat = lambda a: None if a is None else a.reshape((-1,) + a.shape[2:])
    retained = RetainedBatch(flat(batch.x_retain), flat(batch.y_retain), flat(batch.logits0_retain),
                             jnp.repeat(weights, k))
  return famr_loss(apply_fn, config.terms(), params, params0, batch.x_forget, weights, target=batch.target,
                   retained=retained, fisher=fisher)


# ----------------------------------------------------------------------------- the method


class _Context(NamedTuple):
  params0: Params
  fisher: Params | None
  monitor_x: jax.Array
  monitor_y: jax.Array
  monitor_logits0: jax.Array


def pair_retained(key: jax.Array, num_forget: int, num_retain: int, ratio: int) -> np.ndarray:
  """``[num_forget, ratio]`` indices into the retained pool, uniform, without replacement when possible.

  Example:
    >>> import jax
    >>> pair_retained(jax.random.key(0), 3, 10, 2).shape
    (3, 2)
  """
  if num_retain <= 0:
    raise FamrError("no retained samples to pair with the forget set")
  count = num_forget * ratio
  idx = jax.random.choice(key, num_retain, (count,), replace=count > num_retain)
  return np.asarray(idx).reshape(num_forget, ratio)


def forget_class_mask(forget_classes: Sequence[int], num_classes: int) -> np.ndarray:
  """``[C]`` bool mask of the forgotten classes.

  Example:
    >>> forget_class_mask([1], 3).tolist()
    [False, True, False]
  """
  mask = np.zeros(num_classes, bool)
  mask[list(forget_classes)] = True
  return mask


def variant_minibatch_loss(step_fn: ApplyFn, config: "FAMRVariantConfig", mask: StaticMask | None,
                           params: Params, batch: tuple, weights: jax.Array, ctx: "_Context") -> jax.Array:
  """A variant's minibatch loss (the engine's ``loss_fn`` once bound to its static arguments)."""
  if mask is not None:   # no gradient through frozen leaves at all (they are not even differentiated)
    params = jax.tree.map(lambda q, m: q if m else jax.lax.stop_gradient(q), params, mask.tree)
  return variant_objective(step_fn, params, VariantBatch(*batch), weights, ctx.params0, config, ctx.fisher)


def variant_history(step_fn: ApplyFn, has_labels: bool, params: Params, ctx: "_Context") -> dict[str, jax.Array]:
  """Per-epoch statistics on a monitored sample of the forget set (the engine's ``metrics_fn``)."""
  logits = step_fn(params, ctx.monitor_x)
  out = {"forget_kl_from_original": jnp.mean(losses.kl_divergence(ctx.monitor_logits0, logits)),
         "forget_entropy": jnp.mean(losses.entropy(logits))}
  if has_labels:
    out["forget_acc"] = losses.accuracy(logits, ctx.monitor_y)
  return out


class _Timer:
  """Adds up the compile and run seconds of the one-off programs around the descent."""

  def __init__(self):
    self.compile_s = self.run_s = 0.0

  def forward(self, apply_fn: ApplyFn, params: Params, x: jax.Array) -> jax.Array:
    """``apply_fn(params, x)`` in chunks, compiled once per ``apply_fn`` and shapes."""
    out, compile_s, run_s = timed_call(bind_static(batched_apply, apply_fn), params, x)
    self.compile_s, self.run_s = self.compile_s + compile_s, self.run_s + run_s
    return out


def famr_variant_unlearn(apply_fn: ApplyFn, params: Params, x_forget: np.ndarray,
                         config: FAMRVariantConfig, key: jax.Array, *,
                         y_forget: np.ndarray | None = None,
                         forget_classes: Sequence[int] = (),
                         num_classes: int | None = None,
                         retain_data: tuple[np.ndarray, np.ndarray] | None = None,
                         fisher: Params | None = None,
                         model: Any = None,
                         input_shape: Sequence[int] | None = None,
                         show_progress: bool = True,
                         scale: ScaleConfig | None = None,
                         resume: ResumeConfig | None = None, plan_only: bool = False) -> DescentResult:
  """Forgets ``x_forget`` with a FAMR variant, anchored at ``params``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: the trained params (also the anchor ``theta0``).
    x_forget: forget-set inputs.
    config: a :class:`FAMRVariantConfig`.
    key: PRNG key (minibatch order, retained pairing, impressions).
    y_forget: optional labels of the forget set (for the history's forget accuracy).
    forget_classes: the forgotten classes (needed by ``target="retrain"``
      and by ``function_data="impressions"``).
    num_classes: the model's class count (default: from the logits).
    retain_data: ``(x, y)`` retained training data, for the function anchor
      and the exact-curvature anchors with ``function_data="retain"``.
    fisher: the diagonal Fisher, for ``anchor="fisher"``.
    model: the Flax module (for ``train_from`` and activation-space impressions).
    input_shape: ``(H, W, C)`` (for impressions; default ``x_forget.shape[1:]``).
    show_progress: progress bar.
    scale: optional :class:`famr_jax.engine.parallel.ScaleConfig` (data parallel,
      FSDP, bfloat16 forward pass in the steps, gradient accumulation).
    resume: optional :class:`famr_jax.engine.resume.ResumeConfig`: save resumable
      checkpoints; rerunning the same call continues where it stopped.
    plan_only: return the descent as a :class:`famr_jax.engine.plan.DescentPlan` instead of running it
      (the one-off passes it needs run; a farm vmaps such plans).

  Returns:
    A :class:`famr_jax.engine.descent.DescentResult`. ``compile_s`` adds the
    compilation of the one-off forward passes (frozen head, original logits,
    impressions); ``run_s`` adds their run time.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> apply_fn = lambda p, x: x @ p["w"]
    >>> params = {"w": jnp.eye(3) * 5.0}
    >>> x = np.eye(3, dtype=np.float32)[:1].repeat(8, 0)
    >>> cfg = FAMRVariantConfig(epochs=30, lr=0.5, lam=0.01, target="retrain")
    >>> r = famr_variant_unlearn(apply_fn, params, x, cfg, jax.random.key(0), forget_classes=[0],
    ...                          show_progress=False)
    >>> int(jnp.argmax(apply_fn(r.params, x[:1])[0])) != 0
    True
  """
  config.validate()
  x_forget = np.asarray(x_forget, np.float32)
  if x_forget.shape[0] == 0:
    raise FamrError("the forget set is empty")
  if not np.all(np.isfinite(x_forget)):
    raise FamrError("forget-set inputs contain NaN or inf values")
  if config.anchor == "fisher" and fisher is None:
    raise FamrError("anchor='fisher' needs the diagonal Fisher: pass fisher "
                    "(famr_jax.theory.fisher.diagonal_fisher or load_fisher)")
  head_fn, step_fn, mask = _frozen_head(apply_fn, params, config, model)
  timer = _Timer()
  xf = jnp.asarray(x_forget)
  logits0_f = timer.forward(apply_fn, params, xf)
  num_classes = int(num_classes or logits0_f.shape[-1])
  h_forget = xf if head_fn is None else timer.forward(head_fn, params, xf)
  data = (h_forget, _forget_targets(config, logits0_f, forget_classes, num_classes))
  if config.needs_retain_pool:
    data += _retained_pool(apply_fn, head_fn, params, x_forget.shape, config, key, timer, retain_data=retain_data,
                           forget_classes=forget_classes, num_classes=num_classes, model=model,
                           input_shape=input_shape, show_progress=show_progress)

  monitor = monitor_rows(key, x_forget.shape[0])
  y_mon = (np.full(len(monitor), -1, np.int32) if y_forget is None
           else np.asarray(y_forget, np.int32)[monitor])
  ctx = _Context(params, fisher, h_forget[monitor], jnp.asarray(y_mon), logits0_f[monitor])

  # bfloat16 runs the steps' forward passes only; targets, anchors and the history stay float32.
  forward = compute_dtype_apply_fn(step_fn, scale.compute_dtype) if scale is not None else step_fn
  loss_fn = bind_static(variant_minibatch_loss, forward, config, StaticMask.of(mask))
  metrics_fn = bind_static(variant_history, step_fn, y_forget is not None)
  optimizer = freeze_outside(config.make_optimizer(), mask)
  meta = {"famr_variant": _resume_settings(config), "forget_classes": [int(c) for c in forget_classes],
          "labels": y_forget is not None, "fisher": fisher is not None}
  result = minibatch_descent(loss_fn, params, data, optimizer, epochs=config.epochs,
                             batch_size=config.batch_size, key=key, context=ctx, metrics_fn=metrics_fn,
                             initial_metrics=True, desc="FAMR variant", show_progress=show_progress,
                             max_steps=config.steps, scale=scale, resume=resume, resume_meta=meta,
                             plan_only=plan_only)
  if plan_only:
    return result
  return result._replace(compile_s=result.compile_s + timer.compile_s, run_s=result.run_s + timer.run_s)


# Impression fields the variants took from ImpressionSettings after their resume checkpoints were first
# written: left out of the resume fingerprint at their defaults, so those checkpoints still resume.
_LATER_FIELDS = ("impression_lr", "impression_beta", "impression_range", "impression_objective")


def _resume_settings(config: FAMRVariantConfig) -> dict:
  settings, defaults = dataclasses.asdict(config), FAMRVariantConfig()
  return {k: v for k, v in settings.items() if k not in _LATER_FIELDS or v != getattr(defaults, k)}


def _frozen_head(apply_fn: ApplyFn, params: Params, config: FAMRVariantConfig, model: Any):
  """``(head_fn, step_fn, trainable_mask)``: with ``train_from``, the head's output is computed once
  and only the tail runs per step; without, ``(None, apply_fn, None)``."""
  from famr_jax.models.parts import ModelParts
  if config.train_from is None and not isinstance(model, ModelParts):
    return None, apply_fn, None   # model parts given: their cut is the frozen head
  from famr_jax.methods.zero_shot import split_model
  if model is None:
    raise FamrError("train_from (a frozen head) needs the model: pass a famr-jax model or model parts")
  split = split_model(model, params, config.train_from)
  return split.head_fn, split.tail_fn, split.trainable_mask


def _forget_targets(config: FAMRVariantConfig, logits0: jax.Array, forget_classes: Sequence[int],
                    num_classes: int) -> jax.Array:
  """``[N, C]`` target distribution of each forget sample."""
  if config.target == "uniform":
    return jnp.full((logits0.shape[0], num_classes), 1.0 / num_classes, jnp.float32)
  if not forget_classes:
    raise FamrError("target='retrain' forgets whole classes: pass forget_classes "
                    "(or use target='uniform' for sample forgetting)")
  return retrain_target(logits0, jnp.asarray(forget_class_mask(forget_classes, num_classes)))


def _retained_pool(apply_fn, head_fn, params, forget_shape, config: FAMRVariantConfig, key, timer: _Timer, *,
                   retain_data, forget_classes, num_classes, model, input_shape, show_progress) -> tuple:
  """The retained fields of the variant's data: ``(x_r [N, k, ...], y_r [N, k], logits0_r [N, k, C])``."""
  n, k = forget_shape[0], config.retain_ratio
  pool_key = jax.random.fold_in(key, 1)
  if config.function_data == "retain":
    if retain_data is None:
      raise FamrError("this variant needs retained data: pass retain_data (or function_data='impressions')")
    # A streamed pool (an image folder) stays lazy: only the n * k paired rows are decoded.
    x_pool = retain_data[0] if is_streamed(retain_data[0]) else np.asarray(retain_data[0], np.float32)
    y_pool = np.asarray(retain_data[1], np.int32)
    pick = pair_retained(pool_key, n, x_pool.shape[0], k).reshape(-1)
    x_r, y_r = jnp.asarray(np.asarray(x_pool[pick], np.float32)), y_pool[pick]
    z0_r = timer.forward(apply_fn, params, x_r)
    if head_fn is not None:
      x_r = timer.forward(head_fn, params, x_r)
  else:
    x_r, y_r, z0_r, compile_s, run_s = _retained_impressions(
        model if model is not None else apply_fn, head_fn, params, forget_classes, num_classes,
        input_shape or forget_shape[1:], config, jax.random.fold_in(key, 2), n, pool_key, show_progress)
    timer.compile_s, timer.run_s = timer.compile_s + compile_s, timer.run_s + run_s
  return (jnp.reshape(x_r, (n, k) + tuple(x_r.shape[1:])), jnp.reshape(jnp.asarray(y_r), (n, k)),
          jnp.reshape(z0_r, (n, k, num_classes)))


def _retained_impressions(model, head_fn, params, forget_classes, num_classes, input_shape, config, key,
                          num_forget, pool_key, show_progress):
  """Class impressions of the retained classes as the retained pool (no retained data)."""
  import sys

  from famr_jax.methods.head_tail import head_output_is_nonnegative
  from famr_jax.methods.impressions import class_impressions
  if not forget_classes:
    raise FamrError("impressions stand in for retained classes: pass forget_classes")
  retain = [c for c in range(num_classes) if c not in set(forget_classes)]
  space = "activation" if config.train_from is not None else "pixel"
  nonneg = (space == "activation" and config.impression_range == "auto" and head_fn is not None
            and head_output_is_nonnegative(head_fn, params, tuple(input_shape), jax.random.fold_in(key, 1)))
  imp = class_impressions(model, params, retain, num_classes, tuple(input_shape),
                          config.impression_config(space, config.train_from, nonneg), key)
  if show_progress:
    print(imp.summary(), file=sys.stderr)
  if imp.inputs.shape[0] == 0:
    raise FamrError(f"no class impression reached its target class ({imp.summary()}); "
                    "try more impression steps")
  pick = pair_retained(pool_key, num_forget, imp.inputs.shape[0], config.retain_ratio).reshape(-1)
  return (jnp.asarray(imp.inputs[pick]), imp.labels[pick], jnp.asarray(imp.logits[pick]),
          imp.compile_s, imp.run_s)


# ----------------------------------------------------------------------------- registry

VARIANTS = ("famr-retrain-target", "famr-fisher", "famr-curvature", "famr-function", "famr-plus")


def variant_defaults(name: str, model_name: str) -> FAMRVariantConfig:
  """The default config of the variant ``name`` for a model (see :mod:`famr_jax.methods.defaults`).

  Example:
    >>> variant_defaults("famr-plus", "lenet5").train_from
    'fc1'
  """
  if name not in VARIANTS:
    raise FamrError(f"unknown FAMR variant {name!r}; valid: {', '.join(VARIANTS)}")
  return FAMRVariantConfig(**default_overrides(name, model_name, "classes"))


def variant_sample_defaults(name: str, model_name: str) -> FAMRVariantConfig:
  """The default config of the variant ``name`` for sample forgetting (a step budget).

  Example:
    >>> variant_sample_defaults("famr-function", "mlp").steps
    25
  """
  if name not in VARIANTS:
    raise FamrError(f"unknown FAMR variant {name!r}; valid: {', '.join(VARIANTS)}")
  return FAMRVariantConfig(**default_overrides(name, model_name, "samples"))


def run_variant_task(task, config: FAMRVariantConfig) -> DescentResult:
  """The registry's adapter: a FAMR variant on an :class:`famr_jax.methods.registry.UnlearnTask`."""
  from famr_jax.theory.fisher import load_fisher, missing_fisher_message
  config.validate()
  data, forget = task.data, task.forget
  fisher = None
  if config.anchor == "fisher":
    checkpoint = getattr(task, "checkpoint", None)
    if not checkpoint:
      raise FamrError(missing_fisher_message(None))
    fisher = load_fisher(checkpoint, like=task.params)
  retain = None
  if config.reads_retained_data:
    keep = forget.retain_mask(len(data.y_train))
    retain = (data.x_train[keep], data.y_train[keep])
  idx = forget.indices
  return famr_variant_unlearn(task.apply_fn, task.params, data.x_train[idx], config, task.key,
                              y_forget=data.y_train[idx], forget_classes=forget.classes,
                              num_classes=forget.num_classes, retain_data=retain, fisher=fisher,
                              model=task.model, input_shape=data.image_shape,
                              show_progress=task.show_progress, scale=getattr(task, "scale", None),
                              resume=getattr(task, "resume", None), plan_only=getattr(task, "plan_only", False))
