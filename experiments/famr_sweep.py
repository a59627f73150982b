"""Sweep FAMR's learning rate and anchor strength on a trained checkpoint.

Measures, for every (lr, lambda) and every epoch, what forgetting costs the
retained classes: forget accuracy (on the forget set's training images),
retain accuracy (test images of the retained classes), forget-set entropy and
the distance from the original weights. One FAMR run per (lr, lambda) records
every epoch through its history (``eval_data`` monitors), so a sweep of E
epochs costs one run, not E. This is the table behind the per-model FAMR
defaults (BUILD_NOTES.md, "FAMR defaults").

  famr-jax train --dataset fashion_mnist --model lenet5 --out runs/fmnist_lenet5
  python experiments/famr_sweep.py --checkpoint runs/fmnist_lenet5 --forget-classes 3 \
      --lrs 0.001,0.01,0.1 --lams 0.1,1,10 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import jax
import numpy as np

from famr_jax.errors import FamrError
from famr_jax.data.forget import forget_classes
from famr_jax.workflows import load_model
from famr_jax.methods.famr import FAMRConfig, famr_unlearn


def floats(text):
  return tuple(float(t) for t in text.split(","))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True)
  parser.add_argument("--forget-classes", default="3")
  parser.add_argument("--lrs", type=floats, default=(0.001, 0.01, 0.1))
  parser.add_argument("--lams", type=floats, default=(0.1, 1.0, 10.0))
  parser.add_argument("--epochs", type=int, default=5)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--optimizer", default="sgd")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--json", help="also write the rows to this JSON file")
  args = parser.parse_args(argv)
  try:
    loaded = load_model(args.checkpoint)
    data = loaded.data
    forget = forget_classes(data.y_train, [int(c) for c in args.forget_classes.split(",")], data.num_classes)
  except FamrError as e:
    print(f"famr_sweep: error: {e}", file=sys.stderr)
    return 2
  x_f, y_f = data.x_train[forget.indices], data.y_train[forget.indices]
  test_forgotten = np.isin(data.y_test, forget.classes)
  retain_test = (data.x_test[~test_forgotten], data.y_test[~test_forgotten])
  chance, target_entropy = 1.0 / data.num_classes, 0.9 * math.log(data.num_classes)
  rows = []
  print(f"{loaded.metadata['model']} on {data.name}, forgetting {list(forget.classes)} "
        f"({len(x_f)} training images); chance {100 * chance:.1f}%, 0.9 log C = {target_entropy:.3f}")
  print("| optimizer | lr | lambda | epoch | forget acc (train) % | retain acc (test) % | retain cost (pts) | "
        "forget entropy | param dist | forgets? |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for lr in args.lrs:
    for lam in args.lams:
      cfg = FAMRConfig(epochs=args.epochs, lr=lr, lam=lam, batch_size=args.batch_size, optimizer=args.optimizer)
      result = famr_unlearn(loaded.apply_fn, loaded.params, x_f, cfg, jax.random.key(args.seed),
                            y_forget=y_f, eval_data=retain_test, show_progress=False)
      hist = result.history
      for h in hist:
        row = {"optimizer": args.optimizer, "lr": lr, "lam": lam, "epoch": h["epoch"],
               "forget_acc": h["forget_acc"], "retain_acc": h["eval_acc"],
               "retain_cost": hist[0]["eval_acc"] - h["eval_acc"], "forget_entropy": h["forget_entropy"],
               "param_distance": h["param_distance"], "run_s": result.run_s, "compile_s": result.compile_s}
        row["forgets"] = row["forget_acc"] <= chance and row["forget_entropy"] >= target_entropy
        rows.append(row)
        if h["epoch"] == 0 and (lr, lam) != (args.lrs[0], args.lams[0]):
          continue
        print(f"| {args.optimizer} | {lr:g} | {lam:g} | {h['epoch']} | {100 * row['forget_acc']:.1f} | "
              f"{100 * row['retain_acc']:.1f} | {100 * row['retain_cost']:.1f} | {row['forget_entropy']:.3f} | "
              f"{row['param_distance']:.3f} | {'yes' if row['forgets'] else 'no'} |", flush=True)
  good = [r for r in rows if r["forgets"]]
  if good:
    best = min(good, key=lambda r: r["retain_cost"])
    print(f"least costly forgetting setting: lr {best['lr']:g}, lambda {best['lam']:g}, epoch {best['epoch']}: "
          f"forget acc {100 * best['forget_acc']:.1f}%, retain cost {100 * best['retain_cost']:.1f} points")
  else:
    print("no setting forgot (forget acc <= chance and entropy >= 0.9 log C)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
