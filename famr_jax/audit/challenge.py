"""The NeurIPS 2023 machine unlearning challenge's forgetting score, exactly as its organizers compute it.

Source: ``google-deepmind/unlearning_evaluation`` (commit ffae0ff), ``metric.py``
(``compute_logit_scaled_confidence``, ``_get_single_threshold_rates``,
``_get_double_threshold_rates``, ``_get_epsilons``,
``compute_forget_score_from_confs``), called by its ``main.py`` on
``[models, forget examples]`` arrays of logit-scaled confidences of the
unlearned and of the retrained models. This module is an independent,
vectorised NumPy re-implementation (no loop over examples, thresholds or
models); ``tests/test_challenge.py`` compares it with the reference.

Definitions (per forget example, ``N`` unlearned and ``N`` retrained values):

* **Statistic** (:func:`challenge_confidence`): ``log(p_y + 1e-45) - log(sum_{j != y} p_j + 1e-45)``
  from the softmax of the max-shifted logits (exponentiated in the logits'
  dtype, normalised in float64). The ``1e-45`` floor bounds it to about
  ``+-103.6``, unlike the unfloored :func:`famr_jax.audit.attacks.logit_confidence`.
* **Positive group**: the retrained group if its median is strictly larger, else the unlearned one.
* **Peakiness rule**: if the smaller of the two groups' ranges (max - min) is
  under 1% of the larger, the example's epsilon is the cap, 50.
* **Single-threshold rules**: ``ceil(100 * range)`` thresholds evenly from the
  min to the max of both groups (float32, exactly as ``torch.linspace`` on
  CPU); "positive iff value >= t".
* **Interval rules**: "positive" is now the group of smaller range (the
  peakier; the retrained/unlearned one with the larger median on a tie of
  ranges is swapped out), ``w`` its range; right ends ``r`` evenly on
  ``[min + w - 2, max + 2]`` of the peakier group (``ceil(100 * 4)`` points,
  float64), and for each ``r`` 400 left ends on ``[r - w - 2, r - w + 2]``;
  "positive iff l <= value <= r".
* **Epsilon of a rule**: with the rates in float32, ``inf`` if FPR = FNR = 0;
  discarded if exactly one of them is 0; else ``max(0, nanmax(log(1 - delta -
  FPR) - log FNR, log(1 - delta - FNR) - log FPR))`` (discarded when both
  terms are NaN), ``delta = 1e-5``. The example's epsilon: the max over
  the kept rules, clipped to ``[0, 50]``.
* **Score** (:func:`score_from_epsilons`): ``max_eps = ceil(log(N - 1))``;
  buckets ``[0, .5), [.5, 1), ...`` up to ``max_eps`` worth ``1, 1/2, 1/4,
  ...``; an epsilon at or over ``max_eps`` scores 0; the mean over examples.

Deviations, each where the reference cannot answer: the reference raises when
every rule of an example is discarded (``np.nanmax`` of nothing; two constant
groups of one value): that example's epsilon here is 0 (no rule tells them
apart). Its ``assert thr_eps`` on an array raises for any example with more
than one kept rule (the opt-in test runs it with asserts compiled out). Its
rates come from ``torch.mean`` on CPU (``count / N`` in float32, correctly
rounded); on CUDA ``mean`` multiplies by ``1 / N``, which can differ in the
last float32 bit when ``N`` is not a power of two.
"""

from __future__ import annotations

import numpy as np

from famr_jax.errors import FamrError

DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
INTERVAL_BUFFER = 2.0
PEAKY_RATIO = 0.01
BUCKET_WIDTH = 0.5
_FLOOR = 1e-45
_LEFT_ENDS = int(np.ceil(2 * INTERVAL_BUFFER * THRESHOLDS_PER_UNIT))   # 400 left ends per right end


def challenge_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """The challenge's logit-scaled confidence ``[...]`` (float64) from logits ``[..., C]`` and labels ``[...]``.

  Example:
    >>> round(float(challenge_confidence(np.array([[2.0, 0.0]]), np.array([0]))[0]), 4)
    2.0
    >>> round(float(challenge_confidence(np.array([[0.0, -np.inf]]), np.array([0]))[0]), 1)   # floored
    103.6
  """
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
    raise FamrError(f"logits must be [..., classes] and labels [...], got {logits.shape} and {labels.shape}")
  if not np.issubdtype(logits.dtype, np.floating):
    logits = logits.astype(np.float64)
  flat = logits.reshape(-1, logits.shape[-1])
  top = np.max(flat, axis=1, keepdims=True)
  if not np.isfinite(top).all() or np.isnan(flat).any():
    raise FamrError("every example's logits need a finite largest entry and no NaN (-inf entries are fine)")
  flat = flat - top
  probs = np.array(np.exp(flat), dtype=np.float64)
  probs /= np.sum(probs, axis=1, keepdims=True)
  rows, y = np.arange(len(flat)), labels.reshape(-1)
  correct = probs[rows, y]
  probs[rows, y] = 0.0
  wrong = np.sum(probs, axis=1)
  return (np.log(correct + _FLOOR) - np.log(wrong + _FLOOR)).reshape(labels.shape)


def max_epsilon(num_models: int) -> float:
  """The challenge's largest scoreable epsilon for ``num_models`` models per group: ``ceil(log(N - 1))``.

  Example:
    >>> max_epsilon(512), max_epsilon(64), max_epsilon(16)
    (7.0, 5.0, 3.0)
  """
  with np.errstate(divide="ignore"):
    return float(np.ceil(np.log(num_models - 1))) if num_models >= 1 else float("-inf")


def score_from_epsilons(eps: np.ndarray, num_models: int) -> float:
  """The challenge's bucketed score of per-example epsilons ``[S]`` for ``num_models`` models per group.

  Example:
    >>> score_from_epsilons(np.array([0.0, 0.7, 2.9, 3.0]), 16)   # points 1, 1/2, 1/32, 0
    0.3828125
  """
  eps = np.asarray(eps, np.float64)
  if eps.ndim != 1 or eps.size == 0:
    raise FamrError(f"epsilons must be a non-empty [examples] array, got shape {eps.shape}")
  top = max_epsilon(num_models)
  buckets = int(top / BUCKET_WIDTH) if top >= BUCKET_WIDTH else 0
  k = np.floor(eps / BUCKET_WIDTH)
  points = np.where(k < buckets, 0.5 ** np.minimum(k, 1e4), 0.0)
  return float(np.sum(points) / eps.size)


def _validate(unlearned, retrained) -> tuple[np.ndarray, np.ndarray]:
  u, r = np.asarray(unlearned, np.float64), np.asarray(retrained, np.float64)
  if u.ndim != 2 or u.shape != r.shape:
    raise FamrError(f"unlearned and retrained confidences must be [models, examples] of one shape, got "
                    f"{u.shape} and {r.shape}")
  if u.shape[0] < 2 or u.shape[1] < 1:
    raise FamrError(f"the challenge's score needs at least 2 models and 1 example, got {u.shape}")
  if not (np.isfinite(u).all() and np.isfinite(r).all()):
    raise FamrError("the challenge's score needs finite confidences (challenge_confidence never gives infinities)")
  return u, r


def _count_at_most(grid_fn, size: int, values: np.ndarray) -> np.ndarray:
  """``#{j < size : grid(j) <= v}`` for every ``v`` of ``values`` (batched binary search; grid non-decreasing)."""
  lo = np.zeros(values.shape, np.int64)
  hi = np.full(values.shape, size, np.int64)
  for _ in range(int(np.ceil(np.log2(size + 1))) + 1):
    mid = (lo + hi) // 2
    right = (lo < hi) & (grid_fn(np.minimum(mid, size - 1)) <= values)
    lo, hi = np.where(right, mid + 1, lo), np.where(right | (lo >= hi), hi, mid)
  return lo


def _counts_below(positions: np.ndarray, size: int) -> np.ndarray:
  """From ``J[..., k]`` (each value's count of grid points at or below it): ``#{k : J <= j}`` ``[..., size]``.

  That is the number of values strictly below grid point ``j`` (``v < g_j`` iff ``J(v) <= j``).
  """
  lead = positions.shape[:-1]
  cells = int(np.prod(lead)) if lead else 1
  flat = np.arange(cells).reshape(lead + (1,)) * (size + 1) + positions
  hist = np.bincount(flat.ravel(), minlength=cells * (size + 1)).reshape(lead + (size + 1,))
  return np.cumsum(hist, axis=-1)[..., :size]


def _torch_linspace_f32(start: np.ndarray, stop: np.ndarray, num: np.ndarray, width: int) -> np.ndarray:
  """``torch.linspace(start, stop, num)`` (float32, CPU) per row, padded with +inf to ``width`` columns.

  Torch's CPU kernel: float32 ends and step ``(stop - start) / (num - 1)``; the first half counts up from
  ``start``, the rest down from ``stop``, each point one fused multiply-add (a single rounding), here
  evaluated in extended precision and rounded once to float32 (checked against torch in the tests).
  """
  s32, e32 = start.astype(np.float32)[:, None], stop.astype(np.float32)[:, None]
  n = num[:, None]
  with np.errstate(divide="ignore", invalid="ignore"):
    step = ((e32 - s32) / np.maximum(n - 1, 1).astype(np.float32)).astype(np.longdouble)
  idx = np.arange(width)[None, :]
  low = s32.astype(np.longdouble) + step * idx
  high = e32.astype(np.longdouble) - step * (n - idx - 1)
  grid = np.where(idx < n // 2, low, high).astype(np.float32)
  grid = np.where(n == 1, s32, grid)
  return np.where(idx < n, grid, np.float32(np.inf))


def _epsilon_of_rates(fpr: np.ndarray, fnr: np.ndarray, valid: np.ndarray, delta: float) -> np.ndarray:
  """Per-rule epsilon (float32, NaN for a discarded rule) from float32 rates, as the reference."""
  one_minus = np.float32(1 - delta)
  with np.errstate(divide="ignore", invalid="ignore"):
    e1 = np.log(one_minus - fpr) - np.log(fnr)
    e2 = np.log(one_minus - fnr) - np.log(fpr)
    eps = np.clip(np.fmax(e1, e2), 0, None)
  both_zero, one_zero = (fpr == 0) & (fnr == 0), (fpr == 0) ^ (fnr == 0)
  eps = np.where(both_zero, np.float32(np.inf), np.where(one_zero, np.float32(np.nan), eps))
  return np.where(valid, eps, np.float32(np.nan))


def _rates(count: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
  """``(count / n, (n - count) / n)`` in float32, as ``torch.mean`` of float32 indicators on CPU."""
  return (count.astype(np.float32) / np.float32(n)), ((n - count).astype(np.float32) / np.float32(n))


def _single_threshold_epsilons(pos: np.ndarray, neg: np.ndarray, delta: float) -> np.ndarray:
  """Per example, the max epsilon ``[S]`` of the single-threshold rules (NaN: none kept)."""
  n = pos.shape[0]
  both = np.concatenate([pos, neg])
  lo, hi = both.min(0), both.max(0)
  num = np.ceil((hi - lo) * THRESHOLDS_PER_UNIT).astype(np.int64)
  width = max(int(num.max()), 1)
  grid = _torch_linspace_f32(lo, hi, num, width).astype(np.float64)       # [S, T]
  rows = np.arange(pos.shape[1])[:, None]
  at_most = lambda v: _count_at_most(lambda j: grid[rows, j], width, v)
  pos_below = _counts_below(at_most(pos.T), width)                         # #(pos < t) [S, T]
  neg_below = _counts_below(at_most(neg.T), width)
  fnr, tpr = _rates(pos_below, n)
  tnr, fpr = _rates(neg_below, n)
  valid = np.arange(width)[None, :] < num[:, None]
  eps = _epsilon_of_rates(fpr, fnr, valid, delta)
  return np.max(np.where(np.isnan(eps), -np.inf, eps), axis=1)


def _interval_epsilons(pos: np.ndarray, neg: np.ndarray, delta: float) -> np.ndarray:
  """Per example, the max epsilon ``[S]`` of the two-threshold (interval) rules (NaN: none kept)."""
  n = pos.shape[0]
  pos_range, neg_range = pos.max(0) - pos.min(0), neg.max(0) - neg.min(0)
  swap = pos_range >= neg_range
  peaky, broad = np.where(swap, neg, pos), np.where(swap, pos, neg)     # "positive": the peakier group
  w = np.where(pos_range > neg_range, neg_range, pos_range)
  lo = peaky.min(0) + w - INTERVAL_BUFFER
  hi = peaky.max(0) + INTERVAL_BUFFER
  num = np.ceil((hi - lo) * THRESHOLDS_PER_UNIT).astype(np.int64)          # [S], about 400
  width = int(num.max())
  i = np.arange(width)[None, :]
  with np.errstate(divide="ignore", invalid="ignore"):
    step = (hi - lo)[:, None] / (num[:, None] - 1)
  right = np.where(i == num[:, None] - 1, hi[:, None], i * step + lo[:, None])   # np.linspace, per row
  right = np.where(num[:, None] == 1, lo[:, None], right)
  valid_right = i < num[:, None]                                            # [S, R]
  l_start, l_stop = (right - w[:, None]) - INTERVAL_BUFFER, (right - w[:, None]) + INTERVAL_BUFFER
  l_step = (l_stop - l_start) / (_LEFT_ENDS - 1)

  def left(j):   # left end j of each right end, [S, R, N] (np.linspace's arithmetic: j * step + start, end exact)
    return np.where(j == _LEFT_ENDS - 1, l_stop[..., None], j * l_step[..., None] + l_start[..., None])

  def inside(values):   # #(l <= v <= r) [S, R, L] for values [N, S]
    v = values.T[:, None, :]                                                 # [S, 1, N]
    up_to_right = np.sum(v <= right[..., None], axis=-1)                    # [S, R]
    below_left = _counts_below(_count_at_most(left, _LEFT_ENDS, np.broadcast_to(v, right.shape + (n,))),
                               _LEFT_ENDS)                                  # [S, R, L]
    return np.maximum(up_to_right[..., None] - below_left, 0)

  tpr, fnr = _rates(inside(peaky), n)
  fpr, tnr = _rates(inside(broad), n)
  valid = np.broadcast_to(valid_right[..., None], fpr.shape)
  eps = _epsilon_of_rates(fpr, fnr, valid, delta).reshape(len(num), -1)
  return np.nanmax(np.where(np.isnan(eps), -np.inf, eps), axis=1)


def challenge_epsilons(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA, *,
                       chunk: int = 16) -> np.ndarray:
  """Per forget example, the challenge's epsilon ``[S]`` (float64, in ``[0, 50]``) of unlearned vs retrained.

  Args:
    unlearned: ``[N, S]`` challenge confidences (:func:`challenge_confidence`) of the unlearned models.
    retrained: ``[N, S]`` the same under the retrained models.
    delta: the challenge's delta.
    chunk: examples handled at once (memory: about ``chunk * 400 * 400 * N`` bytes).

  Example:
    >>> rng = np.random.default_rng(0)
    >>> r = rng.normal(size=(16, 2)); u = r.copy(); u[:, 1] += 100.0
    >>> challenge_epsilons(u, r).tolist()   # identical: 0; perfectly separated: the cap
    [0.0, 50.0]
  """
  u, r = _validate(unlearned, retrained)
  retrain_positive = np.median(r, axis=0) > np.median(u, axis=0)
  pos, neg = np.where(retrain_positive, r, u), np.where(retrain_positive, u, r)
  pos_range, neg_range = pos.max(0) - pos.min(0), neg.max(0) - neg.min(0)
  largest = np.where(pos_range > neg_range, pos_range, neg_range)
  smallest = np.where(pos_range > neg_range, neg_range, pos_range)
  with np.errstate(divide="ignore", invalid="ignore"):
    peaky = smallest / largest < PEAKY_RATIO
  out = np.zeros(u.shape[1], np.float64)
  for start in range(0, u.shape[1], chunk):
    cols = slice(start, start + chunk)
    best = np.fmax(_interval_epsilons(pos[:, cols], neg[:, cols], delta),
                   _single_threshold_epsilons(pos[:, cols], neg[:, cols], delta))
    out[cols] = np.where(np.isneginf(best), 0.0, best)     # every rule discarded: nothing tells them apart
  out = np.where(peaky, EPSILON_CAP, out)
  return np.clip(out, 0.0, EPSILON_CAP)


def forgetting_quality(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA) -> float:
  """The challenge's forgetting score of ``[N, S]`` unlearned vs retrained confidences (1 best, 0 worst).

  ``N`` (the unlearned group's size) sets the largest scoreable epsilon, ``ceil(log(N - 1))``.

  Example:
    >>> rng = np.random.default_rng(0)
    >>> r = rng.normal(size=(16, 3))
    >>> forgetting_quality(r.copy(), r), forgetting_quality(r + 100.0, r)
    (1.0, 0.0)
  """
  eps = challenge_epsilons(unlearned, retrained, delta)
  return score_from_epsilons(eps, np.shape(unlearned)[0])
