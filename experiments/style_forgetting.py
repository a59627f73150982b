"""Style forgetting, measured (issue 16): forget a visual style that cuts across classes, scored against a retrain.

A seeded fraction of every class's training images gets the style (``invert``:
``1 - x``; ``texture``: a fixed seeded texture blended in); the original model
is trained on that mixed set, the gold standard on the un-stylized rest with the
same recipe. Every method (the FAMR Gram-loss variants, FAMR's uniform KL, the
sample-forgetting baselines) forgets the stylized training images; the board
reports accuracy on the stylized and on the clean test set, and the
leaderboard's average gap to the retrained model. Writes DIR/leaderboard.json,
DIR/leaderboard.md and DIR/style_board.png.

  python experiments/style_forgetting.py --dataset digits --style invert --fraction 0.2 --quick --out D
  nice -n 10 python experiments/style_forgetting.py --dataset fashion_mnist --style texture --fraction 0.2 \\
      --max-train 6000 --max-test 2000 --out D
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from famr_jax import models
from famr_jax.data.datasets import load_dataset
from famr_jax.data.styles import STYLES, make_style_task
from famr_jax.engine.training import TrainConfig
from famr_jax.errors import FamrError
from famr_jax.evaluation.style import (STYLE_METHODS, STYLE_VARIANTS, board_rows,
                                       format_style_board, plot_style_board, style_accuracies,
                                       style_leaderboard, train_recipe)
from famr_jax.io.outputs import check_output_free, portable_command, staged_directory

QUICK_METHODS = STYLE_VARIANTS + ("famr", "famr-function", "ft", "scrub")
# Each method's setting of least average gap on digits / invert, task seed 0 (made by --tune, see
# docs/results.md); the boards run on other task seeds with it.
TUNED = Path(__file__).resolve().parent / "results" / "style_forgetting" / "tuned_digits_invert_seed0.json"


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--dataset", choices=("digits", "fashion_mnist"), default="digits")
  p.add_argument("--style", choices=STYLES, default="invert")
  p.add_argument("--fraction", type=float, default=0.2, help="stylized share of each class's training images")
  p.add_argument("--out", required=True, help="output directory (refused if it exists, unless --overwrite)")
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--quick", action="store_true",
                 help="digits-sized run: fewer methods and a shorter training recipe (about a minute)")
  p.add_argument("--seeds", type=int, default=1)
  p.add_argument("--model", default="lenet5")
  p.add_argument("--style-layer", default=None, help="the Gram loss's layer (default conv1 for lenet5)")
  p.add_argument("--methods", default=None, help="comma-separated methods (default: all style and sample methods)")
  p.add_argument("--train-epochs", type=int, default=None, help="epochs of the original and of the retrain")
  p.add_argument("--max-train", type=int, default=None, help="stratified training subset (Fashion-MNIST)")
  p.add_argument("--max-test", type=int, default=None, help="stratified test subset")
  p.add_argument("--method-config", default=str(TUNED),
                 help='JSON {method: {option: value}} or a file of it; "famr-style*" applies to every style '
                      'variant; "defaults" for the library\'s sample defaults (default: the settings tuned '
                      'on digits / invert, task seed 0)')
  p.add_argument("--seed", type=int, default=0, help="seed of the style task and the original model")
  p.add_argument("--tune", action="store_true",
                 help="instead of one board: each method over a small grid around its defaults (lr x1/x10/x100, "
                      "steps x1/x4; SSD selection_weight and dampening), writing DIR/tuned.json, each method's "
                      "setting of least average gap, for --method-config")
  return p.parse_args(argv)


def validate(args) -> tuple[tuple[str, ...], dict]:
  if not 0.0 < args.fraction < 1.0:
    raise FamrError(f"--fraction must lie strictly between 0 and 1, got {args.fraction}")
  if args.seeds <= 0:
    raise FamrError(f"--seeds must be positive, got {args.seeds}")
  if args.quick and args.dataset != "digits":
    raise FamrError("--quick runs on digits only")
  methods = (tuple(m.strip() for m in args.methods.split(",") if m.strip()) if args.methods
             else QUICK_METHODS if args.quick else STYLE_METHODS)
  from famr_jax.methods.registry import get_method
  for name in methods:   # unknown names fail before any training
    if name not in STYLE_VARIANTS:
      get_method(name)
  overrides = {}
  if args.method_config and args.method_config != "defaults" and not args.tune:
    text = args.method_config
    if not text.lstrip().startswith("{"):
      try:
        text = open(text).read()
      except OSError as e:
        raise FamrError(f"--method-config file {args.method_config} cannot be read: {e.strerror}") from None
    try:
      overrides = json.loads(text)
    except json.JSONDecodeError as e:
      raise FamrError(f"--method-config is not valid JSON: {e}") from None
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
      raise FamrError("--method-config must map method names to objects of options")
  check_output_free(args.out, args.overwrite)
  return methods, overrides


def grid(method: str, model_name: str) -> list[dict]:
  """The tuning grid of one method around its sample defaults (the style variants share famr's)."""
  if method == "ssd":
    return [dict(selection_weight=a, dampening=l) for a in (5.0, 2.0, 1.0) for l in (1.0, 0.1)][:6]
  from famr_jax.methods.resolve import Request, resolve_config
  base = resolve_config("famr" if method in STYLE_VARIANTS else method, Request("samples"), model_name)
  return [dict(lr=base.lr * f, steps=base.steps * k) for f in (1, 10, 100) for k in (1, 4)]


def tune(args, methods, data, task, model, apply_fn, params, train_config, staging) -> dict:
  """Runs every grid point of every method (point i of each method on board i) and keeps each method's best."""
  grids = {m: grid(m, args.model) for m in methods}
  trials = {m: [] for m in methods}
  for i in range(max(len(g) for g in grids.values())):
    point = {m: g[i] for m, g in grids.items() if i < len(g)}
    style_point = point.get(STYLE_VARIANTS[0], {})
    board = style_leaderboard(task, data.x_train, model, apply_fn, params, train_config, model_name=args.model,
                              methods=tuple(point), style_layer=args.style_layer,
                              overrides={**point, "famr-style*": style_point})
    for m in point:
      s = board["summary"][m]
      trials[m].append({"setting": point[m], "avg_gap": s["avg_gap"]["mean"],
                        "styled_gap": s["gap_styled_test_acc"]["mean"], "styled_test_acc": s["styled_test_acc"]["mean"],
                        "clean_test_acc": s["clean_test_acc"]["mean"]})
      print(f"grid {i}: {m:<18s} {point[m]}  avg gap {s['avg_gap']['mean']:6.2f}  styled gap "
            f"{s['gap_styled_test_acc']['mean']:6.2f}  clean {s['clean_test_acc']['mean']:.1f}", flush=True)
  gap = lambda t: t["avg_gap"] if np.isfinite(t["avg_gap"]) else np.inf
  best = {m: min(ts, key=gap)["setting"] for m, ts in trials.items()}
  (staging / "tuned.json").write_text(json.dumps(best, indent=1))
  (staging / "trials.json").write_text(json.dumps(trials, indent=1, default=_json_default))
  return best


def run(args) -> int:
  methods, overrides = validate(args)
  t_start = time.perf_counter()
  data = load_dataset(args.dataset, max_train=args.max_train, max_test=args.max_test, seed=args.seed)
  task = make_style_task(data, args.style, args.fraction, jax.random.key(args.seed))
  model = models.create_model(args.model, data.num_classes, data.image_shape)
  apply_fn = models.make_apply_fn(model)
  epochs = args.train_epochs or (15 if args.quick else 30 if args.dataset == "digits" else 10)
  train_config = TrainConfig(epochs=epochs, batch_size=64 if args.dataset == "digits" else 128)
  original = train_recipe(model, apply_fn, data.image_shape, train_config)(
      task.data.x_train, task.data.y_train, jax.random.fold_in(jax.random.key(args.seed), 99))
  acc = style_accuracies(apply_fn, task)(original.params)
  print(f"original ({args.model}, {train_config}): stylized test acc {100 * acc['styled_test_acc']:.1f}%, "
        f"clean {100 * acc['clean_test_acc']:.1f}%; {task.forget.indices.size} stylized training images", flush=True)
  if args.tune:
    with staged_directory(args.out, args.overwrite) as staging:
      best = tune(args, methods, data, task, model, apply_fn, original.params, train_config, staging)
    print(json.dumps(best, indent=1))
    return 0
  if args.tune:
    with staged_directory(args.out, args.overwrite) as staging:
      best = tune(args, methods, data, task, model, apply_fn, original.params, train_config, staging)
    print(json.dumps(best, indent=1))
    return 0
  board = style_leaderboard(task, data.x_train, model, apply_fn, original.params, train_config,
                            model_name=args.model, methods=methods, style_layer=args.style_layer, seeds=args.seeds,
                            overrides=overrides, log=lambda line: print(line, flush=True))
  board.update(model=args.model, dataset=args.dataset, train_config=train_config.__dict__,
               command=portable_command(["python", "experiments/style_forgetting.py", *sys.argv[1:]]),
               rows=board_rows(board), wall_s=time.perf_counter() - t_start)
  table = format_style_board(board)
  with staged_directory(args.out, args.overwrite) as staging:
    (staging / "leaderboard.json").write_text(json.dumps(board, indent=1, default=_json_default))
    (staging / "leaderboard.md").write_text(table + "\n")
    plot_style_board(board, staging / "style_board.png")
  print("\n" + table)
  print(f"\nwrote {args.out}/leaderboard.json, leaderboard.md, style_board.png in {board['wall_s']:.0f} s")
  return 0


def _json_default(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serializable: {type(value)}")


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    return run(args)
  except FamrError as e:
    print(f"style_forgetting: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
