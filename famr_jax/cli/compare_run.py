"""``famr-jax compare``: :func:`famr_jax.evaluation.compare.compare` on a checkpoint, with files.

For each seed, the gold standard is the checkpoint's own training recipe
retrained on the retained data (:func:`famr_jax.cli.runs.retrain_gold_standard`),
optionally from a cache of retrained checkpoints. Writes ``leaderboard.json``
(every seed and method), ``leaderboard.md`` (mean ± std over seeds) and
``leaderboard.png`` (average gap vs time fraction), through a staging directory; with an audit also
``audit/seed_<k>.npz`` (each farm seed's confidences, :func:`famr_jax.audit.audit.write_audit_files`) and
``audit.png`` (:func:`famr_jax.evaluation.audit_plot.plot_audit`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from famr_jax.audit.audit import EvidenceConfig, write_audit_files
from famr_jax.audit.shadows import AuditConfig
from famr_jax.evaluation.audit_plot import plot_audit
from famr_jax.data.forget import ForgetSet, class_indices, forget_classes, forget_random
from famr_jax.errors import FamrError
from famr_jax.validation import CheckedFields
from famr_jax.evaluation.compare import (DEFAULT_METHODS, Gold, compare, method_options, read_method_config,
                                        resolve_configs)
from famr_jax.methods.registry import get_method
from famr_jax.methods.resolve import class_only_reason
from famr_jax.evaluation.leaderboard import format_leaderboard, plot_leaderboard
from famr_jax.evaluation.report import write_json
from famr_jax.io import checkpoints
from famr_jax.io.outputs import portable_path
from famr_jax.engine.resume import data_digest
from famr_jax.io.outputs import check_disjoint, check_output_target, staged_directory
from famr_jax import models
from famr_jax.workflows import load_model, original_recipe, retrain_gold_standard, stats_extras
from famr_jax.version import __version__


@dataclasses.dataclass(frozen=True)
class CompareRun(CheckedFields):
  """``famr-jax compare``: a leaderboard of unlearning methods against the retrained model.

  Attributes:
    checkpoint: the trained model (its metadata names data set, model and training recipe).
    out: output directory (leaderboard.json, leaderboard.md, leaderboard.png).
    methods: registered method names to compare (default: every FAMR variant and baseline but retrain).
    forget_classes: classes to forget: ids or the data set's class names (``3,Bag``).
    forget_random: fraction of the training set to forget at random (drawn per seed).
    seeds: number of seeds (0, 1, ...): each retrains the gold standard and reruns every method.
    method_config: JSON file {method: {option: value}} of per-method hyperparameters.
    overwrite: replace ``out`` if it exists.
    gold_cache: directory of retrained gold-standard checkpoints, reused when the checkpoint,
      forget set, seed and recipe match (the retrain is deterministic); new ones are added.
    audit: ``ulira``: also audit every method on a farm of shadow models (U-LiRA AUC, TPR at 1% FPR,
      the NeurIPS 2023 unlearning challenge's forgetting quality and final score).
    shadows: shadow models per group of the audit (at least 2; 16 to 256 is typical).
    audit_seeds: farm seeds of the audit, each with its own forget set and models: each is shown, the
      verdicts and the pick are made on them pooled; ``audit/seed_<k>.npz`` holds each seed's confidences.
    audit_margin: the equivalence margin on U-LiRA's AUC - 0.5 (a row within it is "equivalent to
      retraining" by two one-sided tests at 5%).
  """
  checkpoint: str
  out: str
  methods: tuple[str, ...] = ()
  forget_classes: tuple[int | str, ...] = ()
  forget_random: float | None = None
  seeds: int = 3
  method_config: str | None = None
  overwrite: bool = False
  gold_cache: str | None = None
  audit: str | None = None
  shadows: int = 16
  audit_seeds: int = 3
  audit_margin: float = 0.02


def content_digest(loaded) -> str:
  """A digest of what a checkpoint *is*: its model, its params' bytes and its training data.

  The gold cache is keyed by this, not by the checkpoint's path, so a checkpoint replaced at the same
  path (or its data set changed) never reuses a stale retrain.
  """
  import hashlib
  h = hashlib.blake2b(digest_size=16)
  h.update(json.dumps({"model": loaded.metadata.get("model"), "classes": loaded.metadata.get("num_classes"),
                       "overrides": loaded.metadata.get("model_overrides") or {}},
                      sort_keys=True, default=str).encode())
  for path, leaf in jax.tree_util.tree_flatten_with_path(loaded.params)[0]:
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{jax.tree_util.keystr(path)}{a.shape}{a.dtype.str}".encode())
    h.update(a.tobytes())
  h.update(data_digest([loaded.data.x_train, loaded.data.y_train]).encode())
  return h.hexdigest()


def _gold_key(content: str, forget: ForgetSet, seed: int, train_config: Any) -> str:
  """A digest of what determines the gold-standard retrain (its cache key): the checkpoint's and the
  data's contents (:func:`content_digest`), the recipe, the seed and the forget set."""
  import hashlib
  h = hashlib.blake2b(digest_size=10)
  h.update(json.dumps({"content": content, "seed": seed,
                       "train": dataclasses.asdict(train_config), "kind": forget.kind,
                       "classes": list(forget.classes)}, sort_keys=True).encode())
  h.update(np.ascontiguousarray(forget.indices, np.int64).tobytes())
  return f"seed{seed}-{h.hexdigest()}"


def gold_standard(run: CompareRun, loaded, forget: ForgetSet, seed: int, train_config: Any,
                  show_progress: bool, log=print, content: str | None = None) -> Gold:
  """The retrained model of one seed, from ``run.gold_cache`` when there."""
  path = None
  if run.gold_cache:
    content = content or content_digest(loaded)
    path = Path(run.gold_cache).expanduser().resolve() / _gold_key(content, forget, seed, train_config)
    if path.is_dir():
      try:
        restored = checkpoints.load_checkpoint(path, template=loaded.params)
        info = restored.metadata["gold"]
        log(f"seed {seed}: gold standard from the cache {path}")
        stats = restored.extras.get(models.BATCH_STATS)
        gold_apply_fn = None if stats is None else models.make_apply_fn(models.with_batch_stats(loaded.model, stats))
        return Gold(restored.params, float(info["run_s"]), float(info["compile_s"]), gold_apply_fn)
      except (FamrError, KeyError, TypeError, ValueError) as e:   # a damaged entry: retrain, replace it
        log(f"seed {seed}: ignoring the damaged cache entry {path} ({str(e).splitlines()[0][:120]})")
  gold = retrain_gold_standard(loaded.model, loaded.apply_fn, loaded.data, forget, train_config, seed,
                               show_progress)
  if path is not None:
    try:
      checkpoints.save_checkpoint(path, gold.params, {"gold": {"seed": seed, "run_s": gold.run_s,
                                                               "compile_s": gold.compile_s,
                                                               "forget": forget.describe(),
                                                               "checkpoint": str(Path(run.checkpoint).resolve())}},
                                  extras=stats_extras(gold.model), overwrite=True)
    except FamrError as e:   # the cache is an optimization: a busy or foreign entry is reported, not fatal
      log(f"seed {seed}: not cached ({e})")
  return Gold(gold.params, gold.run_s, gold.compile_s,
              gold.apply_fn if models.has_batch_norm(loaded.model) else None)


def check_forget_request(run: CompareRun) -> None:
  """Exactly one forget request, and a random fraction strictly inside (0, 1)."""
  if bool(run.forget_classes) == (run.forget_random is not None):
    raise FamrError("name exactly one forget set: --forget-classes or --forget-random")
  if run.forget_random is not None and not 0.0 < float(run.forget_random) < 1.0:
    raise FamrError(f"--forget-random must lie strictly between 0 and 1, got {run.forget_random}")
  if run.seeds <= 0:
    raise FamrError(f"--seeds must be positive, got {run.seeds}")


def seed_forget_set(run: CompareRun, data, seed: int) -> ForgetSet:
  """The forget set of one seed: the classes, or a random draw (as ``famr-jax unlearn --seed``)."""
  if run.forget_classes:
    return forget_classes(data.y_train, run.forget_classes, data.num_classes, class_names=data.class_names)
  return forget_random(jax.random.fold_in(jax.random.key(seed), 1), run.forget_random,
                       len(data.y_train), data.num_classes)


def drop_class_only(methods: tuple[str, ...], configs: dict, forget_kind: str, default_list: bool,
                    log=print) -> tuple[tuple[str, ...], dict]:
  """For a sample request: the default list skips methods that forget whole classes only (one line says
  which); a list the user gave that names one is refused. Checked before any work."""
  if forget_kind != "samples":
    return methods, configs
  refused = {m: class_only_reason(get_method(m), configs[m]) for m in methods}
  refused = {m: why for m, why in refused.items() if why}
  if not refused:
    return methods, configs
  if not default_list:
    name, why = next(iter(refused.items()))
    raise FamrError(f"method {name!r} cannot forget random samples ({why}); leave it out of --methods")
  log(f"{', '.join(refused)} left out: they forget whole classes only")
  kept = tuple(m for m in methods if m not in refused)
  return kept, {m: configs[m] for m in kept}


def board_plan(run: CompareRun, metadata: dict, train_config: Any, *, flags: Mapping[str, Any] | None = None,
               per_method: Mapping[str, Mapping[str, Any]] | None = None,
               log=print) -> tuple[tuple[str, ...], dict, dict]:
  """``(methods, options, fixed)`` of a board, every refusal before any work.

  ``options`` are each method's options (:func:`famr_jax.evaluation.compare.method_options`), which
  :func:`famr_jax.compare` resolves for each drawn request as :func:`famr_jax.unlearn` does; ``fixed``
  holds the configs run as given (``retrain``: the checkpoint's recipe with its JSON entry).
  """
  has_fisher = "fisher" in metadata.get("extras", {})
  methods = tuple(run.methods)
  default_list = not methods
  if not methods:
    methods = DEFAULT_METHODS
    needing = [m for m in methods if "fisher" in get_method(m).needs]
    if not has_fisher and needing:   # the default list runs on a fresh checkpoint: leave out what needs a Fisher
      methods = tuple(m for m in methods if m not in needing)
      log(f"{', '.join(needing)} left out: {run.checkpoint} has no stored Fisher "
          f"(famr-jax fisher --checkpoint {run.checkpoint} adds it)")
  if len(set(methods)) != len(methods):
    raise FamrError("a method is listed more than once in --methods")
  forget_kind = "classes" if run.forget_classes else "samples"
  flag_name = lambda f: "--" + f.replace("_", "-")   # noqa: E731
  # The kind's configs, checked before any work (the step budgets are resolved per drawn request, in compare);
  # class-only methods are dropped before the capability check refuses them.
  configs = resolve_configs(methods, metadata.get("model", ""), flags=flags, per_method=per_method,
                            train_config=train_config, forget_kind="classes", option_name=flag_name)
  methods, configs = drop_class_only(methods, configs, forget_kind, default_list, log)
  configs = resolve_configs(methods, metadata.get("model", ""), flags=flags, per_method=per_method,
                            train_config=train_config, forget_kind=forget_kind, has_fisher=has_fisher,
                            checkpoint=run.checkpoint, option_name=flag_name)
  options = method_options(methods, flags=flags, per_method=per_method, option_name=flag_name)
  return methods, options, ({"retrain": configs["retrain"]} if "retrain" in configs else {})


def run_compare(run: CompareRun, *, flags: Mapping[str, Any] | None = None, show_progress: bool = True,
                log=print) -> dict:
  """Runs the leaderboard of a checkpoint and writes it to ``run.out``.

  Args:
    run: a :class:`CompareRun`.
    flags: method options given on the command line (applied to every compared
      method that has the option; ``--method-config`` entries override them).
    show_progress: progress bars.
    log: where the per-run lines go.

  Returns:
    The leaderboard (as written to ``leaderboard.json``).
  """
  check_forget_request(run)
  per_method = read_method_config(run.method_config)
  check_output_target(run.out, run.overwrite, inputs=(run.checkpoint,))
  if run.gold_cache:
    check_disjoint(run.out, run.gold_cache, "the output", "the gold cache")
    check_disjoint(run.checkpoint, run.gold_cache, "the checkpoint", "the gold cache")
  metadata, train_config = original_recipe(run.checkpoint, "compare")
  methods, options, fixed = board_plan(run, metadata, train_config, flags=flags, per_method=per_method, log=log)
  for name in ("shadows", "audit_seeds", "audit_margin"):
    if run.audit is None and getattr(run, name) != getattr(CompareRun, name):
      raise FamrError(f"--{name.replace('_', '-')} sizes an audit: add --audit ulira")
  if run.audit is not None:
    AuditConfig(attack=run.audit, shadows=run.shadows).validate()
    if run.audit_seeds <= 0:
      raise FamrError(f"--audit-seeds must be positive, got {run.audit_seeds}")
    if not 0.0 < run.audit_margin < 0.5:
      raise FamrError(f"--audit-margin must lie strictly between 0 and 0.5, got {run.audit_margin}")

  with staged_directory(run.out, run.overwrite, command="compare", inputs=(run.checkpoint,)) as staging:
    board = _run_board(run, methods, options, fixed, train_config, metadata, show_progress, log)
    arrays = board.pop("audit_arrays", None)
    if arrays is not None:
      write_audit_files(arrays, staging / "audit")
      plot_audit(board, staging / "audit.png")
    write_json(staging / "leaderboard.json", board)
    (staging / "leaderboard.md").write_text(format_leaderboard(board) + "\n")
    plot_leaderboard(board, staging / "leaderboard.png")
  return board


def _run_board(run: CompareRun, methods, options, fixed, train_config, metadata, show_progress: bool, log) -> dict:
  """Every method and seed against the retrained gold standard: the leaderboard's contents (each method's
  config resolved by :func:`famr_jax.compare` for each drawn request, as :func:`famr_jax.unlearn` resolves it)."""
  loaded = load_model(run.checkpoint)
  if run.forget_classes:   # names (--forget-classes Bag) become the data set's ids
    run = dataclasses.replace(run, forget_classes=class_indices(run.forget_classes, loaded.data.class_names))
  content = content_digest(loaded) if run.gold_cache else None
  checkpoint = str(Path(run.checkpoint).expanduser().resolve())
  board = compare(methods, loaded.apply_fn, loaded.params, loaded.data,
                  lambda seed: seed_forget_set(run, loaded.data, seed), retrain=None, seeds=run.seeds,
                  configs=fixed, options=options, model=loaded.model, model_name=metadata.get("model", ""),
                  checkpoint=checkpoint, show_progress=show_progress, log=log,
                  gold_fn=lambda seed, forget: gold_standard(run, loaded, forget, seed, train_config,
                                                             show_progress, log, content),
                  audit=run.audit, shadows=run.shadows, train_config=train_config, audit_seeds=run.audit_seeds,
                  audit_evidence=EvidenceConfig(margin=run.audit_margin))
  board = {
      "famr_jax_version": __version__, "checkpoint": portable_path(checkpoint), "dataset": loaded.data.name,
      "model": metadata.get("model"),
      "forget": ({"kind": "classes", "classes": list(run.forget_classes)} if run.forget_classes
                 else {"kind": "random", "fraction": float(run.forget_random)}),
      **{k: v for k, v in board.items() if k not in ("model", "dataset", "forget")},
      "train_config": dataclasses.asdict(train_config)}
  return board
