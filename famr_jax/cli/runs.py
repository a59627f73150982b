"""End-to-end runs: train, unlearn (with the gold-standard retrain), evaluate, demo.

Each run is one typed config object and one function; the CLI builds the
config from its flags and calls the function, and a notebook can do the same.
A run validates everything it can before it writes anything, writes its
outputs into a staging directory, and moves that into place only at the end,
so a failed run leaves nothing behind and an existing directory is never
replaced unless ``overwrite`` is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

import famr_jax
from famr_jax import models
from famr_jax.io import checkpoints
from famr_jax.evaluation import report
from famr_jax.data.datasets import Dataset
from famr_jax.errors import FamrError
from famr_jax.validation import CheckedFields
from famr_jax.io.outputs import (check_disjoint, check_output_target, is_famr_output, remove_resume_steps,
                                 staged_directory)
from famr_jax.io.saved_model import absolute_data
from famr_jax.data.forget import ForgetSet, forget_classes, forget_random, forget_samples
from famr_jax.methods.protocol import check_one_model
from famr_jax.methods.resolve import Request, recommended_status, resolve
from famr_jax.theory.fisher import has_stored_fisher
from famr_jax.evaluation.metrics import evaluate_unlearning
from famr_jax.engine.parallel import ScaleConfig, peak_memory, scale_description
from famr_jax.engine.resume import ResumeConfig
from famr_jax.engine.training import TrainConfig
from famr_jax.engine.forward import batched_apply
from famr_jax.workflows import (DataConfig, build_model, config_dict, load_model, recorded_train_config, stats_extras,
                                train_and_recompute)


# ----------------------------------------------------------------------------- configs

@dataclasses.dataclass(frozen=True)
class TrainRun(CheckedFields):
  """``famr-jax train``: train a classifier from scratch and save it.

  Attributes:
    out: the checkpoint directory to write.
    model: a model of famr_jax.models.
    seed: seed of the init and the minibatch order.
    overwrite: replace ``out`` if it exists.
    fisher: also compute the diagonal empirical Fisher of the training loss and store it with the
      checkpoint (for the Fisher anchor of famr-fisher).
  """
  out: str
  model: str = "mlp"
  seed: int = 0
  overwrite: bool = False
  fisher: bool = False
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  scale: ScaleConfig = ScaleConfig()
  resume: ResumeConfig = ResumeConfig()


@dataclasses.dataclass(frozen=True)
class UnlearnRun(CheckedFields):
  """``famr-jax unlearn``: unlearn a forget set from a saved model.

  Attributes:
    checkpoint: the trained model (its metadata names data set and model).
    out: output directory (report.json, plots, the unlearned checkpoint).
    method: a registered method name (``famr``, ...); None: the recommended one for the
      request (``famr-plus`` for classes, ``ga`` for samples; ``famr_jax.methods.defaults.RECOMMENDED``).
    forget_classes: classes to forget: ids or the data set's class names (``3,Bag``).
    forget_samples: training-set indices to forget (instead of classes).
    forget_random: fraction of the training set to forget at random.
    seed: seed of the method's randomness (and the forget draw).
    retrain: also retrain the gold standard on the retained data and report it.
    overwrite: replace ``out`` if it exists.
    method_config: the method's full config, used as given; None: resolved from its defaults for the model
      and the request (:func:`famr_jax.methods.resolve.resolve_config`, the same resolution as
      :func:`famr_jax.unlearn`) with ``method_options`` applied.
    method_options: ``{field: value}`` of the method's options the user set (an option equal to its
      resolved value changes nothing).
    scale: devices, precision and gradient accumulation of the method and the retrain.
    resume: resumable checkpoints (default directory ``OUT.resume``).
  """
  checkpoint: str
  out: str
  method: str | None = None
  forget_classes: tuple[int | str, ...] = ()
  forget_samples: tuple[int, ...] = ()
  forget_random: float | None = None
  seed: int = 0
  retrain: bool = False
  overwrite: bool = False
  method_config: Any = None
  method_options: Any = None
  scale: ScaleConfig = ScaleConfig()
  resume: ResumeConfig = ResumeConfig()


@dataclasses.dataclass(frozen=True)
class DemoRun(CheckedFields):
  """``famr-jax demo``: train, unlearn one class with FAMR, retrain, compare."""
  out: str = "famr-demo"
  model: str = "mlp"
  forget_classes: tuple[int | str, ...] = (3,)
  seed: int = 0
  overwrite: bool = False
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  famr: Any = None   # a FAMRConfig; None takes the model's defaults
  scale: ScaleConfig = ScaleConfig()
  resume: ResumeConfig = ResumeConfig()


# ----------------------------------------------------------------------------- helpers

def _model_metadata(model_name: str, data_config: DataConfig, data: Dataset, train: TrainConfig,
                    seed: int, train_s: float, compile_s: float, test_acc: float) -> dict:
  return {
      "famr_jax_version": famr_jax.__version__,
      "model": model_name,
      "model_overrides": {},
      "num_classes": data.num_classes,
      "image_shape": list(data.image_shape),
      "data": absolute_data(config_dict(data_config)),   # usable from any working directory
      "train_config": config_dict(train),
      "seed": seed,
      "timings_s": {"train": train_s, "compile": compile_s},
      "test_acc": test_acc,
  }


def make_forget_set(run: UnlearnRun | DemoRun, data: Dataset) -> ForgetSet:
  """The validated forget set of a run (exactly one of classes / samples / random)."""
  given = [bool(run.forget_classes), bool(getattr(run, "forget_samples", ())),
           getattr(run, "forget_random", None) is not None]
  if sum(given) != 1:
    raise FamrError("name exactly one forget set: --forget-classes, --forget-samples or --forget-random")
  if run.forget_classes:
    return forget_classes(data.y_train, run.forget_classes, data.num_classes, class_names=data.class_names)
  if run.forget_samples:
    return forget_samples(run.forget_samples, len(data.y_train), data.num_classes)
  return forget_random(jax.random.fold_in(jax.random.key(run.seed), 1), run.forget_random,
                       len(data.y_train), data.num_classes)


def resume_directory(out: str | os.PathLike) -> Path:
  """Where a run writing ``out`` keeps its resumable checkpoints: ``OUT.resume`` beside it."""
  target = Path(out).expanduser().resolve()
  return target.parent / f"{target.name}.resume"


def _stage_resume(resume: ResumeConfig, out: str | os.PathLike, stage: str) -> ResumeConfig | None:
  """The ResumeConfig of one stage (train / unlearn / retrain) of a run, or None."""
  if not resume.enabled:
    return None
  root = Path(resume.checkpoint_dir).expanduser().resolve() if resume.checkpoint_dir else resume_directory(out)
  return dataclasses.replace(resume, checkpoint_dir=str(root / stage)).validate()


RESUME_STAGES = ("train", "unlearn", "retrain")


def _resume_root(resume: ResumeConfig, out: str | os.PathLike) -> Path:
  return Path(resume.checkpoint_dir).expanduser().resolve() if resume.checkpoint_dir else resume_directory(out)


def check_resume_place(resume: ResumeConfig, out: str | os.PathLike, inputs=()) -> None:
  """Before any work: the resume folders may not overlap the output or an input, nor be a user's.

  A stage folder (``D/train``, ``D/unlearn``, ``D/retrain``) that exists with files famr-jax did
  not write is refused, so finishing a run never deletes them.
  """
  if not resume.enabled:
    return
  root = _resume_root(resume, out)
  check_disjoint(out, root, "the output", "the checkpoint directory")
  for source in inputs:
    check_disjoint(source, root, "the input", "the checkpoint directory")
  for stage in RESUME_STAGES:
    folder = root / stage
    if folder.exists() and any(folder.iterdir()) and not is_famr_output(folder):
      raise FamrError(f"the checkpoint directory {root} has a {stage}/ folder famr-jax did not write: "
                      "choose another checkpoint directory")


def _finish_resume(resume: ResumeConfig, out: str | os.PathLike) -> None:
  """Deletes a finished run's resumable checkpoints (its outputs are in place).

  Only the step folders famr-jax wrote in its own (marked) stage folders are removed, then each
  folder and the root if that leaves them empty, so a shared ``--checkpoint-dir`` keeps everything else.
  """
  if resume.enabled:
    root = _resume_root(resume, out)
    for stage in RESUME_STAGES:
      remove_resume_steps(root / stage)
    with contextlib.suppress(OSError):
      root.rmdir()


def _check_scale(run) -> None:
  """Validates a run's scale and resume settings before any work."""
  run.scale.validate()
  dataclasses.replace(run.resume, checkpoint_dir=run.resume.checkpoint_dir or "OUT.resume").validate()


def resources_report(scale: ScaleConfig | None) -> dict:
  """``config.scale`` and ``config.resources`` of report.json: devices used and peak memory."""
  return {"scale": scale_description(scale), "resources": peak_memory()}


# ----------------------------------------------------------------------------- runs

def _train_original(run, data: Dataset, show_progress: bool):
  """Trains the run's model from its seed: ``(model, apply_fn, DescentResult, metadata)``."""
  model, apply_fn = build_model(run.model, data)
  params = models.init_params(model, jax.random.key(run.seed), data.image_shape)
  result, model, apply_fn = train_and_recompute(
      model, apply_fn, params, data.x_train, data.y_train, run.train,
      jax.random.fold_in(jax.random.key(run.seed), 1), show_progress=show_progress, desc=f"train {run.model}",
      scale=run.scale, resume=_stage_resume(run.resume, run.out, "train"))
  test_acc = float(np.mean(np.argmax(np.asarray(batched_apply(apply_fn, result.params, data.x_test)), -1)
                           == data.y_test))
  metadata = _model_metadata(run.model, run.data, data, run.train, run.seed, result.run_s,
                             result.compile_s, test_acc)
  return model, apply_fn, result, metadata


def train_model(run: TrainRun, *, show_progress: bool = True) -> dict:
  """Trains a classifier from scratch and saves it as a checkpoint at ``run.out``.

  Returns:
    The checkpoint's metadata (with ``test_acc`` and timings).
  """
  run.train.validate()
  _check_scale(run)
  check_output_target(run.out, run.overwrite)
  check_resume_place(run.resume, run.out)
  with staged_directory(run.out, run.overwrite, command="train") as staging:
    data = run.data.load(run.seed)
    model, apply_fn, result, metadata = _train_original(run, data, show_progress)
    metadata["history"] = result.history
    extras = stats_extras(model)
    if run.fisher:   # issue 5: the Fisher anchor's curvature, computed once after training
      from famr_jax.theory.fisher import FISHER_EXTRA, diagonal_fisher
      t0 = time.perf_counter()
      extras[FISHER_EXTRA] = jax.block_until_ready(
          diagonal_fisher(apply_fn, result.params, data.x_train, data.y_train))
      metadata["fisher"] = {"kind": "diagonal empirical Fisher of the training cross-entropy",
                            "num_examples": int(len(data.y_train)), "compute_s": time.perf_counter() - t0}
    checkpoints.write_checkpoint(staging, result.params, metadata, extras=extras)
  _finish_resume(run.resume, run.out)
  metadata["scale"] = resources_report(run.scale)   # returned (printed), not stored
  return metadata


def _unlearn_and_report(*, staging: Path, model_name: str, model, apply_fn, params, data: Dataset,
                        data_config: DataConfig, train_config: TrainConfig, forget: ForgetSet,
                        method: str, method_config, seed: int, retrain: bool,
                        timings: dict, compile_times: dict, show_progress: bool,
                        base_metadata: dict, scale: ScaleConfig | None = None,
                        resume: ResumeConfig | None = None, out: str | None = None,
                        checkpoint: str | None = None, audit_status: str | None = None) -> dict:
  """Shared tail of ``unlearn`` and ``demo``: unlearn (:func:`famr_jax.unlearn`), retrain, evaluate, write."""
  resume = resume or ResumeConfig()
  result = famr_jax.unlearn(method, apply_fn, params, forget, jax.random.key(seed), data=data, config=method_config,
                            model=model, model_name=model_name, checkpoint=checkpoint, scale=scale,
                            resume=_stage_resume(resume, out, "unlearn") if out else None,
                            show_progress=show_progress)
  timings["unlearn"] = result.run_s
  compile_times["unlearn"] = result.compile_s
  metrics = {"original": evaluate_unlearning(apply_fn, params, data, forget, mia_seed=seed),
             "unlearned": evaluate_unlearning(apply_fn, result.params, data, forget, params0=params,
                                              mia_seed=seed)}
  if retrain:
    keep = forget.retain_mask(len(data.y_train))
    gold, gold_model, gold_apply_fn = train_and_recompute(
        model, apply_fn, models.init_params(model, jax.random.key(seed), data.image_shape),
        data.x_train[keep], data.y_train[keep], train_config, jax.random.fold_in(jax.random.key(seed), 7),
        show_progress=show_progress, desc="retrain (gold standard)", scale=scale,
        resume=_stage_resume(resume, out, "retrain") if out else None)
    timings["retrain"] = gold.run_s
    compile_times["retrain"] = gold.compile_s
    metrics["retrained"] = evaluate_unlearning(gold_apply_fn, gold.params, data, forget, params0=params,
                                               mia_seed=seed)
    checkpoints.write_checkpoint(staging / "retrained", gold.params,
                                 {**base_metadata, "retrained_without": forget.describe()},
                                 extras=stats_extras(gold_model))
  checkpoints.write_checkpoint(staging / "unlearned", result.params,
                               {**base_metadata, "unlearned": {"method": method, "forget": forget.describe(),
                                                               "config": config_dict(method_config)}},
                               extras=stats_extras(model))   # a BatchNorm model's statistics, unchanged
  rep = report.build_report(
      version=famr_jax.__version__, dataset=data.name, model=model_name, method=method,
      forget=forget.describe(),
      config={"method": config_dict(method_config), "seed": seed, "retrain": retrain,
              "train": config_dict(train_config), "data": config_dict(data_config),
              **resources_report(scale)},
      metrics=metrics, timings_s={**timings, "compile": compile_times}, history=result.history)
  if audit_status:   # the recommended method ran and the audit does not back it: the report says so
    rep["audit_status"] = audit_status
  report.write_json(staging / "report.json", rep)
  report.plot_forgetting(result.history, staging / "forgetting.png",
                         title=f"{method} on {data.name} / {model_name}: forgetting {list(forget.classes) or 'samples'}")
  report.plot_class_accuracy({role: m["per_class_acc"] for role, m in metrics.items()}, forget.classes,
                             staging / "class_accuracy.png", class_names=data.class_names)
  (staging / "table.md").write_text(report.format_table(rep["metrics"], markdown=True) + "\n")
  return rep


def unlearn_request(run: UnlearnRun, forget: ForgetSet | None = None) -> Request:
  """The request of an unlearn run: its kind, and its size once the forget set is drawn."""
  if forget is not None:
    return Request.of(forget)
  return Request("classes" if run.forget_classes else "samples")


def resolve_unlearn(run: UnlearnRun, model_name: str, request: Request, has_fisher: bool | None = None):
  """``(spec, config)`` an unlearn run resolves to: :func:`famr_jax.methods.resolve.resolve`, as the API's.

  Example:
    >>> run = UnlearnRun("ckpt", "out", method="famr", forget_random=0.02, method_options={"lr": 1e-4})
    >>> resolve_unlearn(run, "lenet5", Request("samples", 27))[1].steps
    5
  """
  spec, config = resolve(run.method, request, model_name, run.method_options, config=run.method_config,
                         scale=run.scale, resume=run.resume, has_fisher=has_fisher, checkpoint=run.checkpoint,
                         option_name=lambda f: "--" + f.replace("_", "-"))
  check_one_model(spec)   # the run saves one unlearned checkpoint
  return spec, config


def unlearn_model(run: UnlearnRun, *, show_progress: bool = True) -> dict:
  """Unlearns a forget set from a checkpoint; writes report.json, plots and checkpoints.

  The method (``famr-plus`` for a class request and ``ga`` for a sample request when ``run.method`` is
  None) and its config are resolved as :func:`famr_jax.unlearn` resolves them, before any work.

  Returns:
    The report (as written to ``run.out/report.json``).
  """
  metadata = checkpoints.read_metadata(run.checkpoint)
  has_fisher = has_stored_fisher(run.checkpoint)
  spec, _ = resolve_unlearn(run, metadata.get("model", ""), unlearn_request(run), has_fisher)   # refusals first
  status = recommended_status(unlearn_request(run).kind) if run.method is None else None
  run = dataclasses.replace(run, method=spec.name)
  _check_scale(run)
  check_output_target(run.out, run.overwrite, inputs=(run.checkpoint,))
  check_resume_place(run.resume, run.out, inputs=(run.checkpoint,))
  with staged_directory(run.out, run.overwrite, command="unlearn", inputs=(run.checkpoint,)) as staging:
    loaded = load_model(run.checkpoint)
    if "unlearned" in loaded.metadata:
      raise FamrError(f"{run.checkpoint} is already an unlearned model; unlearn from the original checkpoint")
    forget = make_forget_set(run, loaded.data)
    _, config = resolve_unlearn(run, loaded.metadata["model"], unlearn_request(run, forget), has_fisher)
    train_config = recorded_train_config(loaded.metadata, run.checkpoint)
    timings = {"train": float(loaded.metadata["timings_s"]["train"])}
    compile_times = {"train": float(loaded.metadata["timings_s"].get("compile", 0.0))}
    rep = _unlearn_and_report(
        staging=staging, model_name=loaded.metadata["model"], model=loaded.model,
        apply_fn=loaded.apply_fn, params=loaded.params, data=loaded.data,
        data_config=DataConfig(**loaded.metadata["data"]), train_config=train_config, forget=forget,
        method=run.method, method_config=config, seed=run.seed, retrain=run.retrain, timings=timings,
        compile_times=compile_times, show_progress=show_progress,
        base_metadata={k: v for k, v in loaded.metadata.items()
                       if k not in ("param_shapes", "extras", "format", "history")},
        scale=run.scale, resume=run.resume, out=run.out,
        checkpoint=str(Path(run.checkpoint).expanduser().resolve()), audit_status=status)
  _finish_resume(run.resume, run.out)
  return rep


def run_demo(run: DemoRun, *, show_progress: bool = True) -> dict:
  """Trains on the embedded data set, unlearns with FAMR, retrains, and reports.

  Returns:
    The report (as written to ``run.out/report.json``).
  """
  run.train.validate()
  _check_scale(run)
  # The demo runs what `unlearn` runs with no method (famr-plus); a FAMRConfig given runs the paper's FAMR.
  spec, famr_config = resolve("famr" if run.famr is not None else None, Request("classes"), run.model,
                              config=run.famr, scale=run.scale, resume=run.resume)
  method = spec.name
  check_output_target(run.out, run.overwrite)
  check_resume_place(run.resume, run.out)
  with staged_directory(run.out, run.overwrite, command="demo") as staging:
    data = run.data.load(run.seed)
    forget = make_forget_set(run, data)
    famr_config = resolve(method, Request.of(forget), run.model, config=run.famr)[1]
    model, apply_fn, trained, metadata = _train_original(run, data, show_progress)
    checkpoints.write_checkpoint(staging / "original", trained.params, metadata,
                                 extras=stats_extras(model))
    rep = _unlearn_and_report(
        staging=staging, model_name=run.model, model=model, apply_fn=apply_fn, params=trained.params,
        data=data, data_config=run.data, train_config=run.train, forget=forget, method=method,
        method_config=famr_config, seed=run.seed, retrain=True,
        timings={"train": trained.run_s}, compile_times={"train": trained.compile_s},
        show_progress=show_progress, base_metadata=metadata, scale=run.scale, resume=run.resume,
        out=run.out)
  _finish_resume(run.resume, run.out)
  return rep


def evaluate_checkpoint(checkpoint: str, forget_classes_: tuple[int | str, ...] = ()) -> dict:
  """Test accuracy and per-class accuracy of a checkpoint; with forget classes, every report metric."""
  loaded = load_model(checkpoint)
  data = loaded.data
  classes = forget_classes_ or tuple(loaded.metadata.get("unlearned", {}).get("forget", {}).get("classes", ()))
  if classes:
    forget = forget_classes(data.y_train, classes, data.num_classes, class_names=data.class_names)
    classes = forget.classes
    metrics = evaluate_unlearning(loaded.apply_fn, loaded.params, data, forget)
  else:
    from famr_jax.evaluation.metrics import per_class_accuracy
    logits = batched_apply(loaded.apply_fn, loaded.params, data.x_test)
    metrics = {"test_acc": float(np.mean(np.argmax(np.asarray(logits), -1) == data.y_test)),
               "per_class_acc": [float(v) for v in per_class_accuracy(logits, data.y_test, data.num_classes)]}
  return {"checkpoint": str(Path(checkpoint).resolve()), "model": loaded.metadata["model"],
          "dataset": data.name, "forget_classes": list(classes), "metrics": metrics}
