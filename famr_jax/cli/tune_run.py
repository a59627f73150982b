"""``famr-jax tune``: :func:`famr_jax.evaluation.tuning.tune_on_calibration` on a checkpoint, with files.

The audited requests are the ones ``famr-jax compare`` with the same forget
flags, ``--seeds`` and ``--audit-seeds`` draws; the calibration request is
disjoint from all of them. Writes ``tuned.json`` (each method's frozen config,
the ``compare --method-config`` format) and ``tuning.json`` (the budget, every
trial, the calibration indices), through a staging directory.
"""

from __future__ import annotations

import dataclasses
import json  # noqa: F401 -- the docstring example writes a search file with it
from pathlib import Path

import jax
import numpy as np

from famr_jax.cli.compare_run import check_forget_request, seed_forget_set
from famr_jax.workflows import load_model, original_recipe, retrain_gold_standard
from famr_jax.errors import FamrError
from famr_jax.evaluation.compare import read_json_file
from famr_jax.evaluation.report import write_json
from famr_jax.evaluation.tuning import tune_on_calibration
from famr_jax.io.outputs import check_output_target, portable_path, staged_directory
from famr_jax.methods.registry import get_method
from famr_jax.validation import CheckedFields


@dataclasses.dataclass(frozen=True)
class TuneRun(CheckedFields):
  """``famr-jax tune``: each method's settings tuned on a calibration request, then frozen.

  Attributes:
    checkpoint: the trained model (its metadata names data set, model and training recipe).
    out: output directory (tuned.json, tuning.json).
    methods: registered method names to tune.
    forget_classes: the audited request's classes.
    forget_random: the audited request's random fraction (drawn per seed, as compare draws it).
    seeds: compare's seeds whose requests are audited (the calibration request avoids them all).
    audit_seeds: compare's audit farm seeds, likewise.
    trials: trials per method, its defaults included.
    seconds: wall-clock budget of all trials (none = no limit).
    max_cost_fraction: trials costing more than this fraction of the retrain are not eligible.
    search: JSON file {method: {option: [values]}} replacing the default search grids.
    seed: seed of the tuning's own PRNG key (the calibration draw, the trials' order).
    overwrite: replace ``out`` if it exists.
  """
  checkpoint: str
  out: str
  methods: tuple[str, ...] = ()
  forget_classes: tuple[int, ...] = ()
  forget_random: float | None = None
  seeds: int = 3
  audit_seeds: int = 3
  trials: int = 8
  seconds: float | None = None
  max_cost_fraction: float | None = None
  search: str | None = None
  seed: int = 0
  overwrite: bool = False


def read_search(path: str | None) -> dict | None:
  """The search grids of a ``--search`` JSON file (None for none).

  Example:
    >>> import json, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "s.json")
    >>> _ = open(path, "w").write(json.dumps({"ga": {"lr": [1e-4, 1e-3]}}))
    >>> read_search(path), read_search(None)
    ({'ga': {'lr': [0.0001, 0.001]}}, None)
  """
  if path is None:
    return None
  raw = read_json_file(path, "search file")
  ok = isinstance(raw, dict) and all(isinstance(v, dict) and all(isinstance(x, list) and x for x in v.values())
                                     for v in raw.values())
  if not ok:
    raise FamrError(f"search file {path} must map method names to objects of non-empty value lists")
  return raw


def run_tune(run: TuneRun, *, show_progress: bool = False, log=print) -> dict:
  """Tunes ``run.methods`` on a calibration request of ``run.checkpoint`` and writes the frozen settings.

  Returns:
    The record written to ``tuning.json``.
  """
  if not run.methods:
    raise FamrError("name the methods to tune: --methods")
  for name in run.methods:
    get_method(name)
  check_forget_request(run)
  if run.audit_seeds <= 0:
    raise FamrError(f"--audit-seeds must be positive, got {run.audit_seeds}")
  search = read_search(run.search)
  check_output_target(run.out, run.overwrite, inputs=(run.checkpoint,))
  metadata, train_config = original_recipe(run.checkpoint, "tune")
  with staged_directory(run.out, run.overwrite, command="tune", inputs=(run.checkpoint,)) as staging:
    loaded = load_model(run.checkpoint)
    audited = [seed_forget_set(run, loaded.data, k) for k in range(max(run.seeds, run.audit_seeds))]
    gold_fn = lambda forget: retrain_gold_standard(loaded.model, loaded.apply_fn, loaded.data, forget,
                                                   train_config, run.seed, show_progress)
    result = tune_on_calibration(list(run.methods), loaded.apply_fn, loaded.params, loaded.data, audited,
                                 key=jax.random.fold_in(jax.random.key(run.seed), 23), gold_fn=gold_fn,
                                 model=loaded.model, model_name=metadata.get("model", ""), search=search,
                                 trials=run.trials, seconds=run.seconds, max_cost_fraction=run.max_cost_fraction,
                                 log=log)
    record = {"checkpoint": portable_path(str(Path(run.checkpoint).expanduser().resolve())),
              "model": metadata.get("model"), "dataset": loaded.data.name, "budget": result.budget,
              "calibration": {"kind": result.calibration.kind, "classes": list(result.calibration.classes),
                              "indices": np.asarray(result.calibration.indices).tolist()},
              "audited_seeds": list(range(len(audited))), "frozen": result.frozen, "trials": result.trials,
              "not_tuned": sorted(set(run.methods) - set(result.frozen))}
    write_json(staging / "tuned.json", result.frozen)
    write_json(staging / "tuning.json", record)
  return record
