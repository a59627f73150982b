"""Style forgetting by FAMR's Gram loss (FAMR paper, Eq. 3-5), with a choice of Gram target.

The paper's style loss pulls the Gram matrix of a layer's features on each
forget image towards a target ``G_target`` (Eq. 4); its natural target is the
mean Gram over the retained data, the statistics of the data the model keeps
(``gram_target="retained-mean"``, what :func:`famr_jax.methods.famr.run_famr_task`
uses). A forget image's class changes its Gram too, so a target that ignores
the class pulls every image towards an average digit; ``"class-mean"`` uses
the mean retained Gram of the forget image's own class (legitimate: the
unlearner holds the retained data and the forget set's labels).
:func:`gram_targets` also takes per-example targets from given images (e.g.
the un-stylized versions of the forget images: an *oracle* no unlearner has,
useful only as a bound on what a Gram target can do).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax import losses
from famr_jax.engine.descent import DescentResult, bind_static
from famr_jax.engine.forward import batched_apply
from famr_jax.errors import FamrError
from famr_jax.validation import apply_renamed
from famr_jax.methods.famr import FAMRConfig, famr_unlearn, style_features

Params = Any
FeatureFn = Callable[[Params, jax.Array], jax.Array]
GRAM_TARGETS = ("retained-mean", "class-mean")


@dataclasses.dataclass(frozen=True)
class StyleFAMRConfig(FAMRConfig):
  """:class:`famr_jax.methods.famr.FAMRConfig` plus the Gram target of the style loss.

  ``target`` (this field's name until it was renamed: the variants' ``target``
  is the forget samples' output target) still works as a keyword, with a
  ``DeprecationWarning``.

  Attributes:
    gram_target: ``"retained-mean"`` (the paper's: mean Gram over the retained data) or
      ``"class-mean"`` (the mean retained Gram of each forget image's class).
  """
  gram_target: str = "retained-mean"
  target: dataclasses.InitVar[str | None] = None   # deprecated name of gram_target

  def __post_init__(self, target: str | None = None) -> None:
    apply_renamed(self, {"target": ("gram_target", target)})
    super().__post_init__()

  def validate(self) -> "StyleFAMRConfig":
    """Raises :class:`FamrError` on an invalid setting."""
    super().validate()
    if self.gram_target not in GRAM_TARGETS:
      raise FamrError(f"unknown Gram target {self.gram_target!r}; valid: {', '.join(GRAM_TARGETS)}")
    if self.beta <= 0:
      raise FamrError("style forgetting needs beta > 0 (the weight of the Gram loss)")
    return self


def feature_grams(feature_fn: FeatureFn, params: Params, x: jax.Array) -> jax.Array:
  """``[B, K, K]``: the Gram matrix of each image's ``feature_fn`` features."""
  return losses.gram_matrix(feature_fn(params, x))


def per_example_grams(feature_fn: FeatureFn, params: Params, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """``[N, K, K]`` Gram matrices of ``feature_fn(params, x)``, one per image (chunked by ``batched_apply``).

  Example:
    >>> import numpy as np
    >>> per_example_grams(lambda p, x: x, None, np.ones((3, 2, 2, 4), np.float32)).shape
    (3, 4, 4)
  """
  return np.asarray(batched_apply(bind_static(feature_grams, feature_fn), params,
                                  jnp.asarray(np.asarray(x, np.float32)), batch_size))


def _famr_config(config: FAMRConfig) -> FAMRConfig:
  """The plain :class:`FAMRConfig` part of a style config."""
  return FAMRConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(FAMRConfig)})


def gram_targets(feature_fn: FeatureFn, params: Params, kind: str, *, retain: tuple[np.ndarray, np.ndarray],
                 y_forget: np.ndarray, num_classes: int) -> np.ndarray:
  """The style loss's target: ``[K, K]`` (shared) for ``retained-mean``, ``[N, K, K]`` for ``class-mean``.

  Args:
    feature_fn: the style layer's ``feature_fn(params, x)``.
    params: the original model's params (the targets are fixed before unlearning starts).
    kind: one of :data:`GRAM_TARGETS`.
    retain: the retained training data ``(x, y)``.
    y_forget: the forget images' labels (``class-mean``).
    num_classes: the model's class count.

  Example:
    >>> import numpy as np
    >>> x = np.concatenate([np.zeros((2, 1, 1, 1)), np.ones((2, 1, 1, 1))]).astype(np.float32)
    >>> t = gram_targets(lambda p, x: x, None, "class-mean", retain=(x, np.array([0, 0, 1, 1])),
    ...                  y_forget=np.array([1, 0]), num_classes=2)
    >>> t[:, 0, 0].tolist()
    [1.0, 0.0]
  """
  if kind not in GRAM_TARGETS:
    raise FamrError(f"unknown Gram target {kind!r}; valid: {', '.join(GRAM_TARGETS)}")
  x_r, y_r = retain
  grams = per_example_grams(feature_fn, params, x_r).astype(np.float64)
  shared = grams.mean(axis=0)
  if kind == "retained-mean":
    return shared.astype(np.float32)
  y_r = np.asarray(y_r)
  per_class = np.stack([grams[y_r == c].mean(axis=0) if np.any(y_r == c) else shared for c in range(num_classes)])
  return per_class[np.asarray(y_forget)].astype(np.float32)


def famr_style_unlearn(apply_fn, params: Params, x_forget: np.ndarray, target_grams: np.ndarray,
                       config: FAMRConfig, key: jax.Array, *, feature_fn: FeatureFn,
                       y_forget: np.ndarray | None = None, show_progress: bool = False) -> DescentResult:
  """FAMR with the style loss (Eq. 5) and a shared ``[K, K]`` or per-example ``[N, K, K]`` Gram target.

  :func:`famr_jax.methods.famr.famr_unlearn` itself: per-example targets travel with their images
  through the same engine and objective.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> apply_fn = lambda p, x: x.reshape(len(x), -1) @ p["w"]
    >>> feats = lambda p, x: x.reshape(len(x), -1) @ p["w"]
    >>> x = np.ones((4, 1, 1, 2), np.float32)
    >>> r = famr_style_unlearn(apply_fn, {"w": jnp.eye(2)}, x, np.zeros((4, 2, 2), np.float32),
    ...                        FAMRConfig(epochs=5, lr=0.1, alpha=0.0, beta=1.0), jax.random.key(0), feature_fn=feats)
    >>> r.history[-1]["param_distance"] > 0
    True
  """
  config.validate()
  target_grams = np.asarray(target_grams, np.float32)
  if target_grams.ndim not in (2, 3):
    raise FamrError(f"Gram targets must have shape (K, K) or (N, K, K), got {target_grams.shape}")
  return famr_unlearn(apply_fn, params, np.asarray(x_forget, np.float32), config, key, y_forget=y_forget,
                      feature_fn=feature_fn, target_gram=target_grams, show_progress=show_progress)


def run_style_task(task, config: StyleFAMRConfig) -> DescentResult:
  """The registry's adapter: FAMR with the style loss and ``config.gram_target`` on an ``UnlearnTask``."""
  config.validate()
  feature_fn = style_features(task.model, config.style_layer)
  data, forget = task.data, task.forget
  keep = forget.retain_mask(len(data.y_train))
  idx = forget.indices
  targets = gram_targets(feature_fn, task.params, config.gram_target, retain=(data.x_train[keep], data.y_train[keep]),
                         y_forget=data.y_train[idx], num_classes=forget.num_classes)
  return famr_style_unlearn(task.apply_fn, task.params, data.x_train[idx], targets, _famr_config(config), task.key,
                            feature_fn=feature_fn, y_forget=data.y_train[idx], show_progress=task.show_progress)


def oracle_style_runner(x_forget_clean: np.ndarray) -> Callable:
  """A run function whose per-example targets are the Grams of the given un-stylized forget images.

  Not a legitimate unlearning method: an unlearner asked to forget stylized
  images does not hold their un-stylized versions. It bounds what a Gram
  target can achieve.
  """
  x_forget_clean = np.asarray(x_forget_clean, np.float32)

  def run(task, config: StyleFAMRConfig) -> DescentResult:
    feature_fn = style_features(task.model, config.style_layer)
    idx = task.forget.indices
    if len(x_forget_clean) != idx.size:
      raise FamrError(f"the oracle holds {len(x_forget_clean)} clean images for {idx.size} forget images")
    targets = per_example_grams(feature_fn, task.params, x_forget_clean)
    return famr_style_unlearn(task.apply_fn, task.params, task.data.x_train[idx], targets, _famr_config(config),
                              task.key,
                              feature_fn=feature_fn, y_forget=task.data.y_train[idx],
                              show_progress=task.show_progress)
  return run
