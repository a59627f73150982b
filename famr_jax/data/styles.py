"""Style forget tasks: a visual style applied to a seeded fraction of every class (FAMR's third use case).

The FAMR paper forgets samples, classes and visual *styles* (its Gram loss,
Eq. 3-5). A style is a group of training samples that cuts across classes: a
transform applied to a random fraction of the images of every class
(stratified, so each class keeps the same share). The forget set is the
stylized training images; the gold standard is the model retrained on the
un-stylized rest. Two styles:

* ``invert``: the intensity inversion ``1 - x`` (images lie in [0, 1]);
* ``texture``: a fixed texture ``T`` (diagonal stripes times seeded noise, the
  same for every image) blended in, ``(1 - s) x + s T`` with strength ``s``.

Everything here is NumPy on host arrays; every random choice takes a PRNG key.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from famr_jax.data.forget import ForgetSet, forget_samples
from famr_jax.errors import FamrError

STYLES = ("invert", "texture")
TEXTURE_STRENGTH = 0.5


class StyleTask(NamedTuple):
  """A style forget task built from a data set.

  Attributes:
    data: the data set with the chosen training images stylized (the test set unchanged: clean).
    forget: the forget request: the stylized training images (``kind="samples"``).
    x_test_styled: every test image with the style applied.
    style: the style's name.
    fraction: the stylized share of each class.
  """
  data: object
  forget: ForgetSet
  x_test_styled: np.ndarray
  style: str
  fraction: float


def texture_pattern(key: jax.Array, image_shape: tuple[int, int, int]) -> np.ndarray:
  """The fixed texture of the ``texture`` style: seeded diagonal stripes modulated by seeded noise, in [0, 1].

  The stripe period is a quarter of the image's height (at least 2 pixels),
  its orientation (one of the two diagonals) and phase drawn from ``key``.

  Example:
    >>> import jax
    >>> t = texture_pattern(jax.random.key(0), (8, 8, 1))
    >>> t.shape, bool(t.min() >= 0 and t.max() <= 1)
    ((8, 8, 1), True)
  """
  h, w, c = (int(s) for s in image_shape)
  k_dir, k_phase, k_noise = jax.random.split(key, 3)
  direction = 1.0 if bool(jax.random.bernoulli(k_dir)) else -1.0
  phase = float(jax.random.uniform(k_phase)) * 2.0 * np.pi
  period = max(2.0, h / 4.0)
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  stripes = 0.5 + 0.5 * np.sin(2.0 * np.pi * (rows + direction * cols) / period + phase)
  noise = np.asarray(jax.random.uniform(k_noise, (h, w, c)), np.float64)
  return (stripes[..., None] * (0.5 + 0.5 * noise)).astype(np.float32)


def apply_style(x: np.ndarray, style: str, key: jax.Array) -> np.ndarray:
  """``x`` (``[N, H, W, C]`` in [0, 1]) with ``style`` applied; ``key`` draws the texture (same for every image).

  Example:
    >>> import jax, numpy as np
    >>> apply_style(np.zeros((1, 2, 2, 1), np.float32), "invert", jax.random.key(0)).ravel().tolist()
    [1.0, 1.0, 1.0, 1.0]
  """
  x = np.asarray(x, np.float32)
  if style == "invert":
    return (1.0 - x).astype(np.float32)
  if style == "texture":
    texture = texture_pattern(key, x.shape[1:])
    return ((1.0 - TEXTURE_STRENGTH) * x + TEXTURE_STRENGTH * texture).astype(np.float32)
  raise FamrError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")


def stratified_choice(key: jax.Array, labels: np.ndarray, fraction: float) -> np.ndarray:
  """Sorted indices of a random ``fraction`` of each class (rounded, at least one per class).

  Example:
    >>> import jax, numpy as np
    >>> stratified_choice(jax.random.key(0), np.array([0, 0, 0, 0, 1, 1]), 0.5).size
    3
  """
  labels = np.asarray(labels)
  # One uniform draw per image (one program for any class sizes): a class's chosen images are its
  # ``count`` smallest draws, a uniformly random subset of the class.
  draws = np.asarray(jax.random.uniform(key, (labels.size,)))
  chosen = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    count = max(1, int(round(fraction * members.size)))
    chosen.append(members[np.argsort(draws[members], kind="stable")[:count]])
  return np.sort(np.concatenate(chosen)).astype(np.int64)


def make_style_task(data, style: str, fraction: float, key: jax.Array) -> StyleTask:
  """Stylizes a seeded, per-class stratified ``fraction`` of ``data``'s training images.

  The images not chosen are left byte-identical; the test set stays clean and
  a stylized copy of all of it is returned apart.

  Args:
    data: a :class:`famr_jax.data.datasets.Dataset` (images in [0, 1]).
    style: ``"invert"`` or ``"texture"``.
    fraction: the stylized share of each class, strictly between 0 and 1.
    key: PRNG key: the choice of images and the texture.

  Returns:
    A :class:`StyleTask`.

  Example:
    >>> import jax, numpy as np
    >>> from famr_jax.data.datasets import Dataset
    >>> x, y = np.zeros((20, 2, 2, 1), np.float32), np.repeat(np.arange(2), 10)
    >>> task = make_style_task(Dataset("toy", x, y, x[:4], y[:4], 2, (2, 2, 1), ()), "invert", 0.2,
    ...                        jax.random.key(0))
    >>> task.forget.kind, task.forget.indices.size, float(task.data.x_train[task.forget.indices].min())
    ('samples', 4, 1.0)
  """
  if style not in STYLES:
    raise FamrError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")
  if not 0.0 < float(fraction) < 1.0:
    raise FamrError(f"fraction must lie strictly between 0 and 1, got {fraction}")
  k_choice, k_style = jax.random.split(key)
  chosen = stratified_choice(k_choice, data.y_train, float(fraction))
  forget = forget_samples(chosen, len(data.y_train), data.num_classes)
  x_train = np.array(data.x_train, copy=True)
  x_train[chosen] = apply_style(data.x_train[chosen], style, k_style)
  styled = data._replace(x_train=x_train)
  return StyleTask(styled, forget, apply_style(data.x_test, style, k_style), style, float(fraction))
