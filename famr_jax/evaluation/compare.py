"""Every method on the same model, scored against the retrained gold standard (Python API).

:func:`compare` runs each method on the same forget set of the same trained
model, retrains the gold standard with the caller's own recipe, and scores
every result by its distance to it (:mod:`famr_jax.evaluation.leaderboard`).
The CLI's ``famr-jax compare`` (:mod:`famr_jax.cli.compare_run`) is this plus
checkpoints, a cache of retrained models and files.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.audit import evidence
from famr_jax.audit.audit import EvidenceConfig, audit_request, json_part, pool_audits
from famr_jax.audit.shadows import AuditConfig, check_auditable, check_shadow_model, check_train_fn
from famr_jax.data.forget import ForgetSet
from famr_jax.errors import Diverged, FamrError
from famr_jax.evaluation.leaderboard import (ORIGINAL, gold_reference, metrics_line, score_against_gold,
                                             summarize)
from famr_jax.methods.registry import MethodSpec, UnlearnTask, get_method, with_overrides
from famr_jax.methods.resolve import Request, resolve, run_task
from famr_jax.theory.fisher import has_stored_fisher
from famr_jax.validation import check_config_class, check_images, check_labels, check_model, check_options

DEFAULT_METHODS = ("famr", "famr-retrain-target", "famr-fisher", "famr-curvature", "famr-function", "famr-plus",
                   "ft", "ga", "neggrad+", "rl", "salun", "scrub", "ssd")


class Gold(NamedTuple):
  """A retrained model and its cost (compilation excluded)."""
  params: Any
  run_s: float
  compile_s: float = 0.0
  apply_fn: Any = None   # the retrained model's own, when not the original's (BatchNorm statistics)


def _as_gold(out: Any, seconds: float) -> Gold:
  if isinstance(out, Gold):
    return out
  if hasattr(out, "params") and hasattr(out, "run_s"):   # a DescentResult
    return Gold(out.params, float(out.run_s), float(getattr(out, "compile_s", 0.0)))
  return Gold(out, seconds)


def read_json_file(path: str, what: str) -> Any:
  """The JSON value in the file ``path``; a missing or malformed file is one line naming ``what``."""
  try:
    return json.loads(Path(path).expanduser().read_text())
  except FileNotFoundError:
    raise FamrError(f"{what} {path} does not exist") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise FamrError(f"{what} {path} is not valid JSON: {e}") from None


def read_method_config(path: str | None) -> dict[str, dict[str, Any]]:
  """The per-method overrides of a ``--method-config`` JSON file (``{}`` for none)."""
  if path is None:
    return {}
  raw = read_json_file(path, "method config file")
  if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
    raise FamrError(f"method config file {path} must map method names to objects of options")
  return raw


def method_options(methods: Sequence[str], *, flags: Mapping[str, Any] | None = None,
                   per_method: Mapping[str, Mapping[str, Any]] | None = None,
                   option_name: Callable[[str], str] = str) -> dict[str, dict[str, Any]]:
  """Each compared method's options: the shared flags it has, then its JSON entry.

  ``retrain`` takes its JSON entry only (the shared flags never change the gold
  standard's recipe). Unknown methods (listed or in the JSON), a JSON option a
  method does not have and a flag no compared method has are one-line
  :class:`FamrError`s (``option_name`` spells an option in them: the CLI's
  flags); JSON entries of registered methods that are not compared are ignored
  (one file can serve several runs).

  Example:
    >>> method_options(["ga", "ssd"], flags={"lr": 0.1})
    {'ga': {'lr': 0.1}, 'ssd': {}}
  """
  flags, per_method = dict(flags or {}), dict(per_method or {})
  for name in per_method:   # entries for registered methods not compared now are kept for other runs
    get_method(name)
  used_flags: set[str] = set()
  options = {}
  for name in methods:
    fields = {f.name for f in dataclasses.fields(get_method(name).config_cls)}
    given = {} if name == "retrain" else {k: v for k, v in flags.items() if k in fields}
    used_flags |= set(given)
    own = dict(per_method.get(name, {}))
    check_options(own, fields, f"method {name!r} (method config file)")
    options[name] = {**given, **own}
  unused = sorted(set(flags) - used_flags)
  if unused:
    raise FamrError("no compared method has option " + ", ".join(option_name(f) for f in unused))
  return options


def resolve_configs(methods: Sequence[str], model_name: str, *, flags: Mapping[str, Any] | None = None,
                    per_method: Mapping[str, Mapping[str, Any]] | None = None,
                    train_config: Any = None, forget_kind: str = "classes", forget_size: int | None = None,
                    has_fisher: bool | None = None, checkpoint: str | None = None,
                    option_name: Callable[[str], str] = str) -> dict[str, Any]:
  """Each method's config for a request: :func:`method_options` resolved by :func:`famr_jax.methods.resolve.resolve`.

  ``retrain`` takes the checkpoint's training recipe (``train_config``) with its JSON entry.
  ``forget_size`` None resolves the kind's defaults unscaled (a check before the request is drawn).

  Example:
    >>> resolve_configs(["ga"], "lenet5", forget_kind="samples", forget_size=600, flags={"lr": 1e-4})["ga"].steps
    5
  """
  options = method_options(methods, flags=flags, per_method=per_method, option_name=option_name)
  fixed = {"retrain": with_overrides(train_config, options["retrain"])} if (
      "retrain" in options and train_config is not None) else {}
  return configs_for_request({name: get_method(name) for name in methods}, Request(forget_kind, forget_size),
                             model_name, options, fixed, has_fisher=has_fisher, checkpoint=checkpoint,
                             option_name=option_name)


def configs_for_request(specs: Mapping[str, MethodSpec], request: Request, model_name: str,
                        options: Mapping[str, Mapping[str, Any]], fixed: Mapping[str, Any], *,
                        model: bool = True, has_fisher: bool | None = None, checkpoint: str | None = None,
                        option_name: Callable[[str], str] = str) -> dict[str, Any]:
  """The config each method of a board runs on ``request``: ``fixed[name]`` as given, else resolved."""
  return {name: fixed[name] if name in fixed else
          resolve(spec, request, model_name, options.get(name), model=model, has_fisher=has_fisher,
                  checkpoint=checkpoint, option_name=option_name)[1]
          for name, spec in specs.items()}


def compare(methods: Sequence[str | MethodSpec], apply_fn: Callable, params: Any, data: Any,
            forget: ForgetSet | Callable[[int], ForgetSet], *,
            retrain: Callable[[np.ndarray, np.ndarray, jax.Array], Any], seeds: int = 1,
            configs: Mapping[str, Any] | None = None, model: Any = None, model_name: str = "",
            checkpoint: str | None = None, gold_fn: Callable[[int, ForgetSet], Gold] | None = None,
            show_progress: bool = False, log: Callable[[str], None] | None = None,
            extra_metrics: Callable[[Any], Mapping[str, float]] | None = None,
            audit: str | AuditConfig | None = None, shadows: int = 16, train_config: Any = None,
            audit_seeds: int = 3, audit_evidence: EvidenceConfig | None = None,
            audit_train_fn: Callable | None = None, input_shape: Sequence[int] | None = None,
            options: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
  """Runs ``methods`` on one trained model and scores each against a retrained model, per seed.

  Args:
    methods: registered method names (``famr_jax.method_names()``) or
      :class:`famr_jax.MethodSpec` objects (a method run without registering it; rows and
      configs go under its ``name``).
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: the trained params.
    data: a :class:`famr_jax.Dataset` (train and test arrays; the test set scores the models).
    forget: a :class:`famr_jax.ForgetSet`, or ``seed -> ForgetSet`` (a random request drawn per seed).
    retrain: ``retrain(x_retain, y_retain, key) -> params`` (or a ``DescentResult``): the user's own
      training recipe from a fresh init, the gold standard. Timed around the call unless it returns
      a ``DescentResult`` (then its compile-excluded ``run_s``).
    seeds: seeds 0, 1, ...: each retrains the gold standard and reruns every method with key ``seed``.
    configs: ``{method: config}``, each run as given (default: resolved per request as
      :func:`famr_jax.unlearn` resolves it: :func:`famr_jax.methods.resolve.resolve`).
    model: the Flax module, for methods that split the model (``famr-plus``'s frozen head).
    model_name: a famr-jax model name, for its tuned defaults ("" for the generic ones).
    checkpoint: the checkpoint directory, for methods that read stored extras (a diagonal Fisher).
    gold_fn: ``(seed, forget) -> Gold`` replacing ``retrain`` (the CLI's cache of retrained models).
    show_progress: progress bars.
    log: where one line per run goes (default: nowhere).
    extra_metrics: ``params -> {name: fraction}``: task-specific accuracies (e.g. on a stylized
      test set) measured on the retrained model, the original and every method; each row gets
      them as ``extra`` and their gaps to the retrained model (points) as ``extra_gaps``, and the
      summary as ``NAME`` and ``gap_NAME`` (the average gap stays the four metrics' mean).
    audit: ``"ulira"`` (or a :class:`famr_jax.audit.shadows.AuditConfig`): also audit every method on a farm
      of ``shadows`` shadow models per group (:func:`famr_jax.audit.audit.audit_request`); each row gains
      ``"audit"`` (U-LiRA AUC, TPR at 1% FPR, the challenge's forgetting quality and final score) and the
      board ``"audit"`` (per seed: the sanity rows, the farm's costs).
    shadows: shadow models per group of the audit (at least 2).
    train_config: the original's :class:`famr_jax.TrainConfig` (the shadow models' recipe; needed by ``audit``).
    audit_seeds: farm seeds 0, 1, ... of the audit, each with its own forget set (``forget(k)``; the same
      indices for a fixed request) and models; each is shown and the verdicts are made on them pooled
      (:func:`famr_jax.audit.audit.pool_audits`): ``"audit_pooled"`` and the board's ``"pick"``.
    audit_evidence: a :class:`famr_jax.audit.audit.EvidenceConfig` (the equivalence margin, bootstrap sizes).
    audit_train_fn: ``train_fn(x, y, key) -> params`` (``retrain``'s contract) training every shadow model.
    input_shape: ``(H, W, C)`` of one input, for data-free methods on model parts (default: the data's).
    options: ``{method: {field: value}}``, applied to the resolved defaults of methods without a config
      (an option equal to its resolved value changes nothing).

  Returns:
    The leaderboard (a method that fails is scored as diverged, its row records ``"error"``, the board
    goes on): ``{"model", "dataset", "forget", "methods", "seeds", "configs", "retrained", "runs",
    "summary"}`` (``forget``: the request's ``describe()``, with ``"per_seed"`` when drawn per seed; and
    ``"audit"``, ``"audit_pooled"``, ``"pick"``; not JSON, ``"audit_arrays"``: per farm seed its confidences).
  """
  log = log or (lambda line: None)
  specs = _specs(methods)
  methods = tuple(specs)
  _check_count("seeds", seeds)
  forget_of = _request_of_seed(forget, retrain, gold_fn)
  _check_inputs(apply_fn, params, data, dict(configs or {}), specs)
  fisher = has_stored_fisher(checkpoint)
  configs_of = lambda request: configs_for_request(   # noqa: E731 -- the one resolution of every request
      specs, Request.of(request), model_name, dict(options or {}), dict(configs or {}), model=model is not None,
      has_fisher=fisher, checkpoint=checkpoint)
  configs = configs_of(forget_of(0))   # every refusal before any work
  audit_config = _audit_config(audit, shadows, methods, forget_of(0), model, train_config, audit_train_fn,
                               audit_seeds)
  rows, gold_rows = [], []
  shape = tuple(int(d) for d in (input_shape if input_shape is not None else data.x_train.shape[1:]))
  for seed in range(int(seeds)):
    request = forget_of(seed)
    seed_configs = configs_of(request)
    gold = _seed_gold(seed, request, data, retrain, gold_fn)
    reference = gold_reference(gold.apply_fn or apply_fn, gold.params, data, request, params, seed)
    gold_extra = dict(extra_metrics(gold.params)) if extra_metrics is not None else None
    gold_rows.append({"seed": seed, "run_s": gold.run_s, "compile_s": gold.compile_s, "metrics": dict(reference.metrics),
                      **({"extra": gold_extra} if gold_extra else {})})
    log(f"seed {seed}: retrained in {gold.run_s:.1f} s (+{gold.compile_s:.1f} s compile): "
        + metrics_line(reference.metrics))
    rows.append(_row(seed, ORIGINAL, apply_fn, params, data, request, params, reference, gold, 0.0, 0.0, 0.0, log))
    _add_extra(rows[-1], params, extra_metrics, gold_extra)
    for name in methods:
      rows.append(_method_row(seed, name, specs[name], seed_configs[name], apply_fn, params, model, data, request,
                              reference, gold, checkpoint, shape, show_progress, log))
      _add_extra(rows[-1], rows[-1].pop("_params"), extra_metrics, gold_extra)
  board = {**_board_header(model_name, data, forget_of(0), callable(forget)),
           "methods": [ORIGINAL, *methods], "seeds": list(range(int(seeds))),
           "configs": {name: dataclasses.asdict(c) for name, c in configs.items() if dataclasses.is_dataclass(c)},
           "retrained": gold_rows, "runs": rows, "summary": summarize(rows)}
  if audit_config is not None:
    board.update(_audit_board(int(audit_seeds), forget_of, rows, apply_fn, model, data, train_config,
                              configs_of, audit_config, audit_evidence or EvidenceConfig(), show_progress, log,
                              audit_train_fn))
  return board




def _request_of_seed(forget, retrain, gold_fn) -> Callable[[int], ForgetSet]:
  """``seed -> ForgetSet`` of a compare call (a fixed request or a function of the seed), its inputs checked."""
  if retrain is None and gold_fn is None:
    raise FamrError("compare needs retrain(x_retain, y_retain, key), the gold standard's training recipe")
  if not isinstance(forget, ForgetSet) and not callable(forget):
    raise FamrError("forget must be a ForgetSet (famr_jax.forget_classes ...) or a function seed -> ForgetSet")
  return forget if callable(forget) else (lambda seed: forget)


def _board_header(model_name: str, data, first: ForgetSet, per_seed: bool) -> dict:
  """What a board is about, for :func:`famr_jax.evaluation.leaderboard.format_leaderboard`."""
  return {"model": model_name or "model", "dataset": getattr(data, "name", "data"),
          "forget": {**first.describe(), **({"per_seed": True} if per_seed else {})}}


def _specs(methods: Sequence[str | MethodSpec]) -> dict[str, MethodSpec]:
  """``{name: spec}`` of the listed methods (unknown names and repeats fail before any work)."""
  specs = {}
  for m in methods:
    spec = m if isinstance(m, MethodSpec) else get_method(m)
    if spec.name in specs:
      raise FamrError("a method is listed more than once in methods")
    specs[spec.name] = spec
  return specs


def _check_count(name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise FamrError(f"{name} must be a positive integer, got {value}")

def _method_row(seed, name, spec, config, apply_fn, params, model, data, request, reference, gold, checkpoint,
                shape, show_progress, log) -> dict:
  """One method's row of one seed (its params under ``"_params"``, for the extra metrics).

  A diverged method is scored as such (NaN params); any other failure also leaves its row, scored as
  diverged, with the error's one line under ``"error"``: the board goes on.
  """
  task = UnlearnTask(apply_fn, params, model, data, request, jax.random.key(seed), show_progress,
                     checkpoint=checkpoint, input_shape=shape)
  t0, error, row_fn = time.perf_counter(), None, apply_fn
  try:
    result = run_task(spec, task, config)
    new_params, run_s, compile_s = jax.block_until_ready(result.params), result.run_s, result.compile_s
    row_fn = getattr(result, "apply_fn", None) or apply_fn   # an ensemble (SISA) has its own
  except Exception as e:   # noqa: BLE001 -- one crashing method must not abort the whole board
    if not isinstance(e, Diverged):
      error = str(e) if isinstance(e, FamrError) else f"{type(e).__name__}: {e}".splitlines()[0][:300]
      log(f"seed {seed}: {name} failed: {error}")
    new_params = jax.tree.map(lambda a: jnp.full(jnp.shape(a), jnp.nan, jnp.result_type(a)), params)
    run_s, compile_s = time.perf_counter() - t0, 0.0
  row = _row(seed, name, row_fn, new_params, data, request, params, reference, gold, run_s, compile_s,
             time.perf_counter() - t0, log)
  if error is not None:
    row["error"] = error
  row["_params"] = new_params
  return row

def _check_inputs(apply_fn, params, data, configs: Mapping[str, Any], specs: Mapping[str, MethodSpec]) -> None:
  """Refuses data, a model or configs that compare cannot use, before any work."""
  if not all(hasattr(data, k) for k in ("x_train", "y_train", "x_test", "y_test", "num_classes")):
    raise FamrError("compare needs data as a famr_jax.Dataset (train and test arrays; the test set scores "
                    "the models)")
  check_images(data.x_train[:1], "data.x_train")
  check_labels(data.y_train, data.num_classes, "data.y_train")
  check_model(apply_fn, params, data.num_classes, data.x_train)
  for name, config in configs.items():
    if name in specs:
      check_config_class(config, name, specs[name].config_cls)


def _audit_config(audit, shadows, methods, first_request: ForgetSet, model, train_config,
                  train_fn, audit_seeds) -> AuditConfig | None:
  """The validated audit settings (None: no audit); every refusal before any work."""
  if audit is None:
    return None
  _check_count("audit_seeds", audit_seeds)
  config = audit if isinstance(audit, AuditConfig) else AuditConfig(attack=str(audit), shadows=shadows)
  config.validate()
  if model is None or (train_config is None and train_fn is None):
    raise FamrError("an audit trains shadow models: pass model and train_config (the original's recipe) or "
                    "audit_train_fn")
  check_shadow_model(model, config.mode, tuple(methods))
  check_train_fn(train_fn)
  check_auditable(first_request, tuple(methods), config.mode)
  return config


def _audit_board(audit_seeds, forget_of, rows, apply_fn, model, data, train_config, configs_of, config,
                 evidence_config, show_progress, log, train_fn=None) -> dict:
  """Audits every farm seed's request, pools them and picks; each method's scores go on its row of the same seed.

  The farm of seed ``k`` runs each method's config resolved for that seed's request (``configs_of``), the
  config the board's row of the same request runs."""
  seeds = []
  for k in range(audit_seeds):
    method_configs = configs_of(forget_of(k))
    result = audit_request(apply_fn, model, data, forget_of(k), train_config, method_configs, config,
                           jax.random.fold_in(jax.random.key(k), 14), seed=k, evidence_config=evidence_config,
                           train_fn=train_fn, show_progress=show_progress, log=log)
    for row in rows:
      if row["seed"] == k and row["method"] in result["rows"]:
        row["audit"] = result["rows"][row["method"]]
    seeds.append(result)
  pooled = pool_audits(seeds, evidence_config)
  pooled["power_message"] = evidence.power_message(pooled["power"], shadows=config.shadows,
                                                   forget_examples=sum(s["forget_examples"] for s in seeds),
                                                   paired=evidence_config.paired)
  log(f"audit, {audit_seeds} seeds pooled: {pooled['power_message']}")
  costs = {m: float(np.mean([s["rows"][m]["time_fraction"] for s in seeds])) for m in method_configs
           if m != "retrain"}   # the gold standard's recipe is no unlearning method: never the pick
  pick = evidence.pick({m: pooled["rows"][m]["verdict"] for m in costs}, costs)
  return {"audit": [{"seed": k, **json_part(s)} for k, s in enumerate(seeds)], "audit_pooled": pooled,
          "pick": pick,
          "audit_arrays": [{"seed": k, "confidences": s["confidences"], "forget_index": s["forget_index"]}
                           for k, s in enumerate(seeds)]}


def _seed_gold(seed: int, request: ForgetSet, data, retrain, gold_fn) -> Gold:
  if gold_fn is not None:
    return gold_fn(seed, request)
  keep = request.retain_mask(len(data.y_train))
  t0 = time.perf_counter()
  out = retrain(data.x_train[keep], data.y_train[keep], jax.random.fold_in(jax.random.key(seed), 7))
  jax.block_until_ready(out.params if hasattr(out, "params") else out)
  return _as_gold(out, time.perf_counter() - t0)


def _add_extra(row: dict, params, extra_metrics, gold_extra) -> None:
  """Adds the caller's ``extra`` metrics and their gaps to the retrained model to a row (NaN if diverged)."""
  if extra_metrics is None:
    return
  extra = ({k: float("nan") for k in gold_extra} if row["diverged"]
           else {k: float(v) for k, v in extra_metrics(params).items()})
  row["extra"] = extra
  row["extra_gaps"] = {k: 100.0 * abs(extra[k] - float(gold_extra[k])) for k in extra}


def _row(seed, name, apply_fn, new_params, data, request, params0, reference, gold: Gold, time_s, compile_s,
         wall_s, log) -> dict:
  s = score_against_gold(apply_fn, new_params, data, request, params0, reference, seed)
  row = {"seed": seed, "method": name, "metrics": dict(s.metrics), "gaps": s.gaps, "avg_gap": s.gaps["avg_gap"],
         "kl_to_retrained": s.kl, "time_s": time_s, "compile_s": compile_s, "wall_s": wall_s,
         "time_fraction": time_s / gold.run_s if gold.run_s > 0 else float("nan"), "diverged": s.diverged}
  log(f"seed {seed}: {name:<20s} avg gap {s.gaps['avg_gap']:5.2f}  KL {s.kl:.4f}  "
      f"time {100 * row['time_fraction']:.2f}% of retrain  " + metrics_line(s.metrics)
      + ("  (DIVERGED: non-finite params or logits)" if s.diverged else ""))
  return row
