"""The randomized-membership farm: each shadow forgets a random half of a candidate pool, so every candidate
is forgotten by some models and kept by the others.

The audit of :func:`famr_jax.audit.audit.audit_request` fixes one forget set: every unlearned model forgot
the same examples, and nothing is learnt about the retained ones. Here shadow ``i`` is asked to forget
``F_i``, a random half of a pool ``C`` of candidate examples, with the halves drawn in complementary pairs
(model ``2j + 1`` forgets exactly the candidates model ``2j`` keeps), so each candidate is forgotten by
exactly half of the models and kept by the other half. Per group, on the pool (the challenge's
logit-scaled confidence, :func:`famr_jax.audit.challenge.challenge_confidence`):

* **retrains** (``D \\ F_i`` from scratch): LiRA of kept (members) vs forgotten (non-members) candidates is
  the recipe's own membership leakage, the retained examples' privacy that retraining leaves;
* **unlearned** (a method applied to original ``i`` with ``F_i``): the same LiRA; a perfect unlearner keeps
  the retrains' AUC (it knows what it kept, not what it forgot), a method that forgot nothing reads about
  0.5, as the **originals** (trained on all of ``D``) do.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from famr_jax.audit import attacks
from famr_jax.audit.audit import farm_logits
from famr_jax.audit.challenge import challenge_confidence
from famr_jax.audit.shadows import (AuditConfig, check_auditable, check_shadow_model, check_train_fn, cost_entry,
                                    evaluation_view, train_models, unlearn_farm)
from famr_jax.data.forget import forget_samples
from famr_jax.engine.training import TrainConfig
from famr_jax.errors import FamrError


def complementary_halves(key: jax.Array, num_candidates: int, num_models: int) -> np.ndarray:
  """``forgotten [N, P]`` (bool): model ``2j`` forgets a random half of the pool, model ``2j + 1`` the rest.

  Example:
    >>> f = complementary_halves(jax.random.key(0), 6, 4)
    >>> f.sum(axis=1).tolist(), f.sum(axis=0).tolist(), bool(np.all(f[0] ^ f[1]))
    ([3, 3, 3, 3], [2, 2, 2, 2, 2, 2], True)
  """
  if num_models < 2 or num_models % 2 or num_candidates < 2 or num_candidates % 2:
    raise FamrError(f"a randomized-membership farm needs an even number (at least 2) of shadow models and of "
                    f"candidates, got {num_models} models and {num_candidates} candidates")
  forgotten = np.zeros((num_models, num_candidates), bool)
  for j in range(num_models // 2):
    half = np.asarray(jax.random.permutation(jax.random.fold_in(key, j), num_candidates))[:num_candidates // 2]
    forgotten[2 * j, half] = True
    forgotten[2 * j + 1] = ~forgotten[2 * j]
  return forgotten


class MembershipAudit(NamedTuple):
  """A randomized-membership farm's result: the pool, who forgot what, each group's confidences and LiRA."""
  candidates: np.ndarray    # [P] training-set indices of the pool
  forgotten: np.ndarray     # [N, P] bool: model i was asked to forget candidate c
  confidences: dict         # group -> [N, P] challenge confidences on the pool
  lira_auc: dict            # group -> LiRA AUC of kept (members) vs forgotten candidates
  costs: dict


def membership_audit(apply_fn: Callable, model: Any, data: Any, candidates: np.ndarray, train_config: TrainConfig,
                     method_configs: dict, config: AuditConfig, key: jax.Array, *,
                     train_fn: Callable | None = None, show_progress: bool = False) -> MembershipAudit:
  """Trains the originals, the retrains (each on ``D \\ F_i``) and each method's unlearned models of a
  randomized-membership farm over the pool ``candidates``, and scores every group by LiRA on the pool.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    model: the Flax module.
    data: the :class:`famr_jax.Dataset`.
    candidates: training-set indices of the pool (an even number, distinct).
    train_config: the training recipe (or ``train_fn``).
    method_configs: ``{method: config}`` (may be empty).
    config: an :class:`famr_jax.audit.shadows.AuditConfig` (``shadows`` even).
    key: PRNG key of the farm.
    train_fn: the caller's ``train_fn(x, y, key) -> params``.
    show_progress: progress bars.

  Returns:
    A :class:`MembershipAudit` (groups ``"original"``, ``"retrained"`` and each method).
  """
  config.validate()
  check_shadow_model(model, config.mode, tuple(method_configs))
  check_train_fn(train_fn)
  pool = np.asarray(candidates, np.int64)
  n_train, n = len(data.y_train), int(config.shadows)
  if pool.ndim != 1 or len(np.unique(pool)) != len(pool) or pool.min(initial=0) < 0 or pool.max(initial=0) >= n_train:
    raise FamrError(f"candidates must be distinct training-set indices in [0, {n_train})")
  forgotten = complementary_halves(jax.random.fold_in(key, 3), len(pool), n)
  forgets = [forget_samples(pool[f].tolist(), n_train, data.num_classes) for f in forgotten]
  check_auditable(forgets[0], tuple(method_configs), config.mode)
  x, y = np.asarray(data.x_train, np.float32), np.asarray(data.y_train, np.int32)
  keep_rows = [np.nonzero(f.retain_mask(n_train))[0] for f in forgets]
  shape = data.image_shape
  originals = train_models(model, apply_fn, x, y, train_config, jax.random.fold_in(key, 0), n, shape,
                           mode=config.mode, train_fn=train_fn, show_progress=show_progress,
                           desc="membership: originals")
  retrains = train_models(model, apply_fn, x, y, train_config, jax.random.fold_in(key, 1), n, shape, rows=keep_rows,
                          mode=config.mode, train_fn=train_fn, show_progress=show_progress,
                          desc="membership: retrains")
  groups = {"original": (originals.params, originals.stats), "retrained": (retrains.params, retrains.stats)}
  costs = {"originals": cost_entry(originals.result, n), "retrains": cost_entry(retrains.result, n)}
  for i, (name, method_config) in enumerate(method_configs.items()):
    result = unlearn_farm(name, method_config, originals.params, apply_fn, model, data, forgets,
                          jax.random.fold_in(key, 100 + i), mode=config.mode, stats=originals.stats,
                          show_progress=show_progress)
    groups[name], costs[name] = (result.params, originals.stats), cost_entry(result, n)
  xp, yp = x[pool], y[pool]
  confidences, auc = {}, {}
  for name, (params, stats) in groups.items():
    logits = farm_logits(*evaluation_view(model, apply_fn, params, stats), xp)
    confidences[name] = challenge_confidence(logits, np.broadcast_to(yp, logits.shape[:2]))
    auc[name] = attacks.lira(confidences[name], ~forgotten).auc
  return MembershipAudit(pool, forgotten, confidences, auc, costs)
