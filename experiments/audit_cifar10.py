"""The audited leaderboard in SalUn's standard setting: CIFAR-10, ResNet-18, a random 10% (issue 14).

For users with the data (``pip install 'famr-jax[tfds]'``; tensorflow-datasets
downloads CIFAR-10 once): trains the original, then runs ``famr-jax compare
--audit ulira`` with a farm of shadow models. On a GPU, 128 or more shadows.

  python experiments/audit_cifar10.py --out runs/cifar10 --shadows 128
  python experiments/audit_cifar10.py --out /tmp/c10 --fixture --model lenet5 --shadows 4   # end to end, no data

``--fixture`` replaces tensorflow-datasets by an in-process stand-in serving a
small random CIFAR-10-shaped set (32x32x3, 10 classes, class-dependent means),
so the whole pipeline (tfds loading, training, farm, audit, files) runs here.
``--model`` defaults to ``resnet18_cifar`` (added by another issue; any
registered model works).
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np

from famr_jax.cli.main import main

SAMPLE_METHODS = "famr,famr-function,ft,ga,neggrad+,rl,salun,scrub,ssd"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def fixture_tfds(num_train: int = 300, num_test: int = 100, seed: int = 0) -> types.ModuleType:
  """A stand-in ``tensorflow_datasets`` module serving a random CIFAR-10-shaped ``cifar10``."""
  rng = np.random.default_rng(seed)
  means = rng.integers(40, 216, (10, 1, 1, 3))

  def split(n):
    y = rng.integers(0, 10, n)
    x = np.clip(means[y] + rng.normal(0, 40, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)

  splits = {"train": split(num_train), "test": split(num_test)}

  class Builder:
    info = types.SimpleNamespace(
        splits={k: None for k in splits},
        features={"image": types.SimpleNamespace(shape=(32, 32, 3)),
                  "label": types.SimpleNamespace(names=list(CIFAR10_CLASSES), num_classes=10)})

    def download_and_prepare(self):
      pass

    def as_dataset(self, *, split, batch_size=None, as_supervised=False):
      x, y = splits[split]
      return (x, y) if batch_size == -1 else list(zip(x, y))

  mod = types.ModuleType("tensorflow_datasets")
  mod.builder = lambda name, data_dir=None: Builder()
  mod.as_numpy = lambda x: x
  return mod


def run(argv: list[str]) -> None:
  print("famr-jax", " ".join(argv), flush=True)
  code = main(argv)
  if code != 0:
    raise SystemExit(code)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True, help="directory for the checkpoint and the board")
  p.add_argument("--model", default="resnet18_cifar")
  p.add_argument("--shadows", type=int, default=128)
  p.add_argument("--epochs", type=int, default=30)
  p.add_argument("--max-train", type=int, default=None, help="a stratified subset of the training set")
  p.add_argument("--forget-random", type=float, default=0.1)
  p.add_argument("--methods", default=SAMPLE_METHODS)
  p.add_argument("--data-dir", default=None)
  p.add_argument("--fixture", action="store_true", help="a small random stand-in for tfds:cifar10 (no data)")
  return p.parse_args(argv)


def main_script(argv=None) -> None:
  args = parse_args(argv)
  if args.fixture:
    sys.modules["tensorflow_datasets"] = fixture_tfds()
  out = Path(args.out)
  ckpt = out / f"ckpt_cifar10_{args.model}"
  if not ckpt.exists():
    train = ["train", "--dataset", "tfds:cifar10", "--model", args.model, "--epochs", str(args.epochs),
             "--out", str(ckpt)]
    train += ["--max-train", str(args.max_train)] if args.max_train else []
    train += ["--data-dir", args.data_dir] if args.data_dir else []
    run(train)
  run(["compare", "--checkpoint", str(ckpt), "--forget-random", str(args.forget_random), "--methods", args.methods,
       "--seeds", "1", "--audit", "ulira", "--shadows", str(args.shadows), "--out", str(out / "board"),
       "--overwrite"])


if __name__ == "__main__":
  main_script()
