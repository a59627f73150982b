"""Per-example membership attacks and the unlearning challenge's score, vectorized (no loop over examples).

Definitions (with their sources; ``docs/results.md``, issue 14, states them too):

* **Statistic** (LiRA, Carlini et al. 2022, eq. 4): the logit-scaled confidence
  ``phi = log p_y - log sum_{j != y} p_j``, computed from logits as
  ``z_y - logsumexp_{j != y} z_j`` (:func:`logit_confidence`).
* **LiRA** (Carlini et al. 2022; reference code ``carlini/privacy``,
  ``research/mi_lira_2021/plot.py``): per example, a Gaussian of ``phi`` over the
  shadow models that trained on it ("in") and one over those that did not
  ("out"), centred at the median and scaled by the standard deviation (as the
  reference code). *Online*: the score is ``log N(phi; mu_in, s_in) - log
  N(phi; mu_out, s_out)``. *Offline* (the paper's one-sided test): ``log
  Pr[Z < phi]`` for ``Z ~ N(mu_out, s_out)``. *Fixed variance*: one global
  standard deviation (of every "in" value for online, as the reference code,
  of every "out" value for offline). Every model is the target in turn and
  the Gaussians are fit on the others (leave-one-out), so no model scores
  itself (:func:`lira_scores`).
* **U-LiRA** (Hayes et al. 2024, "Inexact unlearning needs more careful
  evaluations"): the same online test per forget example, "in" = models
  unlearned by the method, "out" = models retrained without the forget set;
  the AUC of telling them apart is 0.5 for perfect unlearning (:func:`ulira`). Targets are held out
  a pair at a time (unlearned model i with retrained model i), so both Gaussians of a target are fit
  on the same number of models and the test is symmetric under the null.
* **Legacy challenge-like epsilon** (NOT the challenge's score, which is
  :func:`famr_jax.audit.challenge.forgetting_quality`: this one lacks the
  interval rules, the peakiness rule, the cap and the cap of the buckets at
  ``ceil(log(N - 1))``; on the same arrays it reads 1.2-1.7x the reference's;
  kept as :func:`forgetting_quality_legacy` / :func:`epsilons_legacy`; the
  names ``epsilons`` / ``forgetting_quality`` here are aliases of them until
  ``audit.py`` reports the challenge's score). After the
  organizers' scoring notebook: per forget example, threshold attacks on the
  N unlearned vs N retrained values; for each, ``eps = max(log(1 - delta -
  FPR) - log FNR, log(1 - delta - FNR) - log FPR)`` (both rates 0: infinite;
  one of them 0: the attack is discarded; a NaN term is ignored), the
  example's epsilon the max over attacks and 0. The notebook thresholds at
  every observed value predicting "unlearned" above it and adds learned
  attacks; here the threshold attack runs in both directions (what a 1-D
  learned attack can express). Threshold attacks are invariant to monotone
  maps, so ``phi`` gives the same epsilon as the notebook's cross-entropy.
  **Legacy forgetting quality**: the mean over examples of ``2 / 2**k``, ``k`` the
  bucket of ``eps`` among ``[0, 0.5, 1, ..., 6]`` (``np.digitize``; 1 for
  ``eps < 0.5``, the best); **final score**: forgetting quality x (retain
  accuracy of the unlearned / of the retrained models) x (the same for test
  accuracy).
"""

from __future__ import annotations

from typing import NamedTuple
import warnings

import numpy as np
from scipy import special, stats

from famr_jax.errors import FamrError

BIN_WIDTH = 0.5
NUM_BINS = 13
_TINY = 1e-30   # the reference code's floor under a standard deviation


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """``phi = log p_y - log sum_{j != y} p_j`` from logits ``[..., C]`` and labels ``[...]``, stably.

  Example:
    >>> round(float(logit_confidence(np.array([[2.0, 0.0]]), np.array([0]))[0]), 4)
    2.0
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  z_y = np.take_along_axis(logits, labels[..., None], -1)[..., 0]
  others = np.where(np.arange(logits.shape[-1]) == labels[..., None], -np.inf, logits)
  return z_y - special.logsumexp(others, axis=-1)


def _held_out_view(values: np.ndarray, group: np.ndarray, folds: np.ndarray) -> np.ndarray:
  """``[M_target, M, S]``: each target's view of the values of ``group``'s models outside its fold (NaN elsewhere)."""
  others = (folds[:, None] != folds[None, :])[:, :, None]
  return np.where(others & group[None], values[None], np.nan)


def _gaussian(values, group, folds, fixed_variance: bool):
  """Held-out ``(median, std)`` per target model and example, of the models in ``group`` outside its fold."""
  view = _held_out_view(values, group, folds)
  with np.errstate(all="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)   # an example no other model has in the group: NaN
    center = np.nanmedian(view, axis=1)
    if fixed_variance:
      flat = view.reshape(view.shape[0], -1)
      spread = np.broadcast_to(np.nanstd(flat, axis=1)[:, None], center.shape)
    else:
      spread = np.nanstd(view, axis=1)
  return center, spread


def lira_scores(phi: np.ndarray, member: np.ndarray, *, online: bool = True,
                fixed_variance: bool = False, folds: np.ndarray | None = None) -> np.ndarray:
  """LiRA membership scores ``[M, S]`` (higher: more likely a member), each model the target in turn.

  Args:
    phi: the statistic of example ``s`` under model ``m``, ``[M, S]``.
    member: whether model ``m`` trained on example ``s`` (for U-LiRA: was unlearned rather than retrained).
    online: the two-Gaussian likelihood ratio; False: the one-sided offline test.
    fixed_variance: one global standard deviation instead of one per example.
    folds: ``[M]`` fold ids: a target's Gaussians are fit on the models outside its fold (default: each
      model its own fold, leave-one-out).

  Example:
    >>> phi = np.array([[3.0], [3.3], [2.8], [0.1], [-0.2], [0.3]])
    >>> member = np.array([[1], [1], [1], [0], [0], [0]], bool)
    >>> s = lira_scores(phi, member)
    >>> bool(s[:3].min() > s[3:].max())
    True
  """
  phi = np.asarray(phi, np.float64)
  member = np.asarray(member, bool)
  if phi.ndim != 2 or phi.shape != member.shape:
    raise FamrError(f"phi and member must be [models, examples] arrays of one shape, got {phi.shape}, {member.shape}")
  folds = np.arange(phi.shape[0]) if folds is None else np.asarray(folds)
  mu_out, s_out = _gaussian(phi, ~member, folds, fixed_variance)
  if not online:
    return stats.norm.logcdf(phi, mu_out, s_out + _TINY)
  mu_in, s_in = _gaussian(phi, member, folds, fixed_variance)
  if fixed_variance:
    s_out = s_in   # the reference code: one global spread, of the "in" values
  return stats.norm.logpdf(phi, mu_in, s_in + _TINY) - stats.norm.logpdf(phi, mu_out, s_out + _TINY)


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(fpr, tpr)`` at every distinct threshold, "positive" meaning score >= threshold (starts at (0, 0)).

  Example:
    >>> roc_curve(np.array([0.9, 0.1]), np.array([1, 0]))
    (array([0., 0., 1.]), array([0., 1., 1.]))
  """
  scores = np.nan_to_num(np.asarray(scores, np.float64).ravel(), nan=-np.inf)
  labels = np.asarray(labels, bool).ravel()
  order = np.argsort(-scores, kind="stable")
  s, y = scores[order], labels[order]
  last = np.r_[np.nonzero(s[1:] != s[:-1])[0], len(s) - 1]   # the end of each run of tied scores
  tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
  pos, neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
  return np.r_[0.0, fp / neg], np.r_[0.0, tp / pos]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve (ties count one half), from the rank-sum statistic.

  Example:
    >>> roc_auc(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0]))
    0.875
  """
  scores = np.nan_to_num(np.asarray(scores, np.float64).ravel(), nan=-np.inf)
  labels = np.asarray(labels, bool).ravel()
  pos, neg = int(labels.sum()), int((~labels).sum())
  if pos == 0 or neg == 0:
    raise FamrError("an AUC needs both members and non-members")
  ranks = stats.rankdata(scores)
  return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
  """The highest true-positive rate of a threshold whose false-positive rate is at most ``fpr``.

  Example:
    >>> tpr_at_fpr(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]), 0.0)
    0.5
  """
  f, t = roc_curve(scores, labels)
  return float(t[f <= fpr].max())


class AttackResult(NamedTuple):
  """AUC and TPR at 0.1% and 1% FPR of a membership attack, plus the balanced accuracy of its best threshold."""
  auc: float
  tpr_at_0_1: float
  tpr_at_1: float
  accuracy: float

  def as_dict(self) -> dict:
    """The JSON form."""
    return dict(self._asdict())


def attack_result(scores: np.ndarray, labels: np.ndarray) -> AttackResult:
  """Summarizes scores against ground-truth membership.

  Example:
    >>> attack_result(np.array([2.0, 1.0, 0.0, -1.0]), np.array([1, 1, 0, 0])).auc
    1.0
  """
  f, t = roc_curve(scores, labels)
  return AttackResult(roc_auc(scores, labels), tpr_at_fpr(scores, labels, 1e-3), tpr_at_fpr(scores, labels, 1e-2),
                      float(np.max(1 - (f + (1 - t)) / 2)))


def lira(phi: np.ndarray, member: np.ndarray, *, online: bool = True, fixed_variance: bool = False,
         folds: np.ndarray | None = None) -> AttackResult:
  """LiRA over a farm (every model the target in turn): AUC, TPR at low FPR.

  Example:
    >>> rng = np.random.default_rng(0); member = rng.random((16, 50)) < 0.5
    >>> lira(rng.normal(size=(16, 50)) + 3 * member, member).auc > 0.9
    True
  """
  return attack_result(lira_scores(phi, member, online=online, fixed_variance=fixed_variance, folds=folds), member)


def _leave_one_out(values: np.ndarray, fixed_variance: bool) -> tuple[np.ndarray, np.ndarray]:
  """``(median, std)`` ``[N + 1, S]`` of a group ``[N, S]`` without model ``i`` (row ``i``), and of all (row ``N``).

  The same values as ``np.median`` / ``np.std`` (population) of the group with row ``i`` removed, in O(N S log N):
  the median from the sorted column with one rank skipped, the spread from centred sums.
  """
  n, s = values.shape
  order = np.sort(values, axis=0)
  rank = np.argsort(np.argsort(values, axis=0, kind="stable"), axis=0, kind="stable")
  m = n - 1
  a, b = (m - 1) // 2, m // 2
  pick = lambda j: np.take_along_axis(order, j + (j >= rank), axis=0)
  med = np.concatenate([(pick(np.full_like(rank, a)) + pick(np.full_like(rank, b))) / 2, np.median(values, 0)[None]])
  if fixed_variance:   # one spread over every example of the models left
    mean, k = values.mean(), values.size
    ss = np.sum((values - mean) ** 2)
    block_mean = values.mean(axis=1)
    block_ss = np.sum((values - block_mean[:, None]) ** 2, axis=1)
    loo_mean = (mean * k - block_mean * s) / (k - s)
    var = (ss + k * (mean - loo_mean) ** 2 - block_ss - s * (block_mean - loo_mean) ** 2) / (k - s)
    spread = np.r_[np.sqrt(np.maximum(var, 0.0)), np.std(values)]
    return med, np.broadcast_to(spread[:, None], med.shape)
  mean = values.mean(axis=0)
  ss = np.sum((values - mean) ** 2, axis=0)
  loo_mean = (mean * n - values) / m
  var = (ss + n * (mean - loo_mean) ** 2 - (values - loo_mean) ** 2) / m
  return med, np.concatenate([np.sqrt(np.maximum(var, 0.0)), np.std(values, axis=0)[None]])


def ulira_scores(phi_unlearned: np.ndarray, phi_retrained: np.ndarray, *,
                 fixed_variance: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """U-LiRA scores and membership ``([N + N', S], [N + N', S])``: unlearned models first, "member" = unlearned.

  Model ``i`` of each group is held out with model ``i`` of the other (a pair); the same scores as
  :func:`lira_scores` with those folds, in O(N S log N) instead of O(N^2 S).

  Example:
    >>> rng = np.random.default_rng(0)
    >>> u, r = rng.normal(size=(4, 3)) + 2, rng.normal(size=(4, 3))
    >>> s, m = ulira_scores(u, r)
    >>> phi = np.concatenate([u, r]); folds = np.r_[np.arange(4), np.arange(4)]
    >>> bool(np.allclose(s, lira_scores(phi, m, folds=folds)))
    True
  """
  u, r = np.asarray(phi_unlearned, np.float64), np.asarray(phi_retrained, np.float64)
  if u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1]:
    raise FamrError("U-LiRA needs [models, examples] statistics of the same forget examples")
  if min(u.shape[0], r.shape[0]) < 2:
    raise FamrError("U-LiRA needs at least 2 unlearned and 2 retrained models")
  nu, nr = len(u), len(r)
  mu_u, s_u = _leave_one_out(u, fixed_variance)
  mu_r, s_r = _leave_one_out(r, fixed_variance)
  fold_u = lambda i: np.minimum(i, nu)   # a fold without a model of the group fits the whole group (row N)
  fold_r = lambda i: np.minimum(i, nr)
  iu, ir = np.arange(nu), np.arange(nr)
  folds = (np.r_[fold_u(iu), fold_u(ir)], np.r_[fold_r(iu), fold_r(ir)])
  phi = np.concatenate([u, r])
  mu_in, s_in, mu_out, s_out = mu_u[folds[0]], s_u[folds[0]], mu_r[folds[1]], s_r[folds[1]]
  if fixed_variance:
    s_out = s_in   # the reference code: one global spread, of the "in" values
  scores = stats.norm.logpdf(phi, mu_in, s_in + _TINY) - stats.norm.logpdf(phi, mu_out, s_out + _TINY)
  member = np.concatenate([np.ones(u.shape, bool), np.zeros(r.shape, bool)])
  return scores, member


def ulira(phi_unlearned: np.ndarray, phi_retrained: np.ndarray, *, fixed_variance: bool = False) -> AttackResult:
  """U-LiRA: per forget example, unlearned models (``[N, S]``) vs retrained models (``[N', S]``).

  An AUC of 0.5 is perfect unlearning; 1.0 means every unlearned model is told apart.

  Example:
    >>> rng = np.random.default_rng(0)
    >>> round(ulira(rng.normal(size=(32, 40)), rng.normal(size=(32, 40))).auc, 1)
    0.5
  """
  # Leave one *pair* out: unlearned model i and retrained model i share a fold, so both Gaussians of every
  # target are fit on equally many models. (Leaving one model out fits the target's own group on one model
  # fewer, a narrower fit that scores it lower: on 5 forget examples, AUC 0.29 for two retrained farms.)
  return attack_result(*ulira_scores(phi_unlearned, phi_retrained, fixed_variance=fixed_variance))


def threshold_rates(unlearned: np.ndarray, retrained: np.ndarray,
                    thresholds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """``(FPR, FNR)`` ``[S, T]`` of "unlearned iff value > t" per example, at every observed value (or ``thresholds``).

  ``unlearned`` and ``retrained`` are ``[N, S]`` (models x examples); a false
  positive is a retrained model called unlearned.

  Example:
    >>> fpr, fnr = threshold_rates(np.array([[1.0], [2.0]]), np.array([[0.0], [1.5]]))
    >>> fpr[0].tolist(), fnr[0].tolist()
    ([0.5, 0.5, 0.0, 0.0], [0.0, 0.5, 0.5, 1.0])
  """
  u, r = np.asarray(unlearned, np.float64), np.asarray(retrained, np.float64)
  if thresholds is None:
    t = np.sort(np.concatenate([r, u]), axis=0).T            # [S, T]
  else:
    t = np.broadcast_to(np.asarray(thresholds, np.float64), (u.shape[1], np.size(thresholds)))
  fpr = np.mean(r.T[:, :, None] > t[:, None, :], axis=1)     # [S, T]
  fnr = np.mean(u.T[:, :, None] <= t[:, None, :], axis=1)
  return fpr, fnr


def epsilon_from_rates(fpr: np.ndarray, fnr: np.ndarray, delta: float = 1e-5) -> np.ndarray:
  """The challenge's per-example epsilon from the rates ``[S, T]`` of T attacks (the max over them and 0).

  Example:
    >>> round(float(epsilon_from_rates(np.array([[0.1]]), np.array([[0.5]]), 0.0)[0]), 4)   # log(0.5 / 0.1)
    1.6094
  """
  fpr, fnr = np.asarray(fpr, np.float64), np.asarray(fnr, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    e1 = np.log(1.0 - delta - fpr) - np.log(fnr)
    e2 = np.log(1.0 - delta - fnr) - np.log(fpr)
    both_nan = np.isnan(e1) & np.isnan(e2)
    eps = np.where(both_nan, np.inf, np.fmax(e1, e2))
  eps = np.where((fpr == 0) & (fnr == 0), np.inf, eps)
  eps = np.where((fpr == 0) ^ (fnr == 0), -np.inf, eps)   # one rate zero: the attack is discarded
  return np.maximum(np.max(eps, axis=-1), 0.0)


def epsilons_legacy(unlearned: np.ndarray, retrained: np.ndarray, delta: float = 1e-5) -> np.ndarray:
  """Per forget example, the legacy epsilon of threshold attacks in both directions (``[S]``; not the challenge's).

  Example:
    >>> x = np.random.default_rng(0).normal(size=(16, 3))
    >>> epsilons_legacy(x, x).tolist()   # identical distributions: nothing to tell apart
    [0.0, 0.0, 0.0]
  """
  u, r = np.asarray(unlearned), np.asarray(retrained)
  if u.shape != r.shape or u.ndim != 2:
    raise FamrError(f"unlearned and retrained values must be [models, examples] of one shape, got {u.shape}, {r.shape}")
  fpr, fnr = threshold_rates(u, r)
  # "unlearned iff value <= t": the complementary rates of the same thresholds.
  return np.maximum(epsilon_from_rates(fpr, fnr, delta), epsilon_from_rates(1.0 - fpr, 1.0 - fnr, delta))


def forgetting_quality_legacy(eps: np.ndarray) -> float:
  """The legacy forgetting quality: mean of ``2 / 2**k`` over examples, ``k`` the bucket of epsilon (uncapped).

  Example:
    >>> forgetting_quality_legacy(np.array([0.0, 0.7, np.inf]))   # buckets 1, 2 and 13
    0.5000813802083334
  """
  k = np.digitize(np.asarray(eps, np.float64), np.arange(NUM_BINS) * BIN_WIDTH)
  return float(np.mean(2.0 / 2.0 ** k))


# Aliases of the legacy score for famr_jax.audit.audit and the package root until they call
# famr_jax.audit.challenge.forgetting_quality (branch audit-boards); then these two lines go.
epsilons = epsilons_legacy
forgetting_quality = forgetting_quality_legacy


def final_score(quality: float, retain_acc_unlearned: float, retain_acc_retrained: float,
                test_acc_unlearned: float, test_acc_retrained: float) -> float:
  """The challenge's final score: forgetting quality x retain-accuracy ratio x test-accuracy ratio.

  Example:
    >>> final_score(0.5, 0.9, 1.0, 0.8, 0.8)
    0.45
  """
  return float(quality * (retain_acc_unlearned / retain_acc_retrained) * (test_acc_unlearned / test_acc_retrained))
