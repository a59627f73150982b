"""Zero-shot unlearning from class impressions: the paper's experiments, reproduced.

For one trained model and a set of forget classes, runs (with no data during
unlearning) the library's default zero-shot method, Algorithm 1 with both
sign conventions at the authors' settings, and zero-shot FAMR; compares them
with the original model and the retrained gold standard; and, with
``--study``, the impression space (activation vs pixel), the number of
impressions per class and the tail layer. Every variant gets a report.json
(the ``famr-jax unlearn`` format), per-class accuracy bars (the paper's
Figures 1-2) and the change in per-class accuracy (Figures 3-4); the summary
table goes to ``OUT/table.md`` and ``OUT/summary.json``.

  # the embedded digits data set: the quick example (about a minute on 2 CPU cores)
  python experiments/impressions_experiments.py --preset digits --out runs/impressions/digits
  # Fashion-MNIST LeNet5 forgetting {1,2,3,4}, from a checkpoint and an existing gold standard
  python experiments/impressions_experiments.py --checkpoint runs/fmnist_lenet5 --forget-classes 1,2,3,4 \\
      --retrained runs/impressions/fmnist_lenet5_cli/retrained --study --out runs/impressions/fmnist_lenet5
  # tfds data for users who have it (train the original here, or pass --checkpoint)
  python experiments/impressions_experiments.py --preset mnist --out runs/impressions/mnist
  python experiments/impressions_experiments.py --preset cifar10 --out runs/impressions/cifar10
  python experiments/impressions_experiments.py --preset imagenet --checkpoint CKPT --out runs/impressions/imagenet
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

import famr_jax
from famr_jax import models
from famr_jax.io import checkpoints
from famr_jax.evaluation import report
from famr_jax.errors import FamrError
from famr_jax.data.forget import forget_classes
from famr_jax.methods.impressions import save_impression_grid
from famr_jax.evaluation.metrics import evaluate_unlearning
from famr_jax.workflows import DataConfig, load_model, retrain_gold_standard
from famr_jax.engine.training import TrainConfig, train_classifier
from famr_jax.methods.zero_shot import (ZeroShotConfig, ZeroShotFAMRConfig, famr_zero_shot_unlearn,
                                first_responsive_layer, zero_shot_unlearn)

# dataset, model, forget classes, training epochs, image size, authors' lr
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(dataset="digits", model="lenet5", forget="1,2,3,4", epochs=30),
    "fashion_mnist": dict(dataset="fashion_mnist", model="lenet5", forget="1,2,3,4", epochs=10),
    "fashion_mnist_karpathynet": dict(dataset="fashion_mnist", model="karpathynet", forget="3,4,8", epochs=10),
    # The papers' open question (issue 15 part 6): class impressions on a ViT (see vit_impressions.py).
    "fashion_mnist_vit": dict(dataset="fashion_mnist", model="vit_micro", forget="1,2,3,4", epochs=5),
    "mnist": dict(dataset="tfds:mnist", model="lenet5", forget="1,2,3,4", epochs=10),
    "cifar10": dict(dataset="tfds:cifar10", model="karpathynet", forget="3,4,8", epochs=30),
    # ImageNet-scale: 100 forgotten classes, lr 1e-4 as the paper's ImageNet models.
    "imagenet": dict(dataset="tfds:imagenet2012", model="vit_s", forget=",".join(map(str, range(100))),
                     epochs=90, image_size=224, lr=1e-4),
}


@dataclasses.dataclass(frozen=True)
class Variant:
  """One unlearning run: a name, the method function and its config."""
  name: str
  fn: Callable
  config: Any
  method: str


def main_variants(authors_epochs: int, lr: float | None) -> list[Variant]:
  """The paper's comparison: the default, both signs at the authors' settings, zero-shot FAMR."""
  extra = {} if lr is None else {"lr": lr}
  return [
      Variant("default (masked_kl)", zero_shot_unlearn, ZeroShotConfig(**extra), "impressions"),
      Variant("intended sign (authors)", zero_shot_unlearn,
              ZeroShotConfig.authors("intended", epochs=authors_epochs, **extra), "impressions"),
      Variant("as-published sign (authors)", zero_shot_unlearn,
              ZeroShotConfig.authors("as_published", epochs=authors_epochs, **extra), "impressions"),
      Variant("as-published, no label smoothing", zero_shot_unlearn,
              ZeroShotConfig.authors("as_published", epochs=authors_epochs, label_smoothing=0.0, **extra),
              "impressions"),
      Variant("as-published sign (authors, 1000 epochs)", zero_shot_unlearn,
              ZeroShotConfig.authors("as_published", epochs=1000, **extra), "impressions"),
      Variant("zero-shot FAMR", famr_zero_shot_unlearn, ZeroShotFAMRConfig(**extra), "famr-zeroshot"),
  ]


def study_variants(model, params, authors_epochs: int, pixel_steps: int, pixel_per_class: int) -> list[Variant]:
  """Impression space and objective, impressions per class and tail layer (default vs as-published)."""
  dense_stages = {k for k, v in params.items() if isinstance(v, dict) and np.ndim(v.get("kernel", 0)) == 2}
  authors = lambda **kw: ZeroShotConfig.authors("as_published", epochs=authors_epochs, **kw)
  pixel = dict(impression_space="pixel", impression_steps=pixel_steps, impressions_per_class=pixel_per_class)
  out = [
      Variant(f"default, pixel space ({pixel_per_class}/class, {pixel_steps} steps)", zero_shot_unlearn,
              ZeroShotConfig(**pixel), "impressions"),
      Variant(f"as-published, pixel space ({pixel_per_class}/class, {pixel_steps} steps)", zero_shot_unlearn,
              authors(**pixel), "impressions"),
      Variant("default, logit impressions (Eq. 3)", zero_shot_unlearn,
              ZeroShotConfig(impression_objective="logit"), "impressions"),
      Variant("default, authors' impressions (logit, unconstrained, no scale jitter)", zero_shot_unlearn,
              ZeroShotConfig(impression_objective="logit", impression_range="free", scale_min=1.0), "impressions"),
      Variant("as-published, log-softmax impressions", zero_shot_unlearn,
              authors(impression_objective="log_softmax"), "impressions"),
      Variant("default, 10/class", zero_shot_unlearn, ZeroShotConfig(impressions_per_class=10), "impressions"),
      Variant("as-published, 10/class", zero_shot_unlearn, authors(impressions_per_class=10), "impressions"),
  ]
  # Every dense stage but the last (the default): the tail choice. Conv stages are left out: their
  # activation impressions are slow on CPU (digits, tail from conv2: 7 minutes) and the authors
  # split at a dense layer.
  names = models.layer_names(model)
  for layer in [n for n in names[1:-1] if n in dense_stages]:
    out.append(Variant(f"default, tail from {layer}", zero_shot_unlearn, ZeroShotConfig(tail_layer=layer),
                       "impressions"))
    out.append(Variant(f"as-published, tail from {layer}", zero_shot_unlearn, authors(tail_layer=layer),
                       "impressions"))
  return out


def tail_variants(layers: list[str], authors_epochs: int, lr: float | None) -> list[Variant]:
  """The default method and the as-published one (authors' settings) with the tail starting at each stage.

  Any stage can start the tail (a ViT's ``head``: the linear head alone; ``norm``: the final
  LayerNorm of the class token and the head; ``block_i``: blocks ``i..`` and both).
  """
  extra = {} if lr is None else {"lr": lr}
  out = []
  for layer in layers:
    out.append(Variant(f"default, tail from {layer}", zero_shot_unlearn,
                       ZeroShotConfig(tail_layer=layer, **extra), "impressions"))
    out.append(Variant(f"as-published, tail from {layer}", zero_shot_unlearn,
                       ZeroShotConfig.authors("as_published", epochs=authors_epochs, tail_layer=layer, **extra),
                       "impressions"))
  return out


def impression_stats(model, params, data, seed: int) -> list[dict]:
  """Analysis only (after the fact, with test data): how impressions at the last stage's input compare
  with the real activations there -- norm, spread, cosine with the real class mean."""
  from famr_jax.methods.impressions import ImpressionConfig, class_impressions
  layer = models.layer_names(model)[-1]
  head = jax.jit(models.make_layer_input_fn(model, layer))
  real = np.concatenate([np.asarray(head(params, data.x_test[i:i + 2000]))
                         for i in range(0, len(data.x_test), 2000)])
  real = real.reshape(len(real), -1)
  rows = [{"impressions": f"real inputs of {layer} (test set)", "norm": float(np.linalg.norm(real, axis=1).mean()),
           "min": float(real.min()), "spread": None, "cos_with_class_mean": None}]
  settings = (("logit, unconstrained (authors)", dict()),
              ("logit, h >= 0", dict(nonnegative=True)),
              ("log-softmax, h >= 0 (default)", dict(nonnegative=True, objective="log_softmax")))
  for name, kw in settings:
    imp = class_impressions(model, params, range(data.num_classes), data.num_classes, data.image_shape,
                            ImpressionConfig(layer=layer, **kw), jax.random.key(seed))
    x = imp.inputs.reshape(len(imp.inputs), -1)
    cos, spread = [], []
    for c in range(data.num_classes):
      xc, mu = x[imp.labels == c], real[data.y_test == c].mean(0)
      if len(xc):
        cos.append(float(xc.mean(0) @ mu / (np.linalg.norm(xc.mean(0)) * np.linalg.norm(mu) + 1e-12)))
        spread.append(float(np.mean(np.linalg.norm(xc - xc.mean(0), axis=1))))
    rows.append({"impressions": name, "norm": float(np.linalg.norm(x, axis=1).mean()), "min": float(x.min()),
                 "spread": float(np.mean(spread)), "cos_with_class_mean": float(np.mean(cos)),
                 "median_margin": float(np.median(np.sort(imp.logits, 1)[:, -1] - np.sort(imp.logits, 1)[:, -2]))})
  return rows


def plot_accuracy_change(original, unlearned, forget, path, title, class_names=None) -> None:
  """Change in per-class test accuracy (the paper's Figures 3-4): red forgotten, green retained."""
  plt = report.pyplot()
  delta = 100 * (np.asarray(unlearned, float) - np.asarray(original, float))
  classes = np.arange(len(delta))
  colors = ["tab:red" if c in set(forget) else "tab:green" for c in classes]
  fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(delta) + 2), 4))
  ax.bar(classes, delta, color=colors)
  ax.axhline(0, color="black", linewidth=0.8)
  labels = list(class_names) if class_names else [str(c) for c in classes]
  if len(classes) <= 30:
    ax.set_xticks(classes, labels, rotation=45 if max(map(len, labels)) > 3 else 0, ha="right")
  ax.set_ylabel("change in test accuracy (points)")
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def slug(name: str) -> str:
  return "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")[:60]


def run(args) -> dict:
  preset = PRESETS.get(args.preset, {}) if args.preset else {}
  out = Path(args.out)
  if out.exists() and not args.overwrite:
    raise FamrError(f"{out} exists: choose another --out or pass --overwrite")
  out.mkdir(parents=True, exist_ok=True)
  seed = args.seed

  # The original model.
  if args.checkpoint:
    loaded = load_model(args.checkpoint)
    model, apply_fn, params, data = loaded.model, loaded.apply_fn, loaded.params, loaded.data
    model_name, train_config = loaded.metadata["model"], TrainConfig(**loaded.metadata["train_config"])
    train_s = float(loaded.metadata["timings_s"]["train"])
  else:
    dataset = args.dataset or preset.get("dataset", "digits")
    model_name = args.model or preset.get("model", "lenet5")
    data = famr_jax.load_dataset(dataset, data_dir=args.data_dir, max_train=args.max_train,
                                 max_test=args.max_test, seed=seed,
                                 image_size=args.image_size or preset.get("image_size"))
    model = models.create_model(model_name, data.num_classes, data.image_shape)
    apply_fn = models.make_apply_fn(model)
    train_config = TrainConfig(epochs=args.train_epochs or preset.get("epochs", 10), batch_size=128)
    init = models.init_params(model, jax.random.key(seed), data.image_shape)
    trained = train_classifier(apply_fn, init, data.x_train, data.y_train, train_config,
                               jax.random.fold_in(jax.random.key(seed), 1), desc=f"train {model_name}")
    params, train_s = trained.params, trained.run_s
    checkpoints.save_checkpoint(out / "original", params, {
        "model": model_name, "model_overrides": {}, "num_classes": data.num_classes,
        "image_shape": list(data.image_shape),
        # Every data setting the model was trained on: a retrain (compare's gold standard) loads
        # the data from this record, so a dropped --max-train would retrain on other data.
        "data": dataclasses.asdict(DataConfig(dataset, args.data_dir, args.max_train, args.max_test)),
        "train_config": dataclasses.asdict(train_config), "seed": seed,
        "timings_s": {"train": trained.run_s, "compile": trained.compile_s}}, overwrite=True)
  classes = [int(c) for c in (args.forget_classes or preset.get("forget", "1,2,3,4")).split(",")]
  forget = forget_classes(data.y_train, classes, data.num_classes)

  # The gold standard.
  retrain_s = None
  if args.retrained:
    gold_params = checkpoints.load_checkpoint(args.retrained, template=jax.eval_shape(lambda: params)).params
    meta = checkpoints.read_metadata(args.retrained)
    retrain_s = meta.get("retrain_s")
    cli_report = Path(args.retrained).parent / "report.json"   # a `famr-jax unlearn --retrain` output
    if retrain_s is None and cli_report.exists():
      retrain_s = json.loads(cli_report.read_text())["timings_s"].get("retrain")
  elif not args.no_retrain:
    gold = retrain_gold_standard(model, apply_fn, data, forget, train_config, seed)
    gold_params, retrain_s = gold.params, gold.run_s
    checkpoints.save_checkpoint(out / "retrained", gold_params, {"model": model_name, "retrain_s": gold.run_s},
                                overwrite=True)
  else:
    gold_params = None
  if args.retrain_seconds is not None:
    retrain_s = args.retrain_seconds

  m_orig = evaluate_unlearning(apply_fn, params, data, forget, mia_seed=seed)
  m_gold = (evaluate_unlearning(apply_fn, gold_params, data, forget, params0=params, mia_seed=seed)
            if gold_params is not None else None)

  authors_epochs = args.authors_epochs
  lr = args.lr if args.lr is not None else preset.get("lr")
  variants = [] if args.tails_only else main_variants(authors_epochs, lr)
  if args.tails:
    variants += tail_variants([t.strip() for t in args.tails.split(",") if t.strip()], authors_epochs, lr)
  if args.study:
    variants += study_variants(model, params, authors_epochs, args.pixel_steps, args.pixel_per_class)
  if args.only:
    keep = [s.strip() for s in args.only.split(";")]
    variants = [v for v in variants if v.name in keep]

  rows = []
  for i, v in enumerate(variants):
    if args.impression_steps is not None:
      v = dataclasses.replace(v, config=dataclasses.replace(v.config, impression_steps=min(
          args.impression_steps, v.config.impression_steps)))
    if args.impressions_per_class is not None:
      v = dataclasses.replace(v, config=dataclasses.replace(v.config, impressions_per_class=min(
          args.impressions_per_class, v.config.impressions_per_class)))
    print(f"[{i + 1}/{len(variants)}] {v.name}", file=sys.stderr, flush=True)
    try:
      t0 = time.perf_counter()
      r = v.fn(model, params, classes, data.num_classes, data.image_shape, v.config, jax.random.key(seed),
               show_progress=args.progress)
      wall = time.perf_counter() - t0
    except FamrError as e:
      print(f"  skipped: {e}", file=sys.stderr)
      rows.append({"name": v.name, "error": str(e)})
      continue
    m = evaluate_unlearning(apply_fn, r.params, data, forget, params0=params, mia_seed=seed)
    metrics = {"original": m_orig, "unlearned": m}
    if m_gold is not None:
      metrics["retrained"] = m_gold
    d = out / slug(v.name)
    d.mkdir(exist_ok=True)
    timings = {"train": train_s, "unlearn": r.run_s, "impressions": r.impression_s,
               "compile": {"unlearn": r.compile_s}}
    if retrain_s is not None:
      timings["retrain"] = retrain_s
    rep = report.build_report(
        version=famr_jax.__version__, dataset=data.name, model=model_name, method=v.method,
        forget=forget.describe(), config={"method": dataclasses.asdict(v.config), "seed": seed,
                                          "variant": v.name, "tail_layer": r.layer,
                                          "impressions_kept": r.impressions.kept_per_class.tolist()},
        metrics=metrics, timings_s=timings, history=r.history)
    report.write_json(d / "report.json", rep)
    report.plot_class_accuracy({role: mm["per_class_acc"] for role, mm in metrics.items()}, classes,
                               d / "class_accuracy.png", class_names=data.class_names)
    plot_accuracy_change(m_orig["per_class_acc"], m["per_class_acc"], classes, d / "accuracy_change.png",
                         f"{v.name}: change in per-class accuracy", data.class_names)
    if r.impressions.space == "pixel" and data.image_shape[-1] in (1, 3):
      save_impression_grid(r.impressions, d / "impressions.png")   # one row per class
    rows.append({"name": v.name, "dir": d.name, "forget_acc": m["forget_acc"], "retain_acc": m["retain_acc"],
                 "test_acc": m["test_acc"], "mia_efficacy": m["mia_efficacy"],
                 "unlearn_s": r.run_s, "impression_s": r.impression_s, "compile_s": r.compile_s,
                 "wall_s": wall, "tail_layer": r.layer,
                 "kept": int(r.impressions.kept_per_class.sum()),
                 "requested": int(r.impressions.num_per_class * len(r.impressions.classes))})

  responsive = None
  if args.responsive:
    # The first responsive layer (ERRATA item 4): per-class success fractions at every stage's input.
    t0 = time.perf_counter()
    rl = first_responsive_layer(model, params, data.num_classes, data.image_shape, jax.random.key(seed),
                                num_per_class=20, steps=200, threshold=0.9)
    responsive = {"layer": rl.layer, "threshold": rl.threshold, "success": rl.success,
                  "seconds": time.perf_counter() - t0}
    print(f"first responsive layer: {rl.layer} (per-class success: {rl.success})", file=sys.stderr)

  stats = impression_stats(model, params, data, seed) if args.impression_stats else None

  summary = {"dataset": data.name, "model": model_name, "forget_classes": classes,
             "responsive": responsive, "impression_stats": stats,
             "original": {k: m_orig[k] for k in ("forget_acc", "retain_acc", "test_acc", "mia_efficacy")},
             "retrained": (None if m_gold is None else
                           {k: m_gold[k] for k in ("forget_acc", "retain_acc", "test_acc", "mia_efficacy")}),
             "train_s": train_s, "retrain_s": retrain_s, "rows": rows}
  report.write_json(out / "summary.json", summary)
  table = format_summary(summary)
  (out / "table.md").write_text(table + "\n")
  print(table)
  return summary


def format_summary(summary: dict) -> str:
  """The markdown table of a run: one row per model, accuracies in percent."""
  head = ("| model | forget acc % | retain acc % | test acc % | MIA-efficacy % | time (s) | tail | kept |\n"
          "|---|---|---|---|---|---|---|---|")
  lines = [f"{summary['model']} on {summary['dataset']}, forgetting {summary['forget_classes']} "
           "(no data used while unlearning; retain acc over the same retained classes for every row)", "",
           head]

  def pct(v):
    return "-" if v is None else f"{100 * v:.2f}"

  o = summary["original"]
  lines.append(f"| original | {pct(o['forget_acc'])} | {pct(o['retain_acc'])} | {pct(o['test_acc'])} | "
               f"{pct(o['mia_efficacy'])} | train {summary['train_s']:.0f} | - | - |")
  for r in summary["rows"]:
    if "error" in r:
      lines.append(f"| {r['name']} | refused: {r['error']} | | | | | | |")
      continue
    lines.append(f"| {r['name']} | {pct(r['forget_acc'])} | {pct(r['retain_acc'])} | {pct(r['test_acc'])} | "
                 f"{pct(r['mia_efficacy'])} | {r['unlearn_s']:.2f} (+{r['compile_s']:.1f} compile) | "
                 f"{r['tail_layer']} | {r['kept']}/{r['requested']} |")
  g = summary["retrained"]
  if g is not None:
    t = summary["retrain_s"]
    lines.append(f"| retrained (gold standard) | {pct(g['forget_acc'])} | {pct(g['retain_acc'])} | "
                 f"{pct(g['test_acc'])} | {pct(g['mia_efficacy'])} | "
                 f"{'-' if t is None else f'{t:.0f}'} | - | - |")
  st = summary.get("impression_stats")
  if st:
    lines += ["", "| impressions at the last stage's input | mean norm | min | spread | cos with real class mean | "
              "median logit margin |", "|---|---|---|---|---|---|"]
    f = lambda v: "-" if v is None else f"{v:.2f}"
    lines += [f"| {r['impressions']} | {f(r['norm'])} | {f(r['min'])} | {f(r['spread'])} | "
              f"{f(r['cos_with_class_mean'])} | {f(r.get('median_margin'))} |" for r in st]
  rl = summary.get("responsive")
  if rl:
    lines += ["", f"First responsive layer (every class >= {rl['threshold']:.0%} of 20 impressions on target): "
              f"{rl['layer']}", "", "| stage input | per-class success |", "|---|---|"]
    lines += [f"| {k} | {' '.join(f'{100 * v:.0f}' for v in vals)} |" for k, vals in rl["success"].items()]
  return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", choices=sorted(PRESETS), help="data set, model and forget classes of a paper experiment")
  p.add_argument("--checkpoint", help="a famr-jax checkpoint (else a model is trained on --dataset)")
  p.add_argument("--dataset", help="digits, fashion_mnist, idx:DIR or tfds:NAME")
  p.add_argument("--data-dir")
  p.add_argument("--image-size", type=int)
  p.add_argument("--max-train", type=int)
  p.add_argument("--max-test", type=int)
  p.add_argument("--model")
  p.add_argument("--train-epochs", type=int)
  p.add_argument("--forget-classes")
  p.add_argument("--retrained", help="checkpoint of the gold standard (else it is retrained)")
  p.add_argument("--retrain-seconds", type=float, help="wall time of that retrain, for the table")
  p.add_argument("--no-retrain", action="store_true")
  p.add_argument("--authors-epochs", type=int, default=100,
                 help="epochs of the authors'-settings variants (their code: 1000)")
  p.add_argument("--lr", type=float, help="unlearning learning rate of every impressions variant")
  p.add_argument("--study", action="store_true", help="also vary impression space, count and tail layer")
  p.add_argument("--tails", help="comma-separated stages: the default and as-published methods with the tail "
                 "starting at each (any stage, e.g. head,norm,block_3 of a ViT)")
  p.add_argument("--tails-only", action="store_true", help="run only the --tails variants")
  p.add_argument("--responsive", action="store_true", help="also run the first-responsive-layer procedure")
  p.add_argument("--impression-stats", action="store_true",
                 help="also compare impressions with real activations (analysis only, uses the test set)")
  p.add_argument("--pixel-steps", type=int, default=200)
  p.add_argument("--pixel-per-class", type=int, default=10)
  p.add_argument("--impression-steps", type=int, help="cap every variant's impression steps (tiny runs)")
  p.add_argument("--impressions-per-class", type=int, help="cap every variant's impressions per class")
  p.add_argument("--only", help="';'-separated variant names to run")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--progress", action="store_true")
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--out", required=True)
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    run(args)
  except FamrError as e:
    print(f"impressions_experiments: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
