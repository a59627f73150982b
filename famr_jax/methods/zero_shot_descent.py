"""Zero-shot differential unlearning (Algorithm 1) on the minibatch engine.

The data of a zero-shot method are class impressions: activations at the
tail's input (:func:`prepare_zero_shot`). They live in the engine's context
(:class:`ImpressionContext`); the engine's data are index columns into them,
so every epoch's pairing and jitter cost no host-to-device copy of impressions.

Algorithm 1 has two loop forms (:func:`differential_descent`):

* **separate** (the authors'): per epoch, one pass of steps on forget
  minibatches, then one pass of steps on retain minibatches: two
  :func:`famr_jax.engine.descent.minibatch_descent` calls, the second
  continuing the first's optimizer state;
* **joint**: one step per pair of a forget and a retain minibatch, the shorter
  stream cycled: one descent per epoch whose rows pair every row of the
  longer stream with a row of the shorter (a fresh random pairing per epoch).

Each step multiplies every impression by a random scale ``t``, ``log t ~
U(log scale_min, 0)``, drawn from the epoch's key folded with the stream and
the row, so the scales are new every epoch and step (impressions are far
larger than real activations; the unknown real scale must be covered).

Losses are module-level functions bound with
:func:`famr_jax.engine.descent.bind_static`, so a second identical call
compiles nothing.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax import losses
from famr_jax.data.forget import validate_classes
from famr_jax.engine.descent import bind_static, minibatch_descent, typed_key
from famr_jax.engine.progress import progress
from famr_jax.errors import FamrError
from famr_jax.methods.head_tail import head_output_is_nonnegative, split_model
from famr_jax.methods.impressions import ImpressionSet, class_impressions
from famr_jax.models.parts import ModelParts, identity_head

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]
# loss(params, h, y, weights, ctx) -> scalar: one stream's signed, weighted loss.
StreamLoss = Callable[[Params, jax.Array, jax.Array, jax.Array, Any], jax.Array]


# ----------------------------------------------------------------------------- setup


class ZeroShotSetup(NamedTuple):
  """The split model and the impressions a zero-shot method trains on (see :func:`prepare_zero_shot`)."""
  split: ModelParts
  forget: tuple[int, ...]
  retain: tuple[int, ...]
  impressions: ImpressionSet
  h_forget: np.ndarray
  y_forget: np.ndarray
  h_retain: np.ndarray
  y_retain: np.ndarray


def prepare_zero_shot(model: Any, params: Params, forget_classes: Sequence[int], num_classes: int,
                      input_shape: Sequence[int], config, key: jax.Array, show_progress: bool) -> ZeroShotSetup:
  """Validates everything, splits the model and makes the impressions (data-free).

  ``config`` is a zero-shot config (its ``validate``, ``impression_config``,
  ``tail_layer`` and ``impression_range`` are read). Pixel-space impressions
  are pushed through the frozen head once.

  Raises:
    FamrError: bad classes, layer or setting, or a class none of whose
      impressions reached its target.
  """
  config.validate()
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
    raise FamrError(f"num_classes must be an integer >= 2, got {num_classes!r}")
  forget = validate_classes(forget_classes, int(num_classes))
  retain = tuple(c for c in range(num_classes) if c not in forget)
  split = split_model(model, params, config.tail_layer)
  has_head = split.head_fn is not identity_head
  activation = config.impression_space == "activation"
  if activation and not has_head:
    raise FamrError("activation-space impressions need a model with named layers or ModelParts "
                    "(famr_jax.models.parts), or use the pixel space")
  # Data-free: a stage whose input comes out of a ReLU only ever sees h >= 0 (what impression_range="auto" follows).
  nonneg = (activation and config.impression_range == "auto"
            and head_output_is_nonnegative(split.head_fn, params, input_shape, jax.random.fold_in(key, 1)))
  imp_config = config.impression_config(layer=split.layer, head_nonnegative=nonneg)
  impressions = class_impressions(model, params, range(num_classes), num_classes, input_shape, imp_config, key)
  if show_progress:
    print(impressions.summary(), file=sys.stderr)
  missing = [c for c, k in zip(impressions.classes, impressions.kept_per_class) if k == 0]
  if missing:
    raise FamrError(f"no class impression of class(es) {missing} reached its target class "
                    f"({impressions.summary()}); try more impression steps, a higher impression "
                    f"learning rate, or a later tail layer")
  x_f, y_f = impressions.select(forget)
  x_r, y_r = impressions.select(retain)
  if impressions.space == "pixel" and has_head:
    # The head is frozen: push pixel impressions through it once.
    head = jax.jit(split.head_fn)
    x_f, x_r = np.asarray(head(params, x_f)), np.asarray(head(params, x_r))
  return ZeroShotSetup(split, forget, retain, impressions, x_f, y_f, x_r, y_r)


class ImpressionContext(NamedTuple):
  """The engine's context for zero-shot unlearning (a jit argument, never closed over)."""
  params0: Params
  h_forget: jax.Array
  y_forget: jax.Array
  h_retain: jax.Array
  y_retain: jax.Array
  logits0_forget: jax.Array
  logits0_retain: jax.Array
  retain_classes: jax.Array   # [C] bool
  jitter_key: jax.Array | None = None   # the epoch's key of the scale jitter



# ----------------------------------------------------------------------------- losses


def stream_loss(tail_fn: ApplyFn, kind: str, coef: float, setting: float, params: Params, h: jax.Array,
                y: jax.Array, weights: jax.Array, ctx: ImpressionContext) -> jax.Array:
  """``coef`` times the weighted mean of one per-example loss ``kind`` of the tail on ``(h, y)``.

  ``kind``: ``cross_entropy`` (label smoothing ``setting``), ``forget_margin``
  / ``retain_margin`` (margin ``setting``) or ``masked_kl`` (target: the
  original tail's prediction with the forget classes masked out).

  Example:
    >>> import jax.numpy as jnp
    >>> float(stream_loss(lambda p, h: h * p, "cross_entropy", -1.0, 0.0, 1.0, jnp.zeros((1, 2)),
    ...                   jnp.array([0]), jnp.ones(1), None)) == -float(jnp.log(2.0))
    True
  """
  logits = tail_fn(params, h)
  if kind == "cross_entropy":
    values = losses.smoothed_cross_entropy(logits, y, setting)
  elif kind == "forget_margin":
    values = losses.forget_margin_loss(logits, y, ctx.retain_classes, setting)
  elif kind == "retain_margin":
    values = losses.retain_margin_loss(logits, y, setting)
  else:
    logits0 = jax.lax.stop_gradient(tail_fn(ctx.params0, h))
    values = losses.masked_kl(logits0, logits, ctx.retain_classes)
  return coef * losses.weighted_mean(values, weights)


def differential_losses(tail_fn: ApplyFn, config) -> tuple[StreamLoss, StreamLoss]:
  """``(forget_loss, retain_loss)``: the *signed* per-batch losses each step minimizes.

  Each is ``loss(params, h, y, weights, ctx) -> scalar`` (``ctx`` holds the
  original params ``params0`` and the ``[C]`` bool mask ``retain_classes``),
  the same object for the same ``tail_fn`` and settings.

  * ``cross_entropy`` with ``sign="intended"``: ``-w_f CE_s(forget)`` and
    ``+w_r CE_s(retain)`` (ascent on forget, descent on retain; Eq. 2).
  * ``cross_entropy`` with ``sign="as_published"``: ``+w_f CE_s(forget)``
    and ``-w_r CE_s(retain)`` (Eq. 4 / Algorithm 1 lines 9 and 12 as printed).
  * ``margin``: ``w_f relu(z_y - max_retained z + m)`` on forget impressions
    and ``w_r relu(m - margin_y)`` on retain impressions, both descended.
  * ``masked_kl``: ``w_f KL(q0 || p)`` on forget and ``w_r KL(q0 || p)`` on
    retain impressions, both descended, where ``q0`` is the original model's
    prediction with the forget classes masked out
    (:func:`famr_jax.losses.masked_kl`).

  ``CE_s`` is cross-entropy with label smoothing ``config.label_smoothing``.

  Example:
    >>> import jax.numpy as jnp
    >>> from famr_jax.methods.zero_shot import ZeroShotConfig
    >>> tail = lambda p, h: h * p
    >>> f, r = differential_losses(tail, ZeroShotConfig(forget_objective="cross_entropy",
    ...                                                 sign="intended", label_smoothing=0.0))
    >>> h, y, w = jnp.zeros((1, 2)), jnp.array([0]), jnp.ones(1)
    >>> round(float(f(1.0, h, y, w, None)), 4), round(float(r(1.0, h, y, w, None)), 4)   # -0.9 log 2, 0.1 log 2
    (-0.6238, 0.0693)
  """
  w_f, w_r = float(config.w_f), float(config.w_r)
  if config.forget_objective == "cross_entropy":
    s_f, s_r = (-1.0, 1.0) if config.sign == "intended" else (1.0, -1.0)
    s = float(config.label_smoothing)
    return (bind_static(stream_loss, tail_fn, "cross_entropy", s_f * w_f, s),
            bind_static(stream_loss, tail_fn, "cross_entropy", s_r * w_r, s))
  if config.forget_objective == "margin":
    m = float(config.margin)
    return (bind_static(stream_loss, tail_fn, "forget_margin", w_f, m),
            bind_static(stream_loss, tail_fn, "retain_margin", w_r, m))
  return (bind_static(stream_loss, tail_fn, "masked_kl", w_f, 0.0),
          bind_static(stream_loss, tail_fn, "masked_kl", w_r, 0.0))


def scale_jitter(key: jax.Array, stream: int, rows: jax.Array, h: jax.Array, scale_min: float) -> jax.Array:
  """Multiplies row ``i`` of ``h`` by ``t_i``, ``log t_i ~ U(log scale_min, 0)`` keyed by ``(key, stream, rows[i])``.

  The identity at ``scale_min = 1``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> h = scale_jitter(jax.random.key(0), 0, jnp.arange(3), jnp.ones((3, 2)), 0.1)
    >>> bool(jnp.all((h >= 0.1) & (h <= 1.0))), bool(jnp.all(h[:, 0] == h[:, 1]))
    (True, True)
  """
  if scale_min >= 1.0:
    return h
  stream_key = jax.random.fold_in(key, stream)
  draw = lambda r: jax.random.uniform(jax.random.fold_in(stream_key, r), (), h.dtype, np.log(scale_min), 0.0)
  log_t = jax.vmap(draw)(rows)
  return h * jnp.exp(log_t).reshape((-1,) + (1,) * (h.ndim - 1))


def pass_loss(loss: StreamLoss, scale_min: float, stream: int, params: Params, batch: tuple,
              weights: jax.Array, ctx: ImpressionContext) -> jax.Array:
  """The engine's loss of one stream's pass (separate mode): ``batch`` holds row indices into the stream."""
  rows = batch[0]
  h_all, y_all = (ctx.h_forget, ctx.y_forget) if stream == 0 else (ctx.h_retain, ctx.y_retain)
  h = scale_jitter(ctx.jitter_key, stream, rows, h_all[rows], scale_min)
  return loss(params, h, y_all[rows], weights, ctx)


def joint_loss(forget_loss: StreamLoss, retain_loss: StreamLoss, scale_min: float, params: Params,
               batch: tuple, weights: jax.Array, ctx: ImpressionContext) -> jax.Array:
  """The engine's loss of joint mode: ``batch = (forget rows, retain rows, pair rows)``, both losses summed."""
  i_f, i_r, rows = batch
  h_f = scale_jitter(ctx.jitter_key, 0, rows, ctx.h_forget[i_f], scale_min)
  h_r = scale_jitter(ctx.jitter_key, 1, rows, ctx.h_retain[i_r], scale_min)
  return (forget_loss(params, h_f, ctx.y_forget[i_f], weights, ctx)
          + retain_loss(params, h_r, ctx.y_retain[i_r], weights, ctx))


# ----------------------------------------------------------------------------- the loop


class DifferentialRun(NamedTuple):
  """Output of :func:`differential_descent`."""
  params: Params
  history: list[dict[str, float]]
  compile_s: float
  run_s: float


def _pairing(key: jax.Array, n_f: int, n_r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Rows pairing every row of the longer stream with one of the shorter, cycled in a random order."""
  n = max(n_f, n_r)
  short = min(n_f, n_r)
  cycled = np.resize(np.asarray(jax.random.permutation(key, short)), n).astype(np.int32)
  rows = np.arange(n, dtype=np.int32)
  return (rows, cycled, rows) if n_f >= n_r else (cycled, rows, rows)


def differential_descent(tail_fn: ApplyFn, params: Params, ctx: ImpressionContext, optimizer, config,
                         key: jax.Array, *, metrics: Callable[[Params, Any], dict[str, jax.Array]],
                         show_progress: bool) -> DifferentialRun:
  """Runs Algorithm 1 for ``config.epochs`` epochs (separate or joint steps, see the module doc).

  History: epoch 0 (the original model) and one entry per epoch of
  ``metrics(params, ctx)`` (a compiled function; called asynchronously, read
  once at the end) plus ``loss``, the mean of the epoch's losses over its
  examples (for separate steps: forget and retain passes together).
  """
  forget_loss, retain_loss = differential_losses(tail_fn, config)
  n_f, n_r = int(ctx.h_forget.shape[0]), int(ctx.h_retain.shape[0])
  use_retain = config.w_r > 0 and n_r > 0
  separate = config.separate_steps or not use_retain
  scale_min = float(config.scale_min)
  key = typed_key(key)
  if separate:
    stages = [(bind_static(pass_loss, forget_loss, scale_min, 0), (jnp.arange(n_f, dtype=jnp.int32),))]
    if use_retain:
      stages.append((bind_static(pass_loss, retain_loss, scale_min, 1), (jnp.arange(n_r, dtype=jnp.int32),)))
  joint = bind_static(joint_loss, forget_loss, retain_loss, scale_min)
  device_metrics, epoch_losses = [metrics(params, ctx)], []
  compile_s = run_s = 0.0
  opt_state = None
  for epoch in progress(range(config.epochs), desc="zero-shot unlearning", enabled=show_progress):
    k_epoch = jax.random.fold_in(key, epoch)
    epoch_ctx = ctx._replace(jitter_key=jax.random.fold_in(k_epoch, 0))
    if not separate:
      stages = [(joint, tuple(jnp.asarray(a) for a in _pairing(jax.random.fold_in(k_epoch, 1), n_f, n_r)))]
    loss_sum = count = 0.0
    for i, (loss_fn, data) in enumerate(stages):
      # The metrics are computed here, not by the engine: one compiled program for every stage.
      r = minibatch_descent(loss_fn, params, data, optimizer, epochs=1, batch_size=config.batch_size,
                            key=jax.random.fold_in(k_epoch, 2 + i), context=epoch_ctx, show_progress=False,
                            opt_state=opt_state)
      params, opt_state = r.params, r.opt_state
      compile_s, run_s = compile_s + r.compile_s, run_s + r.run_s
      n = int(data[0].shape[0])
      loss_sum, count = loss_sum + r.history[-1]["loss"] * n, count + n
    device_metrics.append(metrics(params, ctx))
    epoch_losses.append(loss_sum / count)
  history = [{"epoch": e, **{k: float(v) for k, v in m.items()}, **({"loss": epoch_losses[e - 1]} if e else {})}
             for e, m in enumerate(jax.device_get(device_metrics))]
  return DifferentialRun(params, history, compile_s, run_s)
