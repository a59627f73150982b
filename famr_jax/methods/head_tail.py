"""The frozen head and trainable tail of the zero-shot methods, for any model.

:func:`split_model` cuts a model into :class:`famr_jax.models.parts.ModelParts`
(a famr-jax model at a named stage, a Linen or NNX module or a plain function
through the parts the user built, or a plain ``apply_fn`` with no cut);
:func:`first_responsive_layer` finds where class impressions of every class
can be made; :func:`infer_input_shape` reads a famr-jax model's input shape
off its params (the registry's data-free adapters need it).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.errors import FamrError
from famr_jax.methods.impressions import ImpressionConfig, class_impressions
from famr_jax.models.parts import ModelParts, as_parts, is_layered_model

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]

HeadTailSplit = ModelParts
"""The result of :func:`split_model`: a :class:`famr_jax.models.parts.ModelParts`."""


def last_layer(model: Any) -> str:
  """The model's last stage (the default tail: ``fc3`` of LeNet5, ``fc`` of KarpathyNet).

  Example:
    >>> from famr_jax import models
    >>> last_layer(models.create_model("lenet5", 10, (28, 28, 1)))
    'fc3'
  """
  from famr_jax import models
  return models.layer_names(model)[-1]


def split_model(model: Any, params: Params, layer: str | None) -> ModelParts:
  """Splits ``model`` at ``layer`` into a frozen head and a trainable tail.

  For a famr-jax model the tail is the model's own stages from ``layer`` on
  (ReLUs included), not a copy. The head is frozen by the mask (an optimizer
  wrapped in ``freeze_outside(opt, mask)`` gives its params exactly zero updates).

  Args:
    model: a Flax module of ``famr_jax.models``; a
      :class:`famr_jax.models.parts.ModelParts` (e.g. from
      :func:`famr_jax.models.parts.linen_parts` or
      :func:`famr_jax.models.parts.nnx_parts`), returned as is; or a plain
      ``apply_fn(params, x) -> logits`` (then ``layer`` must be ``None`` and
      the whole model is the tail).
    params: the model's params.
    layer: the first stage of the tail; ``None`` means the last stage for a
      famr-jax model, the parts' own cut for parts.

  Raises:
    FamrError: unknown layer, or a layer that leaves an empty tail.

  Example:
    >>> import jax
    >>> from famr_jax import models
    >>> model = models.create_model("lenet5", 10, (28, 28, 1))
    >>> params = models.init_params(model, jax.random.key(0), (28, 28, 1))
    >>> split = split_model(model, params, "fc2")
    >>> split.trainable_mask["fc1"]["kernel"], split.trainable_mask["fc2"]["kernel"]
    (False, True)
  """
  return as_parts(model, params, layer)


class ResponsiveLayers(NamedTuple):
  """Result of :func:`first_responsive_layer`.

  Attributes:
    layer: the first responsive stage (``None`` if no stage is responsive).
    success: ``{stage: [per-class fraction of impressions classified as their target]}``.
    threshold: the fraction every class had to reach.
  """
  layer: str | None
  success: dict[str, list[float]]
  threshold: float


def first_responsive_layer(model: Any, params: Params, num_classes: int, input_shape: Sequence[int],
                           key: jax.Array, *, num_per_class: int = 20, steps: int = 200,
                           lr: float = 0.1, threshold: float = 0.9,
                           candidates: Sequence[str] | None = None) -> ResponsiveLayers:
  """The first stage whose input admits class impressions of *every* class, reliably.

  For each candidate stage (default: every stage after the first, in order)
  ``num_per_class`` activation-space impressions of every class are made at
  its input, constrained to ``h >= 0`` when the head's output is
  non-negative (post-ReLU stages: checked on the head's output for random
  inputs, no data needed). The stage is *responsive* when, for every class,
  at least ``threshold`` of its impressions are classified as their target.

  This replaces the authors' test (ERRATA item 4: a hit count out of 10
  compared with 0.8, so a single success anywhere passed) with a per-class
  success *fraction*, so one lucky impression cannot make a stage
  responsive and one unreachable class makes it unresponsive. Note that
  responsiveness says where impressions *can* be made, not where unlearning
  works best: on LeNet5 every dense stage is responsive, yet only the last
  one keeps the retained classes (notes/impressions.md).

  Args:
    model: a Flax module of ``famr_jax.models``.
    params: its params.
    num_classes: number of classes.
    input_shape: ``(H, W, C)`` of the model's inputs.
    key: PRNG key.
    num_per_class: impressions per class and stage.
    steps: Adam steps per impression.
    lr: Adam learning rate.
    threshold: per-class success fraction a stage needs, in ``(0, 1]``.
    candidates: stages to test, in order (default: all but the first).

  Returns:
    A :class:`ResponsiveLayers`.

  Example:
    >>> import jax
    >>> from famr_jax import models
    >>> model = models.create_model("mlp", 3, (2, 2, 1), hidden=(8,))
    >>> params = models.init_params(model, jax.random.key(0), (2, 2, 1))
    >>> r = first_responsive_layer(model, params, 3, (2, 2, 1), jax.random.key(1),
    ...                            num_per_class=4, steps=50)
    >>> r.layer, len(r.success["head"])
    ('head', 3)
  """
  from famr_jax import models

  if not is_layered_model(model):
    raise FamrError("finding a responsive layer needs a model with named layers (pass the Flax module)")
  if not 0.0 < threshold <= 1.0:
    raise FamrError(f"the responsiveness threshold must lie in (0, 1], got {threshold}")
  names = models.layer_names(model)
  candidates = tuple(candidates) if candidates is not None else names[1:]
  success: dict[str, list[float]] = {}
  first = None
  for i, layer in enumerate(candidates):
    split = split_model(model, params, layer)   # validates the layer
    nonneg = head_output_is_nonnegative(split.head_fn, params, input_shape, jax.random.fold_in(key, 10_000 + i))
    config = ImpressionConfig(num_per_class=num_per_class, steps=steps, lr=lr, space="activation",
                              layer=layer, nonnegative=nonneg)
    imp = class_impressions(model, params, range(num_classes), num_classes, input_shape, config,
                            jax.random.fold_in(key, i))
    success[layer] = [float(k) / num_per_class for k in imp.kept_per_class]
    if first is None and min(success[layer]) >= threshold:
      first = layer
  return ResponsiveLayers(first, success, threshold)


def head_output_is_nonnegative(head_fn: ApplyFn, params: Params, input_shape: Sequence[int],
                               key: jax.Array, num_samples: int = 64) -> bool:
  """Whether the head's output is ``>= 0`` on random inputs in ``[0, 1]`` (e.g. it ends in a ReLU).

  Data-free: uses uniform noise images only.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> head_output_is_nonnegative(lambda p, x: jax.nn.relu(x - 0.5), None, (2, 2, 1), jax.random.key(0))
    True
  """
  x = jax.random.uniform(key, (num_samples, *tuple(input_shape)), jnp.float32)
  # One compiled forward pass (run eagerly, every primitive of the head compiled separately).
  h = np.asarray(jax.jit(head_fn)(params, x))
  x = np.asarray(x)
  is_input = h.shape == x.shape and bool(np.all(h == x))   # no head: the pixels themselves
  return bool(np.all(h >= 0)) and not is_input


def infer_input_shape(model: Any, params: Params, max_side: int = 4096) -> tuple[int, int, int]:
  """The square ``(S, S, C)`` input shape a model's params were made for, from the params alone.

  Data-free: only parameter *shapes* are used. ``C`` is the first 4-D
  kernel's input channels (conv or patch embedding), else 1 or 3 for a net
  that starts with a dense layer. ``S`` is the smallest side whose
  ``init_params`` gives exactly these shapes (a binary search on the param
  count, which grows with the side; ViTs read it off the position
  embeddings). The smallest is the canonical one where pooling floors make
  several sides equivalent (LeNet5: 28 and 29).

  Raises:
    FamrError: no square input shape matches.

  Example:
    >>> import jax
    >>> from famr_jax import models
    >>> model = models.create_model("lenet5", 10, (28, 28, 1))
    >>> infer_input_shape(model, models.init_params(model, jax.random.key(0), (28, 28, 1)))
    (28, 28, 1)
  """
  from famr_jax import models

  if not is_layered_model(model):   # model parts or a plain function: no layers to read a shape off
    raise FamrError(f"cannot infer the input shape of a {type(model).__name__} (only of a famr_jax.models "
                    "model): pass input_shape=(H, W, C)")
  target = jax.tree.map(lambda a: tuple(np.shape(a)), params)
  kernels = [np.shape(a) for a in jax.tree.leaves(params[models.layer_names(model)[0]]) if np.ndim(a) == 4]
  channels = (kernels[0][2],) if kernels else (1, 3)

  def shapes(side, c):
    try:
      abstract = jax.eval_shape(lambda k: models.init_params(model, k, (side, side, c)), jax.random.key(0))
    except Exception:  # a side the architecture cannot take (e.g. not a multiple of the patch)
      return None
    return jax.tree.map(lambda a: tuple(a.shape), abstract)

  def count(tree):
    return sum(int(np.prod(s)) for s in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, tuple)))

  embed = params.get("embed", {}) if isinstance(params, dict) else {}
  for c in channels:
    if "pos_embedding" in embed and "patch" in embed:    # ViT: side = patch * sqrt(tokens)
      patch = np.shape(embed["patch"]["kernel"])[0]
      tokens = np.shape(embed["pos_embedding"])[1] - 1
      side = int(round(np.sqrt(tokens))) * patch
      candidates = [side]
    else:
      lo, hi, want = 1, max_side, count(target)
      while lo < hi:                                       # smallest side with count >= want
        mid = (lo + hi) // 2
        got = shapes(mid, c)
        if got is not None and count(got) >= want:
          hi = mid
        else:
          lo = mid + 1
      candidates = [lo]
    for side in candidates:
      if shapes(side, c) == target:
        return (side, side, int(c))
  raise FamrError(f"cannot infer the input shape of this {type(model).__name__} from its params; "
                  "pass input_shape explicitly")

