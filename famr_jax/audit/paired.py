"""Paired statistics for a farm of common random numbers: model ``i`` of a row and retrain ``i`` share their
initialisation and data order, so the attack compares each pair, not two pools of models.

With common random numbers (:class:`famr_jax.audit.shadows.AuditConfig` ``paired=True``) most of what makes
two models' confidences on a forget example differ (the initialisation, the minibatch order) is shared by
the pair, and what is left is what the forget set did. The statistic is the per-pair AUC: for pair ``i`` and
forget example ``s``, ``c[i, s] = 1{phi_u[i, s] > phi_r[i, s]} + 1/2 1{phi_u[i, s] == phi_r[i, s]}`` (the AUC
of one unlearned model against its own retrain on that example, ties one half), and the row's paired AUC is
the mean of ``c``; its difference to chance is ``AUC - 0.5``, positive when the unlearned models still
score their forget examples above their retrains.

* **Interval** (:func:`paired_auc_evidence`): a two-way bootstrap drawing pairs and forget examples with
  replacement (:func:`famr_jax.audit.evidence.auc_evidence`'s design, on pairs).
* **Null** (:func:`paired_null`): exchangeability within a pair means each pair may be swapped, which turns
  ``c[i, :]`` into ``1 - c[i, :]``: the draws are the AUCs of random swaps (a sign-flip permutation test)
  of the pairs' credits centred on chance (``c_i - mean_i c_i + 1/2``): under the null the same
  distribution, and under an alternative its spread is the pairs' scatter about their mean (a Rademacher
  wild bootstrap of the mean), not the effect itself, which an uncentred swap would count as noise.
"""

from __future__ import annotations

import numpy as np

from famr_jax.audit.evidence import AucEvidence, draw_counts, as_generator
from famr_jax.errors import FamrError


def pair_credits(phi_u: np.ndarray, phi_r: np.ndarray) -> np.ndarray:
  """``c [N, S]``: 1 where model ``i`` scores example ``s`` above its retrain, 1/2 on a tie, else 0.

  Example:
    >>> pair_credits(np.array([[2.0, 1.0, 0.0]]), np.array([[1.0, 1.0, 3.0]])).tolist()
    [[1.0, 0.5, 0.0]]
  """
  u, r = np.asarray(phi_u, np.float64), np.asarray(phi_r, np.float64)
  if u.ndim != 2 or u.shape != r.shape or min(u.shape) < 1:
    raise FamrError(f"paired statistics need two [models, examples] arrays of one shape, got {u.shape} and "
                    f"{r.shape}")
  if not (np.all(np.isfinite(u)) and np.all(np.isfinite(r))):
    raise FamrError("paired statistics need finite confidences")
  return (u > r) + 0.5 * (u == r)


def paired_auc(phi_u: np.ndarray, phi_r: np.ndarray) -> float:
  """The paired AUC: the mean over pairs and forget examples of :func:`pair_credits`.

  Example:
    >>> paired_auc(np.array([[2.0, 1.0], [0.0, 5.0]]), np.array([[1.0, 1.0], [1.0, 4.0]]))
    0.625
  """
  return float(np.mean(pair_credits(phi_u, phi_r)))


def paired_auc_evidence(phi_u: np.ndarray, phi_r: np.ndarray, seed, *, replicates: int = 1000,
                        level: float = 0.95) -> AucEvidence:
  """The paired AUC with a two-way bootstrap interval over pairs and forget examples.

  Example:
    >>> rng = np.random.default_rng(0)
    >>> base = rng.normal(size=(16, 50))   # what a pair shares
    >>> e = paired_auc_evidence(base + 0.1 * rng.normal(size=base.shape), base + 0.1 * rng.normal(size=base.shape),
    ...                         0, replicates=200)
    >>> bool(e.ci[0] < 0.5 < e.ci[1])
    True
  """
  c = pair_credits(phi_u, phi_r)
  if not 0.0 < level < 1.0 or replicates < 10:
    raise FamrError(f"level must be in (0, 1) and replicates at least 10, got {level}, {replicates}")
  rng = as_generator(seed)
  n, s = c.shape
  out = np.empty(replicates)
  chunk = max(1, int(2e6 // c.size))
  for start in range(0, replicates, chunk):
    b = min(chunk, replicates - start)
    wp, ws = draw_counts(rng, b, n), draw_counts(rng, b, s)
    out[start:start + b] = np.einsum("bi,is,bs->b", wp, c, ws) / (n * s)
  tail = 50.0 * (1.0 - level)
  lo, hi = np.percentile(out, [tail, 100.0 - tail])
  return AucEvidence(float(c.mean()), (float(lo), float(hi)), out, level)


def paired_null(phi_u: np.ndarray, phi_r: np.ndarray, seed, *, permutations: int = 200) -> np.ndarray:
  """Paired AUCs ``[P]`` after swapping a random half of the pairs, their credits centred on chance (the
  sign-flip null of the row; see the module doc).

  Example:
    >>> c = paired_null(np.array([[1.0, 1.0], [0.0, 0.0]]), np.zeros((2, 2)) + 0.5, 0, permutations=400)
    >>> sorted(set(c.tolist())), bool(0.4 < c.mean() < 0.6)
    ([0.0, 0.5, 1.0], True)
  """
  c = pair_credits(phi_u, phi_r).mean(axis=1)
  c = c - c.mean() + 0.5
  rng = as_generator(seed)
  swap = rng.random((int(permutations), len(c))) < 0.5
  return np.mean(np.where(swap, 1.0 - c[None], c[None]), axis=1)
