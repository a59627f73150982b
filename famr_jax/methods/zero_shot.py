"""Zero-shot class unlearning from class impressions (class-impressions paper, Algorithm 1).

Given only a trained model and the classes to forget -- no training or test
data -- these methods

1. make class impressions of every class (``famr_jax.methods.impressions``): proxies
   for the forget set ``X_f`` and the retain set ``X_r``;
2. split the model into a frozen head and a trainable tail
   (:func:`famr_jax.methods.head_tail.split_model`); impressions are
   activations at the tail's input (pixel-space impressions are pushed
   through the frozen head once). Any model works: a model of
   ``famr_jax.models`` cut at a named stage, or
   :class:`famr_jax.models.parts.ModelParts` built for a Linen or NNX module
   or a plain function (``linen_parts``, ``nnx_parts``, or by hand);
3. update only the tail's params, by one of

   * :func:`zero_shot_unlearn` (method ``impressions``): by default the
     ``masked_kl`` objective measured to forget while keeping the retained
     classes (match the original model's prediction with the forget classes
     masked out, on impressions constrained to the head's range and jittered
     in scale; notes/impressions.md); or Algorithm 1's label-smoothed
     differential loss with either sign convention (``sign="intended"``:
     ascent on forget, descent on retain, as the paper's text says;
     ``sign="as_published"``: the literal Eq. 4 / Algorithm 1, which the
     authors' code runs; :meth:`ZeroShotConfig.authors`); or a margin loss
     (the loop: ``famr_jax.methods.zero_shot_descent``);
   * :func:`famr_zero_shot_unlearn` (method ``famr-zeroshot``): FAMR's
     anchored uniform-KL objective on the forget impressions, with an
     optional retain term.

Both run on the minibatch engine (``famr_jax.engine.descent``) with losses
bound by ``bind_static``: a second identical call compiles nothing. The
head's params are never updated (they get exactly zero updates through
``famr_jax.engine.descent.freeze_outside``), so they stay bit-identical.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from famr_jax import losses
from famr_jax.engine.descent import (DescentResult, bind_static, check_descent_settings, freeze_outside,
                                     minibatch_descent)
from famr_jax.engine.optimizers import StaticMask
from famr_jax.errors import FamrError
from famr_jax.engine.forward import batched_apply
from famr_jax.losses import accuracy, param_distance
from famr_jax.methods.head_tail import (HeadTailSplit, ResponsiveLayers, first_responsive_layer,
                                        head_output_is_nonnegative, infer_input_shape, last_layer, split_model)
from famr_jax.methods import impressions
from famr_jax.methods.impressions import ImpressionConfig, ImpressionSet, ImpressionSettings
from famr_jax.methods.objective import FAMRTerms, RetainedBatch, famr_loss
from famr_jax.methods.zero_shot_descent import (ImpressionContext, ZeroShotSetup, differential_descent,
                                                differential_losses, prepare_zero_shot)
from famr_jax.models.parts import ModelParts

__all__ = ["FORGET_OBJECTIVES", "HeadTailSplit", "ImpressionSettings", "ModelParts", "ResponsiveLayers", "SIGNS",
           "SPACES", "ZeroShotConfig", "ZeroShotFAMRConfig", "ZeroShotImpressionSettings", "ZeroShotResult",
           "differential_losses",
           "famr_zero_shot_defaults", "famr_zero_shot_unlearn", "first_responsive_layer",
           "head_output_is_nonnegative", "impression_context", "impression_history", "infer_input_shape",
           "last_layer", "run_famr_zero_shot_task", "run_zero_shot_task", "split_model", "zero_shot_defaults",
           "zero_shot_unlearn"]

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]

SIGNS = ("intended", "as_published")
FORGET_OBJECTIVES = ("masked_kl", "margin", "cross_entropy")
SPACES = impressions.SPACES
_FAMR_SCALES = 8   # scales per impression in zero-shot FAMR (see ZeroShotFAMRConfig.scale_min)

# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class ZeroShotImpressionSettings(ImpressionSettings):
  """The impression options (:class:`famr_jax.methods.impressions.ImpressionSettings`) plus where zero-shot
  impressions live: their space and the head/tail split both zero-shot methods share.

  Attributes:
    impression_space: ``activation`` (the tail's input) or ``pixel`` (images
      through the whole model, clipped to [0, 1]).
    tail_layer: the first stage of the trainable tail; none = the model's last stage.
  """
  impression_space: Literal["activation", "pixel"] = "activation"
  tail_layer: str | None = None

  def impression_config(self, space: str | None = None, layer: str | None = None,
                        head_nonnegative: bool = False) -> ImpressionConfig:
    """The :class:`ImpressionConfig` of this run: in ``impression_space`` at ``tail_layer`` unless given.

    Example:
      >>> ZeroShotImpressionSettings(tail_layer="fc2").impression_config().layer
      'fc2'
    """
    return super().impression_config(space or self.impression_space, self.tail_layer if layer is None else layer,
                                     head_nonnegative)


@functools.lru_cache(maxsize=64)   # one object per setting: compiled steps are reused
def _clipped_adamw(lr: float, weight_decay: float, clip_norm: float) -> optax.GradientTransformation:
  adamw = optax.adamw(lr, weight_decay=weight_decay)
  return optax.chain(optax.clip_by_global_norm(clip_norm), adamw) if clip_norm > 0 else adamw


@dataclasses.dataclass(frozen=True)
class ZeroShotConfig(ZeroShotImpressionSettings):
  """Zero-shot unlearning from class impressions (method ``impressions``, Algorithm 1).

  The defaults are the setting measured to forget while keeping the
  retained classes (BUILD_NOTES.md, issue 3); :meth:`authors` gives the
  authors' code's settings. The impression fields are :class:`ZeroShotImpressionSettings`'.

  Attributes:
    forget_objective: ``masked_kl`` (match, on every impression, the original
      model's prediction with the forget classes masked out), ``margin``
      (push each forget impression below every retained class, keep retain
      impressions classified) or ``cross_entropy`` (Algorithm 1's
      label-smoothed cross-entropy, with ``sign``).
    sign: cross_entropy only: ``intended`` (ascent on forget, descent on
      retain) or ``as_published`` (literal Eq. 4: descent on forget, ascent on retain).
    epochs: passes over the impressions (each pass: all forget batches, then all retain batches).
    lr: AdamW learning rate of the tail.
    batch_size: impressions per step.
    w_f: weight of the forget loss.
    w_r: weight of the retain loss.
    label_smoothing: cross_entropy only: label smoothing of the loss.
    margin: margin only: the logit margin each hinge asks for.
    clip_norm: global gradient-norm clipping of each step (0 = none).
    weight_decay: AdamW decoupled weight decay.
    separate_steps: one optimizer step per forget batch and per retain batch
      (the authors'); otherwise one step on paired batches of both.
    scale_min: the smallest factor an impression is scaled by (factors in
      [scale_min, 1]; 1 = only as made): impressions are far larger than real
      activations, and the unknown real scale must be covered. ``impressions``
      draws a factor per impression and step (log-uniform); ``famr-zeroshot``
      uses 8 factors geometrically spaced.
  """
  forget_objective: Literal["masked_kl", "margin", "cross_entropy"] = "masked_kl"
  sign: Literal["intended", "as_published"] = "as_published"
  epochs: int = 30
  lr: float = 1e-3
  batch_size: int = 16
  w_f: float = 0.9
  w_r: float = 0.1
  label_smoothing: float = 0.1
  margin: float = 1.0
  clip_norm: float = 5.0
  weight_decay: float = 0.01
  separate_steps: bool = True
  scale_min: float = 0.01

  @classmethod
  def authors(cls, sign: Literal["intended", "as_published"] = "as_published", **changes) -> "ZeroShotConfig":
    """The authors' code's settings (ERRATA item 3): label-smoothed CE, 1000 epochs, given ``sign``."""
    base = dict(forget_objective="cross_entropy", sign=sign, epochs=1000, lr=1e-3, batch_size=16,
                w_f=0.9, w_r=0.1, label_smoothing=0.1, clip_norm=5.0, weight_decay=0.01,
                separate_steps=True, impressions_per_class=100, impression_steps=1000,
                impression_lr=0.1, impression_space="activation", impression_beta=0.0,
                scale_min=1.0, impression_range="free", impression_objective="logit")
    return cls(**{**base, **changes})

  def validate(self) -> "ZeroShotConfig":
    """Raises :class:`FamrError` on an invalid setting."""
    self.impression_config().validate()
    if self.forget_objective not in FORGET_OBJECTIVES:
      raise FamrError(f"unknown forget objective {self.forget_objective!r}: choose one of "
                      f"{', '.join(FORGET_OBJECTIVES)}")
    if self.sign not in SIGNS:
      raise FamrError(f"unknown sign {self.sign!r}: choose one of {', '.join(SIGNS)}")
    check_descent_settings(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size)
    if self.w_f < 0 or self.w_r < 0 or self.w_f + self.w_r == 0:
      raise FamrError(f"w_f and w_r must be non-negative and not both 0, got {self.w_f}, {self.w_r}")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise FamrError(f"label smoothing must lie in [0, 1), got {self.label_smoothing}")
    if self.margin < 0:
      raise FamrError(f"margin must be non-negative, got {self.margin}")
    if not 0.0 < self.scale_min <= 1.0:
      raise FamrError(f"scale_min must lie in (0, 1], got {self.scale_min}")
    if self.clip_norm < 0 or self.weight_decay < 0:
      raise FamrError("clip_norm and weight_decay must be non-negative")
    return self

  def make_optimizer(self) -> optax.GradientTransformation:
    """AdamW, after global gradient-norm clipping (the authors' ``clip_grad_norm_``)."""
    return _clipped_adamw(self.lr, self.weight_decay, self.clip_norm)


@dataclasses.dataclass(frozen=True)
class ZeroShotFAMRConfig(ZeroShotImpressionSettings):
  """Zero-shot FAMR (method ``famr-zeroshot``): FAMR's objective on forget-class impressions.

  Minimizes ``mean_{x in X_f} KL(u || p(x)) + lam/2 ||theta_tail - theta0_tail||^2
  + retain_weight * mean_{x in X_r} KL(p0(x) || p(x))`` over the tail's
  params, where ``p0`` is the original model. The impression fields are
  :class:`ZeroShotImpressionSettings`'.

  Attributes:
    epochs: passes over the forget impressions.
    lr: step size.
    lam: anchor strength lambda (Eq. 1's; the ``lam I`` of every parameter anchor, ``>= 0``).
    batch_size: forget impressions per step.
    retain_weight: weight of the function-space anchor ``KL(p0 || p)`` on retained samples or impressions (0 = none).
    optimizer: ``sgd`` (FAMR's Algorithm 1), ``momentum`` or ``adam``.
    scale_min: the smallest factor an impression is scaled by (factors in
      [scale_min, 1]; 1 = only as made): impressions are far larger than real
      activations, and the unknown real scale must be covered. ``impressions``
      draws a factor per impression and step (log-uniform); ``famr-zeroshot``
      uses 8 factors geometrically spaced.
  """
  epochs: int = 10
  lr: float = 1e-3
  lam: float = 0.1
  batch_size: int = 32
  retain_weight: float = 1.0
  optimizer: Literal["sgd", "momentum", "adam"] = "adam"
  scale_min: float = 0.01

  def validate(self) -> "ZeroShotFAMRConfig":
    """Raises :class:`FamrError` on an invalid setting."""
    self.impression_config().validate()
    if not 0.0 < self.scale_min <= 1.0:
      raise FamrError(f"scale_min must lie in (0, 1], got {self.scale_min}")
    check_descent_settings(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                           optimizer=self.optimizer, lam=self.lam)
    if self.retain_weight < 0:
      raise FamrError(f"retain_weight must be non-negative, got {self.retain_weight}")
    return self

  def terms(self) -> FAMRTerms:
    """The objective's terms: the ``famr-zeroshot`` preset with this ``lam`` and ``retain_weight``.

    Example:
      >>> ZeroShotFAMRConfig(lam=0.3).terms().lam
      0.3
    """
    return FAMRTerms.preset("famr-zeroshot", lam=float(self.lam), retain_weight=float(self.retain_weight))

  def famr_config(self):
    """The equivalent :class:`famr_jax.methods.famr.FAMRConfig` (for its optimizer)."""
    from famr_jax.methods.famr import FAMRConfig
    return FAMRConfig(epochs=self.epochs, lr=self.lr, lam=self.lam, batch_size=self.batch_size,
                      optimizer=self.optimizer)


# ----------------------------------------------------------------------------- results and history


class ZeroShotResult(NamedTuple):
  """Output of the zero-shot methods; its first four fields are a :class:`DescentResult`'s.

  Attributes:
    params: the unlearned params (head bit-identical to the original).
    history: one dict per epoch (epoch 0: the original model) of
      impression statistics: ``forget_impression_acc``,
      ``retain_impression_acc``, ``forget_margin``, ``retain_margin``,
      ``forget_kl_from_original``, ``param_distance``, ``loss``.
    compile_s: seconds compiling (impressions and unlearning).
    run_s: seconds running (impressions and unlearning, compile excluded).
    impressions: the kept impressions (forget and retain classes).
    layer: the first stage of the tail (``None``: the whole model).
    impression_s: of ``run_s``, the seconds spent making impressions.
  """
  params: Params
  history: list[dict[str, float]]
  compile_s: float
  run_s: float
  impressions: ImpressionSet
  layer: str | None
  impression_s: float

  def descent_result(self) -> DescentResult:
    """The :class:`DescentResult` view the method registry expects."""
    return DescentResult(self.params, self.history, self.compile_s, self.run_s)



def impression_context(setup: ZeroShotSetup, params: Params, num_classes: int) -> ImpressionContext:
  """The impressions, their original logits and the retained-class mask, on the device."""
  tail = setup.split.tail_fn
  h_f, h_r = jnp.asarray(setup.h_forget), jnp.asarray(setup.h_retain)
  retain_mask = np.zeros(num_classes, bool)
  retain_mask[list(setup.retain)] = True
  return ImpressionContext(params, h_f, jnp.asarray(setup.y_forget), h_r, jnp.asarray(setup.y_retain),
                           batched_apply(tail, params, h_f), batched_apply(tail, params, h_r),
                           jnp.asarray(retain_mask))


def impression_history(tail_fn: ApplyFn, params: Params, ctx: ImpressionContext) -> dict[str, jax.Array]:
  """Per-epoch statistics on the impressions (the only data a zero-shot method has)."""
  logits_f = batched_apply(tail_fn, params, ctx.h_forget)
  logits_r = batched_apply(tail_fn, params, ctx.h_retain)
  return {
      "forget_impression_acc": accuracy(logits_f, ctx.y_forget),
      "retain_impression_acc": accuracy(logits_r, ctx.y_retain),
      "forget_margin": jnp.mean(losses.class_margin(logits_f, ctx.y_forget)),
      "retain_margin": jnp.mean(losses.class_margin(logits_r, ctx.y_retain)),
      "forget_kl_from_original": jnp.mean(losses.kl_divergence(ctx.logits0_forget, logits_f)),
      "param_distance": param_distance(params, ctx.params0),
  }


# One program per tail_fn (static) and shapes: the epoch-0 statistics compile once.
initial_history = jax.jit(impression_history, static_argnums=0)


# One program per tail_fn (static) and shapes, for every epoch of every call.
_history_program = jax.jit(impression_history, static_argnums=0)


# ----------------------------------------------------------------------------- Algorithm 1


def zero_shot_unlearn(model: Any, params: Params, forget_classes: Sequence[int], num_classes: int,
                      input_shape: Sequence[int], config: ZeroShotConfig, key: jax.Array, *,
                      show_progress: bool = True) -> ZeroShotResult:
  """Forgets whole classes with no data: class impressions + Algorithm 1 on the model's tail.

  There is no data argument: the only inputs are the model, its params, the
  classes to forget and the input shape.

  Args:
    model: a Flax module of ``famr_jax.models`` (any tail, any impression
      space); a :class:`famr_jax.models.parts.ModelParts` (any model cut into
      a head and a tail: ``linen_parts``, ``nnx_parts`` or by hand; only the
      tail is trained, activation impressions are made at its input); or a
      plain ``apply_fn(params, x) -> logits`` (pixel space, whole model as the tail).
    params: the trained model's params (an ``nnx.State`` for ``nnx_parts``).
    forget_classes: the classes to forget (non-empty, in range, not all).
    num_classes: the model's number of classes.
    input_shape: the shape of one model input, e.g. ``(H, W, C)``.
    config: a :class:`ZeroShotConfig`.
    key: PRNG key (impression noise, then the batch order and scale jitter).
    show_progress: progress bar, and a line with the impression counts on stderr.

  Returns:
    A :class:`ZeroShotResult`.

  Raises:
    FamrError: bad classes, layer or setting, or a class none of whose
      impressions reached its target.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> apply_fn = lambda p, x: x.reshape(len(x), -1) @ p["w"] + p["b"]
    >>> params = {"w": 3.0 * jnp.eye(4)[:, :3], "b": jnp.zeros(3)}
    >>> cfg = ZeroShotConfig(impression_space="pixel", impressions_per_class=4,
    ...                      impression_steps=30, epochs=50, lr=0.05)
    >>> r = zero_shot_unlearn(apply_fn, params, [1], 3, (2, 2, 1), cfg, jax.random.key(0),
    ...                       show_progress=False)
    >>> r.history[0]["forget_impression_acc"], r.history[-1]["forget_impression_acc"]
    (1.0, 0.0)
  """
  setup = prepare_zero_shot(model, params, forget_classes, num_classes, input_shape, config,
                            jax.random.fold_in(key, 0), show_progress)
  tail_fn = setup.split.tail_fn
  ctx = impression_context(setup, params, num_classes)
  optimizer = freeze_outside(config.make_optimizer(), setup.split.trainable_mask)
  run = differential_descent(tail_fn, params, ctx, optimizer, config, jax.random.fold_in(key, 1),
                             metrics=functools.partial(_history_program, tail_fn), show_progress=show_progress)
  imp = setup.impressions
  return ZeroShotResult(run.params, run.history, run.compile_s + imp.compile_s, run.run_s + imp.run_s, imp,
                        setup.split.layer, imp.run_s)


# ----------------------------------------------------------------------------- zero-shot FAMR


def famr_zero_shot_loss(tail_fn: ApplyFn, terms: FAMRTerms, mask: StaticMask, params: Params,
                        batch: tuple, weights: jax.Array, ctx: ImpressionContext) -> jax.Array:
  """Zero-shot FAMR's minibatch loss, the engine's ``loss_fn`` once bound with ``bind_static``.

  ``batch = (forget impressions, paired retain impressions, their original
  logits)``: FAMR's objective (:func:`famr_jax.methods.objective.famr_loss`:
  uniform KL + L2 anchor on the tail) on the first, plus the function-space
  anchor ``retain_weight * KL(p0 || p)`` on the second.
  """
  h_f, h_r, logits0_r = batch
  retained = RetainedBatch(h_r, None, logits0_r, weights) if terms.retain_weight else None
  return famr_loss(tail_fn, terms, params, ctx.params0, h_f, weights, retained=retained, anchor_mask=mask.tree)


def _at_scales(setup: ZeroShotSetup, scale_min: float) -> ZeroShotSetup:
  """Every impression also at ``_FAMR_SCALES`` scales geometrically spaced in ``[scale_min, 1]``."""
  scales = np.geomspace(scale_min, 1.0, _FAMR_SCALES).astype(np.float32)
  grow = lambda a: (scales.reshape((-1,) + (1,) * a.ndim) * a[None]).reshape((-1,) + a.shape[1:])
  return setup._replace(h_forget=grow(setup.h_forget), y_forget=np.tile(setup.y_forget, _FAMR_SCALES),
                        h_retain=grow(setup.h_retain), y_retain=np.tile(setup.y_retain, _FAMR_SCALES))


def famr_zero_shot_unlearn(model: Any, params: Params, forget_classes: Sequence[int], num_classes: int,
                           input_shape: Sequence[int], config: ZeroShotFAMRConfig, key: jax.Array, *,
                           show_progress: bool = True) -> ZeroShotResult:
  """Zero-shot FAMR: FAMR's anchored uniform-KL objective driven by forget-class impressions.

  Minimizes, over the tail's params only,
  ``mean_{x in X_f} KL(u || p(x)) + lam/2 ||theta_tail - theta0_tail||^2``
  (:func:`famr_jax.methods.objective.famr_loss`, FAMR Eq. 1) plus, when
  ``retain_weight > 0``, ``retain_weight * mean_{x in X_r} KL(p0(x) || p(x))``
  on retain impressions paired with each forget batch. With
  ``retain_weight == 0`` this is the objective and update of
  :func:`famr_jax.methods.famr.famr_unlearn` on the impressions, with a
  tail-only mask.

  Args:
    model: as for :func:`zero_shot_unlearn`: a famr-jax model, a
      :class:`famr_jax.models.parts.ModelParts`, or a plain ``apply_fn`` (pixel space).
    params: the trained model's params (also FAMR's anchor).
    forget_classes: the classes to forget.
    num_classes: the model's number of classes.
    input_shape: the shape of one model input, e.g. ``(H, W, C)``.
    config: a :class:`ZeroShotFAMRConfig`.
    key: PRNG key.
    show_progress: progress bar and impression counts on stderr.

  Returns:
    A :class:`ZeroShotResult`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> apply_fn = lambda p, x: x.reshape(len(x), -1) @ p["w"] + p["b"]
    >>> params = {"w": 3.0 * jnp.eye(4)[:, :3], "b": jnp.zeros(3)}
    >>> cfg = ZeroShotFAMRConfig(impression_space="pixel", impressions_per_class=4,
    ...                          impression_steps=30, epochs=30, lr=0.5, lam=0.01)
    >>> r = famr_zero_shot_unlearn(apply_fn, params, [1], 3, (2, 2, 1), cfg, jax.random.key(0),
    ...                            show_progress=False)
    >>> r.history[-1]["forget_kl_from_original"] > r.history[0]["forget_kl_from_original"]
    True
  """
  setup = prepare_zero_shot(model, params, forget_classes, num_classes, input_shape, config,
                            jax.random.fold_in(key, 0), show_progress)
  tail_fn, mask = setup.split.tail_fn, setup.split.trainable_mask
  if config.scale_min < 1.0:
    # Impressions are far larger than real activations: use each at several scales.
    setup = _at_scales(setup, config.scale_min)
  ctx = impression_context(setup, params, num_classes)
  optimizer = freeze_outside(config.famr_config().make_optimizer(), mask)
  # Pair every forget impression with a retain impression (drawn with the key).
  n_f, n_r = setup.h_forget.shape[0], setup.h_retain.shape[0]
  pick = np.asarray(jax.random.choice(jax.random.fold_in(key, 2), n_r, (n_f,), replace=n_f > n_r))
  h_r, logits0_r = setup.h_retain[pick], np.asarray(ctx.logits0_retain)[pick]
  loss_fn = bind_static(famr_zero_shot_loss, tail_fn, config.terms(), StaticMask.of(mask))
  r = minibatch_descent(loss_fn, params, (setup.h_forget, h_r, logits0_r), optimizer,
                        epochs=config.epochs, batch_size=config.batch_size, key=jax.random.fold_in(key, 1),
                        context=ctx, metrics_fn=bind_static(impression_history, tail_fn),
                        initial_metrics=True, desc="zero-shot FAMR", show_progress=show_progress)
  imp = setup.impressions
  return ZeroShotResult(r.params, r.history, r.compile_s + imp.compile_s, r.run_s + imp.run_s, imp,
                        setup.split.layer, imp.run_s)


# ----------------------------------------------------------------------------- registry


def zero_shot_defaults(model_name: str) -> ZeroShotConfig:
  """The default :class:`ZeroShotConfig` for a model of the library (by name).

  Example:
    >>> zero_shot_defaults("lenet5").forget_objective
    'masked_kl'
  """
  return ZeroShotConfig()


def famr_zero_shot_defaults(model_name: str) -> ZeroShotFAMRConfig:
  """The default :class:`ZeroShotFAMRConfig` for a model of the library (by name)."""
  return ZeroShotFAMRConfig()


def _task_inputs(task) -> tuple[int, tuple[int, ...]]:
  # Data-free: the class count comes from the forget request and the input
  # shape from the task (if the core provides it) or from the params' shapes;
  # task.data is never read.
  if task.model is None:
    raise FamrError("zero-shot methods need the model (for its layers and input shape)")
  shape = getattr(task, "input_shape", None)
  if not shape and getattr(task, "checkpoint", None):
    from famr_jax.io.checkpoints import read_metadata
    shape = read_metadata(task.checkpoint).get("image_shape")   # the model's description, not data
  return task.forget.num_classes, tuple(shape) if shape else infer_input_shape(task.model, task.params)


def _check_class_request(task) -> None:
  if task.forget.kind != "classes":
    raise FamrError("zero-shot methods forget whole classes: pass a class request (forget_classes), "
                    f"not {task.forget.kind}")


def run_zero_shot_task(task, config: ZeroShotConfig) -> DescentResult:
  """The registry's adapter: zero-shot unlearning (no data) on an UnlearnTask."""
  _check_class_request(task)
  num_classes, input_shape = _task_inputs(task)
  return zero_shot_unlearn(task.model, task.params, task.forget.classes, num_classes, input_shape,
                           config, task.key, show_progress=task.show_progress).descent_result()


def run_famr_zero_shot_task(task, config: ZeroShotFAMRConfig) -> DescentResult:
  """The registry's adapter: zero-shot FAMR (no data) on an UnlearnTask."""
  _check_class_request(task)
  num_classes, input_shape = _task_inputs(task)
  return famr_zero_shot_unlearn(task.model, task.params, task.forget.classes, num_classes, input_shape,
                                config, task.key, show_progress=task.show_progress).descent_result()
