"""The :class:`Dataset` record: train and test arrays of one image-classification data set.

:mod:`famr_jax.data.datasets` loads one from a spec; :meth:`Dataset.from_arrays` makes one from your arrays.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from famr_jax.errors import FamrError


class Dataset(NamedTuple):
  """Train and test arrays of one image-classification data set."""
  name: str                  # canonical spec: "digits", "idx:/abs/dir", ...
  x_train: np.ndarray        # float32, (N, H, W, C), values in [0, 1]
  y_train: np.ndarray        # int32, values in [0, num_classes)
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C)
  class_names: tuple[str, ...]

  @classmethod
  def from_arrays(cls, x_train: Any, y_train: Any, x_test: Any, y_test: Any, *, num_classes: int | None = None,
                  class_names: Sequence[str] | None = None, name: str = "arrays") -> "Dataset":
    """A Dataset from your own arrays, validated (float images ``(N, H, W, C)`` in [0, 1], int labels).

    Args:
      x_train, y_train, x_test, y_test: images ``(N, H, W, C)`` (or ``(N, H, W)``: one channel) and
        integer labels ``(N,)``.
      num_classes: default ``max(label) + 1`` over both splits.
      class_names: one name per class (default ``"0"``, ``"1"``, ...).
      name: what reports call the data set.

    Raises:
      FamrError: mismatched lengths or image shapes, non-float or non-finite images, labels outside
        ``[0, num_classes)``, a wrong number of class names.

    Example:
      >>> x = np.zeros((4, 2, 2), np.float32); y = np.array([0, 1, 2, 1])
      >>> d = Dataset.from_arrays(x, y, x[:2], y[:2], class_names=["a", "b", "c"])
      >>> d.x_train.shape, d.num_classes, d.image_shape, d.class_names
      ((4, 2, 2, 1), 3, (2, 2, 1), ('a', 'b', 'c'))
    """
    from famr_jax.validation import check_images, check_labels
    xs, ys = [], []
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
      x = check_images(x, f"x_{split}")
      if x.ndim == 3:
        x = x[..., None]
      if x.ndim != 4:
        raise FamrError(f"x_{split} must be images (N, H, W, C) or (N, H, W), got shape {x.shape}")
      y = check_labels(y, None, f"y_{split}")
      if len(x) != len(y):
        raise FamrError(f"x_{split} holds {len(x)} images but y_{split} {len(y)} labels")
      xs.append(x), ys.append(y)
    if xs[0].shape[1:] != xs[1].shape[1:] and len(xs[1]):
      raise FamrError(f"x_train images are {xs[0].shape[1:]} but x_test images {xs[1].shape[1:]}")
    if not len(xs[0]):
      raise FamrError("x_train holds no images")
    top = int(max(int(ys[0].max()), int(ys[1].max()) if len(ys[1]) else 0)) + 1
    if num_classes is None:
      num_classes = len(class_names) if class_names is not None else top
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
      raise FamrError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if top > num_classes:
      raise FamrError(f"labels go up to {top - 1} but num_classes is {num_classes}")
    names = tuple(str(c) for c in range(num_classes)) if class_names is None else tuple(map(str, class_names))
    if len(names) != num_classes:
      raise FamrError(f"class_names lists {len(names)} names for {num_classes} classes")
    return cls(name, xs[0], ys[0], xs[1], ys[1], int(num_classes), tuple(int(d) for d in xs[0].shape[1:]), names)
