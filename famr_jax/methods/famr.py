"""FAMR: Forget-Aligned Model Reconstruction (FAMR paper, Algorithm 1).

``famr_unlearn`` minimizes the FAMR objective (Eq. 1)
``J(theta) = L_forget(theta) + lam/2 ||theta - theta0||^2`` over minibatches
of the forget set, ``L_forget = alpha L_KL + beta L_style`` (Eq. 5). With the
default ``optimizer="sgd"`` every step is exactly Algorithm 1, line 7:
``theta <- theta - lr * (g_forget + lam (theta - theta0))``. The objective is
:func:`famr_jax.methods.objective.famr_loss` with the uniform target and the
L2 anchor (:meth:`FAMRConfig.terms`); the variants set its other terms.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from famr_jax import losses
from famr_jax.engine.batching import monitor_rows
from famr_jax.errors import FamrError
from famr_jax.validation import CheckedFields
from famr_jax.engine.descent import (DescentResult, bind_static, check_descent_settings, freeze_outside,
                                     make_optimizer, minibatch_descent)
from famr_jax.engine.forward import batched_apply
from famr_jax.engine.streaming import is_streamed
from famr_jax.engine.optimizers import StaticMask
from famr_jax.engine.parallel import ScaleConfig, ShardedData, compute_dtype_apply_fn
from famr_jax.engine.resume import ResumeConfig
from famr_jax.losses import accuracy, param_distance
from famr_jax.methods.defaults import default_overrides
from famr_jax.methods.objective import FAMRTerms, famr_loss

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]



@dataclasses.dataclass(frozen=True)
class FAMRConfig(CheckedFields):
  """Hyperparameters of FAMR (Algorithm 1).

  The paper's settings are ``epochs=10, lr=1e-4, lam=0.1`` (its "rho"); on
  small models they barely move the weights. The defaults here are the
  setting measured to forget on the library's small models (see
  BUILD_NOTES.md, "FAMR defaults"); :meth:`paper` gives the paper's.

  Attributes:
    epochs: passes over the forget set.
    lr: step size eta.
    lam: anchor strength lambda (Eq. 1's; the ``lam I`` of every parameter anchor, ``>= 0``).
    batch_size: forget-set minibatch size.
    alpha: weight of the forget term ``KL(t || p)`` on forget samples (Eq. 5's alpha; ``t`` the method's
      target: uniform in the paper's FAMR).
    beta: weight of the Gram style loss (Eq. 5); needs a style layer.
    optimizer: ``"sgd"`` (exactly Algorithm 1), ``"momentum"`` (SGD, 0.9) or ``"adam"``.
    style_layer: model stage whose output feeds the Gram style loss (``beta > 0``);
      the target Gram is the mean over the retained training data.
    steps: a step budget replacing ``epochs``: this many optimizer steps in all,
      whatever the forget set's size (none = ``epochs`` passes).
  """
  epochs: int = 10
  lr: float = 0.1
  lam: float = 0.1
  batch_size: int = 32
  alpha: float = 1.0
  beta: float = 0.0
  optimizer: Literal["sgd", "momentum", "adam"] = "sgd"
  style_layer: str | None = None
  steps: int | None = None

  @classmethod
  def paper(cls) -> "FAMRConfig":
    """The FAMR paper's experimental setting (10 epochs, lr 1e-4, lambda 0.1)."""
    return cls(epochs=10, lr=1e-4, lam=0.1)

  def validate(self) -> "FAMRConfig":
    """Raises :class:`FamrError` on an invalid setting."""
    check_descent_settings(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                           optimizer=self.optimizer, lam=self.lam, steps=self.steps)
    if self.alpha < 0 or self.beta < 0:
      raise FamrError("alpha and beta must be non-negative")
    return self

  def make_optimizer(self) -> optax.GradientTransformation:
    """The optax transformation named by ``optimizer`` (one object per setting)."""
    return make_optimizer(self.optimizer, self.lr)

  def terms(self) -> FAMRTerms:
    """The objective's terms: uniform KL (``alpha``), Gram style (``beta``) and the L2 anchor (``lam``).

    Example:
      >>> FAMRConfig(lam=0.5).terms().lam
      0.5
    """
    return FAMRTerms(alpha=self.alpha, beta=self.beta, lam=self.lam)


class ForgetContext(NamedTuple):
  """What FAMR's jitted epoch needs besides the minibatch (a jit argument)."""
  params0: Params            # the anchor theta0
  x_forget: jax.Array        # the whole forget set, for the per-epoch history
  y_forget: jax.Array | None
  logits0: jax.Array         # the original model's logits on x_forget
  eval_xy: tuple[jax.Array, jax.Array] | None = None   # optional monitor set
  target_gram: jax.Array | None = None                  # the style loss's target (beta > 0)


def forget_history(apply_fn: ApplyFn, params: Params, ctx: ForgetContext) -> dict[str, jax.Array]:
  """Forget-set statistics for FAMR Figure 1-style curves.

  Forget accuracy (when labels are known), mean ``KL(p_0 || p)`` from the
  original model, mean entropy, mean uniform KL, ``||theta - theta0||``, and
  the accuracy on the optional monitor set (``eval_acc``).
  """
  params0, x_forget, y_forget, logits0, eval_xy, _ = ctx
  logits = batched_apply(apply_fn, params, x_forget)
  out = {
      "forget_kl_from_original": jnp.mean(losses.kl_divergence(logits0, logits)),
      "forget_entropy": jnp.mean(losses.entropy(logits)),
      "forget_uniform_kl": jnp.mean(losses.uniform_kl(logits)),
      "param_distance": param_distance(params, params0),
  }
  if y_forget is not None:
    out["forget_acc"] = accuracy(logits, y_forget)
  if eval_xy is not None:
    out["eval_acc"] = accuracy(batched_apply(apply_fn, params, eval_xy[0]), eval_xy[1])
  return out


def famr_unlearn(apply_fn: ApplyFn, params: Params, x_forget: np.ndarray,
                 config: FAMRConfig, key: jax.Array, *,
                 y_forget: np.ndarray | None = None,
                 feature_fn: Callable[[Params, jax.Array], jax.Array] | None = None,
                 target_gram: jax.Array | None = None,
                 trainable_mask: Params | None = None,
                 optimizer: optax.GradientTransformation | None = None,
                 eval_data: tuple[np.ndarray, np.ndarray] | None = None,
                 show_progress: bool = True,
                 scale: ScaleConfig | None = None,
                 resume: ResumeConfig | None = None, plan_only: bool = False) -> DescentResult:
  """Forgets ``x_forget`` by FAMR (Algorithm 1), anchored at ``params``.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: the trained model's params; also the anchor ``theta0``.
    x_forget: the forget set's inputs (whole classes or any samples).
    config: a :class:`FAMRConfig`.
    key: PRNG key for the minibatch order.
    y_forget: optional labels of the forget set, only for the history's
      forget accuracy (the objective itself needs no labels). The history is
      measured on a fixed random sample of forget examples (``monitor_rows``).
    feature_fn: style-layer features ``feature_fn(params, x)`` (for ``beta > 0``).
    target_gram: target Gram matrix of the style loss (for ``beta > 0``): ``[K, K]``
      shared, or ``[N, K, K]`` one per forget example (e.g. ``methods.style``'s class-mean targets).
    trainable_mask: optional pytree of bools: only True leaves are updated and
      anchored (e.g. a tail-only variant).
    optimizer: any optax transformation, overriding ``config.optimizer``.
    eval_data: optional ``(x, y)`` monitor set (e.g. test images of the
      retained classes) whose accuracy the history records as ``eval_acc``.
    show_progress: draw a progress bar over epochs.
    scale: optional :class:`famr_jax.engine.parallel.ScaleConfig` (data parallel over
      devices, FSDP, bfloat16 forward pass, gradient accumulation). With it,
      ``x_forget`` may be a :class:`famr_jax.engine.parallel.ShardedData` holding
      ``(x,)`` or ``(x, y)`` (each process's own rows in a multi-process run).
    resume: optional :class:`famr_jax.engine.resume.ResumeConfig`: save resumable
      checkpoints; rerunning the same call continues where it stopped.
    plan_only: return the descent as a :class:`famr_jax.engine.plan.DescentPlan` instead of running it
      (the one-off passes it needs run; a farm vmaps such plans).

  Returns:
    A :class:`famr_jax.engine.descent.DescentResult`: the unlearned params and a
    per-epoch history (epoch 0 is the original model) with ``forget_acc``,
    ``forget_kl_from_original``, ``forget_entropy``, ``forget_uniform_kl``,
    ``param_distance`` and the mean objective ``loss``.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> apply_fn = lambda p, x: x @ p["w"]
    >>> params = {"w": jnp.eye(3) * 5.0}
    >>> x = np.eye(3, dtype=np.float32)[:1].repeat(8, 0)   # class 0, confidently
    >>> r = famr_unlearn(apply_fn, params, x, FAMRConfig(epochs=50, lr=0.5, lam=0.01),
    ...                  jax.random.key(0), show_progress=False)
    >>> r.history[0]["forget_entropy"] < r.history[-1]["forget_entropy"]
    True
  """
  config.validate()
  if isinstance(x_forget, ShardedData):
    return _famr_unlearn_sharded(apply_fn, params, x_forget, config, key, y_forget=y_forget,
                                 feature_fn=feature_fn, target_gram=target_gram,
                                 trainable_mask=trainable_mask, optimizer=optimizer,
                                 show_progress=show_progress, scale=scale, resume=resume)
  if not is_streamed(x_forget):   # a streamed forget set (an image folder) is read batch by batch
    x_forget = np.asarray(x_forget, np.float32)
    if not np.all(np.isfinite(x_forget)):
      raise FamrError("forget-set inputs contain NaN or inf values")
  if x_forget.shape[0] == 0:
    raise FamrError("the forget set is empty")
  if config.beta > 0 and (feature_fn is None or target_gram is None):
    raise FamrError("beta > 0 (style forgetting) needs a style layer and a target Gram matrix")
  data = (x_forget,)
  if target_gram is not None and np.ndim(target_gram) == 3:   # per-example targets travel with their rows
    if len(target_gram) != len(x_forget):
      raise FamrError(f"per-example Gram targets must have shape (N, K, K) with N = {len(x_forget)} forget "
                      f"images, got {np.shape(target_gram)}")
    data, target_gram = (x_forget, np.asarray(target_gram, np.float32)), None
  optimizer, loss_fn = _famr_loss(apply_fn, config, feature_fn, trainable_mask, optimizer, scale)
  monitor = monitor_rows(key, len(x_forget))
  xf = jnp.asarray(np.asarray(x_forget[monitor], np.float32))
  y_mon = None if y_forget is None else jnp.asarray(np.asarray(y_forget)[monitor], jnp.int32)
  ctx = ForgetContext(params, xf, y_mon,
                      batched_apply(apply_fn, params, xf),
                      None if eval_data is None else (jnp.asarray(eval_data[0], jnp.float32),
                                                      jnp.asarray(eval_data[1], jnp.int32)),
                      None if target_gram is None else jnp.asarray(target_gram, jnp.float32))
  return minibatch_descent(loss_fn, params, data, optimizer, epochs=config.epochs,
                           batch_size=config.batch_size, key=key, context=ctx,
                           metrics_fn=bind_static(forget_history, apply_fn),
                           initial_metrics=True, desc="FAMR", show_progress=show_progress,
                           scale=scale, resume=resume, resume_meta=_famr_resume_meta(config, trainable_mask),
                           max_steps=config.steps, plan_only=plan_only)


def famr_minibatch_loss(forward: ApplyFn, config: FAMRConfig, feature_fn, mask: StaticMask | None,
                        params: Params, batch: tuple, weights: jax.Array, ctx: ForgetContext) -> jax.Array:
  """FAMR's minibatch loss (Eq. 1 with the mean forget loss): the engine's ``loss_fn`` once bound.

  Bound with :func:`famr_jax.engine.descent.bind_static` to its static
  arguments (the forward pass, the config, the style layer, the anchored
  leaves), so the compiled step is found again on the next call.
  """
  target_gram = batch[1] if len(batch) > 1 else ctx.target_gram   # per-example targets, or the shared one
  return famr_loss(forward, config.terms(), params, ctx.params0, batch[0], weights, feature_fn=feature_fn,
                   target_gram=target_gram, anchor_mask=None if mask is None else mask.tree)


def _famr_loss(apply_fn, config: FAMRConfig, feature_fn, trainable_mask, optimizer, scale):
  """The optimizer and the minibatch loss of FAMR."""
  if optimizer is None:
    optimizer = config.make_optimizer()
  optimizer = freeze_outside(optimizer, trainable_mask)
  # bfloat16 runs the forward pass only; the anchor term stays float32.
  forward = compute_dtype_apply_fn(apply_fn, scale.compute_dtype) if scale is not None else apply_fn
  return optimizer, bind_static(famr_minibatch_loss, forward, config, feature_fn, StaticMask.of(trainable_mask))


def _famr_resume_meta(config: FAMRConfig, trainable_mask) -> dict:
  settings = dataclasses.asdict(config)
  if settings["steps"] is None:   # so checkpoints written before the step budget existed still resume
    del settings["steps"]
  return {"famr": settings, "frozen_leaves": trainable_mask is not None}


def _famr_unlearn_sharded(apply_fn, params, x_forget: ShardedData, config: FAMRConfig, key, *,
                          y_forget, feature_fn, target_gram, trainable_mask, optimizer, show_progress,
                          scale, resume) -> DescentResult:
  """``famr_unlearn`` on rows already sharded over the devices (multi-process runs)."""
  if scale is None or not scale.sharded:
    raise FamrError("a ShardedData forget set needs ScaleConfig(data_parallel=True)")
  if y_forget is not None:
    raise FamrError("with ShardedData, pass the forget labels as its second array, not y_forget")
  if not 1 <= len(x_forget.arrays) <= 2:
    raise FamrError("ShardedData for FAMR holds (x,) or (x, y)")
  n = x_forget.num_examples
  if n == 0:
    raise FamrError("the forget set is empty")
  for shard in x_forget.arrays[0].addressable_shards:
    if not np.all(np.isfinite(np.asarray(shard.data))):
      raise FamrError("forget-set inputs contain NaN or inf values")
  if config.beta > 0 and (feature_fn is None or target_gram is None):
    raise FamrError("beta > 0 (style forgetting) needs a style layer and a target Gram matrix")
  if target_gram is not None and np.ndim(target_gram) != 2:
    raise FamrError("with ShardedData, the style loss takes one shared [K, K] Gram target")
  optimizer, loss_fn = _famr_loss(apply_fn, config, feature_fn, trainable_mask, optimizer, scale)
  # The history's forget set: the real rows of the global arrays (padding dropped).
  real_rows = jax.jit(lambda a: a[:n])
  xf = real_rows(x_forget.arrays[0])
  yf = real_rows(x_forget.arrays[1]).astype(jnp.int32) if len(x_forget.arrays) == 2 else None
  host_params = jax.tree.map(np.asarray, params)   # the same values on every process
  logits0 = batched_apply(apply_fn, host_params, xf)
  ctx = ForgetContext(host_params, xf, yf, logits0, None,
                      None if target_gram is None else jnp.asarray(target_gram, jnp.float32))
  return minibatch_descent(loss_fn, host_params, ShardedData(x_forget.arrays[:1], n), optimizer,
                           epochs=config.epochs, batch_size=config.batch_size, key=key, context=ctx,
                           metrics_fn=bind_static(forget_history, apply_fn),
                           initial_metrics=True, desc="FAMR", show_progress=show_progress,
                           scale=scale, resume=resume, resume_meta=_famr_resume_meta(config, trainable_mask))


def famr_defaults(model_name: str) -> FAMRConfig:
  """The default :class:`FAMRConfig` for a model of the library (by name; see :mod:`famr_jax.methods.defaults`).

  Example:
    >>> famr_defaults("mlp").optimizer, famr_defaults("lenet5").lr
    ('sgd', 0.001)
  """
  return FAMRConfig(**default_overrides("famr", model_name, "classes"))


def famr_sample_defaults(model_name: str) -> FAMRConfig:
  """The default :class:`FAMRConfig` for sample forgetting: 25 Adam steps at lr 1e-4.

  Example:
    >>> famr_sample_defaults("lenet5").steps
    25
  """
  return FAMRConfig(**default_overrides("famr", model_name, "samples"))


def style_features(model: Any, style_layer: str | None) -> Callable[[Params, jax.Array], jax.Array]:
  """The style loss's ``feature_fn(params, x)``: a famr-jax model's stage output, or ModelParts' head output.

  For :class:`famr_jax.models.parts.ModelParts` (any model: Linen, NNX, plain
  functions) the style features are the activation entering the parts' cut,
  ``head_fn(params, x)``; ``style_layer`` must then be None or name that cut.

  Example:
    >>> from famr_jax import models
    >>> f = style_features(models.create_model("mlp", 10, (8, 8, 1)), "fc1")
    >>> callable(f)
    True
  """
  from famr_jax import models
  from famr_jax.models.parts import ModelParts
  if isinstance(model, ModelParts):
    if style_layer not in (None, model.layer):
      raise FamrError(f"style_layer {style_layer!r} differs from the model parts' cut ({model.layer!r})")
    return model.head_fn
  if style_layer is None or model is None or not hasattr(model, "layer_names"):
    raise FamrError("style forgetting (beta > 0) needs style_layer naming a layer of a famr-jax model, "
                    "or model parts (famr_jax.models.parts) whose head output is the style layer")
  return models.make_feature_fn(model, style_layer)


def run_famr_task(task, config: FAMRConfig) -> DescentResult:
  """The registry's adapter: FAMR on an :class:`famr_jax.methods.registry.UnlearnTask`."""
  idx = task.forget.indices
  feature_fn = target_gram = None
  if config.beta > 0:
    feature_fn = style_features(task.model, config.style_layer)
    retained = task.data.x_train[task.forget.retain_mask(len(task.data.y_train))]
    target_gram = losses.mean_gram(jax.jit(feature_fn), task.params,
                                   retained if is_streamed(retained) else jnp.asarray(retained))
  return famr_unlearn(task.apply_fn, task.params, task.data.x_train[idx], config, task.key,
                      y_forget=task.data.y_train[idx], feature_fn=feature_fn, target_gram=target_gram,
                      show_progress=task.show_progress, scale=getattr(task, "scale", None),
                      resume=getattr(task, "resume", None), plan_only=getattr(task, "plan_only", False))
