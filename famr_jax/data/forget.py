"""Forget requests: which training examples an unlearning method must remove.

A :class:`ForgetSet` is data-set independent bookkeeping (indices into the
training set plus, for class forgetting, the class ids); it is validated once
here so every method and metric can trust it.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, Sequence

import jax
import numpy as np

from famr_jax.errors import FamrError
from famr_jax.validation import MAX_COUNT, Limits, check_classes, check_labels, check_number

_NUM_CLASSES = Limits(1, MAX_COUNT, positive=True)   # at least two classes


class ForgetSet(NamedTuple):
  """A validated forget request.

  Attributes:
    kind: ``"classes"`` (whole classes) or ``"samples"`` (arbitrary training examples).
    classes: the forgotten class ids (empty for ``"samples"``).
    indices: sorted int64 indices of the forgotten training examples.
    num_classes: number of classes of the model.
  """
  kind: Literal["classes", "samples"]
  classes: tuple[int, ...]
  indices: np.ndarray
  num_classes: int

  def retain_mask(self, num_train: int) -> np.ndarray:
    """Boolean mask of the retained training examples."""
    mask = np.ones(num_train, bool)
    mask[self.indices] = False
    return mask

  def describe(self) -> dict:
    """The ``forget`` entry of report.json."""
    return {"kind": self.kind, "classes": list(self.classes),
            "num_forget_train": int(self.indices.size)}


def parse_class_list(text: str) -> tuple[int, ...]:
  """Parses ``"3,5"`` into ``(3, 5)``; a non-integer item is a :class:`FamrError`.

  Example:
    >>> parse_class_list("3, 5")
    (3, 5)
  """
  items = [t.strip() for t in str(text).split(",") if t.strip()]
  try:
    return tuple(int(t) for t in items)
  except ValueError:
    raise FamrError(f"forget classes must be comma-separated integers, got {text!r}") from None


def _check_num_classes(num_classes: int) -> int:
  return int(check_number("num_classes", num_classes, int, _NUM_CLASSES))


def validate_classes(classes: Sequence[int], num_classes: int) -> tuple[int, ...]:
  """Checks a list of forget classes: integers, non-empty, in range, unique, not every class.

  ``3.7``, ``True`` or ``"3"`` are refused, never rounded to a class.

  Example:
    >>> validate_classes([3], 10)
    (3,)
  """
  num_classes = _check_num_classes(num_classes)
  classes = check_classes(classes)
  if not classes:
    raise FamrError("the forget set is empty: name at least one class to forget")
  bad = [c for c in classes if not 0 <= c < num_classes]
  if bad:
    raise FamrError(f"forget classes {bad} are out of range: the model has classes 0..{num_classes - 1}")
  if len(set(classes)) != len(classes):
    dup = sorted({c for c in classes if classes.count(c) > 1})
    raise FamrError(f"forget classes {dup} are listed more than once")
  if len(classes) >= num_classes:
    raise FamrError(f"cannot forget every class ({num_classes} of {num_classes}): at least one must be retained")
  return tuple(sorted(classes))


MAX_NAMES_SHOWN = 20   # an unknown class name lists at most this many known ones


def class_indices(classes: Sequence[int | str], class_names: Sequence[str]) -> tuple[int, ...]:
  """Class ids from ids or class names (``class_names``: a data set's, in id order).

  A name matches exactly, else case-insensitively when that is unique; a string of digits is an id.
  An unknown name is a one-line :class:`FamrError` naming the closest known one and listing them.

  Example:
    >>> class_indices(["Bag", 0, "sneaker"], ("T-shirt", "Bag", "Sneaker"))
    (1, 0, 2)
    >>> class_indices(["Snaker"], ("T-shirt", "Bag", "Sneaker"))
    Traceback (most recent call last):
    ...
    famr_jax.errors.FamrError: unknown class 'Snaker' (did you mean 'Sneaker'?); the classes are T-shirt, Bag, Sneaker
  """
  import difflib
  names = [str(n) for n in class_names]
  out = []
  for c in classes:
    if not isinstance(c, str):
      out.append(c)
      continue
    text = c.strip()
    folded = [i for i, n in enumerate(names) if n.casefold() == text.casefold()]
    if text in names:
      out.append(names.index(text))
    elif len(folded) == 1:
      out.append(folded[0])
    elif text.isdigit():
      out.append(int(text))
    else:
      close = difflib.get_close_matches(text, names, n=1)
      shown = ", ".join(names[:MAX_NAMES_SHOWN]) + (f", ... ({len(names)} classes)" if len(names) > MAX_NAMES_SHOWN
                                                    else "")
      raise FamrError(f"unknown class {text!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                      + f"; the classes are {shown}")
  return tuple(out)


def forget_classes(y_train: np.ndarray, classes: Sequence[int | str], num_classes: int, *,
                   class_names: Sequence[str] | None = None) -> ForgetSet:
  """Forget every training example of the given classes (ids, or names of ``class_names``).

  Example:
    >>> import numpy as np
    >>> fs = forget_classes(np.array([0, 1, 2, 1]), [1], 3)
    >>> fs.indices.tolist(), fs.describe()["num_forget_train"]
    ([1, 3], 2)
    >>> forget_classes(np.array([0, 1, 2, 1]), ["b"], 3, class_names=("a", "b", "c")).classes
    (1,)
  """
  if class_names is not None and not isinstance(classes, (str, bytes)):
    classes = class_indices(classes, class_names)
  classes = validate_classes(classes, num_classes)
  y_train = check_labels(y_train, num_classes, "training labels y_train")
  indices = np.flatnonzero(np.isin(y_train, classes)).astype(np.int64)
  if indices.size == 0:
    raise FamrError(f"no training example belongs to forget classes {list(classes)}")
  return ForgetSet("classes", classes, indices, num_classes)


def forget_samples(indices: Sequence[int], num_train: int, num_classes: int) -> ForgetSet:
  """Forget arbitrary training examples by index.

  Example:
    >>> forget_samples([4, 1], 10, 3).indices.tolist()
    [1, 4]
  """
  num_train = int(check_number("num_train", num_train, int, Limits(0, 2 ** 62, positive=True)))
  _check_num_classes(num_classes)
  idx = np.asarray(indices).reshape(-1)
  if idx.size == 0:
    raise FamrError("the forget set is empty: name at least one sample index")
  if idx.dtype == bool:
    raise FamrError("forget sample indices are booleans (a mask?): pass indices, np.flatnonzero(mask)")
  if not np.issubdtype(idx.dtype, np.integer):
    raise FamrError(f"forget sample indices must be integers, got dtype {idx.dtype}")
  idx = idx.astype(np.int64)
  if idx.min() < 0 or idx.max() >= num_train:
    raise FamrError(f"forget sample indices must lie in 0..{num_train - 1}")
  if np.unique(idx).size != idx.size:
    raise FamrError("forget sample indices contain duplicates")
  if idx.size >= num_train:
    raise FamrError("cannot forget every training sample")
  return ForgetSet("samples", (), np.sort(idx), num_classes)


def forget_random(key: jax.Array, fraction: float, num_train: int, num_classes: int) -> ForgetSet:
  """Forget a uniformly random ``fraction`` of the training set (drawn with ``key``).

  Example:
    >>> import jax
    >>> forget_random(jax.random.key(0), 0.1, 100, 10).indices.size
    10
  """
  check_number("fraction", fraction, float, Limits(-math.inf, math.inf))
  if not 0.0 < float(fraction) < 1.0:
    raise FamrError(f"fraction must lie strictly between 0 and 1, got {fraction}")
  num_train = int(check_number("num_train", num_train, int, Limits(0, 2 ** 62, positive=True)))
  count = max(1, int(round(fraction * num_train)))
  idx = np.asarray(jax.random.choice(key, num_train, (count,), replace=False))
  return forget_samples(idx, num_train, num_classes)
