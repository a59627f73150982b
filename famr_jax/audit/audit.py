"""Auditing unlearning methods on a shadow-model farm: U-LiRA and the challenge's scores per method.

:func:`audit_request` trains the farm of one forget request
(:func:`famr_jax.audit.shadows.train_shadow_farm`), applies every method to
its originals (:func:`famr_jax.audit.shadows.unlearn_farm`) and scores each
group of unlearned models against the retrained group
(:func:`famr_jax.audit.attacks.ulira`, :func:`famr_jax.audit.attacks.epsilons`).
Two sanity rows come with it: the untouched originals (an audit must expose
them) and an independent group of retrains (an audit must report chance).
:func:`lira_check` runs LiRA proper on models trained on random halves of the
training set: whether the farm's recipe leaks membership at all.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.audit import attacks
from famr_jax.audit.shadows import (AuditConfig, check_auditable, check_shadow_model, cost_entry, initial_params, train_shadow_farm,
                                    unlearn_farm)
from famr_jax.data.forget import ForgetSet
from famr_jax.engine.farm import run_farm
from famr_jax.engine.training import TrainConfig, train_classifier
from famr_jax.errors import FamrError

ORIGINAL_ROW = "original"
INDEPENDENT_RETRAIN_ROW = "retrained (independent farm)"
MAX_ACCURACY_ROWS = 2048   # retained / test examples the farm's accuracies are measured on (a fixed sample)
_CHUNK = 512


@functools.lru_cache(maxsize=32)
def _vmapped_apply(apply_fn: Callable) -> Callable:
  return jax.jit(jax.vmap(apply_fn, in_axes=(0, None)))


def farm_logits(apply_fn: Callable, params: Any, x: np.ndarray) -> np.ndarray:
  """Logits ``[N, n, C]`` of every model of a farm (params stacked over a leading axis) on ``x``, in chunks.

  Example:
    >>> farm_logits(lambda p, x: x @ p, jnp.stack([jnp.eye(2), 2 * jnp.eye(2)]), np.ones((3, 2))).shape
    (2, 3, 2)
  """
  x = np.asarray(x, np.float32)
  fn = _vmapped_apply(apply_fn)
  size = min(_CHUNK, len(x))
  pad = -len(x) % size
  xp = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
  out = [np.asarray(fn(params, jnp.asarray(xp[i:i + size]))) for i in range(0, len(xp), size)]
  return np.concatenate(out, axis=1)[:, :len(x)]


class GroupOutputs(NamedTuple):
  """What the scores need of a group of models: the statistic on the forget set, and accuracies."""
  phi: np.ndarray          # [N, S] logit-scaled confidence of each forget example
  forget_acc: np.ndarray   # [N]
  retain_acc: np.ndarray   # [N], on a fixed sample of retained training examples
  test_acc: np.ndarray     # [N]


def _sample_rows(n: int, key: jax.Array) -> np.ndarray:
  return np.sort(np.asarray(jax.random.permutation(key, n))[:MAX_ACCURACY_ROWS])


def group_outputs(apply_fn: Callable, params: Any, data: Any, forget: ForgetSet, key: jax.Array) -> GroupOutputs:
  """The :class:`GroupOutputs` of a farm group (``key`` draws the accuracy samples; the same for every group)."""
  keep = np.nonzero(forget.retain_mask(len(data.y_train)))[0]
  keep = keep[_sample_rows(len(keep), jax.random.fold_in(key, 0))]
  test = _sample_rows(len(data.y_test), jax.random.fold_in(key, 1))
  acc = lambda x, y: np.mean(np.argmax(farm_logits(apply_fn, params, x), -1) == y[None], axis=1)
  xf, yf = data.x_train[forget.indices], data.y_train[forget.indices]
  logits_f = farm_logits(apply_fn, params, xf)
  return GroupOutputs(attacks.logit_confidence(logits_f, np.broadcast_to(yf, logits_f.shape[:2])),
                      np.mean(np.argmax(logits_f, -1) == yf[None], axis=1),
                      acc(data.x_train[keep], data.y_train[keep]), acc(data.x_test[test], data.y_test[test]))


def audit_pair(unlearned: GroupOutputs, retrained: GroupOutputs, config: AuditConfig) -> dict:
  """U-LiRA, the challenge's epsilon and scores of a group of unlearned models against the retrained group.

  Example:
    >>> rng = np.random.default_rng(0)
    >>> g = lambda: GroupOutputs(rng.normal(size=(8, 20)), np.ones(8), np.ones(8), np.ones(8))
    >>> round(audit_pair(g(), g(), AuditConfig())["ulira_auc"], 1)
    0.5
  """
  u = attacks.ulira(unlearned.phi, retrained.phi, fixed_variance=config.fixed_variance)
  eps = attacks.epsilons(unlearned.phi, retrained.phi, config.delta)
  quality = attacks.forgetting_quality(eps)
  ra_u, ra_r = float(np.mean(unlearned.retain_acc)), float(np.mean(retrained.retain_acc))
  ta_u, ta_r = float(np.mean(unlearned.test_acc)), float(np.mean(retrained.test_acc))
  finite = eps[np.isfinite(eps)]
  return {"ulira_auc": u.auc, "ulira_tpr_at_1": u.tpr_at_1, "ulira_tpr_at_0_1": u.tpr_at_0_1,
          "ulira_accuracy": u.accuracy, "forgetting_quality": quality,
          "final_score": attacks.final_score(quality, ra_u, ra_r, ta_u, ta_r),
          "epsilon_median": float(np.median(eps)), "epsilon_infinite": float(np.mean(~np.isfinite(eps))),
          "epsilon_max_finite": float(finite.max()) if finite.size else float("nan"),
          "retain_acc": ra_u, "retain_acc_std": float(np.std(unlearned.retain_acc)), "test_acc": ta_u,
          "forget_acc": float(np.mean(unlearned.forget_acc))}


def audit_request(apply_fn: Callable, model: Any, data: Any, forget: ForgetSet, train_config: TrainConfig,
                  method_configs: Mapping[str, Any], config: AuditConfig, key: jax.Array, *,
                  show_progress: bool = False, log: Callable[[str], None] | None = None) -> dict:
  """Audits every method of ``method_configs`` on one forget request with a farm of ``config.shadows`` models.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    model: the Flax module (fresh inits of the shadow models).
    data: the :class:`famr_jax.Dataset` the original was trained on.
    forget: the request.
    train_config: the original's training recipe (every shadow model's).
    method_configs: ``{method: config}``.
    config: an :class:`famr_jax.audit.shadows.AuditConfig`.
    key: PRNG key of the farm.
    show_progress: progress bars.
    log: one line per group.

  Returns:
    ``{"attack", "shadows", "rows": {row: scores}, "costs": {group: cost}, "lira": LiRA of the recipe}``;
    rows are the methods, :data:`ORIGINAL_ROW` and :data:`INDEPENDENT_RETRAIN_ROW`.
  """
  log = log or (lambda line: None)
  config.validate()
  check_shadow_model(model)
  check_auditable(forget, tuple(method_configs), config.mode)
  n = int(config.shadows)
  t0 = time.perf_counter()
  farm = train_shadow_farm(model, apply_fn, data, forget, train_config, config, jax.random.fold_in(key, 0),
                           show_progress=show_progress)
  eval_key = jax.random.fold_in(key, 1)
  reference = group_outputs(apply_fn, farm.retrains, data, forget, eval_key)
  rows = {ORIGINAL_ROW: audit_pair(group_outputs(apply_fn, farm.originals, data, forget, eval_key), reference,
                                   config),
          INDEPENDENT_RETRAIN_ROW: audit_pair(group_outputs(apply_fn, farm.independent_retrains, data, forget,
                                                            eval_key), reference, config)}
  costs = dict(farm.costs)
  log(f"audit: {3 * n} shadow models trained in {time.perf_counter() - t0:.1f} s "
      f"({costs['retrains']['per_model_s']:.3f} s per retrain, {costs['retrains']['mode']}); "
      f"original U-LiRA AUC {rows[ORIGINAL_ROW]['ulira_auc']:.3f}, independent retrain "
      f"{rows[INDEPENDENT_RETRAIN_ROW]['ulira_auc']:.3f}")
  for i, (name, method_config) in enumerate(method_configs.items()):
    result = unlearn_farm(name, method_config, farm.originals, apply_fn, model, data, forget,
                          jax.random.fold_in(key, 100 + i), mode=config.mode, show_progress=show_progress)
    costs[name] = cost_entry(result, n)
    rows[name] = audit_pair(group_outputs(apply_fn, result.params, data, forget, eval_key), reference, config)
    rows[name]["time_fraction"] = costs[name]["per_model_s"] / max(costs["retrains"]["per_model_s"], 1e-12)
    log(f"audit: {name:<20s} U-LiRA AUC {rows[name]['ulira_auc']:.3f}  forgetting quality "
        f"{rows[name]['forgetting_quality']:.3f}  final {rows[name]['final_score']:.3f}  "
        f"({costs[name]['per_model_s']:.3f} s per model, {result.mode})")
  return {"attack": config.attack, "shadows": n, "fixed_variance": config.fixed_variance, "delta": config.delta,
          "rows": rows, "costs": costs}


def lira_check(apply_fn: Callable, model: Any, data: Any, train_config: TrainConfig, config: AuditConfig,
               key: jax.Array, *, show_progress: bool = False) -> dict:
  """LiRA (online, offline, fixed variance) on ``config.shadows`` models, each trained on a random half of the
  training set: AUC and TPR at low FPR of telling members from non-members, every model the target in turn.

  Example:
    >>> from famr_jax import models, load_dataset
    >>> d = load_dataset("digits"); d = d._replace(x_train=d.x_train[:64], y_train=d.y_train[:64])
    >>> m = models.create_model("logistic", 10, d.image_shape)
    >>> r = lira_check(models.make_apply_fn(m), m, d, TrainConfig(epochs=1), AuditConfig(shadows=4),
    ...                jax.random.key(0))
    >>> sorted(r)
    ['cost', 'offline', 'online', 'online_fixed_variance']
  """
  config.validate()
  n, total = int(config.shadows), len(data.y_train)
  if total < 4:
    raise FamrError("LiRA needs at least 4 training examples")
  keys = jax.random.split(key, 2 * n + 1)
  member = np.zeros((n, total), bool)
  perms = [np.asarray(jax.random.permutation(jax.random.fold_in(keys[2 * n], i), total))[:total // 2]
           for i in range(n)]
  for i, rows in enumerate(perms):
    member[i, rows] = True
  x, y = np.asarray(data.x_train, np.float32), np.asarray(data.y_train, np.int32)
  inits = initial_params(model, keys[:n], data.image_shape)
  runs = [lambda i=i: train_classifier(apply_fn, inits[i], x[perms[i]], y[perms[i]], train_config, keys[n + i],
                                       show_progress=False) for i in range(n)]
  result = run_farm(runs, mode=config.mode, what="training",
                    show_progress=show_progress, desc="shadows: LiRA halves")
  logits = farm_logits(apply_fn, result.params, x)
  phi = attacks.logit_confidence(logits, np.broadcast_to(y, logits.shape[:2]))
  return {"online": attacks.lira(phi, member).as_dict(),
          "offline": attacks.lira(phi, member, online=False).as_dict(),
          "online_fixed_variance": attacks.lira(phi, member, fixed_variance=True).as_dict(),
          "cost": cost_entry(result, n)}
