"""The ``famr-jax`` command line: demo, train, unlearn, evaluate, compare, tune, verify-theory, import.

Every flag comes from a typed config (``famr_jax.cli.runs``, ``TrainConfig``,
the methods' configs), so the CLI and the Python API share one set of
defaults. A user's mistake prints ``famr-jax: error: <one line>`` and exits
with status 2; nothing on disk is changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence

from famr_jax.errors import FamrError


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (no usage dump) and exit status 2."""

  def error(self, message):  # noqa: D401 - argparse API
    raise FamrError(message)


# Shown by `unlearn --help` and `compare --help`: why a method's defaults depend on the request.
_DEFAULTS_NOTE = ("Without --method, a class request runs famr-plus (the FAMR variant measured closest to a "
                  "retrained model) and a sample request runs ga (the sample method the audit found least "
                  "exposed); --beta/--style-layer (style forgetting) select famr. "
                  "Each method starts from its defaults for the request: a class request (--forget-classes) "
                  "runs epochs over the forget set; a sample request (--forget-random, --forget-samples) "
                  "runs a step budget (--steps), cut to 5 passes over a smaller forget set. "
                  "A flag given at its default value changes nothing; --epochs at another value, without "
                  "--steps, means epochs.")


def _method_config_classes():
  from famr_jax.methods.registry import get_method, method_names
  return [get_method(n).config_cls for n in method_names()]


def build_parser() -> argparse.ArgumentParser:
  """The ``famr-jax`` argument parser."""
  from famr_jax.cli import flags as cf
  from famr_jax.methods.registry import method_names
  from famr_jax.cli.runs import DemoRun, TrainRun, UnlearnRun
  from famr_jax.workflows import DataConfig
  from famr_jax.engine.parallel import ScaleConfig
  from famr_jax.engine.resume import ResumeConfig
  from famr_jax.engine.training import TrainConfig
  from famr_jax.methods.famr import FAMRConfig

  def add_scale_flags(p, seen=None):
    cf.add_config_flags(p, ScaleConfig, dest_prefix="scale__", seen=seen)
    cf.add_config_flags(p, ResumeConfig, dest_prefix="resume__", seen=seen)

  parser = _Parser(prog="famr-jax", description="Machine unlearning for JAX image classifiers.")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
  sub.required = True
  parser.commands = sub.choices   # command -> its parser (the "did you mean" of an unknown option)

  demo = sub.add_parser("demo", help="train on digits, unlearn a class with FAMR, retrain, compare")
  cf.add_config_flags(demo, DemoRun, exclude=("data", "train", "famr", "scale", "resume"))
  cf.add_config_flags(demo, DataConfig, dest_prefix="data__")
  cf.add_config_flags(demo, TrainConfig, prefix="train-", dest_prefix="train__")
  cf.add_config_flags(demo, FAMRConfig, prefix="famr-", dest_prefix="famr__")
  add_scale_flags(demo)

  train = sub.add_parser("train", help="train a classifier from scratch and save a checkpoint")
  cf.add_config_flags(train, TrainRun, exclude=("data", "train", "scale", "resume"))
  cf.add_config_flags(train, DataConfig, dest_prefix="data__")
  cf.add_config_flags(train, TrainConfig, dest_prefix="train__")
  add_scale_flags(train)

  unlearn = sub.add_parser("unlearn", help="unlearn classes or samples from a checkpoint",
                           description=_DEFAULTS_NOTE)
  cf.add_config_flags(unlearn, UnlearnRun, exclude=("method_config", "method_options", "scale", "resume"))
  seen: set[str] = set()
  add_scale_flags(unlearn, seen)
  for cls in _method_config_classes():
    cf.add_config_flags(unlearn, cls, dest_prefix="method__", seen=seen)
  unlearn.epilog = "methods: " + ", ".join(method_names())

  evaluate = sub.add_parser("evaluate", help="evaluate a checkpoint on its data set")
  evaluate.add_argument("--checkpoint", required=True)
  evaluate.add_argument("--forget-classes", type=cf.flag_type(tuple[int | str, ...], "--forget-classes"),
                        default=(), help="class ids or the data set's class names (3,Bag)")
  evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")

  _add_leaderboard_commands(sub, cf)
  _add_import_command(sub, cf)

  theory = _theory_config()
  if theory is not None:
    verify = sub.add_parser("verify-theory", help="check FAMR's influence-function claims numerically")
    verify.add_argument("--out", required=True)
    verify.add_argument("--overwrite", action="store_true")
    cf.add_config_flags(verify, theory, dest_prefix="theory__")
  return parser


def _add_leaderboard_commands(sub, cf) -> None:
  """``famr-jax fisher`` and ``famr-jax compare`` (issue 5)."""
  from famr_jax.cli.compare_run import CompareRun

  fisher = sub.add_parser("fisher", help="compute the diagonal Fisher of a checkpoint and store it with it")
  fisher.add_argument("--checkpoint", required=True)
  fisher.add_argument("--out", default=None, help="write a copy with the Fisher here (default: in place)")
  fisher.add_argument("--batch-size", type=cf.flag_type(int, "--batch-size"), default=256)
  fisher.add_argument("--overwrite", action="store_true")

  compare = sub.add_parser("compare", help="leaderboard: every method vs the retrained gold standard",
                           description=_DEFAULTS_NOTE)
  cf.add_config_flags(compare, CompareRun)
  seen: set[str] = set()
  for cls in _method_config_classes():
    cf.add_config_flags(compare, cls, dest_prefix="method__", seen=seen)

  from famr_jax.cli.tune_run import TuneRun
  tune = sub.add_parser("tune", help="tune methods on a calibration request (not the audited one), freeze them",
                        description="Writes tuned.json (compare --method-config's format) and tuning.json.")
  cf.add_config_flags(tune, TuneRun)


def _add_import_command(sub, cf) -> None:
  """``famr-jax import`` (issue 15)."""
  imp = sub.add_parser("import", help="import torchvision / Hugging Face / timm weights as a checkpoint")
  imp.add_argument("--from", dest="source", required=True,
                   help="torchvision:resnet18|resnet34|resnet50|alexnet|resnet18_cifar, hf-vit[:PRESET], timm:vit_NAME")
  imp.add_argument("--weights", required=True, help="a .safetensors file (.pth only with torch installed)")
  imp.add_argument("--out", required=True)
  imp.add_argument("--image-size", type=cf.flag_type(int, "--image-size"), required=True)
  imp.add_argument("--num-classes", type=cf.flag_type(int, "--num-classes"), default=None,
                   help="default: the file's; another count re-initialises the head (said in the metadata)")
  imp.add_argument("--seed", type=cf.flag_type(int, "--seed"), default=0)
  imp.add_argument("--overwrite", action="store_true")
  imp.add_argument("--dataset", default=None, help="record this data set (then unlearn / evaluate accept it)")
  imp.add_argument("--data-dir", default=None)
  imp.add_argument("--max-train", type=cf.flag_type(int, "--max-train"), default=None)
  imp.add_argument("--max-test", type=cf.flag_type(int, "--max-test"), default=None)


def _cmd_import(args) -> int:
  from famr_jax.cli.import_run import ImportRun, import_model
  from famr_jax.workflows import DataConfig
  data = None if args.dataset is None else DataConfig(args.dataset, args.data_dir, args.max_train, args.max_test)
  run = ImportRun(args.source, args.weights, args.out, args.image_size, args.num_classes, args.seed,
                  args.overwrite, data)
  saved = import_model(run)
  info = saved.metadata["imported"]
  print(f"imported {run.source} ({saved.metadata['model']}, {saved.metadata['num_classes']} classes, "
        f"{tuple(saved.metadata['image_shape'])} inputs; head {info['head']})")
  print(f"checkpoint: {os.path.abspath(run.out)}")
  return 0


def _cmd_fisher(args) -> int:
  from famr_jax.theory.fisher import store_fisher
  info = store_fisher(args.checkpoint, out=args.out, batch_size=args.batch_size, overwrite=args.overwrite)
  print(f"diagonal Fisher of {info['num_examples']} training examples in {info['compute_s']:.1f} s "
        f"(compile included), stored in {info['checkpoint']}")
  return 0


def _cmd_compare(args) -> int:
  from famr_jax.cli import flags as cf
  from famr_jax.cli.compare_run import CompareRun, run_compare

  missing = [f"--{name}" for name in ("checkpoint", "out") if not hasattr(args, name)]
  if missing:
    raise FamrError(f"compare needs {' and '.join(missing)}")
  run = cf.build_config(CompareRun, args)
  board = run_compare(run, flags=method_flags(args))
  from famr_jax.evaluation.leaderboard import format_leaderboard
  print(format_leaderboard(board))
  print(f"wrote {os.path.abspath(run.out)}/leaderboard.json, leaderboard.md, leaderboard.png")
  return 0


def _theory_config():
  try:
    from famr_jax.theory.verification import TheoryConfig
  except ImportError:
    return None
  return TheoryConfig


def _cmd_demo(args) -> int:
  from famr_jax.cli import flags as cf
  from famr_jax.cli.runs import DemoRun, run_demo
  from famr_jax.workflows import DataConfig
  from famr_jax.engine.training import TrainConfig
  from famr_jax.methods.famr import FAMRConfig
  from famr_jax.methods.resolve import Request, resolve_config

  base = cf.build_config(DemoRun, args, exclude=("data", "train", "famr", "scale", "resume"))
  defaults = resolve_config("famr", Request("classes"), base.model)
  run = dataclasses.replace(
      base, **_scale_configs(args), data=cf.build_config(DataConfig, args, dest_prefix="data__"),
      train=cf.build_config(TrainConfig, args, dest_prefix="train__"),
      famr=cf.build_config(FAMRConfig, args, base=defaults, dest_prefix="famr__"))
  if run.famr == defaults:   # no FAMR option given (or each at its default): the demo runs unlearn's default method
    run = dataclasses.replace(run, famr=None)
  rep = run_demo(run)
  _print_summary(rep, run.out)
  return 0


def _cmd_train(args) -> int:
  from famr_jax.cli import flags as cf
  from famr_jax.cli.runs import TrainRun, train_model
  from famr_jax.workflows import DataConfig
  from famr_jax.engine.training import TrainConfig

  run = dataclasses.replace(cf.build_config(TrainRun, args, exclude=("data", "train", "scale", "resume")),
                            **_scale_configs(args),
                            data=cf.build_config(DataConfig, args, dest_prefix="data__"),
                            train=cf.build_config(TrainConfig, args, dest_prefix="train__"))
  meta = train_model(run)
  print(f"trained {meta['model']} on {run.data.dataset}: test accuracy {100 * meta['test_acc']:.2f}% "
        f"in {meta['timings_s']['train']:.1f} s (+{meta['timings_s']['compile']:.1f} s compile)")
  print(f"checkpoint: {os.path.abspath(run.out)}")
  _print_resources(meta.get("scale"))
  return 0


def unlearn_run(args):
  """The :class:`famr_jax.cli.runs.UnlearnRun` of parsed ``unlearn`` flags: the method's options are the flags
  the user gave (:func:`famr_jax.cli.flags.given_values`), resolved by the run as :func:`famr_jax.unlearn` does."""
  from famr_jax.cli import flags as cf
  from famr_jax.cli.runs import UnlearnRun
  run = dataclasses.replace(cf.build_config(UnlearnRun, args, exclude=("method_config", "method_options", "scale",
                                                                       "resume")),
                            **_scale_configs(args))
  return dataclasses.replace(run, method_options=method_flags(args))


def method_flags(args) -> dict:
  """``{field: value}`` of the method flags (``--lr``, ``--steps``, ...) given on the command line."""
  return {k[len("method__"):]: v for k, v in vars(args).items() if k.startswith("method__")}


def _cmd_unlearn(args) -> int:
  from famr_jax.io import checkpoints
  from famr_jax.cli.runs import resolve_unlearn, unlearn_model, unlearn_request

  run = unlearn_run(args)
  meta = checkpoints.read_metadata(run.checkpoint)
  _, config = resolve_unlearn(run, meta.get("model", ""), unlearn_request(run))   # refusals before any work
  if getattr(config, "beta", 0) > 0 and getattr(config, "style_layer", "") is None:
    raise FamrError("style forgetting (--beta > 0) needs --style-layer naming a layer of the model")
  rep = unlearn_model(run)
  _print_summary(rep, run.out)
  return 0


def _cmd_evaluate(args) -> int:
  from famr_jax.cli.runs import evaluate_checkpoint
  result = evaluate_checkpoint(args.checkpoint, tuple(args.forget_classes))
  if args.json:
    print(json.dumps(result, indent=2))
    return 0
  m = result["metrics"]
  print(f"{result['model']} on {result['dataset']}: test accuracy {100 * m['test_acc']:.2f}%")
  for key in ("retain_acc", "forget_acc", "forget_train_acc", "mia_efficacy"):
    if key in m:
      print(f"  {key}: {100 * m[key]:.2f}%")
  print("  per-class accuracy: " + " ".join(f"{c}:{100 * a:.1f}" for c, a in enumerate(m["per_class_acc"])))
  return 0


def _cmd_verify_theory(args) -> int:
  import jax
  from famr_jax.cli import flags as cf
  from famr_jax.io.outputs import staged_directory
  from famr_jax.theory.report import write_outputs
  from famr_jax.theory.verification import TheoryConfig, format_theory_table, run_theory_verification

  config = cf.build_config(TheoryConfig, args, dest_prefix="theory__")
  with staged_directory(args.out, args.overwrite, command="verify-theory") as staging:
    result = run_theory_verification(config, None, jax.random.key(getattr(config, "seed", 0)))
    write_outputs(result, str(staging))
  print(format_theory_table(result))
  print(f"wrote {os.path.abspath(args.out)}/theory.json")
  return 0


def _scale_configs(args) -> dict:
  """``scale`` and ``resume`` of a run from the --data-parallel ... --checkpoint-every flags."""
  from famr_jax.cli import flags as cf
  from famr_jax.engine.parallel import ScaleConfig
  from famr_jax.engine.resume import ResumeConfig
  return {"scale": cf.build_config(ScaleConfig, args, dest_prefix="scale__"),
          "resume": cf.build_config(ResumeConfig, args, dest_prefix="resume__")}


def _print_resources(info: dict | None) -> None:
  if not info:
    return
  scale, res = info["scale"], info["resources"]
  where = f"{scale['devices']} {scale['platform']} device(s)"
  if res["per_device_bytes"]:
    peak = max(res["per_device_bytes"].values()) / 2 ** 20
    print(f"ran on {where}; peak memory per device {peak:.0f} MiB (device memory stats)")
  else:
    print(f"ran on {where}; peak process memory {res['process_peak_rss_bytes'] / 2 ** 20:.0f} MiB "
          "(process RSS: the devices report no memory stats)")


def _print_summary(rep: dict, out: str) -> None:
  from famr_jax.evaluation.report import format_table
  print(f"{rep['method']} on {rep['dataset']} / {rep['model']}, forgetting {rep['forget']}")
  print(format_table(rep["metrics"]))
  t = rep["timings_s"]
  line = ", ".join(f"{k} {v:.1f} s" for k, v in t.items() if not isinstance(v, dict))
  print(f"wall time (compile excluded): {line}")
  if "retrain" in t and t.get("unlearn"):
    print(f"unlearning was {t['retrain'] / t['unlearn']:.1f}x faster than retraining")
  print(f"wrote {os.path.abspath(out)}/report.json, forgetting.png, class_accuracy.png")
  if rep.get("audit_status"):
    print(f"audit status of {rep['method']} (no method named): {rep['audit_status']}")
  _print_resources(rep.get("config"))


def _cmd_tune(args) -> int:
  from famr_jax.cli import flags as cf
  from famr_jax.cli.tune_run import TuneRun, run_tune

  missing = [f"--{name}" for name in ("checkpoint", "out") if not hasattr(args, name)]
  if missing:
    raise FamrError(f"tune needs {' and '.join(missing)}")
  record = run_tune(cf.build_config(TuneRun, args))
  b = record["budget"]
  print(f"tuned {', '.join(record['frozen']) or 'nothing'} in {b['seconds_spent']:.1f} s "
        f"({sum(b['trials_run'].values())} trials; reference retrain {b['retrain_s']:.2f} s)")
  print(f"wrote {os.path.abspath(args.out)}/tuned.json, tuning.json")
  return 0


_COMMANDS = {"demo": _cmd_demo, "train": _cmd_train, "unlearn": _cmd_unlearn,
             "evaluate": _cmd_evaluate, "verify-theory": _cmd_verify_theory,
             "fisher": _cmd_fisher, "compare": _cmd_compare, "import": _cmd_import, "tune": _cmd_tune}


def _log_to_stderr() -> None:
  """Shows the library's INFO messages (e.g. "resuming ... from step N") as famr-jax: lines."""
  import logging
  logger = logging.getLogger("famr_jax")
  if not any(getattr(h, "_famr_cli", False) for h in logger.handlers):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("famr-jax: %(message)s"))
    handler._famr_cli = True
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # Orbax logs each failed background write (full disk, ...) with a thread traceback through absl;
    # the CLI reports the failure itself, in one line.
    logging.getLogger("absl").setLevel(logging.CRITICAL)


class _Interrupts:
  """Ctrl-C that always stops the run: SIGINT raises KeyboardInterrupt, and raises it again every half
  second until the CLI has caught it, because Python drops an exception raised inside a garbage
  collector callback (JAX installs one), which would otherwise let the run carry on."""

  def __init__(self):
    self.pending = False

  def install(self) -> None:
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
      return
    signal.signal(signal.SIGINT, self._on_sigint)
    signal.signal(signal.SIGALRM, self._on_alarm)
    default_hook = sys.unraisablehook

    def hook(unraisable):   # the dropped KeyboardInterrupt: raised again by the alarm, not printed
      if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        default_hook(unraisable)
    sys.unraisablehook = hook

  def _on_sigint(self, signum, frame):
    import signal
    self.pending = True
    signal.setitimer(signal.ITIMER_REAL, 0.5, 0.5)
    raise KeyboardInterrupt

  def _on_alarm(self, signum, frame):
    # Not while the first one is already unwinding (it runs the clean-up of the staging folders).
    if self.pending and not isinstance(sys.exc_info()[1], KeyboardInterrupt):
      raise KeyboardInterrupt

  def caught(self) -> None:
    import signal
    import threading
    self.pending = False
    if threading.current_thread() is threading.main_thread():
      signal.setitimer(signal.ITIMER_REAL, 0)
      signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C while exiting changes nothing


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the ``famr-jax`` console script; returns the exit status.

  As the process's entry point (``argv`` None), Ctrl-C ends the process at once with status 130 and
  the line ``famr-jax: interrupted`` (outputs are cleaned up while the interrupt unwinds; no
  background thread gets to print at exit).
  """
  _log_to_stderr()
  interrupts = _Interrupts()
  if argv is None:
    interrupts.install()
  try:
    return _main(argv)
  except KeyboardInterrupt:
    interrupts.caught()
    print("famr-jax: interrupted", file=sys.stderr)
    if argv is None:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(130)
    return 130


def _unknown_arguments(parser: argparse.ArgumentParser, command: str, extra: Sequence[str]) -> str:
  """One line for the arguments argparse did not recognise: the first unknown option and its nearest flag."""
  from famr_jax.validation import nearest_name
  first = extra[0]
  if not first.startswith("-"):
    return f"unexpected argument {first!r} (famr-jax {command} --help lists the options)"
  name = first.split("=", 1)[0]
  options = [o for a in parser.commands[command]._actions for o in a.option_strings if o.startswith("--")]
  near = nearest_name(name, options)
  return f"unknown option {name}" + (f"; did you mean {near}?" if near else f" (famr-jax {command} --help lists them)")


def _main(argv: Sequence[str] | None) -> int:
  try:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
      raise FamrError(_unknown_arguments(parser, args.command, extra))
    return _COMMANDS[args.command](args)
  except FamrError as e:
    from famr_jax.io.outputs import OutputExists
    hint = " (--overwrite replaces it)" if isinstance(e, OutputExists) else ""
    print(f"famr-jax: error: {e}{hint}", file=sys.stderr)
    return 2
  except Exception as e:  # noqa: BLE001 - only RunStopped is handled, the rest re-raised
    from famr_jax.engine.resume import RunStopped
    if not isinstance(e, RunStopped):
      raise
    print(f"famr-jax: {e}", file=sys.stderr)
    return 3


if __name__ == "__main__":
  sys.exit(main())
