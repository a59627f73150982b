"""Benchmark: FAMR's wall time vs retraining to the gold standard, with the quality of both.

For each data set: train LeNet5 (the original), unlearn one class with FAMR
(the model's default config), retrain from scratch on the retained data (the
gold standard, same recipe as the original), and print wall times with
compilation measured apart, the speed-up ratio, and both models' metrics.

  python experiments/bench_unlearn_vs_retrain.py                      # digits + fashion_mnist
  python experiments/bench_unlearn_vs_retrain.py --datasets digits --train-epochs 30
  python experiments/bench_unlearn_vs_retrain.py --checkpoints fashion_mnist=runs/fmnist_lenet5
"""

from __future__ import annotations

import argparse
import sys

import jax

from famr_jax import models
from famr_jax.errors import FamrError
from famr_jax.data.forget import forget_classes
from famr_jax.evaluation.metrics import evaluate_unlearning
from famr_jax.workflows import DataConfig, load_model, retrain_gold_standard
from famr_jax.engine.training import TrainConfig, train_classifier
from famr_jax.methods.famr import famr_unlearn
from famr_jax.methods.resolve import Request, resolve_config

DEFAULT_EPOCHS = {"digits": 30, "fashion_mnist": 10}


def bench(dataset: str, model_name: str, forget_class: int, train_epochs: int, seed: int,
          checkpoint: str | None = None) -> dict:
  if checkpoint:   # reuse a `famr-jax train` checkpoint: its model, data set and recipe
    loaded = load_model(checkpoint)
    data, model, apply_fn, params = loaded.data, loaded.model, loaded.apply_fn, loaded.params
    model_name = loaded.metadata["model"]
    train_cfg = TrainConfig(**loaded.metadata["train_config"])
  else:
    data = DataConfig(dataset).load(seed)
    model = models.create_model(model_name, data.num_classes, data.image_shape)
    apply_fn = models.make_apply_fn(model)
    train_cfg = TrainConfig(epochs=train_epochs, batch_size=128)
    init = models.init_params(model, jax.random.key(seed), data.image_shape)
    params = train_classifier(apply_fn, init, data.x_train, data.y_train, train_cfg,
                              jax.random.fold_in(jax.random.key(seed), 1), desc=f"train {dataset}").params
  forget = forget_classes(data.y_train, [forget_class], data.num_classes)
  cfg = resolve_config("famr", Request.of(forget), model_name)   # what fj.unlearn("famr", ...) runs
  famr = famr_unlearn(apply_fn, params, data.x_train[forget.indices], cfg, jax.random.key(seed),
                      y_forget=data.y_train[forget.indices])
  gold = retrain_gold_standard(model, apply_fn, data, forget, train_cfg, seed)
  m_orig = evaluate_unlearning(apply_fn, params, data, forget)
  m_famr = evaluate_unlearning(apply_fn, famr.params, data, forget, params0=params)
  m_gold = evaluate_unlearning(apply_fn, gold.params, data, forget, params0=params)
  return {"dataset": dataset, "famr_config": cfg, "train_cfg": train_cfg,
          "famr_s": famr.run_s, "famr_compile_s": famr.compile_s,
          "retrain_s": gold.run_s, "retrain_compile_s": gold.compile_s,
          "metrics": {"original": m_orig, "famr": m_famr, "retrained": m_gold}}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--datasets", default="digits,fashion_mnist")
  parser.add_argument("--model", default="lenet5")
  parser.add_argument("--forget-class", type=int, default=3)
  parser.add_argument("--train-epochs", type=int, default=None,
                      help="epochs of the original and of the retrain (default: 30 digits, 10 fashion_mnist)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--checkpoints", default="",
                      help="reuse trained originals: DATASET=DIR[,DATASET=DIR] (their recipe is the retrain's)")
  args = parser.parse_args(argv)
  reuse = dict(item.split("=", 1) for item in args.checkpoints.split(",") if item)
  print(f"devices: {jax.devices()}")
  for dataset in args.datasets.split(","):
    try:
      r = bench(dataset, args.model, args.forget_class,
                args.train_epochs or DEFAULT_EPOCHS.get(dataset, 10), args.seed, reuse.get(dataset))
    except FamrError as e:
      print(f"bench: error: {e}", file=sys.stderr)
      return 2
    print(f"\n== {dataset} / {args.model}, forget class {args.forget_class}; FAMR {r['famr_config']}; "
          f"retrain {r['train_cfg']}")
    print(f"FAMR      : {r['famr_s']:8.3f} s  (+ compile {r['famr_compile_s']:.2f} s)")
    print(f"retrain   : {r['retrain_s']:8.3f} s  (+ compile {r['retrain_compile_s']:.2f} s)")
    print(f"speed-up  : {r['retrain_s'] / r['famr_s']:.1f}x faster than retraining (compile excluded); "
          f"{(r['retrain_s'] + r['retrain_compile_s']) / (r['famr_s'] + r['famr_compile_s']):.1f}x "
          f"with compilation")
    print("metric            original     FAMR  retrained")
    for key in ("retain_acc", "forget_acc", "test_acc", "forget_entropy", "mia_efficacy"):
      vals = [r["metrics"][k][key] for k in ("original", "famr", "retrained")]
      scale = 100 if key != "forget_entropy" else 1
      print(f"{key:16s} " + " ".join(f"{scale * v:9.3f}" for v in vals))
  return 0


if __name__ == "__main__":
  sys.exit(main())
