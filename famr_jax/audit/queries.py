"""Augmented queries: the audit's statistic averaged over label-preserving views of each forget example.

A membership attack that queries each example once sees one draw of the model's confidence on it; querying
augmented copies (Carlini et al. 2022, LiRA's "augmentations") averages away part of the model's
view-to-view noise. :func:`augmented_views` makes the views: the example itself, then per option

* ``"flip"``: the horizontal mirror image (only where a mirrored example keeps its label: natural images,
  not digits or text);
* ``"shift"``: the example translated by one pixel up, down, left and right, zero-filled (four views).

The audit (:class:`famr_jax.audit.shadows.AuditConfig` ``queries``) takes the mean over the views of the
challenge's logit-scaled confidence as the statistic of each (model, forget example).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from famr_jax.errors import FamrError

QUERIES = ("flip", "shift")


def check_queries(queries: Sequence[str]) -> tuple[str, ...]:
  """The validated tuple of query options (each at most once).

  Example:
    >>> check_queries(["shift"])
    ('shift',)
  """
  if isinstance(queries, str):
    queries = (queries,)
  queries = tuple(queries)
  bad = [q for q in queries if q not in QUERIES]
  if bad or len(set(queries)) != len(queries):
    raise FamrError(f"queries must be distinct options among {', '.join(QUERIES)}, got {list(queries)}")
  return queries


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
  out = np.zeros_like(x)
  h, w = x.shape[1], x.shape[2]
  out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
      x[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
  return out


def augmented_views(x: np.ndarray, queries: Sequence[str]) -> list[np.ndarray]:
  """The views of NHWC images ``x``: ``x`` itself first, then a mirror (``"flip"``) and four one-pixel
  translations (``"shift"``: down, up, right, left, zero-filled).

  Example:
    >>> x = np.arange(6.0).reshape(1, 2, 3, 1)
    >>> [v[0, :, :, 0].tolist() for v in augmented_views(x, ["flip"])]
    [[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], [[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]]
    >>> augmented_views(x, ["shift"])[3][0, :, :, 0].tolist()   # one pixel to the right
    [[0.0, 0.0, 1.0], [0.0, 3.0, 4.0]]
  """
  queries = check_queries(queries)
  x = np.asarray(x)
  if x.ndim != 4:
    raise FamrError(f"augmented queries need NHWC images, got an array of shape {x.shape}")
  views = [x]
  if "flip" in queries:
    views.append(x[:, :, ::-1])
  if "shift" in queries:
    views += [_shift(x, dy, dx) for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))]
  return views
