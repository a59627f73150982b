"""RMIA adapted to unlearning: a membership attack that needs few shadow models (issue 22, item 6).

Source: Zarifzadeh, Liu, Lyu, Shokri, "Low-Cost High-Power Membership Inference Attacks" (ICML 2024,
arXiv:2312.03262), section 3. For a target model ``theta`` and an example ``x`` the attack compares
``LR(x) = Pr(x | theta) / Pr(x)`` with the same ratio of population examples ``z`` that no model trained on:
``score(x) = Pr_z[LR(x) / LR(z) >= gamma]``, with ``Pr(x | theta)`` the model's probability of ``x``'s
label and ``Pr(x)`` the mean of ``Pr(x | theta')`` over reference models ``theta'`` (online: half of them
"in", half "out"; offline, with OUT models only: ``Pr(x) = ((1 + a) Pr_OUT(x) + (1 - a)) / 2``, the paper's
linear approximation of the missing IN models, eq. 9).

Adapted to unlearning (as U-LiRA adapts LiRA): "in" = unlearned, "out" = retrained; every model of both groups
is the target in turn and its references are all the other models except its pair (model ``i`` of each
group are held out together), so both groups are scored by the same rule. ``Pr(x | theta) =
sigmoid(phi)`` from the logit-scaled confidence ``phi = log p_y - log(1 - p_y)``
(:func:`famr_jax.audit.attacks.logit_confidence`). Without population examples the score is ``log LR(x)``
itself (the ``gamma`` comparison then only ranks within a model); with them (``[N, Z]`` statistics of
examples outside every model's training set, e.g. test examples) it is the paper's pairwise score.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from famr_jax.audit import attacks
from famr_jax.errors import FamrError


def _reference_mean(p_u: np.ndarray, p_r: np.ndarray, offline_a: float | None) -> np.ndarray:
  """``Pr(x)`` ``[N + N', K]`` of every target (unlearned first): the mean over the models outside its pair."""
  nu, nr = len(p_u), len(p_r)
  sum_u, sum_r = p_u.sum(0), p_r.sum(0)
  i_u, i_r = np.arange(nu), np.arange(nr)
  # Target i of either group leaves out model i of each group (when that group has one).
  pair_u = lambda i: np.where((i < nu)[:, None], p_u[np.minimum(i, nu - 1)], 0.0)
  pair_r = lambda i: np.where((i < nr)[:, None], p_r[np.minimum(i, nr - 1)], 0.0)
  folds = np.r_[i_u, i_r]
  out_sum, out_n = sum_r - pair_r(folds), nr - (folds < nr)
  if offline_a is not None:
    return ((1 + offline_a) * out_sum / out_n[:, None] + (1 - offline_a)) / 2
  in_sum, in_n = sum_u - pair_u(folds), nu - (folds < nu)
  return (in_sum + out_sum) / (in_n + out_n)[:, None]


def rmia_scores(phi_unlearned: np.ndarray, phi_retrained: np.ndarray, *,
                population_unlearned: np.ndarray | None = None, population_retrained: np.ndarray | None = None,
                gamma: float = 1.0, offline_a: float | None = None) -> tuple[np.ndarray, np.ndarray]:
  """RMIA scores and membership ``([N + N', S], [N + N', S])`` (unlearned first, "member" = unlearned).

  Args:
    phi_unlearned: ``[N, S]`` logit-scaled confidences of the forget examples under the unlearned models.
    phi_retrained: ``[N', S]`` the same under the retrained models.
    population_unlearned: ``[N, Z]`` statistics of population examples (trained on by no model) under the
      unlearned models; with ``population_retrained``, the pairwise score. Both or neither.
    population_retrained: ``[N', Z]`` the same under the retrained models.
    gamma: the pairwise test's threshold.
    offline_a: use the retrained models only as references, with the paper's ``a`` (None: online).

  Example:
    >>> rng = np.random.default_rng(0)
    >>> s, m = rmia_scores(rng.normal(2, 1, (4, 50)), rng.normal(0, 1, (4, 50)))
    >>> attacks.roc_auc(s, m) > 0.8
    True
  """
  u, r = np.asarray(phi_unlearned, np.float64), np.asarray(phi_retrained, np.float64)
  if u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1]:
    raise FamrError("RMIA needs [models, examples] statistics of the same forget examples")
  if min(len(u), len(r)) < 2:
    raise FamrError("RMIA needs at least 2 unlearned and 2 retrained models")
  if (population_unlearned is None) != (population_retrained is None):
    raise FamrError("population statistics need both groups, or neither")
  if offline_a is not None and not 0.0 <= offline_a <= 1.0:
    raise FamrError(f"offline_a must be in [0, 1], got {offline_a}")
  if not gamma > 0:
    raise FamrError(f"gamma must be positive, got {gamma}")
  log_p = lambda a, b: special.log_expit(np.concatenate([a, b]))
  log_lr = log_p(u, r) - np.log(_reference_mean(special.expit(u), special.expit(r), offline_a))
  if population_unlearned is not None:
    zu, zr = np.asarray(population_unlearned, np.float64), np.asarray(population_retrained, np.float64)
    if zu.ndim != 2 or zr.ndim != 2 or len(zu) != len(u) or len(zr) != len(r) or zu.shape[1] != zr.shape[1]:
      raise FamrError("population statistics must be [models, population examples] of each group's models")
    log_lr_z = log_p(zu, zr) - np.log(_reference_mean(special.expit(zu), special.expit(zr), offline_a))
    # Pr_z[LR(x) / LR(z) >= gamma] per (target, x): a sorted search of each target's population ratios.
    shifted = np.sort(log_lr_z + np.log(gamma), axis=1)
    count = np.stack([np.searchsorted(row, x, side="right") for row, x in zip(shifted, log_lr)])
    scores = count / shifted.shape[1]
  else:
    scores = log_lr
  member = np.concatenate([np.ones(u.shape, bool), np.zeros(r.shape, bool)])
  return scores, member


def rmia(phi_unlearned: np.ndarray, phi_retrained: np.ndarray, **kwargs) -> attacks.AttackResult:
  """RMIA over a farm, every model the target in turn: AUC and TPR at low FPR (``kwargs``: :func:`rmia_scores`).

  Example:
    >>> rng = np.random.default_rng(0)
    >>> round(rmia(rng.normal(size=(8, 200)), rng.normal(size=(8, 200))).auc, 1)
    0.5
  """
  return attacks.attack_result(*rmia_scores(phi_unlearned, phi_retrained, **kwargs))
