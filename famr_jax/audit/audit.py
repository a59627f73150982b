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
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.audit import attacks, challenge, evidence, paired as pairs, rmia
from famr_jax.audit.queries import augmented_views
from famr_jax.audit.shadows import (AuditConfig, check_auditable, check_shadow_model, check_train_fn, cost_entry,
                                    evaluation_view, train_models, train_shadow_farm, unlearn_farm)
from famr_jax.data.forget import ForgetSet
from famr_jax.engine.training import TrainConfig
from famr_jax.errors import FamrError

ORIGINAL_ROW = "original"
INDEPENDENT_RETRAIN_ROW = "retrained (independent farm)"
FORGET_INDEX = "forget_index"   # the key of the forget set's indices in audit/seed_<k>.npz
REFERENCE_ROW = "retrained"   # the reference group every row is scored against (a key of the confidences)
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
  phi: np.ndarray          # [N, S] the challenge's logit-scaled confidence of each forget example
  forget_acc: np.ndarray   # [N]
  retain_acc: np.ndarray   # [N], on a fixed sample of retained training examples
  test_acc: np.ndarray     # [N]


def _sample_rows(n: int, key: jax.Array) -> np.ndarray:
  return np.sort(np.asarray(jax.random.permutation(key, n))[:MAX_ACCURACY_ROWS])


def group_outputs(apply_fn: Callable, params: Any, data: Any, forget: ForgetSet, key: jax.Array,
                  queries: tuple[str, ...] = ()) -> GroupOutputs:
  """The :class:`GroupOutputs` of a farm group (``key`` draws the accuracy samples; the same for every group).

  The statistic is :func:`famr_jax.audit.challenge.challenge_confidence` (the array ``audit/seed_<k>.npz``
  holds), with ``queries`` its mean over the augmented views (:mod:`famr_jax.audit.queries`): every score
  of the audit is computed from it, so a third party re-scores the files exactly.

  Example:
    >>> from famr_jax import load_dataset, forget_samples
    >>> d = load_dataset("digits", max_train=50, max_test=20)
    >>> w = np.zeros((2, 64, 10), np.float32)
    >>> g = group_outputs(lambda p, x: x.reshape(len(x), -1) @ p, w, d, forget_samples([0, 1], 50, 10),
    ...                   jax.random.key(0), ("shift",))
    >>> g.phi.shape, round(float(g.phi[0, 0]), 4)   # zero logits: confidence 1/10, log(0.1 / 0.9)
    ((2, 2), -2.1972)
  """
  keep = np.nonzero(forget.retain_mask(len(data.y_train)))[0]
  keep = keep[_sample_rows(len(keep), jax.random.fold_in(key, 0))]
  test = _sample_rows(len(data.y_test), jax.random.fold_in(key, 1))
  acc = lambda x, y: np.mean(np.argmax(farm_logits(apply_fn, params, x), -1) == y[None], axis=1)
  xf, yf = data.x_train[forget.indices], data.y_train[forget.indices]
  logits_f = farm_logits(apply_fn, params, xf)
  phi = np.mean([challenge.challenge_confidence(logits, np.broadcast_to(yf, logits.shape[:2]))
                 for logits in [logits_f] + [farm_logits(apply_fn, params, v)
                                             for v in augmented_views(xf, queries)[1:]]], axis=0)
  return GroupOutputs(phi,
                      np.mean(np.argmax(logits_f, -1) == yf[None], axis=1),
                      acc(data.x_train[keep], data.y_train[keep]), acc(data.x_test[test], data.y_test[test]))


def audit_pair(unlearned: GroupOutputs, retrained: GroupOutputs, config: AuditConfig) -> dict:
  """Point scores of a group of unlearned models against the retrained group: U-LiRA (AUC, TPR at low FPR),
  the challenge's forgetting quality (:func:`famr_jax.audit.challenge.forgetting_quality`) and final score,
  the farm's accuracies. The intervals and verdicts come from :func:`score_seed`.

  Example:
    >>> rng = np.random.default_rng(0)
    >>> g = lambda: GroupOutputs(rng.normal(size=(8, 20)), np.ones(8), np.ones(8), np.ones(8))
    >>> round(audit_pair(g(), g(), AuditConfig())["ulira_auc"], 1)
    0.5
  """
  u = attacks.ulira(unlearned.phi, retrained.phi, fixed_variance=config.fixed_variance)
  quality = challenge.forgetting_quality(unlearned.phi, retrained.phi, config.delta)
  ra_u, ra_r = float(np.mean(unlearned.retain_acc)), float(np.mean(retrained.retain_acc))
  ta_u, ta_r = float(np.mean(unlearned.test_acc)), float(np.mean(retrained.test_acc))
  return {"ulira_auc": u.auc, "ulira_tpr_at_1": u.tpr_at_1, "ulira_tpr_at_0_1": u.tpr_at_0_1,
          "ulira_accuracy": u.accuracy, "forgetting_quality": quality,
          "final_score": attacks.final_score(quality, ra_u, ra_r, ta_u, ta_r),
          "retain_acc": ra_u, "retain_acc_std": float(np.std(unlearned.retain_acc)), "test_acc": ta_u,
          "forget_acc": float(np.mean(unlearned.forget_acc))}


class EvidenceConfig(NamedTuple):
  """How an audit's evidence is computed from its confidences (:func:`score_seed`, :func:`pool_audits`).

  Attributes:
    margin: the equivalence margin on ``AUC - 0.5`` (:func:`famr_jax.audit.evidence.verdict`).
    replicates: bootstrap replicates of every interval.
    null_permutations: permutations of the reference vs independent retrains (the null's sd).
    example_permutations: permutations of each forget example's p-value.
    fdr: the Benjamini-Hochberg false-discovery rate of the per-example list.
    paired: model ``i`` of every group shares its initialisation and data order (common random numbers;
      :func:`audit_request` sets it from :class:`famr_jax.audit.shadows.AuditConfig`'s ``paired``): the
      verdicts, the power gate and ``delta_vs_chance`` then test the paired AUC
      (:mod:`famr_jax.audit.paired`), whose null is the original row's pairs swapped at random.
  """
  margin: float = evidence.DEFAULT_MARGIN
  replicates: int = 1000
  null_permutations: int = 100
  example_permutations: int = 2000
  fdr: float = 0.05
  paired: bool = False


def _rng(seed: int, row: int, what: int) -> np.random.Generator:
  """The evidence's randomness of one row (its position in the row order) of one farm seed: reproducible."""
  return np.random.default_rng([int(seed), int(row), int(what)])


def score_seed(confidences: Mapping[str, np.ndarray], forget_index: np.ndarray, seed: int,
               config: EvidenceConfig = EvidenceConfig(), *, delta: float = challenge.DELTA) -> dict:
  """Every row's evidence on one farm seed, from its confidences alone (what ``audit/seed_<k>.npz`` holds).

  Args:
    confidences: ``{row: [models, forget examples]}`` challenge confidences; :data:`REFERENCE_ROW` is the
      reference retrains, :data:`ORIGINAL_ROW` and :data:`INDEPENDENT_RETRAIN_ROW` the sanity rows.
    forget_index: the forget examples' indices into the training set.
    seed: the farm seed (seeds the bootstrap: row ``i`` of the order of ``confidences`` draws from
      ``numpy.random.default_rng([seed, i, what])``).
    config: an :class:`EvidenceConfig`.
    delta: the challenge's delta.

  Returns:
    ``{"rows": {row: {"ulira_auc", "ulira_auc_ci", "delta_vs_chance", "forgetting_quality", "rmia_auc",
    "rmia_auc_ci", "identified", "verdict"}}, "power", "power_message", "evidence": AucEvidence per row,
    "null": the null's draws, "pvalues": per row}``; the last three are not JSON (:func:`json_part`).

  Example:
    >>> rng = np.random.default_rng(0)
    >>> c = {REFERENCE_ROW: rng.normal(size=(64, 100)), INDEPENDENT_RETRAIN_ROW: rng.normal(size=(64, 100)),
    ...      ORIGINAL_ROW: rng.normal(size=(64, 100)) + 3.0}
    >>> s = score_seed(c, np.arange(100), 0, EvidenceConfig(replicates=100, null_permutations=20,
    ...                                                     example_permutations=200))
    >>> s["power"]["powered"], s["rows"][ORIGINAL_ROW]["verdict"]
    (True, 'distinguishable')
  """
  ref = np.asarray(confidences[REFERENCE_ROW], np.float64)
  names = [r for r in confidences if r != REFERENCE_ROW]
  if ORIGINAL_ROW not in names or INDEPENDENT_RETRAIN_ROW not in names:
    raise FamrError(f"an audit's confidences need the rows {ORIGINAL_ROW!r} and {INDEPENDENT_RETRAIN_ROW!r}")
  order = {name: i for i, name in enumerate(confidences)}
  if config.paired:   # the sign-flip null of the original's pairs (the independent farm shares no pairs)
    null = pairs.paired_null(confidences[ORIGINAL_ROW], ref, _rng(seed, 0, 0), permutations=config.null_permutations)
  else:
    null = evidence.permutation_null(ref, confidences[INDEPENDENT_RETRAIN_ROW], _rng(seed, 0, 0),
                                     permutations=config.null_permutations)
  rows, ev, tested, pvalues = {}, {}, {}, {}
  for name in names:
    phi = np.asarray(confidences[name], np.float64)
    i = order[name]
    ev[name] = evidence.auc_evidence(phi, ref, _rng(seed, i, 1), replicates=config.replicates,
                                     paired=config.paired)
    rmia_ev = evidence.auc_evidence(phi, ref, _rng(seed, i, 2), replicates=config.replicates,
                                    paired=config.paired, scorer=rmia.rmia_scores)
    pvalues[name] = evidence.per_example_pvalues(phi, ref, _rng(seed, i, 3),
                                                 permutations=config.example_permutations, paired=config.paired)
    tested[name] = (pairs.paired_auc_evidence(phi, ref, _rng(seed, i, 4), replicates=config.replicates)
                    if config.paired else ev[name])
    rows[name] = {**_row_fields(ev[name], tested[name], config.paired),
                  "forgetting_quality": challenge.forgetting_quality(phi, ref, delta),
                  "rmia_auc": rmia_ev.auc, "rmia_auc_ci": list(rmia_ev.ci),
                  "identified": _identified(pvalues[name], forget_index, config.fdr)}
  pw = evidence.power(tested[ORIGINAL_ROW], null, margin=config.margin)
  _add_verdicts(rows, tested, pw, config)
  return {"rows": rows, "power": pw, "evidence": ev, "tested": tested, "null": null, "pvalues": pvalues}


def _row_fields(ulira_ev: evidence.AucEvidence, tested: evidence.AucEvidence, paired: bool) -> dict:
  """U-LiRA's fields; in a paired audit ``delta_vs_chance`` is the paired AUC's (what the verdict tests)."""
  row = ulira_ev.as_row()
  if paired:
    lo, hi = tested.ci
    row.update({"paired_auc": tested.auc, "paired_auc_ci": [lo, hi],
                "delta_vs_chance": {"mean": tested.delta, "ci": [lo - evidence.CHANCE, hi - evidence.CHANCE]}})
  return row


def _identified(pvalues: np.ndarray, forget_index: np.ndarray, fdr: float) -> dict:
  """The forget examples an attacker still identifies at BH ``fdr``: count and training-set indices."""
  hit = evidence.benjamini_hochberg(np.asarray(pvalues), fdr)
  return {"count": int(hit.sum()), "of": int(hit.size), "fdr": fdr,
          "indices": [int(i) for i in np.asarray(forget_index)[hit]]}


def _add_verdicts(rows: dict, ev: Mapping[str, Any], pw: dict, config: EvidenceConfig) -> None:
  for name, e in ev.items():
    rows[name]["verdict"] = evidence.verdict(e, margin=config.margin, powered=pw["powered"])


def pool_audits(seeds: Sequence[Mapping[str, Any]], config: EvidenceConfig = EvidenceConfig()) -> dict:
  """The farm seeds pooled (each its own forget set and models): the verdicts and the power gate.

  AUCs and their bootstrap replicates are the seeds' means (:func:`famr_jax.audit.evidence.pool_seeds`), the
  null's draws too; forgetting quality is the mean over seeds; the per-example list is Benjamini-Hochberg
  over every seed's forget examples together.

  Args:
    seeds: :func:`score_seed` results (with ``"forget_index"`` added).
    config: the :class:`EvidenceConfig` they were scored with.

  Returns:
    ``{"seeds", "rows": {row: fields as score_seed's}, "power"}``.
  """
  seeds = list(seeds)
  names = [n for n in seeds[0]["rows"] if all(n in s["rows"] for s in seeds)]
  null = np.mean([s["null"] for s in seeds], axis=0)
  rows, ev = {}, {}
  for name in names:
    ulira_ev = evidence.pool_seeds([s["evidence"][name] for s in seeds])
    ev[name] = evidence.pool_seeds([s.get("tested", s["evidence"])[name] for s in seeds])
    p = np.concatenate([s["pvalues"][name] for s in seeds])
    index = np.concatenate([s["forget_index"] for s in seeds])
    rows[name] = {**_row_fields(ulira_ev, ev[name], config.paired),
                  "forgetting_quality": float(np.mean([s["rows"][name]["forgetting_quality"] for s in seeds])),
                  "rmia_auc": float(np.mean([s["rows"][name]["rmia_auc"] for s in seeds])),
                  "identified": _identified(p, index, config.fdr)}
  pw = evidence.power(ev[ORIGINAL_ROW], null, margin=config.margin)
  _add_verdicts(rows, ev, pw, config)
  return {"seeds": len(seeds), "rows": rows, "power": pw}


def json_part(scored: Mapping[str, Any]) -> dict:
  """A :func:`score_seed` / :func:`audit_request` result without its arrays (what ``leaderboard.json`` keeps)."""
  return {k: v for k, v in scored.items() if k not in _ARRAYS}


_ARRAYS = ("evidence", "tested", "null", "pvalues", "confidences", "forget_index")


def write_audit_files(arrays: Sequence[Mapping[str, Any]], folder: str | os.PathLike) -> list[Path]:
  """Writes each farm seed's confidences as ``folder/seed_<k>.npz`` (a folder inside an output's staging).

  Each file holds one float64 ``[models, forget examples]`` array per row, named as the row
  (:data:`ORIGINAL_ROW`, :data:`REFERENCE_ROW`, :data:`INDEPENDENT_RETRAIN_ROW`, each method's name), and
  ``forget_index`` (the forget examples' training-set indices); ``numpy.load`` reads it without pickle.

  Args:
    arrays: per seed ``{"seed", "confidences": {row: array}, "forget_index"}`` (compare's ``audit_arrays``).
    folder: where the files go (created).

  Returns:
    The paths written.
  """
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  paths = []
  for entry in arrays:
    if FORGET_INDEX in entry["confidences"]:
      raise FamrError(f"a row may not be named {FORGET_INDEX!r} (the forget set's key in the audit files)")
    path = folder / f"seed_{int(entry['seed'])}.npz"
    np.savez(path, **{k: np.asarray(v, np.float64) for k, v in entry["confidences"].items()},
             **{FORGET_INDEX: np.asarray(entry["forget_index"], np.int64)})
    paths.append(path)
  return paths


def audit_request(apply_fn: Callable, model: Any, data: Any, forget: ForgetSet, train_config: TrainConfig,
                  method_configs: Mapping[str, Any], config: AuditConfig, key: jax.Array, *,
                  seed: int = 0, evidence_config: EvidenceConfig = EvidenceConfig(),
                  train_fn: Callable | None = None, show_progress: bool = False,
                  log: Callable[[str], None] | None = None) -> dict:
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
    seed: the farm seed (seeds the evidence's bootstrap, :func:`score_seed`).
    evidence_config: how the intervals and verdicts are computed.
    train_fn: the caller's own training, ``train_fn(x, y, key) -> params``, for every original, retrain and
      independent retrain instead of ``train_config``'s (:func:`famr_jax.audit.shadows.train_models`).
    show_progress: progress bars.
    log: one line per group.

  Returns:
    ``{"attack", "shadows", "rows": {row: scores}, "costs": {group: cost}, "power", "confidences": {row:
    [N, S]}, "forget_index", ...}``; rows are the methods, :data:`ORIGINAL_ROW` and
    :data:`INDEPENDENT_RETRAIN_ROW`; ``confidences`` also holds :data:`REFERENCE_ROW`.
  """
  log = log or (lambda line: None)
  config.validate()
  check_shadow_model(model, config.mode, tuple(method_configs))
  check_auditable(forget, tuple(method_configs), config.mode)
  check_train_fn(train_fn)
  if config.queries and np.ndim(data.x_train) != 4:
    raise FamrError(f"augmented queries need NHWC images, got training inputs of shape {np.shape(data.x_train)}")
  evidence_config = evidence_config._replace(paired=bool(config.paired))   # a fact of the farm
  n = int(config.shadows)
  t0 = time.perf_counter()
  farm = train_shadow_farm(model, apply_fn, data, forget, train_config, config, jax.random.fold_in(key, 0),
                           train_fn=train_fn, show_progress=show_progress)
  eval_key = jax.random.fold_in(key, 1)
  stats = farm.stats or {}
  outputs = lambda params, group: group_outputs(*evaluation_view(model, apply_fn, params, stats.get(group)), data,
                                                forget, eval_key, tuple(config.queries))
  groups = {REFERENCE_ROW: outputs(farm.retrains, "retrains"), ORIGINAL_ROW: outputs(farm.originals, "originals"),
            INDEPENDENT_RETRAIN_ROW: outputs(farm.independent_retrains, "independent_retrains")}
  costs = dict(farm.costs)
  log(f"audit seed {seed}: {3 * n} shadow models trained in {time.perf_counter() - t0:.1f} s "
      f"({costs['retrains']['per_model_s']:.3f} s per retrain, {costs['retrains']['mode']})")
  for i, (name, method_config) in enumerate(method_configs.items()):
    result = unlearn_farm(name, method_config, farm.originals, apply_fn, model, data, forget,
                          jax.random.fold_in(key, 100 + i), mode=config.mode, stats=stats.get("originals"),
                          show_progress=show_progress)
    costs[name] = cost_entry(result, n)
    groups[name] = outputs(result.params, "originals")   # an unlearned model keeps its original's statistics
  rows = {name: audit_pair(g, groups[REFERENCE_ROW], config) for name, g in groups.items() if name != REFERENCE_ROW}
  for name in method_configs:
    rows[name]["time_fraction"] = costs[name]["per_model_s"] / max(costs["retrains"]["per_model_s"], 1e-12)
  confidences = {name: g.phi for name, g in groups.items()}
  scored = score_seed(confidences, forget.indices, seed, evidence_config, delta=config.delta)
  for name, fields in scored["rows"].items():
    rows[name].update(fields)
  message = evidence.power_message(scored["power"], shadows=n, forget_examples=len(forget.indices),
                                   paired=evidence_config.paired)
  for name, r in rows.items():
    log(f"audit seed {seed}: {name:<28s} U-LiRA AUC {r['ulira_auc']:.3f} [{r['ulira_auc_ci'][0]:.3f}, "
        f"{r['ulira_auc_ci'][1]:.3f}]  forgetting quality {r['forgetting_quality']:.3f}  {r['verdict']}")
  log(f"audit seed {seed}: {message}")
  return {"attack": config.attack, "shadows": n, "fixed_variance": config.fixed_variance, "delta": config.delta,
          "margin": evidence_config.margin, "forget_examples": len(forget.indices), "rows": rows, "costs": costs,
          "power": scored["power"], "power_message": message, "confidences": confidences,
          "forget_index": np.asarray(forget.indices), "evidence": scored["evidence"], "null": scored["null"],
          "pvalues": scored["pvalues"]}


def lira_check(apply_fn: Callable, model: Any, data: Any, train_config: TrainConfig, config: AuditConfig,
               key: jax.Array, *, train_fn: Callable | None = None, show_progress: bool = False) -> dict:
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
  check_shadow_model(model)
  check_train_fn(train_fn)
  n, total = int(config.shadows), len(data.y_train)
  if total < 4:
    raise FamrError("LiRA needs at least 4 training examples")
  member = np.zeros((n, total), bool)
  perms = [np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.fold_in(key, 1), i), total))[:total // 2]
           for i in range(n)]
  for i, rows in enumerate(perms):
    member[i, rows] = True
  x, y = np.asarray(data.x_train, np.float32), np.asarray(data.y_train, np.int32)
  group = train_models(model, apply_fn, x, y, train_config, key, n, data.image_shape, rows=perms, mode=config.mode,
                       train_fn=train_fn, show_progress=show_progress, desc="shadows: LiRA halves")
  result = group.result
  logits = farm_logits(*evaluation_view(model, apply_fn, group.params, group.stats), x)
  phi = attacks.logit_confidence(logits, np.broadcast_to(y, logits.shape[:2]))
  return {"online": attacks.lira(phi, member).as_dict(),
          "offline": attacks.lira(phi, member, online=False).as_dict(),
          "online_fixed_variance": attacks.lira(phi, member, fixed_variance=True).as_dict(),
          "cost": cost_entry(result, n)}
