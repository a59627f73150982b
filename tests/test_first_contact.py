"""Issue 21 item 7: first contact, tried as a new user would (one test per problem found)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import famr_jax as fj
from famr_jax.errors import FamrError
from famr_jax.methods.resolve import Request, resolve_config
from famr_jax.models.parts import ModelParts

ROOT = Path(__file__).resolve().parents[1]


def _toy():
  """A 2-layer linear model on 4-pixel images, 3 classes, as user-built parts."""
  head = lambda p, x: jnp.maximum(x.reshape(len(x), -1) @ p["w1"], 0.0)
  tail = lambda p, h: h @ p["w2"]
  params = {"w1": jnp.eye(4) * 2.0, "w2": jnp.eye(4)[:, :3] * 3.0}
  parts = ModelParts(head, tail, {"w1": False, "w2": True}, "w2")
  x = np.tile(np.eye(4, dtype=np.float32)[:3], (10, 1)).reshape(30, 2, 2, 1)
  y = np.tile(np.arange(3), 10).astype(np.int32)
  return parts, params, x, y


def test_zero_shot_with_own_model_parts():
  parts, params, x, y = _toy()
  forget = fj.forget_classes(y, [1], 3)
  with pytest.raises(FamrError, match=r"input_shape=\(H, W, C\)"):
    fj.unlearn("impressions", parts.apply_fn, params, forget, jax.random.key(0), model=parts)


def test_compare_input_shape_and_crashing_method():
  parts, params, x, y = _toy()
  data = fj.Dataset("toy", x, y, x, y, 3, (2, 2, 1), ("a", "b", "c"))

  def boom(task, config):
    raise ZeroDivisionError("a bug in my method")

  crash = fj.MethodSpec("crash", fj.FAMRConfig, boom, "always fails", defaults=lambda name: fj.FAMRConfig())
  board = fj.compare([crash, "ga"], parts.apply_fn, params, data, fj.forget_classes(y, [1], 3),
                     retrain=lambda xr, yr, key: params, input_shape=(2, 2, 1),
                     configs={"ga": dataclasses.replace(fj.unlearn_config("ga", fj.forget_classes(y, [1], 3), data=data), epochs=1)})
  rows = {r["method"]: r for r in board["runs"]}
  assert rows["crash"]["error"] == "ZeroDivisionError: a bug in my method"
  assert rows["crash"]["diverged"] and "error" not in rows["ga"] and not rows["ga"]["diverged"]


def test_audit_with_own_model_parts_checked_before_work():
  parts, params, x, y = _toy()
  data = fj.Dataset("toy", x, y, x, y, 3, (2, 2, 1), ("a", "b", "c"))
  ran = []

  def counting(task, config):
    ran.append(1)
    return fj.get_method("ga").run(task, config)

  ga = fj.get_method("ga")
  spec = fj.MethodSpec("counting", ga.config_cls, counting, "ga, counted",
                       defaults=lambda n: resolve_config("ga", Request("classes")))
  with pytest.raises(FamrError, match="Flax Linen module"):
    fj.compare([spec], parts.apply_fn, params, data, fj.forget_classes(y, [1], 3),
               retrain=lambda xr, yr, key: params, model=parts, audit="ulira", shadows=2,
               train_config=fj.TrainConfig(epochs=1))
  assert not ran   # refused before any method ran


def test_demo_runs_the_default_class_method(tmp_path):
  from famr_jax.cli.main import main
  from famr_jax.methods.defaults import RECOMMENDED
  out = tmp_path / "demo"
  assert main(["demo", "--out", str(out), "--max-train", "300", "--max-test", "100", "--train-epochs", "2"]) == 0
  report = json.loads((out / "report.json").read_text())
  assert RECOMMENDED["classes"] == "famr-plus"
  assert json.dumps(report).count('"famr-plus"') >= 1 and report.get("method", "famr-plus") == "famr-plus"


def test_dataset_from_arrays():
  x = np.random.default_rng(0).random((6, 3, 3, 1), np.float32)
  y = np.array([0, 1, 2, 0, 1, 2])
  d = fj.Dataset.from_arrays(x, y, x[:3], y[:3])
  assert (d.num_classes, d.image_shape, d.class_names, d.y_train.dtype) == (3, (3, 3, 1), ("0", "1", "2"), np.int32)
  with pytest.raises(FamrError, match="6 images but y_train 5"):
    fj.Dataset.from_arrays(x, y[:5], x, y)
  with pytest.raises(FamrError, match="labels go up to 2 but num_classes is 2"):
    fj.Dataset.from_arrays(x, y, x, y, num_classes=2)
  with pytest.raises(FamrError):
    fj.Dataset.from_arrays((x * 255).astype(np.uint8), y, x, y)


def test_progress_bar_names_the_method(monkeypatch):
  import tqdm.auto
  labels = []
  real = tqdm.auto.tqdm
  monkeypatch.setattr(tqdm.auto, "tqdm", lambda it, desc, **kw: labels.append(desc) or real(it, disable=True))
  monkeypatch.delenv("FAMR_JAX_NO_PROGRESS", raising=False)
  parts, params, x, y = _toy()
  fj.unlearn("famr-function", parts.apply_fn, params, fj.forget_classes(y, [1], 3), jax.random.key(0),
             data=(x, y), epochs=1, show_progress=True)
  assert labels and set(labels) == {"famr-function"}


def test_committed_results_hold_no_absolute_paths():
  from famr_jax.io.outputs import portable_command, portable_path
  absolute = re.compile(r"""(^|["'\s=(])/(work|tmp|home|root|Users|mnt|opt|var|srv|data)/""")
  files = subprocess.run(["git", "ls-files", "experiments/results"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.split()
  text = [f for f in files if f.endswith((".json", ".md", ".txt", ".csv"))]
  assert len(text) > 20
  bad = [f for f in text if absolute.search((ROOT / f).read_text(errors="replace"))]
  assert not bad, bad
  here = Path.cwd()
  assert portable_path(here / "runs" / "x") == "runs/x"
  assert portable_command(["python", str(here / "a"), "--out=" + str(here / "b"), "-v"]) == "python a --out=b -v"
