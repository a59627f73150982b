"""Masked Small Gradients (MSG) and Convolution Transpose (CT), as Deep Unlearn defines them.

Cadet et al., "Deep Unlearn: Benchmarking Machine Unlearning" (2024), ran 18
methods over 10 initialisations with U-LiRA; the two most consistent were two
NeurIPS 2023 challenge entries they call MSG and CT (their ``kgltop2`` and
``kgltop5``). Written here from their description and procedure:

* **MSG** (``msg``): accumulate one gradient, ``sum_b grad CE(retain batch b)
  - sum_b grad CE(forget batch b)`` over the forget set and a random retained
  subset of the same size; in each selected layer the ``init_rate`` fraction
  of weights with the *smallest* ``|gradient|`` is re-initialized
  (Kaiming-normal, fan-out) and keeps a full gradient, every other weight of
  that layer keeps its value and gets ``small_grad_scale`` (0.1) of its
  gradient; then fine-tune on the retained set (SGD, momentum 0.9, weight
  decay 5e-4, lr 1e-3, 5 epochs of retained data, a linear warm-up over
  ``(epochs + 1) // 2`` epochs then a linear decay, stepped per epoch).
* **CT** (``ct``): transpose the two spatial axes of every convolution kernel,
  then fine-tune on the retained set (SGD, momentum 0.9, weight decay 5e-4,
  lr 1e-3, 3 epochs, cosine annealing stepped per epoch).

Deep Unlearn's selected layers are the convolutions (4-D ``kernel`` leaves
here); ``layers="kernels"`` extends MSG to every weight matrix, for models
without convolutions (a deviation, named in the method's metadata). CT has no
such extension: a model without convolution kernels is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from famr_jax import losses
from famr_jax.engine.batching import steps_per_epoch
from famr_jax.engine.descent import DescentResult, bind_static, check_descent_settings, minibatch_descent
from famr_jax.engine.forward import timed_call
from famr_jax.errors import FamrError
from famr_jax.validation import CheckedFields

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]
LAYERS = ("conv", "kernels")


@dataclasses.dataclass(frozen=True)
class RetainFinetuneConfig(CheckedFields):
  """Deep Unlearn's fine-tuning on the retained set (the CT method, ``ct``).

  Attributes:
    epochs: passes over the retained set.
    lr: base SGD learning rate (the schedule's peak).
    batch_size: retained samples per step.
    momentum: SGD momentum.
    coupled_weight_decay: coupled L2 weight decay (added to the gradient, as torch's SGD does).
    steps: a step budget replacing ``epochs`` (the schedule still runs over ``epochs``).
  """
  epochs: int = 3
  lr: float = 1e-3
  batch_size: int = 64
  momentum: float = 0.9
  coupled_weight_decay: float = 5e-4
  steps: int | None = None

  def validate(self):
    """Raises :class:`FamrError` on an invalid setting."""
    check_descent_settings(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, steps=self.steps)
    if not 0.0 <= self.momentum < 1.0:
      raise FamrError(f"momentum must lie in [0, 1), got {self.momentum}")
    if self.coupled_weight_decay < 0:
      raise FamrError(f"coupled_weight_decay must be non-negative, got {self.coupled_weight_decay}")
    return self


@dataclasses.dataclass(frozen=True)
class MSGConfig(RetainFinetuneConfig):
  """Masked Small Gradients (method ``msg``).

  Attributes:
    epochs: passes over the retained set.
    lr: base SGD learning rate (the schedule's peak).
    batch_size: retained samples per step.
    momentum: SGD momentum.
    coupled_weight_decay: coupled L2 weight decay (added to the gradient, as torch's SGD does).
    steps: a step budget replacing ``epochs``.
    init_rate: fraction of each selected layer's weights (smallest ``|gradient|``) re-initialized.
    small_grad_scale: gradient scale of the selected layers' other weights.
    layers: ``conv`` (Deep Unlearn: 4-D convolution kernels) or ``kernels`` (every weight matrix).
  """
  epochs: int = 5
  init_rate: float = 0.3
  small_grad_scale: float = 0.1
  layers: Literal["conv", "kernels"] = "conv"

  def validate(self):
    """Raises :class:`FamrError` on an invalid setting (the fine-tuning's, then the mask's)."""
    super().validate()
    if not 0.0 < self.init_rate < 1.0:
      raise FamrError(f"init_rate must lie in (0, 1), got {self.init_rate}")
    if not 0.0 <= self.small_grad_scale <= 1.0:
      raise FamrError(f"small_grad_scale must lie in [0, 1], got {self.small_grad_scale}")
    if self.layers not in LAYERS:
      raise FamrError(f"layers must be one of {', '.join(LAYERS)}, got {self.layers!r}")
    return self


# ----------------------------------------------------------------------------- pure pieces


def selected_kernels(params: Params, layers: str = "conv") -> Params:
  """A pytree of bools: True on the ``kernel`` leaves MSG / CT act on (4-D only for ``conv``).

  Example:
    >>> import jax.numpy as jnp
    >>> p = {"conv": {"kernel": jnp.zeros((3, 3, 1, 4)), "bias": jnp.zeros(4)}, "fc": {"kernel": jnp.zeros((4, 2))}}
    >>> selected_kernels(p)["conv"]["kernel"], selected_kernels(p)["fc"]["kernel"], selected_kernels(p, "kernels")["fc"]["kernel"]
    (True, False, True)
  """
  def pick(path, leaf):
    name = getattr(path[-1], "key", getattr(path[-1], "name", None)) if path else None
    return bool(name == "kernel" and (leaf.ndim == 4 if layers == "conv" else leaf.ndim >= 2))
  return jax.tree_util.tree_map_with_path(pick, params)


def small_gradient_mask(grads: Params, rate: float, selected: Params) -> Params:
  """Per selected leaf, True on the ``round(rate * size)`` entries with the smallest ``|grad|``.

  Unselected leaves are all False.

  Example:
    >>> import jax.numpy as jnp
    >>> m = small_gradient_mask({"k": jnp.array([[0.3, -0.1], [2.0, 0.05]])}, 0.5, {"k": True})
    >>> m["k"].tolist()
    [[False, True], [False, True]]
  """
  def one(g, sel):
    if not sel:
      return jnp.zeros(g.shape, bool)
    k = int(round(rate * g.size))
    flat = jnp.abs(g).reshape(-1)
    chosen = jnp.zeros(g.size, bool).at[jnp.argsort(flat)[:k]].set(True)
    return chosen.reshape(g.shape)
  return jax.tree.map(one, grads, selected)


def kaiming_fan_out(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Kaiming-normal draws, fan-out mode, ReLU gain: std ``sqrt(2 / (out_channels * kernel area))``.

  Example:
    >>> import jax
    >>> w = kaiming_fan_out(jax.random.key(0), (3, 3, 16, 64))
    >>> abs(float(w.std()) - (2 / (64 * 9)) ** 0.5) < 0.005
    True
  """
  fan_out = shape[-1] * math.prod(shape[:-2])
  return jax.random.normal(key, shape) * math.sqrt(2.0 / fan_out)


def transpose_conv_kernels(params: Params) -> Params:
  """CT's step: every 4-D convolution kernel ``[H, W, in, out]`` with its spatial axes swapped.

  Example:
    >>> import jax.numpy as jnp
    >>> k = jnp.arange(4.0).reshape(2, 2, 1, 1)
    >>> transpose_conv_kernels({"c": {"kernel": k}})["c"]["kernel"][..., 0, 0].tolist()
    [[0.0, 2.0], [1.0, 3.0]]
  """
  selected = selected_kernels(params, "conv")
  if not any(jax.tree.leaves(selected)):
    raise FamrError("CT transposes convolution kernels and the model has none (no 4-D 'kernel' params)")
  for sel, leaf in zip(jax.tree.leaves(selected), jax.tree.leaves(params)):
    if sel and leaf.shape[0] != leaf.shape[1]:
      raise FamrError(f"CT needs square convolution kernels, got a {leaf.shape[0]}x{leaf.shape[1]} one")
  return jax.tree.map(lambda p, s: jnp.swapaxes(p, 0, 1) if s else p, params, selected)


def epoch_lr_factor(kind: str, epoch: int | jax.Array, epochs: int) -> jax.Array:
  """The per-epoch learning-rate factor: ``warmup-decay`` (MSG) or ``cosine`` (CT), stepped per epoch.

  ``warmup-decay`` rises linearly over ``A = (epochs + 1) // 2`` epochs and falls
  to 0 at ``epochs + 1``: factor ``(e + 1) / A`` for ``e + 1 <= A``, else
  ``(epochs - e) / (epochs + 1 - A)``. ``cosine`` is ``(1 + cos(pi e / epochs)) / 2``.

  Example:
    >>> [round(float(epoch_lr_factor("warmup-decay", e, 5)), 4) for e in range(5)]
    [0.3333, 0.6667, 1.0, 0.6667, 0.3333]
  """
  e = jnp.asarray(epoch, jnp.float32)
  if kind == "cosine":
    return 0.5 * (1.0 + jnp.cos(jnp.pi * e / epochs))
  warm = (epochs + 1) // 2
  return jnp.where(e + 1 <= warm, (e + 1) / warm, (epochs - e) / (epochs + 1 - warm))


@functools.lru_cache(maxsize=64)
def finetune_optimizer(kind: str, lr: float, momentum: float, weight_decay: float, epochs: int,
                       per_epoch: int) -> optax.GradientTransformation:
  """Torch-style SGD (decay added to the gradient, then momentum) on the per-epoch schedule ``kind``.

  Memoized, so a second run reuses the compiled steps.
  """
  schedule = lambda step: lr * epoch_lr_factor(kind, step // per_epoch, epochs)
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(schedule, momentum=momentum if momentum > 0 else None))


def scaled_ce_loss(apply_fn: ApplyFn, params: Params, batch: tuple, weights: jax.Array, scales: Any) -> jax.Array:
  """Retained cross-entropy whose gradient is multiplied entrywise by ``scales`` (None: unscaled)."""
  if scales is not None:
    params = jax.tree.map(lambda q, s: s * q + (1.0 - s) * jax.lax.stop_gradient(q), params, scales)
  return losses.weighted_mean(losses.cross_entropy(apply_fn(params, batch[0]), batch[1]), weights)


def mean_ce_grad(apply_fn: ApplyFn, params: Params, x: jax.Array, y: jax.Array) -> Params:
  """Gradient of one batch's mean cross-entropy (jitted through :func:`famr_jax.engine.forward.timed_call`)."""
  return jax.grad(lambda q: jnp.mean(losses.cross_entropy(apply_fn(q, x), y)))(params)


def msg_gradient(apply_fn: ApplyFn, params: Params, x_forget, y_forget, x_retain, y_retain,
                 batch_size: int = 64) -> tuple[Params, float, float]:
  """MSG's accumulated gradient, ``sum`` over batches of ``grad CE(retain)`` minus ``grad CE(forget)``.

  Returns ``(gradient, compile seconds, run seconds)``.
  """
  grad = bind_static(mean_ce_grad, apply_fn)
  total, compile_s, run_s = jax.tree.map(jnp.zeros_like, params), 0.0, 0.0
  for sign, x, y in ((1.0, x_retain, y_retain), (-1.0, x_forget, y_forget)):
    for start in range(0, len(y), batch_size):
      g, c, r = timed_call(grad, params, jnp.asarray(x[start:start + batch_size]),
                           jnp.asarray(y[start:start + batch_size]))
      total, compile_s, run_s = jax.tree.map(lambda t, gi: t + sign * gi, total, g), compile_s + c, run_s + r
  return total, compile_s, run_s


# ----------------------------------------------------------------------------- runs


def retain_finetune(apply_fn: ApplyFn, params: Params, x_retain, y_retain, config: RetainFinetuneConfig,
                    kind: str, key: jax.Array, *, scales: Params | None = None, show_progress: bool = True,
                    desc: str = "fine-tune", meta: dict | None = None) -> DescentResult:
  """Deep Unlearn's fine-tuning: torch-style SGD on the retained cross-entropy, schedule ``kind``."""
  per_epoch = steps_per_epoch(len(y_retain), config.batch_size)
  optimizer = finetune_optimizer(kind, float(config.lr), float(config.momentum), float(config.coupled_weight_decay),
                                 int(config.epochs), per_epoch)
  data = (np.asarray(x_retain, np.float32), np.asarray(y_retain, np.int32))
  return minibatch_descent(bind_static(scaled_ce_loss, apply_fn), params, data, optimizer, epochs=config.epochs,
                           batch_size=config.batch_size, key=key, context=scales, desc=desc,
                           show_progress=show_progress, max_steps=config.steps, resume_meta=meta)


def msg_unlearn(apply_fn: ApplyFn, params: Params, x_forget, y_forget, x_retain, y_retain, config: MSGConfig,
                key: jax.Array, *, show_progress: bool = True) -> DescentResult:
  """Masked Small Gradients (Cadet et al. 2024, Deep Unlearn's MSG): re-initialize, mask, fine-tune.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int32)
    >>> p = {"fc": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    >>> f = lambda p, x: x @ p["fc"]["kernel"] + p["fc"]["bias"]
    >>> r = msg_unlearn(f, p, x[:4], y[:4], x[4:], y[4:], MSGConfig(epochs=1, layers="kernels"),
    ...                 jax.random.key(0), show_progress=False)
    >>> int(np.sum(np.asarray(r.params["fc"]["kernel"]) != 1.0))   # round(0.3 * 6) re-initialized, then tuned
    6
  """
  config.validate()
  x_forget, x_retain = np.asarray(x_forget, np.float32), np.asarray(x_retain, np.float32)
  if len(x_forget) == 0 or len(x_retain) == 0:
    raise FamrError("MSG needs a non-empty forget set and retained data")
  selected = selected_kernels(params, config.layers)
  if not any(jax.tree.leaves(selected)):
    raise FamrError("MSG (layers='conv') masks convolution kernels and the model has none; "
                    "use layers='kernels' to mask every weight matrix")
  sub = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), len(x_retain)))[:len(x_forget)]
  grads, compile_s, grad_s = msg_gradient(apply_fn, params, x_forget, y_forget, x_retain[sub],
                                          np.asarray(y_retain)[sub])
  prep = bind_static(msg_start, config.layers, float(config.init_rate), float(config.small_grad_scale))
  (start, scales), prep_compile_s, prep_s = timed_call(prep, params, grads, jax.random.fold_in(key, 2))
  compile_s, prep_s = compile_s + prep_compile_s, prep_s + grad_s
  result = retain_finetune(apply_fn, start, x_retain, y_retain, config, "warmup-decay", jax.random.fold_in(key, 3),
                           scales=scales, show_progress=show_progress, desc="MSG",
                           meta={"msg": dataclasses.asdict(config)})
  return result._replace(run_s=result.run_s + prep_s, compile_s=result.compile_s + compile_s)


def ct_unlearn(apply_fn: ApplyFn, params: Params, x_retain, y_retain, config: RetainFinetuneConfig,
               key: jax.Array, *, show_progress: bool = True) -> DescentResult:
  """Convolution Transpose (Cadet et al. 2024, Deep Unlearn's CT): transpose kernels, fine-tune on retain.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> ct_unlearn(lambda p, x: x @ p["w"], {"w": jnp.ones((2, 2))}, np.ones((4, 2), np.float32),
    ...            np.zeros(4, np.int32), RetainFinetuneConfig(), jax.random.key(0))
    Traceback (most recent call last):
    ...
    famr_jax.errors.FamrError: CT transposes convolution kernels and the model has none (no 4-D 'kernel' params)
  """
  config.validate()
  if len(y_retain) == 0:
    raise FamrError("CT fine-tunes on retained data, and there is none")
  start = transpose_conv_kernels(params)
  return retain_finetune(apply_fn, start, x_retain, y_retain, config, "cosine", key, show_progress=show_progress,
                         desc="CT", meta={"ct": dataclasses.asdict(config)})


def msg_start(layers: str, rate: float, small_scale: float, params: Params, grads: Params,
              key: jax.Array) -> tuple[Params, Params]:
  """MSG's start and gradient scales: the smallest-gradient weights re-initialized (scale 1), the rest of a
  selected layer kept (scale ``small_scale``), other layers untouched (scale 1). One jitted program."""
  selected = selected_kernels(params, layers)
  mask = small_gradient_mask(grads, rate, selected)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  fresh = jax.tree.unflatten(treedef, [kaiming_fan_out(k, l.shape) for k, l in zip(keys, leaves)])
  start = jax.tree.map(lambda p, m, f: jnp.where(m, f, p), params, mask, fresh)
  scales = jax.tree.map(lambda m, s: jnp.where(m, 1.0, small_scale if s else 1.0).astype(jnp.float32),
                        mask, selected)
  return start, scales


def run_msg_task(task, config: MSGConfig) -> DescentResult:
  """The registry's adapter for ``msg``."""
  data, forget = task.data, task.forget
  keep = forget.retain_mask(len(data.y_train))
  idx = forget.indices
  return msg_unlearn(task.apply_fn, task.params, data.x_train[idx], data.y_train[idx], data.x_train[keep],
                     data.y_train[keep], config, task.key, show_progress=task.show_progress)


def run_ct_task(task, config: RetainFinetuneConfig) -> DescentResult:
  """The registry's adapter for ``ct``."""
  keep = task.forget.retain_mask(len(task.data.y_train))
  return ct_unlearn(task.apply_fn, task.params, task.data.x_train[keep], task.data.y_train[keep], config, task.key,
                    show_progress=task.show_progress)
