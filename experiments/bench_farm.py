"""vmap over models vs a Python loop over models, for a farm of shadow models (issue 14).

Trains N copies of the digits recipe (fresh inits, own minibatch orders) both
ways in one process, compilation excluded (each way runs once to warm up), and
prints the time per model and the ratio. ``famr_jax.engine.farm``'s ``auto``
mode follows this measurement.

  nice python3 experiments/bench_farm.py --models mlp,lenet5 --shadows 16 --epochs 10
"""

from __future__ import annotations

import argparse
import time

import jax

from famr_jax import models
from famr_jax.audit.shadows import initial_params
from famr_jax.data.datasets import load_dataset
from famr_jax.engine.farm import run_farm
from famr_jax.engine.training import TrainConfig, train_classifier


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--models", default="mlp,lenet5")
  p.add_argument("--shadows", type=int, default=16)
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--dataset", default="digits")
  p.add_argument("--max-train", type=int, default=None)
  args = p.parse_args()
  data = load_dataset(args.dataset, max_train=args.max_train)
  config = TrainConfig(epochs=args.epochs)
  print(f"{args.dataset}: {len(data.y_train)} training images, {args.shadows} models, {args.epochs} epochs, "
        f"backend {jax.default_backend()}")
  print("| model | vmap s/model | loop s/model | loop / vmap |\n|---|---|---|---|")
  for name in args.models.split(","):
    model = models.create_model(name, data.num_classes, data.image_shape)
    apply_fn = models.make_apply_fn(model)
    keys = jax.random.split(jax.random.key(0), 2 * args.shadows)
    inits = initial_params(model, keys[:args.shadows], data.image_shape)
    runs = [lambda plan_only=False, i=i: train_classifier(apply_fn, inits[i], data.x_train, data.y_train, config,
                                                          keys[args.shadows + i], show_progress=False,
                                                          plan_only=plan_only) for i in range(args.shadows)]
    seconds = {}
    for mode in ("vmap", "loop"):
      run_farm(runs, mode=mode)   # compile (a vmapped program is compiled per number of models)
      t0 = time.perf_counter()
      run_farm(runs, mode=mode)
      seconds[mode] = (time.perf_counter() - t0) / args.shadows
    print(f"| {name} | {seconds['vmap']:.3f} | {seconds['loop']:.3f} | {seconds['loop'] / seconds['vmap']:.2f} |",
          flush=True)


if __name__ == "__main__":
  main()
