"""Sweep FAMR's learning rate and anchor strength on a trained checkpoint.

Measures, for every (lr, lambda), what forgetting costs the retained classes:
forget accuracy, retain accuracy (test images of retained classes), forget
entropy, and the distance from the original weights. This is the table behind
the per-model FAMR defaults (BUILD_NOTES.md, "FAMR defaults").

  famr-jax train --dataset fashion_mnist --model lenet5 --out runs/fmnist_lenet5
  python experiments/famr_sweep.py --checkpoint runs/fmnist_lenet5 --forget-classes 3 \
      --lrs 0.01,0.03,0.1 --lams 0.01,0.1,1 --epochs 1,5,10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys

import jax
import numpy as np

from famr_jax.errors import FamrError
from famr_jax.forget import forget_classes
from famr_jax.metrics import evaluate_unlearning
from famr_jax.runs import load_model
from famr_jax.unlearning import FAMRConfig, famr_unlearn


def floats(text):
  return tuple(float(t) for t in text.split(","))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True)
  parser.add_argument("--forget-classes", default="3")
  parser.add_argument("--lrs", type=floats, default=(0.01, 0.03, 0.1, 0.3))
  parser.add_argument("--lams", type=floats, default=(0.0, 0.01, 0.1, 1.0))
  parser.add_argument("--epochs", type=lambda t: tuple(int(v) for v in t.split(",")), default=(10,))
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
  original = evaluate_unlearning(loaded.apply_fn, loaded.params, data, forget)
  chance = 1.0 / data.num_classes
  print(f"{loaded.metadata['model']} on {data.name}, forgetting {list(forget.classes)}: original "
        f"retain {100 * original['retain_acc']:.1f}%, forget {100 * original['forget_acc']:.1f}%; "
        f"chance {100 * chance:.1f}%, 0.9 log C = {0.9 * math.log(data.num_classes):.3f}")
  print("| optimizer | lr | lambda | epochs | forget acc % | retain acc % | retain cost (pts) | forget entropy | "
        "param dist | forgets? |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  rows = []
  for lr in args.lrs:
    for lam in args.lams:
      for epochs in args.epochs:
        cfg = FAMRConfig(epochs=epochs, lr=lr, lam=lam, batch_size=args.batch_size, optimizer=args.optimizer)
        result = famr_unlearn(loaded.apply_fn, loaded.params, x_f, cfg, jax.random.key(args.seed),
                              y_forget=y_f, show_progress=False)
        m = evaluate_unlearning(loaded.apply_fn, result.params, data, forget, params0=loaded.params)
        forgets = m["forget_acc"] <= chance and m["forget_entropy"] >= 0.9 * math.log(data.num_classes)
        row = {**dataclasses.asdict(cfg), **{k: v for k, v in m.items() if k != "per_class_acc"},
               "retain_cost": original["retain_acc"] - m["retain_acc"], "forgets": forgets,
               "unlearn_s": result.run_s}
        rows.append(row)
        print(f"| {args.optimizer} | {lr:g} | {lam:g} | {epochs} | {100 * m['forget_acc']:.1f} | "
              f"{100 * m['retain_acc']:.1f} | {100 * row['retain_cost']:.1f} | {m['forget_entropy']:.3f} | "
              f"{m['param_distance']:.3f} | {'yes' if forgets else 'no'} |", flush=True)
  good = [r for r in rows if r["forgets"]]
  if good:
    best = min(good, key=lambda r: r["retain_cost"])
    print(f"best forgetting setting: lr {best['lr']:g}, lambda {best['lam']:g}, epochs {best['epochs']}: "
          f"retain cost {100 * best['retain_cost']:.1f} points")
  else:
    print("no setting forgot (forget acc <= chance and entropy >= 0.9 log C)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"original": {k: v for k, v in original.items() if k != "per_class_acc"}, "rows": rows}, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
