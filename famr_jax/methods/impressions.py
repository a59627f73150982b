"""Class impressions: data-free proxies for a class (class-impressions paper, Eq. 3).

A class impression for class ``c`` is an input optimized to maximize the
model's logit ``f(x)_c`` (Mopuri et al. 2018), optionally minus
``beta ||x||_2^2``. Two spaces are supported (ERRATA item 2):

* ``"pixel"``: ``x`` is an image, optimized through the whole model and
  clipped to the input range after every step (Eq. 3 as written);
* ``"activation"``: ``x`` is the activation entering a chosen stage, optimized
  through the model's *true* tail from that stage on, ReLUs included
  (``famr_jax.models.make_tail_apply_fn``) -- what the authors' code does,
  except that their tail dropped the ReLUs (ERRATA item 3).

Every impression of every class is optimized at once: the per-impression
gradient is ``vmap``-ed over a flat batch of (impression, target class) pairs,
Adam is element-wise (so batching them is exactly independent Adams), and the
whole ``steps``-long loop is one ``lax.scan`` inside one ``jit``. Only the
impressions the model assigns to their target class are kept, and how many
were kept per class is part of the result.

The authors' settings (ERRATA item 3) are the defaults: Adam, learning rate
0.1, 1000 steps, Xavier-normal start, no ``beta`` penalty, 100 per class.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from famr_jax.errors import FamrError
from famr_jax.validation import CheckedFields, apply_renamed
from famr_jax.trace_settings import in_loop_body
from famr_jax.models.parts import ModelParts, as_parts, identity_head, is_layered_model

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]

SPACES = ("activation", "pixel")


@dataclasses.dataclass(frozen=True)
class ImpressionConfig(CheckedFields):
  """How class impressions are made (Eq. 3).

  Attributes:
    num_per_class: impressions optimized per class (the kept ones may be fewer).
    steps: Adam steps per impression.
    lr: Adam learning rate.
    space: ``"activation"`` (the input of stage ``layer``, through the true
      tail) or ``"pixel"`` (images through the whole model, clipped to
      ``input_range``).
    layer: activation space only: the stage whose input is optimized;
      ``None`` means the model's last stage (e.g. ``fc3`` of LeNet5).
    norm_penalty: the beta of Eq. 3: weight of the ``beta ||x||_2^2`` penalty (per
      impression). ``beta`` (its name until FAMR's style weight took it) still
      works as a keyword, with a ``DeprecationWarning``.
    input_range: pixel space only: ``(low, high)`` every pixel is clipped to.
    nonnegative: activation space only: project the activation onto
      ``h >= 0`` after every step (the input of a stage that follows a ReLU
      can only be non-negative; the authors' code does not do this).
    objective: ``"logit"`` maximizes the class logit (Eq. 3, Mopuri et al.);
      ``"log_softmax"`` maximizes its log-probability, so the competing
      classes count too (needed when the range is constrained: the logit's
      maximizer over ``h >= 0`` can belong to another class).
  """
  num_per_class: int = 100
  steps: int = 1000
  lr: float = 0.1
  space: Literal["activation", "pixel"] = "activation"
  layer: str | None = None
  norm_penalty: float = 0.0
  input_range: tuple[float, float] = (0.0, 1.0)
  nonnegative: bool = False
  objective: Literal["logit", "log_softmax"] = "logit"
  beta: dataclasses.InitVar[float | None] = None   # deprecated name of norm_penalty

  def __post_init__(self, beta: float | None = None) -> None:
    apply_renamed(self, {"beta": ("norm_penalty", beta)})
    super().__post_init__()

  def validate(self) -> "ImpressionConfig":
    """Raises :class:`FamrError` on an invalid setting."""
    if self.num_per_class <= 0:
      raise FamrError(f"impressions per class must be positive, got {self.num_per_class}")
    if self.steps <= 0:
      raise FamrError(f"impression steps must be positive, got {self.steps}")
    if not self.lr > 0:
      raise FamrError(f"impression learning rate must be positive, got {self.lr}")
    if self.space not in SPACES:
      raise FamrError(f"unknown impression space {self.space!r}: choose one of {', '.join(SPACES)}")
    if self.objective not in ("logit", "log_softmax"):
      raise FamrError(f"unknown impression objective {self.objective!r}: choose logit or log_softmax")
    if self.norm_penalty < 0:
      raise FamrError(f"the impression penalty beta must be non-negative, got {self.norm_penalty}")
    low, high = self.input_range
    if not low < high:
      raise FamrError(f"input_range must be (low, high) with low < high, got {self.input_range}")
    return self


RANGES = ("auto", "free", "nonnegative")
OBJECTIVES = ("logit", "log_softmax")


@dataclasses.dataclass(frozen=True)
class ImpressionSettings(CheckedFields):
  """A method's impression options (the flags ``--impression-*``): the one place they are defined.

  Every method that makes class impressions (``impressions``, ``famr-zeroshot``,
  ``famr-function`` with ``function_data="impressions"``) has these fields
  and turns them into an :class:`ImpressionConfig` by :meth:`impression_config`;
  where an impression lives (its space and stage) is the method's.

  Attributes:
    impressions_per_class: class impressions optimized per class.
    impression_steps: Adam steps per impression.
    impression_lr: Adam learning rate of the impressions.
    impression_beta: the beta ||x||^2 penalty of Eq. 3 on the impressions.
    impression_range: activation space: ``nonnegative`` (project onto h >= 0),
      ``free``, or ``auto`` (nonnegative when the head's output is, e.g. after a ReLU).
    impression_objective: ``logit`` (Eq. 3) or ``log_softmax`` (the target's log-probability).
  """
  impressions_per_class: int = 100
  impression_steps: int = 1000
  impression_lr: float = 0.1
  impression_beta: float = 0.0
  impression_range: Literal["auto", "free", "nonnegative"] = "auto"
  impression_objective: Literal["logit", "log_softmax"] = "log_softmax"

  def impression_config(self, space: str, layer: str | None, head_nonnegative: bool = False) -> ImpressionConfig:
    """The :class:`ImpressionConfig` of impressions in ``space`` at the input of ``layer``.

    ``head_nonnegative``: whether the head's output is ``>= 0`` (what ``impression_range="auto"``
    follows in activation space; :func:`famr_jax.methods.head_tail.head_output_is_nonnegative`).

    Example:
      >>> ImpressionSettings(impression_range="auto").impression_config("activation", "fc2", True).nonnegative
      True
    """
    if self.impression_range not in RANGES:
      raise FamrError(f"unknown impression range {self.impression_range!r}: choose auto, free or nonnegative")
    if space not in SPACES:
      raise FamrError(f"unknown impression space {space!r}: choose one of {', '.join(SPACES)}")
    nonnegative = self.impression_range == "nonnegative" or (self.impression_range == "auto" and head_nonnegative
                                                              and space == "activation")
    return ImpressionConfig(num_per_class=self.impressions_per_class, steps=self.impression_steps,
                            lr=self.impression_lr, space=space, layer=layer, norm_penalty=self.impression_beta,
                            nonnegative=nonnegative, objective=self.impression_objective)


class ImpressionSet(NamedTuple):
  """Class impressions that the model assigns to their target class.

  Attributes:
    inputs: ``[N, *shape]`` float32 kept impressions (images or activations).
    labels: ``[N]`` int32 target class of each.
    logits: ``[N, num_classes]`` the model's logits on each kept impression.
    classes: the classes impressions were made for, in order.
    kept_per_class: ``[len(classes)]`` how many of each class were kept.
    num_per_class: how many were optimized per class.
    space: ``"pixel"`` or ``"activation"``.
    layer: the stage whose input they are (``None`` for pixel space).
    compile_s: seconds to compile the optimization.
    run_s: seconds to run it (compile excluded).
  """
  inputs: np.ndarray
  labels: np.ndarray
  logits: np.ndarray
  classes: tuple[int, ...]
  kept_per_class: np.ndarray
  num_per_class: int
  space: str
  layer: str | None
  compile_s: float
  run_s: float

  def summary(self) -> str:
    """One line: how many impressions of each class were kept."""
    kept = " ".join(f"{c}:{k}" for c, k in zip(self.classes, self.kept_per_class.tolist()))
    where = ("pixel space" if self.space == "pixel"
             else f"activation space at the input of {self.layer or 'the tail'}")
    return (f"class impressions ({where}): kept {int(self.kept_per_class.sum())} of "
            f"{self.num_per_class * len(self.classes)} ({kept} of {self.num_per_class} per class)")

  def select(self, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, labels)`` of the kept impressions of ``classes``."""
    mask = np.isin(self.labels, np.asarray(list(classes), np.int64))
    return self.inputs[mask], self.labels[mask]


def xavier_normal_std(shape: Sequence[int]) -> float:
  """Std of PyTorch's ``xavier_normal_`` on a batch-of-one tensor of ``shape`` (channels last).

  PyTorch's fans for a ``[1, C, *spatial]`` tensor are ``fan_in = C * prod(spatial)``
  and ``fan_out = prod(spatial)``; for ``[1, D]`` they are ``D`` and ``1``.

  Example:
    >>> round(xavier_normal_std((84,)), 4)   # sqrt(2 / (84 + 1))
    0.1534
  """
  spatial = math.prod(shape[:-1]) if len(shape) > 1 else 1
  fan_in = math.prod(shape)
  return math.sqrt(2.0 / (fan_in + spatial))


def _check_classes(classes: Sequence[int], num_classes: int) -> tuple[int, ...]:
  classes = tuple(int(c) for c in classes)
  if not classes:
    raise FamrError("no classes to make impressions for")
  bad = [c for c in classes if not 0 <= c < num_classes]
  if bad:
    raise FamrError(f"impression classes {bad} are out of range: the model has classes 0..{num_classes - 1}")
  if len(set(classes)) != len(classes):
    raise FamrError(f"impression classes {list(classes)} contain duplicates")
  return classes


def optimize_impressions(tail_fn: ApplyFn, params: Params, targets: jax.Array, x0: jax.Array, *,
                         steps: int, lr: float, beta: float = 0.0,
                         lower: float | None = None, upper: float | None = None,
                         log_softmax: bool = False) -> tuple[jax.Array, jax.Array]:
  """Maximizes ``tail_fn(params, x)[target] - beta ||x||^2`` for every row of ``x0`` (not jitted).

  The per-impression objective is differentiated with ``vmap(grad(.))``, so
  each impression gets its own gradient even for a model that mixes the
  batch; Adam (element-wise) steps all of them together; after each step
  ``x`` is clipped to ``[lower, upper]`` (either may be ``None``). Wrap it in
  ``jax.jit`` with ``tail_fn`` and the scalars static (as
  :func:`class_impressions` does).

  Args:
    tail_fn: ``tail_fn(params, x_batch) -> logits``.
    params: the model's params (not differentiated).
    targets: ``[N]`` int target class of each impression.
    x0: ``[N, *shape]`` starting points.
    steps: Adam steps.
    lr: Adam learning rate.
    beta: weight of the ``||x||_2^2`` penalty.
    lower: optional lower bound of every coordinate.
    upper: optional upper bound of every coordinate.
    log_softmax: maximize the target's log-softmax instead of its logit.

  Returns:
    ``(x, logits)``: the optimized impressions and their logits.

  Example:
    >>> import jax.numpy as jnp
    >>> tail = lambda p, x: x @ p          # a linear "tail"
    >>> w = jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    >>> x, logits = optimize_impressions(tail, w, jnp.array([0, 1]), jnp.zeros((2, 2)),
    ...                                  steps=20, lr=0.1, lower=0.0, upper=1.0)
    >>> x.tolist()
    [[1.0, 0.0], [0.0, 1.0]]
  """
  optimizer = optax.adam(lr)

  def objective(x, target):
    logits = tail_fn(params, x[None])[0]
    if log_softmax:
      logits = jax.nn.log_softmax(logits)
    return logits[target] - beta * jnp.sum(jnp.square(x))

  ascent_direction = jax.vmap(jax.grad(objective))

  def project(x):
    if lower is None and upper is None:
      return x
    return jnp.clip(x, lower, upper)

  def step(carry, _):
    x, opt_state = carry
    grads = ascent_direction(x, targets)
    updates, opt_state = optimizer.update(-grads, opt_state, x)   # minimize -objective
    return (project(optax.apply_updates(x, updates)), opt_state), None

  x0 = project(x0)
  with in_loop_body():   # pixel-space impressions differentiate through convolutions in this scan
    (x, _), _ = jax.lax.scan(step, (x0, optimizer.init(x0)), None, length=steps)
  logits = jax.vmap(lambda xi: tail_fn(params, xi[None])[0])(x)
  return x, logits


def impression_target(model: Any, params: Params, input_shape: Sequence[int],
                      config: ImpressionConfig) -> tuple[ApplyFn, tuple[int, ...], str | None]:
  """``(tail_fn, shape, layer)``: the function impressions maximize, their shape, their stage.

  ``model`` is a Flax module of ``famr_jax.models``, a
  :class:`famr_jax.models.parts.ModelParts` (any model cut by the user), or,
  for pixel space only, a plain ``apply_fn(params, x) -> logits``. The
  returned function is the same object on every call with the same model, so
  the compiled optimization is reused.

  Raises:
    FamrError: unknown layer, or activation space without a layered model or parts.

  Example:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda p, x: x.reshape(len(x), -1) @ p
    >>> fn, shape, layer = impression_target(apply_fn, jnp.ones((4, 2)), (2, 2, 1),
    ...                                      ImpressionConfig(space="pixel"))
    >>> fn is apply_fn, shape, layer
    (True, (2, 2, 1), None)
  """
  from famr_jax import models   # local: models imports nothing from here

  input_shape = tuple(int(s) for s in input_shape)
  if config.space == "pixel":
    if isinstance(model, ModelParts):
      return model.apply_fn, input_shape, None
    return (models.make_apply_fn(model) if is_layered_model(model) else model), input_shape, None
  if not (isinstance(model, ModelParts) or is_layered_model(model)):
    raise FamrError("activation-space impressions need a model with named layers or ModelParts "
                    "(famr_jax.models.parts: linen_parts, nnx_parts, or your own head_fn and tail_fn), "
                    "or use the pixel space")
  parts = as_parts(model, params, config.layer)
  if parts.head_fn is identity_head:
    raise FamrError("activation-space impressions need a model cut into a head and a tail "
                    "(these parts have no head); use the pixel space")
  shape = jax.eval_shape(parts.head_fn, params, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  return parts.tail_fn, tuple(shape.shape[1:]), parts.layer


# One jitted function for every call: with the same tail_fn (memoized by the
# model builders) and shapes, a second call compiles nothing.
_OPTIMIZE = jax.jit(optimize_impressions,
                    static_argnames=("tail_fn", "steps", "lr", "beta", "lower", "upper", "log_softmax"))


def class_impressions(model: Any, params: Params, classes: Sequence[int], num_classes: int,
                      input_shape: Sequence[int], config: ImpressionConfig,
                      key: jax.Array) -> ImpressionSet:
  """Class impressions of ``classes``, all optimized at once; keeps those classified as their target.

  Args:
    model: a Flax module of ``famr_jax.models`` (any space), a
      :class:`famr_jax.models.parts.ModelParts` (any space: activation
      impressions at the input of its tail), or a plain
      ``apply_fn(params, x) -> logits`` (pixel space only).
    params: the trained model's params.
    classes: the classes to make impressions for.
    num_classes: the model's number of classes.
    input_shape: ``(H, W, C)`` of the model's inputs.
    config: an :class:`ImpressionConfig`.
    key: PRNG key of the starting noise.

  Returns:
    An :class:`ImpressionSet` (possibly with fewer than ``num_per_class``
    kept per class; check ``kept_per_class``).

  Raises:
    FamrError: bad classes, layer or setting.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> apply_fn = lambda p, x: x.reshape(len(x), -1) @ p
    >>> w = jnp.array([[2.0, -1.0], [-1.0, 2.0]])
    >>> s = class_impressions(apply_fn, w, [0, 1], 2, (1, 2, 1),
    ...                       ImpressionConfig(num_per_class=3, steps=50, space="pixel"),
    ...                       jax.random.key(0))
    >>> s.kept_per_class.tolist(), s.labels.tolist()
    ([3, 3], [0, 0, 0, 1, 1, 1])
  """
  config.validate()
  classes = _check_classes(classes, num_classes)
  tail_fn, shape, layer = impression_target(model, params, input_shape, config)
  n = config.num_per_class
  targets = jnp.asarray(np.repeat(np.asarray(classes, np.int32), n))   # NumPy: no eager XLA compiles
  if config.space == "pixel":
    low, high = (float(v) for v in config.input_range)
    # Uniform noise over the input range (Mopuri et al. start from noise images).
    x0 = jax.random.uniform(key, (len(targets), *shape), jnp.float32, low, high)
    lower, upper = low, high
  else:
    x0 = xavier_normal_std(shape) * jax.random.normal(key, (len(targets), *shape), jnp.float32)
    lower, upper = (0.0 if config.nonnegative else None), None

  run = _OPTIMIZE
  kwargs = dict(tail_fn=tail_fn, steps=config.steps, lr=float(config.lr), beta=float(config.norm_penalty),
                lower=lower, upper=upper, log_softmax=config.objective == "log_softmax")
  t0 = time.perf_counter()
  compiled = run.lower(params=params, targets=targets, x0=x0, **kwargs).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  x, logits = jax.block_until_ready(compiled(params=params, targets=targets, x0=x0))
  run_s = time.perf_counter() - t0

  x, logits, targets = np.asarray(x), np.asarray(logits), np.asarray(targets)
  keep = (np.argmax(logits, -1) == targets) & np.all(np.isfinite(logits), -1)
  kept = np.array([int(np.sum(keep[targets == c])) for c in classes], np.int64)
  return ImpressionSet(inputs=x[keep], labels=targets[keep].astype(np.int32), logits=logits[keep],
                       classes=classes, kept_per_class=kept, num_per_class=n, space=config.space,
                       layer=layer, compile_s=compile_s, run_s=run_s)


def impression_grid(impressions: ImpressionSet, *, max_per_class: int = 10,
                    input_range: tuple[float, float] = (0.0, 1.0), pad: int = 1) -> np.ndarray:
  """A uint8 image: one row per class, up to ``max_per_class`` pixel-space impressions each.

  Rows of classes with fewer kept impressions are left black.

  Raises:
    FamrError: the impressions are not images (activation space).

  Example:
    >>> import numpy as np
    >>> s = ImpressionSet(np.ones((2, 4, 4, 1), np.float32), np.array([0, 1]), np.zeros((2, 2)),
    ...                   (0, 1), np.array([1, 1]), 1, "pixel", None, 0.0, 0.0)
    >>> impression_grid(s).shape    # 2 rows of one 4x4 image, 1-pixel borders
    (11, 6)
  """
  if impressions.space != "pixel" or impressions.inputs.ndim != 4:
    raise FamrError("only pixel-space impressions are images; these are activations")
  _, h, w, channels = impressions.inputs.shape
  if channels not in (1, 3):
    raise FamrError(f"cannot draw impressions with {channels} channels (need 1 or 3)")
  low, high = input_range
  cols = max(1, min(max_per_class, int(impressions.kept_per_class.max(initial=0))))
  rows = len(impressions.classes)
  grid = np.zeros((pad + rows * (h + pad), pad + cols * (w + pad), channels), np.uint8)
  for r, c in enumerate(impressions.classes):
    images = impressions.inputs[impressions.labels == c][:cols]
    scaled = np.clip((images - low) / (high - low), 0.0, 1.0)
    for j, image in enumerate((255 * scaled + 0.5).astype(np.uint8)):
      top, left = pad + r * (h + pad), pad + j * (w + pad)
      grid[top:top + h, left:left + w] = image
  return grid[..., 0] if channels == 1 else grid


def save_impression_grid(impressions: ImpressionSet, path: str | os.PathLike, *,
                         max_per_class: int = 10, input_range: tuple[float, float] = (0.0, 1.0),
                         scale: int = 4) -> None:
  """Writes :func:`impression_grid` as a PNG (one row per class), enlarged ``scale`` times.

  Example:
    >>> import numpy as np, tempfile, os
    >>> s = ImpressionSet(np.ones((2, 4, 4, 1), np.float32), np.array([0, 1]), np.zeros((2, 2)),
    ...                   (0, 1), np.array([1, 1]), 1, "pixel", None, 0.0, 0.0)
    >>> p = os.path.join(tempfile.mkdtemp(), "grid.png")
    >>> save_impression_grid(s, p)
    >>> open(p, "rb").read(4) == b"\\x89PNG"
    True
  """
  from PIL import Image  # pillow comes with matplotlib

  grid = impression_grid(impressions, max_per_class=max_per_class, input_range=input_range)
  image = Image.fromarray(grid)
  if scale > 1:
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
  image.save(os.fspath(path), format="PNG")
