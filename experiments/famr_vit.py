"""FAMR on Vision Transformers: the FAMR paper's Tables 1-2 and Figure 1.

For every ViT in ``--models``: fine-tune (from ``--weights``, an original ViT
``.npz`` checkpoint, or from scratch), then for every seed FAMR-forget one
class drawn at random with that seed, under two settings:

* ``paper``: the paper's 10 epochs, lr 1e-4, anchor lambda ("rho") 0.1, SGD;
* ``forgets``: the library's per-model FAMR defaults (10 epochs, lr 0.1,
  lambda 0.1, SGD), the setting measured to forget on the small models;
* ``lr=X``: the paper's setting with step size X (``--settings paper,lr=1e-3``).

It writes ``table.md`` (one row per model and setting: Ret-Acc, For-Acc, CE,
entropy and KL on the forget set, mean +- std over seeds, original accuracies
beside them on the same class sets), ``figure1.png`` (forget accuracy and
KL(p_original || p) on the forget set per epoch, mean line and min-max band
over seeds, as FAMR Figure 1) and ``results.json`` (everything per seed).

Runs here (CPU, small ViTs trained from scratch on Fashion-MNIST)::

  python experiments/famr_vit.py --dataset fashion_mnist --models vit_nano,vit_micro \
      --max-train 10000 --finetune-epochs 5 --seeds 0,1,2 --out runs/scale/famr_vit_fmnist

On a GPU/TPU machine with the data (paper scale; bfloat16, all devices)::

  python experiments/famr_vit.py --dataset tfds:cifar100 --image-size 224 \
      --models vit_ti,vit_s,vit_b,vit_l --weights vit_b=ViT-B_16.npz,vit_l=ViT-L_16.npz,... \
      --finetune-epochs 50 --finetune-lr 1e-4 --batch-size 512 --data-parallel \
      --compute-dtype bfloat16 --checkpoint-every 500 --out runs/famr_vit_cifar100
  python experiments/famr_vit.py --dataset imagenet100 --image-size 224 ...

``imagenet100`` is ``tfds:imagenet2012`` (manual download into the tfds
data_dir) restricted to the 100 classes ``0, 10, 20, ..., 990`` of its label
order (every tenth class: a fixed, documented rule; ``--classes`` overrides
it). tfds data sets are held in memory as float32: use ``--max-train``
(stratified) to bound memory at 224x224. An image folder (``--data
folder:DIR``, e.g. ImageNet-100 as ``DIR/train/<class>`` + ``DIR/val/<class>``)
is streamed instead: decoded batch by batch, never whole.

With weights users have (Hugging Face / timm ViTs converted by ``famr-jax import``; issue 15)::

  famr-jax import --from hf-vit --weights vit-base-patch16-224.safetensors --num-classes 100 \
      --image-size 224 --out ckpt/vit_b
  python experiments/famr_vit.py --data folder:/data/imagenet100 --checkpoints vit_b=ckpt/vit_b,vit_s=ckpt/vit_s \
      --finetune-epochs 10 --finetune-lr 1e-4 --batch-size 256 --compute-dtype bfloat16 --out runs/famr_vit_in100

The images are normalized with the first checkpoint's recorded mean / std (all must agree).
End to end on a generated tiny folder in well under a minute (random weights)::

  python experiments/famr_vit.py --fixture --out /tmp/famr_vit_fixture --overwrite

Results are written to ``--out`` through the library's staged output protocol
(nothing is replaced unless the run finishes); fine-tuned models are cached in
``--work-dir`` (default ``OUT.work``) so a rerun skips fine-tuning.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from famr_jax import models
from famr_jax.data.image_folder import write_example_folder
from famr_jax.io.outputs import check_output_free, staged_directory
from famr_jax.io.saved_model import load_model
from famr_jax.io.checkpoints import load_checkpoint, save_checkpoint
from famr_jax.data.datasets import load_dataset
from famr_jax.errors import FamrError
from famr_jax.data.forget import forget_classes
from famr_jax.engine.parallel import ScaleConfig, peak_memory, scale_description
from famr_jax.engine.resume import ResumeConfig
from famr_jax.engine.training import TrainConfig, train_classifier
from famr_jax.methods.famr import FAMRConfig, famr_unlearn
from famr_jax.methods.resolve import Request, resolve_config
from famr_jax.io.vit_weights import load_vit_npz

IMAGENET100_CLASSES = tuple(range(0, 1000, 10))   # every tenth imagenet2012 label
TABLE_KEYS = (("retain_acc", "Ret-Acc (%)", 100.0), ("forget_acc", "For-Acc (%)", 100.0),
              ("forget_ce", "CE", 1.0), ("forget_entropy", "Ent", 1.0), ("kl_from_original", "KL", 1.0))
SETTINGS = ("paper", "forgets")


def famr_setting(name: str, model: str, epochs: int) -> FAMRConfig:
  """The FAMR config of a named setting (both use the paper's 10 epochs and lambda 0.1 by default)."""
  if name == "paper":
    return dataclasses.replace(FAMRConfig.paper(), epochs=epochs)
  if name == "forgets":
    return resolve_config("famr", Request("classes"), model, {"epochs": epochs})
  if name.startswith("lr="):   # the paper's setting with another step size
    try:
      return dataclasses.replace(FAMRConfig.paper(), epochs=epochs, lr=float(name[3:])).validate()
    except ValueError:
      pass
  raise FamrError(f"unknown setting {name!r}; choose from {', '.join(SETTINGS)} or lr=X")


def parse_weights(text: str) -> dict[str, str]:
  """``vit_b=a.npz,vit_l=b.npz`` -> ``{"vit_b": "a.npz", "vit_l": "b.npz"}``."""
  out = {}
  for item in filter(None, (t.strip() for t in text.split(","))):
    name, sep, path = item.partition("=")
    if not sep:
      raise FamrError(f"--weights takes MODEL=PATH items, got {item!r}")
    out[name] = path
  return out


class Predictor:
  """Logits of one model on any number of images with one compiled program (fixed-size chunks)."""

  def __init__(self, apply_fn, chunk: int = 256):
    self.fn = jax.jit(apply_fn)
    self.chunk = chunk

  def __call__(self, params, x: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(x), self.chunk):
      xb = np.asarray(x[start:start + self.chunk], np.float32)   # a streamed set decodes just these rows
      pad = self.chunk - len(xb)
      if pad:
        xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
      out.append(np.asarray(self.fn(params, xb), np.float64)[:self.chunk - pad])
    return np.concatenate(out)


def _log_softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def table_metrics(test_logits, y_test, forget_logits, y_forget, forget_class: int,
                  forget_logits0=None) -> dict:
  """Ret-Acc / For-Acc (test images of the retained / forgotten class) and, on the
  forget set's training images, CE, entropy and KL(p_original || p)."""
  correct = np.argmax(test_logits, -1) == y_test
  is_forget = y_test == forget_class
  logp = _log_softmax(forget_logits)
  out = {"retain_acc": float(correct[~is_forget].mean()), "forget_acc": float(correct[is_forget].mean()),
         "forget_ce": float(-np.mean(logp[np.arange(len(y_forget)), y_forget])),
         "forget_entropy": float(-np.mean(np.sum(np.exp(logp) * logp, -1)))}
  if forget_logits0 is not None:
    logp0 = _log_softmax(forget_logits0)
    out["kl_from_original"] = float(np.mean(np.sum(np.exp(logp0) * (logp0 - logp), -1)))
  return out


def load_data(args, preprocessing=None, image_size=None):
  classes = None
  spec = args.dataset
  if spec == "imagenet100":
    spec, classes = "tfds:imagenet2012", IMAGENET100_CLASSES
  if args.classes:
    classes = tuple(int(c) for c in args.classes.split(","))
  return load_dataset(spec, data_dir=args.data_dir, max_train=args.max_train, max_test=args.max_test,
                      image_size=args.image_size or image_size, classes=classes, seed=0,
                      preprocessing=preprocessing), classes


def imported_checkpoints(args) -> dict:
  """``{name: SavedModel}`` of ``--checkpoints`` / ``--checkpoint`` (``famr-jax import`` outputs), read first."""
  items = dict(args.checkpoints)
  if args.checkpoint:
    items[None] = args.checkpoint
  out = {}
  for name, path in items.items():
    saved = load_model(path)
    out[name or saved.metadata["model"]] = saved
  recipes = {json.dumps(s.metadata.get("preprocessing"), sort_keys=True) for s in out.values()}
  if len(recipes) > 1:
    raise FamrError("the checkpoints record different preprocessing (mean / std / size): run them separately")
  return out


def _from_checkpoint(saved, data, name: str):
  """A checkpoint's model rebuilt for ``data`` (class count and image shape must match)."""
  meta = saved.metadata
  if int(meta["num_classes"]) != data.num_classes or tuple(meta["image_shape"]) != tuple(data.image_shape):
    raise FamrError(f"checkpoint {name}: {meta['num_classes']} classes at {tuple(meta['image_shape'])}, the data "
                    f"{data.num_classes} at {data.image_shape} (import it with --num-classes / --image-size)")
  return saved.model, saved.apply_fn, saved.params, {"checkpoint": meta.get("source") or meta.get("model")}


def finetune(model_name: str, data, args, scale: ScaleConfig, out: Path, saved=None) -> tuple:
  """The fine-tuned (or from-scratch trained) params of one model, cached under out/models/."""
  if saved is not None:
    model, apply_fn, params, source = _from_checkpoint(saved, data, model_name)
  else:
    model = models.create_model(model_name, data.num_classes, data.image_shape)
    apply_fn = models.make_apply_fn(model)
  cache = out / "models" / model_name
  if cache.exists():
    template = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0), data.image_shape))
    ck = load_checkpoint(cache, template=template)
    return model, apply_fn, ck.params, ck.metadata["finetune"]
  if saved is not None:
    pass
  elif model_name in args.weights:
    template = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0), data.image_shape))
    params, info = load_vit_npz(args.weights[model_name], template, head="auto")
    source = {"npz": str(Path(args.weights[model_name]).resolve()), **info}
  else:
    params = models.init_params(model, jax.random.key(args.init_seed), data.image_shape)
    source = "scratch"
  config = TrainConfig(epochs=max(args.finetune_epochs, 1), batch_size=args.batch_size, lr=args.finetune_lr,
                       weight_decay=args.weight_decay)
  info = {"source": source, "config": dataclasses.asdict(config), "train_s": 0.0, "compile_s": 0.0}
  if args.finetune_epochs > 0:
    resume = None
    if args.checkpoint_every:
      resume = ResumeConfig(str((out / "resume" / model_name).resolve()), checkpoint_every=args.checkpoint_every)
    result = train_classifier(apply_fn, params, data.x_train, data.y_train, config,
                              jax.random.key(args.init_seed + 1), desc=f"fine-tune {model_name}",
                              show_progress=not args.quiet, scale=scale, resume=resume)
    params = result.params
    info.update(train_s=result.run_s, compile_s=result.compile_s)
  else:   # the given weights as they are (e.g. already fine-tuned on this data set)
    info["config"] = None
  logits = Predictor(apply_fn)(params, data.x_test)
  info.update(params=models.count_params(params), test_acc=float(np.mean(np.argmax(logits, -1) == data.y_test)))
  save_checkpoint(cache, params, {"model": model_name, "finetune": info})
  return model, apply_fn, params, info


def run(args) -> dict:
  target = Path(args.out).resolve()
  check_output_free(target, args.overwrite)
  out = Path(args.work_dir).resolve() if args.work_dir else target.parent / f"{target.name}.work"
  out.mkdir(parents=True, exist_ok=True)
  scale = ScaleConfig(data_parallel=args.data_parallel, compute_dtype=args.compute_dtype,
                      grad_accum=args.grad_accum).validate()
  saved = imported_checkpoints(args)
  if saved:
    args.models = tuple(saved)
  first = next(iter(saved.values()), None)
  data, classes = load_data(args, first and first.metadata.get("preprocessing"),
                            first and int(first.metadata["image_shape"][0]))
  print(f"{data.name}: {len(data.y_train)} train / {len(data.y_test)} test images {data.image_shape}, "
        f"{data.num_classes} classes", flush=True)
  results = {"dataset": data.name, "classes": list(classes) if classes else None,
             "image_shape": list(data.image_shape), "num_train": int(len(data.y_train)),
             "scale": scale_description(scale), "seeds": list(args.seeds), "settings": list(args.settings),
             "models": {}}
  for model_name in args.models:
    t0 = time.perf_counter()
    model, apply_fn, params, ft = finetune(model_name, data, args, scale, out, saved.get(model_name))
    print(f"{model_name}: {ft['params']:,} params, test accuracy {100 * ft['test_acc']:.1f}% "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    predict = Predictor(apply_fn)
    test0 = predict(params, data.x_test)
    runs = []
    for seed in args.seeds:
      forget_class = int(np.random.default_rng(seed).integers(data.num_classes))
      forget = forget_classes(data.y_train, [forget_class], data.num_classes)
      x_f, y_f = data.x_train[forget.indices], data.y_train[forget.indices]
      forget0 = predict(params, x_f)
      original = table_metrics(test0, data.y_test, forget0, y_f, forget_class)
      for setting in args.settings:
        config = famr_setting(setting, model_name, args.famr_epochs)
        r = famr_unlearn(apply_fn, params, x_f, config, jax.random.key(seed), y_forget=y_f,
                         show_progress=not args.quiet, scale=scale)
        unlearned = table_metrics(predict(r.params, data.x_test), data.y_test, predict(r.params, x_f), y_f,
                                  forget_class, forget_logits0=forget0)
        runs.append({"seed": seed, "forget_class": forget_class, "setting": setting,
                     "config": dataclasses.asdict(config), "original": original, "unlearned": unlearned,
                     "history": r.history, "unlearn_s": r.run_s, "compile_s": r.compile_s})
        print(f"  seed {seed} class {forget_class} {setting}: For-Acc {100 * original['forget_acc']:.1f}% -> "
              f"{100 * unlearned['forget_acc']:.1f}%, Ret-Acc {100 * original['retain_acc']:.1f}% -> "
              f"{100 * unlearned['retain_acc']:.1f}%, KL {unlearned['kl_from_original']:.3f}", flush=True)
    results["models"][model_name] = {"finetune": ft, "runs": runs}
  results["resources"] = peak_memory()
  table = format_table(results)
  with staged_directory(target, args.overwrite) as staging:
    (staging / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (staging / "table.md").write_text(table + "\n")
    plot_figure1(results, staging / "figure1.png")
  print(table)
  print(f"wrote {target}/table.md, figure1.png, results.json (fine-tuned models cached in {out})")
  return results


def _mean_std(values) -> str:
  values = np.asarray(values, float)
  return f"{values.mean():.2f}" if len(values) == 1 else f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def format_table(results: dict) -> str:
  """Table 1 style: one row per model and setting, mean ± std over seeds."""
  header = ["Model", "Setting", "Orig Ret-Acc (%)", "Orig For-Acc (%)"] + [t for _, t, _ in TABLE_KEYS]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for model_name, entry in results["models"].items():
    for setting in results["settings"]:
      runs = [r for r in entry["runs"] if r["setting"] == setting]
      if not runs:
        continue
      row = [model_name, setting,
             _mean_std([100 * r["original"]["retain_acc"] for r in runs]),
             _mean_std([100 * r["original"]["forget_acc"] for r in runs])]
      row += [_mean_std([scale_ * r["unlearned"][key] for r in runs]) for key, _, scale_ in TABLE_KEYS]
      lines.append("| " + " | ".join(row) + " |")
  n = len(results["seeds"])
  lines.append("")
  lines.append(f"{results['dataset']}, {n} seed(s) (one random forget class per seed). Ret-Acc / For-Acc: "
               "test accuracy on the retained / forgotten class(es); CE, Ent, KL: means over the forget "
               "set's training images, KL = KL(p_original || p_unlearned) between softmax outputs.")
  return "\n".join(lines)


def plot_figure1(results: dict, path: Path) -> None:
  """Forget accuracy and KL per epoch, one colour per model, band = min..max over seeds."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  settings = results["settings"]
  fig, axes = plt.subplots(len(settings), 2, figsize=(10, 3.6 * len(settings)), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for row, setting in enumerate(settings):
    for i, (model_name, entry) in enumerate(results["models"].items()):
      runs = [r for r in entry["runs"] if r["setting"] == setting]
      if not runs:
        continue
      epochs = [h["epoch"] for h in runs[0]["history"]]
      for col, key, scale_ in ((0, "forget_acc", 100.0), (1, "forget_kl_from_original", 1.0)):
        values = np.array([[scale_ * h[key] for h in r["history"]] for r in runs])
        ax = axes[row, col]
        ax.plot(epochs, values.mean(0), "o-", ms=3, color=colors[i % len(colors)], label=model_name)
        ax.fill_between(epochs, values.min(0), values.max(0), color=colors[i % len(colors)], alpha=0.2)
    axes[row, 0].set_ylabel(f"[{setting}] forget accuracy (%)")
    axes[row, 1].set_ylabel(f"[{setting}] KL(p_original || p) (nats)")
    for ax in axes[row]:
      ax.set_xlabel("FAMR epoch")
      ax.legend(fontsize=8)
  fig.suptitle(f"FAMR on {results['dataset']}: forgetting over epochs "
               f"(band: min-max over {len(results['seeds'])} seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ints = lambda t: tuple(int(v) for v in t.split(",") if v.strip())
  names = lambda t: tuple(v.strip() for v in t.split(",") if v.strip())
  p.add_argument("--dataset", "--data", dest="dataset", default="fashion_mnist",
                 help="fashion_mnist, digits, tfds:cifar100, imagenet100, folder:DIR, idx:DIR, ...")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--classes", default=None, help="comma-separated labels to keep (overrides imagenet100's rule)")
  p.add_argument("--image-size", type=int, default=None)
  p.add_argument("--max-train", type=int, default=None)
  p.add_argument("--max-test", type=int, default=None)
  p.add_argument("--models", type=names, default=("vit_nano", "vit_micro"))
  p.add_argument("--weights", type=parse_weights, default={}, help="MODEL=PATH.npz,... original ViT checkpoints")
  p.add_argument("--checkpoints", type=parse_weights, default={},
                 help="NAME=CKPT,... famr-jax checkpoints (e.g. from famr-jax import); replaces --models")
  p.add_argument("--checkpoint", default=None, help="one famr-jax checkpoint (its model name labels the rows)")
  p.add_argument("--random-weights", action="store_true",
                 help="no fine-tuning, random init (fixtures, pipeline checks): --finetune-epochs 0")
  p.add_argument("--fixture", action="store_true",
                 help="generate a tiny image folder and run vit_nano on it end to end (random weights)")
  p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
  p.add_argument("--work-dir", default=None, help="fine-tuned model cache (default OUT.work)")
  p.add_argument("--finetune-epochs", type=int, default=5, help="0: use --weights as they are")
  p.add_argument("--finetune-lr", type=float, default=1e-3)
  p.add_argument("--weight-decay", type=float, default=1e-4)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--init-seed", type=int, default=0)
  p.add_argument("--famr-epochs", type=int, default=10)
  p.add_argument("--settings", type=names, default=SETTINGS, help="paper, forgets, lr=X (comma list)")
  p.add_argument("--seeds", type=ints, default=(0, 1, 2))
  p.add_argument("--data-parallel", action="store_true", help="shard batches over all devices")
  p.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--grad-accum", type=int, default=1)
  p.add_argument("--checkpoint-every", type=int, default=0, help="resumable fine-tuning checkpoints")
  p.add_argument("--quiet", action="store_true", help="no progress bars")
  p.add_argument("--out", required=True)
  return p


FIXTURE_ARGS = dict(models=("vit_nano",), image_size=32, finetune_epochs=8, finetune_lr=3e-3, famr_epochs=5, seeds=(0,),
                    settings=("forgets", "lr=0.3"), batch_size=8, max_train=None, max_test=None)


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  if args.random_weights:
    args.finetune_epochs = 0
  try:
    if args.fixture:   # a generated folder; fixture sizes unless given on the command line
      import tempfile
      given = set(argv if argv is not None else sys.argv[1:])
      for key, value in FIXTURE_ARGS.items():
        if "--" + key.replace("_", "-") not in given:
          setattr(args, key, value)
      scratch = Path(tempfile.mkdtemp(prefix="famr_vit_fixture_"))
      args.dataset = "folder:" + write_example_folder(scratch / "imgs")
      args.work_dir = args.work_dir or str(scratch / "work")   # never a cached model of other data
    for s in args.settings:
      famr_setting(s, "vit", 1)
    run(args)
  except FamrError as e:
    print(f"famr_vit: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
