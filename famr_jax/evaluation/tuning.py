"""Hyperparameters chosen without peeking: tuned on a calibration request, frozen, then applied to the audited one.

:func:`tune_on_calibration` draws a *calibration* forget request from its own
PRNG key, the same kind and size as the audited request(s) but disjoint from
them (a random set of other training examples; for a class request, other
classes), retrains the model without it once (the reference), and runs each
method's trials on it: its defaults first, then settings drawn from its search
grid (:data:`DEFAULT_SEARCH` or the caller's). Each trial is scored against
the retrain on the calibration request only:

``score = avg_gap + 100 * KS``

``avg_gap`` is the leaderboard's mean accuracy gap to the retrained model
(forget, retain, test, MIA; points) and ``KS`` the two-sample Kolmogorov-Smirnov
distance between the forget set's logit-scaled confidences (the challenge's,
what U-LiRA reads) under the method and under the retrain: a method must match
the retrain's per-example confidence distribution, not only its accuracies.
The lowest score wins (trials over ``max_cost_fraction`` of the retrain's
cost are not eligible); its full config is frozen. The budget is stated in the
result: trials per method and a wall-clock limit (no trial starts after it;
each method runs at least its defaults). The audited forget sets are never
used: the result records the calibration indices so that a caller can check.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from famr_jax.audit.challenge import challenge_confidence
from famr_jax.data.forget import ForgetSet, forget_classes, forget_samples
from famr_jax.engine.forward import batched_apply
from famr_jax.errors import FamrError
from famr_jax.evaluation.compare import Gold
from famr_jax.evaluation.leaderboard import gold_reference, score_against_gold
from famr_jax.methods.registry import UnlearnTask, get_method
from famr_jax.methods.resolve import Request, resolve_config, run_task
from famr_jax.validation import check_options

# Each method's search grid (data, not code). Step-budget methods search their budget and step size; the
# Deep Unlearn methods their epochs and rates; Langevin its noise and step; SISA has nothing to tune.
_BUDGETS = {"steps": (5, 25, 100), "lr": (1e-4, 3e-4, 1e-3, 3e-3)}
DEFAULT_SEARCH: dict[str, dict[str, tuple]] = {
    "famr": dict(_BUDGETS, lam=(0.01, 0.1, 1.0)),
    "famr-calibrated": dict(_BUDGETS, lam=(0.01, 0.1, 1.0), calibration=("quantile", "temperature")),
    "famr-function": dict(_BUDGETS, retain_weight=(1.0, 3.0)),
    "ft": _BUDGETS, "ga": _BUDGETS, "rl": _BUDGETS, "salun": _BUDGETS, "scrub": _BUDGETS,
    "neggrad+": dict(_BUDGETS, w_f=(0.05, 0.2, 0.5)),
    "neggrad+du": dict(epochs=(1, 2, 5, 10), lr=(1e-3, 3e-3, 1e-2), w_f=(0.02, 0.05, 0.1)),
    "msg": dict(epochs=(1, 2, 5), lr=(1e-3, 3e-3, 1e-2), init_rate=(0.1, 0.3, 0.5)),
    "ct": dict(epochs=(1, 2, 3), lr=(1e-3, 3e-3, 1e-2)),
    "langevin": dict(epochs=(1, 2, 5), lr=(0.01, 0.05), sigma=(0.001, 0.01, 0.03)),
    "ssd": dict(selection_weight=(1.0, 5.0, 10.0), dampening=(0.1, 1.0)),
    "sisa": {},
}


class TuningResult(NamedTuple):
  """What :func:`tune_on_calibration` chose and how.

  Attributes:
    configs: method -> its frozen config (the best trial's).
    frozen: method -> that config as a JSON object (``compare --method-config``'s format).
    trials: method -> one record per trial (``overrides``, ``score``, ``avg_gap``, ``ks``, ``run_s``,
      ``cost_fraction``, ``eligible``, and ``error`` where it failed).
    calibration: the calibration request.
    budget: ``trials`` (per method, asked), ``seconds`` (the limit, or None), ``seconds_spent``,
      ``retrain_s`` (the reference retrain's run time), ``trials_run`` (per method).
  """
  configs: dict
  frozen: dict
  trials: dict
  calibration: ForgetSet
  budget: dict


def calibration_request(audited: Sequence[ForgetSet], y_train: np.ndarray, num_classes: int,
                        key: jax.Array) -> ForgetSet:
  """A request like ``audited[0]`` (kind and size), drawn from ``key``, disjoint from every audited one.

  Example:
    >>> import jax, numpy as np
    >>> y = np.arange(20) % 4
    >>> a = forget_samples([0, 1, 2], 20, 4)
    >>> c = calibration_request([a], y, 4, jax.random.key(0))
    >>> len(c.indices), set(c.indices.tolist()) & {0, 1, 2}
    (3, set())
  """
  if not audited:
    raise FamrError("tuning needs the audited request(s), to keep the calibration request apart from them")
  first = audited[0]
  if first.kind == "classes":
    used = {int(c) for f in audited for c in f.classes}
    free = np.array([c for c in range(num_classes) if c not in used])
    if len(free) < len(first.classes):
      raise FamrError(f"a calibration class request needs {len(first.classes)} classes outside the audited "
                      f"ones, and only {len(free)} remain")
    pick = np.sort(np.asarray(jax.random.choice(key, free, (len(first.classes),), replace=False)))
    return forget_classes(y_train, [int(c) for c in pick], num_classes)
  used = np.unique(np.concatenate([np.asarray(f.indices, np.int64) for f in audited]))
  free = np.setdiff1d(np.arange(len(y_train)), used)
  n = len(first.indices)
  if len(free) < n:
    raise FamrError(f"a calibration request of {n} examples needs as many outside the audited ones; "
                    f"{len(free)} remain")
  pick = np.sort(np.asarray(jax.random.choice(key, free, (n,), replace=False)))
  return forget_samples(pick.tolist(), len(y_train), num_classes)


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
  """The two-sample Kolmogorov-Smirnov statistic ``sup_t |F_a(t) - F_b(t)|``.

  Example:
    >>> ks_distance(np.array([0.0, 1.0]), np.array([0.0, 1.0])), ks_distance(np.array([0.0]), np.array([5.0]))
    (0.0, 1.0)
  """
  a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
  grid = np.concatenate([a, b])
  fa = np.searchsorted(a, grid, side="right") / len(a)
  fb = np.searchsorted(b, grid, side="right") / len(b)
  return float(np.max(np.abs(fa - fb)))


def trial_grid(search: Mapping[str, Sequence[Any]], key: jax.Array) -> list[dict]:
  """Override dicts: ``{}`` (the defaults) first, then every grid point in a random order.

  Example:
    >>> import jax
    >>> g = trial_grid({"lr": (0.1, 0.2), "steps": (5,)}, jax.random.key(0))
    >>> g[0], sorted(d["lr"] for d in g[1:])
    ({}, [0.1, 0.2])
  """
  names = sorted(search)
  points = [dict(zip(names, values)) for values in itertools.product(*(tuple(search[n]) for n in names))]
  points = [p for p in points if p]
  order = np.asarray(jax.random.permutation(key, len(points))) if points else []
  return [{}] + [points[int(i)] for i in order]


def _as_gold(out: Any, seconds: float) -> Gold:
  if isinstance(out, Gold):
    return out
  if hasattr(out, "params") and hasattr(out, "run_s"):
    return Gold(out.params, float(out.run_s), float(getattr(out, "compile_s", 0.0)), getattr(out, "apply_fn", None))
  return Gold(out, seconds)


def _check(methods, search, trials, seconds, max_cost_fraction, model_name, kind, n) -> dict:
  """Every trial's config, built and validated before any work: method -> list of (overrides, config)."""
  if not methods:
    raise FamrError("name at least one method to tune")
  if isinstance(trials, bool) or int(trials) != trials or trials < 1:
    raise FamrError(f"trials must be a positive integer, got {trials}")
  if seconds is not None and not seconds > 0:
    raise FamrError(f"seconds must be positive (or None), got {seconds}")
  if max_cost_fraction is not None and not max_cost_fraction > 0:
    raise FamrError(f"max_cost_fraction must be positive (or None), got {max_cost_fraction}")
  out = {}
  for name in methods:
    spec = get_method(name)
    grid = (search or {}).get(name, DEFAULT_SEARCH.get(name, {}))
    check_options(grid, [f.name for f in dataclasses.fields(spec.config_cls)], f"method {name!r} (its search grid)")
    out[name] = (resolve_config(spec, Request(kind, n), model_name), grid)   # the config unlearn would run
  return out


def tune_on_calibration(methods: Sequence[str], apply_fn: Callable, params: Any, data: Any,
                        audited: ForgetSet | Sequence[ForgetSet], *, key: jax.Array,
                        retrain: Callable | None = None, gold_fn: Callable[[ForgetSet], Any] | None = None,
                        model: Any = None, model_name: str = "", search: Mapping[str, Mapping] | None = None,
                        trials: int = 8, seconds: float | None = None, max_cost_fraction: float | None = None,
                        log: Callable[[str], None] | None = None) -> TuningResult:
  """Tunes each method on a calibration request against a retrain, and freezes the best settings.

  Args:
    methods: registered method names.
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: the trained params (the same checkpoint the audited request unlearns from).
    data: the :class:`famr_jax.Dataset`.
    audited: the audited request(s); the calibration request is disjoint from all of them.
    key: PRNG key: the calibration draw, the trials' order and the methods' keys derive from it.
    retrain: ``retrain(x_retain, y_retain, key) -> params`` (or a ``DescentResult``): the training recipe.
    gold_fn: ``forget -> Gold`` instead of ``retrain`` (e.g. the CLI's BatchNorm-aware retrain).
    model: the Flax module (methods that need it).
    model_name: a famr-jax model name, for the methods' defaults.
    search: method -> ``{option: values}`` grid (default :data:`DEFAULT_SEARCH`).
    trials: trials per method (distinct configs), its defaults included.
    seconds: wall-clock budget for all trials (None: no limit); each method runs at least one trial.
    max_cost_fraction: trials whose run time exceeds this fraction of the retrain's are not eligible.
    log: where one line per trial goes.

  Returns:
    A :class:`TuningResult`.

  Example:
    >>> import jax, numpy as np
    >>> from famr_jax import models, load_dataset, forget_samples, TrainConfig
    >>> from famr_jax.engine.training import train_classifier
    >>> d = load_dataset("digits"); d = d._replace(x_train=d.x_train[:200], y_train=d.y_train[:200])
    >>> m = models.create_model("logistic", 10, d.image_shape); f = models.make_apply_fn(m)
    >>> fit = lambda x, y, k: train_classifier(f, models.init_params(m, k, d.image_shape), x, y,
    ...                                         TrainConfig(epochs=3), k, show_progress=False)
    >>> p = fit(d.x_train, d.y_train, jax.random.key(0)).params
    >>> audited = forget_samples(list(range(10)), 200, 10)
    >>> r = tune_on_calibration(["ga"], f, p, d, audited, key=jax.random.key(1), retrain=fit, trials=2)
    >>> len(r.trials["ga"]), set(r.calibration.indices.tolist()) & set(range(10))
    (2, set())
  """
  log = log or (lambda line: None)
  audited = [audited] if isinstance(audited, ForgetSet) else list(audited)
  if retrain is None and gold_fn is None:
    raise FamrError("tuning needs retrain(x_retain, y_retain, key) or gold_fn(forget), the reference retrain")
  calib = calibration_request(audited, data.y_train, data.num_classes, jax.random.fold_in(key, 0))
  plans = _check(methods, search, trials, seconds, max_cost_fraction, model_name, calib.kind, len(calib.indices))
  t_start = time.perf_counter()
  gold = _reference(calib, data, retrain, gold_fn, jax.random.fold_in(key, 1))
  ref = gold_reference(gold.apply_fn or apply_fn, gold.params, data, calib, params, 0)
  xf, yf = np.asarray(data.x_train[calib.indices]), np.asarray(data.y_train[calib.indices])
  conf_ref = challenge_confidence(np.asarray(batched_apply(gold.apply_fn or apply_fn, gold.params, xf)), yf)
  configs, frozen, records, runs = {}, {}, {}, {}
  for mi, name in enumerate(methods):
    _, grid = plans[name]
    spec, rows, best, tried = get_method(name), [], None, []
    for overrides in trial_grid(grid, jax.random.fold_in(jax.random.fold_in(key, 2), mi)):
      ti = len(rows)
      if ti >= trials or (ti > 0 and seconds is not None and time.perf_counter() - t_start > seconds):
        break
      config = resolve_config(spec, Request(calib.kind, len(calib.indices)), model_name, overrides)
      if config in tried:   # a grid point equal to the defaults (or to another point) runs once
        continue
      tried.append(config)
      row = _trial(spec, config, overrides, apply_fn, params, model, data, calib, ref, conf_ref, gold,
                   jax.random.fold_in(jax.random.fold_in(key, 3), ti), xf, yf, max_cost_fraction)
      rows.append(row)
      log(f"tune {name} trial {ti}: {overrides or 'defaults'}: " +
          (f"error: {row['error']}" if "error" in row else
           f"score {row['score']:.2f} (gap {row['avg_gap']:.2f}, KS {row['ks']:.3f}), "
           f"{100 * row['cost_fraction']:.1f}% of the retrain"))
      if row["eligible"] and (best is None or (row["score"], row["run_s"]) < (best[0]["score"], best[0]["run_s"])):
        best = (row, config)
    records[name], runs[name] = rows, len(rows)
    if best is not None:
      configs[name] = best[1]
      frozen[name] = dataclasses.asdict(best[1])
  budget = {"trials": int(trials), "seconds": seconds, "seconds_spent": time.perf_counter() - t_start,
            "retrain_s": gold.run_s, "trials_run": runs, "max_cost_fraction": max_cost_fraction}
  return TuningResult(configs, frozen, records, calib, budget)


def _reference(calib: ForgetSet, data, retrain, gold_fn, key) -> Gold:
  if gold_fn is not None:
    return _as_gold(gold_fn(calib), 0.0)
  keep = calib.retain_mask(len(data.y_train))
  t0 = time.perf_counter()
  out = retrain(data.x_train[keep], data.y_train[keep], key)
  jax.block_until_ready(out.params if hasattr(out, "params") else out)
  return _as_gold(out, time.perf_counter() - t0)


def _trial(spec, config, overrides, apply_fn, params, model, data, calib, ref, conf_ref, gold, key, xf, yf,
           max_cost_fraction) -> dict:
  """One trial's record: the method on the calibration request, scored against the retrain."""
  row: dict[str, Any] = {"overrides": dict(overrides)}
  task = UnlearnTask(apply_fn, params, model, data, calib, key, False, input_shape=tuple(data.image_shape))
  try:
    config.validate() if hasattr(config, "validate") else None
    result = run_task(spec, task, config)
  except FamrError as e:
    return {**row, "error": str(e), "eligible": False, "score": float("inf")}
  row_fn = getattr(result, "apply_fn", None) or apply_fn
  s = score_against_gold(row_fn, result.params, data, calib, params, ref, 0)
  if s.diverged:
    return {**row, "error": "diverged", "eligible": False, "score": float("inf"), "run_s": result.run_s}
  conf = challenge_confidence(np.asarray(batched_apply(row_fn, result.params, xf)), yf)
  ks = ks_distance(conf, conf_ref)
  fraction = result.run_s / gold.run_s if gold.run_s > 0 else float("nan")
  eligible = max_cost_fraction is None or fraction <= max_cost_fraction
  return {**row, "score": float(s.gaps["avg_gap"]) + 100.0 * ks, "avg_gap": float(s.gaps["avg_gap"]), "ks": ks,
          "test_acc": float(s.metrics["test_acc"]), "run_s": float(result.run_s), "cost_fraction": fraction,
          "eligible": bool(eligible)}
