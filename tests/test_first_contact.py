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


def _api_board():
  parts, params, x, y = _toy()
  data = fj.Dataset("toy", x, y, x, y, 3, (2, 2, 1), ("a", "b", "c"))
  return fj.compare(["ga"], parts.apply_fn, params, data, fj.forget_classes(y, [1], 3),
                    retrain=lambda xr, yr, key: params, options={"ga": {"epochs": 1}})


def test_format_leaderboard_of_an_api_board():
  table = fj.format_leaderboard(_api_board())
  first = table.splitlines()[0]
  assert first.startswith("model on toy, forgetting classes [1]; 1 seed(s)"), first
  assert "| ga |" in table and "| original |" in table


def test_leaderboard_plot_labels_do_not_overlap(tmp_path, monkeypatch):
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib.figure import Figure
  from matplotlib.text import Text
  from famr_jax.evaluation.leaderboard import plot_leaderboard
  stat = lambda m: {"mean": m, "std": 0.0, "n": 1}
  # Eight methods at almost the same cost and gap: the old fixed offset stacked their labels on each other.
  summary = {name: {"avg_gap": stat(5.0 + 0.05 * i), "time_percent": stat(1.0 + 0.01 * i)}
             for i, name in enumerate(["famr", "famr-plus", "famr-fisher", "famr-function", "ga", "rl",
                                       "neggrad+", "salun"])}
  summary.update(original={"avg_gap": stat(30.0), "time_percent": stat(0.0)},
                 scrub={"avg_gap": stat(2.0), "time_percent": stat(40.0)})   # the axes span these
  board = {"model": "lenet5", "dataset": "digits", "summary": summary}
  captured = []
  real = Figure.savefig

  def save(fig, *args, **kwargs):   # the labels' boxes as the figure draws them
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    captured.append((fig.bbox.frozen(), {t.get_text(): Text.get_window_extent(t, renderer)
                                         for ax in fig.axes for t in ax.texts}))
    return real(fig, *args, **kwargs)
  monkeypatch.setattr(Figure, "savefig", save)
  plot_leaderboard(board, tmp_path / "board.png")
  (frame, boxes), = captured
  assert set(boxes) == set(summary) and (tmp_path / "board.png").stat().st_size > 0
  clash = [(a, b) for i, a in enumerate(boxes) for b in list(boxes)[i + 1:] if boxes[a].overlaps(boxes[b])]
  assert not clash, clash
  assert all(frame.contains(b.x0, b.y0) and frame.contains(b.x1, b.y1) for b in boxes.values())


def test_save_checkpoint_then_load_model_needs_no_num_classes(tmp_path):
  from famr_jax.io.checkpoints import METADATA_FILE
  model = fj.models.create_model("lenet5", 7, (12, 12, 1))
  params = fj.models.init_params(model, jax.random.key(0), (12, 12, 1))
  fj.save_checkpoint(tmp_path / "c", params, {"model": "lenet5", "image_shape": [12, 12, 1]})
  stored = json.loads((tmp_path / "c" / METADATA_FILE).read_text())
  assert stored["num_classes"] == 7   # stored, not only guessed on loading
  saved = fj.load_model(tmp_path / "c")
  x = np.random.default_rng(0).random((2, 12, 12, 1), np.float32)
  assert saved.metadata["num_classes"] == 7
  np.testing.assert_allclose(saved.apply_fn(saved.params, x), fj.models.make_apply_fn(model)(params, x), rtol=1e-6)
  del stored["num_classes"]   # a checkpoint written before it was stored: read back from the params
  (tmp_path / "c" / METADATA_FILE).write_text(json.dumps(stored))
  assert fj.load_model(tmp_path / "c").metadata["num_classes"] == 7


@pytest.fixture(scope="module")
def folder_checkpoint(tmp_path_factory):
  """A logistic model trained on a small image folder with named classes, through a *relative* data path.

  Returns ``(base, checkpoint)``: the folder ``imgs/`` and checkpoint ``ckpt/`` lie in ``base``.
  """
  import os
  from famr_jax.cli.main import main
  from famr_jax.data.image_folder import write_example_folder
  base = tmp_path_factory.mktemp("named")
  write_example_folder(base / "imgs", num_classes=3, train_per_class=4, val_per_class=2, size=(10, 10))
  for split in ("train", "val"):
    for k, name in enumerate(["Bag", "Shirt", "Sneaker"]):
      os.rename(base / "imgs" / split / f"class_{k}", base / "imgs" / split / name)
  here = os.getcwd()
  os.chdir(base)
  try:
    assert main(["train", "--out", "ckpt", "--dataset", "folder:imgs", "--image-size", "8", "--model", "logistic",
                 "--epochs", "1"]) == 0
  finally:
    os.chdir(here)
  return base, base / "ckpt"


def test_forget_classes_take_the_class_names(folder_checkpoint, capsys):
  from famr_jax.cli.main import main
  from famr_jax.cli.runs import UnlearnRun, make_forget_set
  from famr_jax.workflows import load_model
  _, ckpt = folder_checkpoint
  assert main(["evaluate", "--checkpoint", str(ckpt), "--forget-classes", "Sneaker,Bag", "--json"]) == 0
  assert json.loads(capsys.readouterr().out)["forget_classes"] == [0, 2]   # sorted ids of Bag, Sneaker
  data = load_model(ckpt).data
  forget = make_forget_set(UnlearnRun(str(ckpt), "out", forget_classes=("Shirt", 0)), data)
  assert forget.classes == (0, 1) and set(data.y_train[forget.indices]) == {0, 1}
  assert main(["evaluate", "--checkpoint", str(ckpt), "--forget-classes", "Snaker"]) == 2
  err = capsys.readouterr().err
  assert err == ("famr-jax: error: unknown class 'Snaker' (did you mean 'Sneaker'?); "
                 "the classes are Bag, Shirt, Sneaker\n")


def test_relative_data_paths_work_from_another_directory(folder_checkpoint, tmp_path, monkeypatch, capsys):
  from famr_jax.cli.main import main
  from famr_jax.io.checkpoints import METADATA_FILE
  base, ckpt = folder_checkpoint
  stored = json.loads((ckpt / METADATA_FILE).read_text())
  assert stored["data"]["dataset"] == f"folder:{base / 'imgs'}"   # trained with folder:imgs, stored absolute
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  assert main(["evaluate", "--checkpoint", str(ckpt), "--json"]) == 0
  assert json.loads(capsys.readouterr().out)["dataset"] == f"folder:{base / 'imgs'}"
  # A checkpoint written before: its relative entry is resolved against the checkpoint's folder / parent.
  old = tmp_path / "old"
  import shutil
  shutil.copytree(ckpt, old / "ckpt")
  shutil.copytree(base / "imgs", old / "imgs")
  meta = json.loads((old / "ckpt" / METADATA_FILE).read_text())
  meta["data"]["dataset"] = "folder:imgs"
  (old / "ckpt" / METADATA_FILE).write_text(json.dumps(meta))
  assert main(["evaluate", "--checkpoint", str(old / "ckpt"), "--json"]) == 0
  assert json.loads(capsys.readouterr().out)["dataset"] == f"folder:{old / 'imgs'}"


def test_a_non_image_file_in_a_class_folder_is_skipped_and_said(tmp_path, caplog):
  import logging
  from famr_jax.data.image_folder import write_example_folder
  write_example_folder(tmp_path / "imgs", num_classes=2, train_per_class=3, val_per_class=2, size=(10, 10))
  (tmp_path / "imgs" / "train" / "class_0" / "README.txt").write_text("where these came from")
  (tmp_path / "imgs" / "val" / "class_1" / "labels.csv").write_text("a,b")
  with caplog.at_level(logging.WARNING, logger="famr_jax"):
    data = fj.load_dataset(f"folder:{tmp_path / 'imgs'}", image_size=8)
  assert (len(data.y_train), len(data.y_test)) == (6, 4)   # the images only
  assert all(p.endswith((".png", ".JPEG")) for p in data.x_train.paths + data.x_test.paths)
  lines = [r.getMessage() for r in caplog.records if r.name == "famr_jax"]
  assert len(lines) == 1 and "\n" not in lines[0], lines
  assert "skipped 2 non-image files (e.g. " in lines[0] and "README.txt" in lines[0]


def test_dataparallel_weights_import(tmp_path):
  """A state dict saved from torch.nn.DataParallel / DDP (every key under ``module.``) gives PyTorch's logits."""
  from safetensors.numpy import load_file, save_file
  from safetensors import safe_open
  fixtures = ROOT / "tests" / "fixtures"
  with safe_open(str(fixtures / "torch_outputs.safetensors"), "np") as f:
    meta = json.loads(f.metadata()["resnet18_cifar"])
  outputs = load_file(str(fixtures / "torch_outputs.safetensors"))
  wrapped = {f"module.{k}": v for k, v in load_file(str(fixtures / "weights_resnet18_cifar.safetensors")).items()}
  save_file(wrapped, str(tmp_path / "ddp.safetensors"))
  saved = fj.import_weights(meta["source"], tmp_path / "ddp.safetensors", tmp_path / "ckpt",
                            image_size=meta["image_size"])
  x = outputs["resnet18_cifar.x"].transpose(0, 2, 3, 1)   # PyTorch's NCHW inputs
  np.testing.assert_allclose(np.asarray(saved.apply_fn(saved.params, x)), outputs["resnet18_cifar.logits"],
                             atol=1e-4, rtol=1e-4)


def test_an_option_typo_suggests_the_nearest(capsys):
  from famr_jax.cli.main import main
  assert main(["unlearn", "--lrr", "0.1"]) == 2
  assert capsys.readouterr().err == "famr-jax: error: unknown option --lrr; did you mean --lr?\n"
  assert main(["compare", "--checkpoint", "c", "--out", "o", "--epohcs=3"]) == 2
  assert capsys.readouterr().err == "famr-jax: error: unknown option --epohcs; did you mean --epochs?\n"
  parts, params, x, y = _toy()
  with pytest.raises(FamrError, match=r"^method 'ga' has no option lrr; did you mean lr\?$"):
    fj.unlearn("ga", parts.apply_fn, params, fj.forget_classes(y, [1], 3), jax.random.key(0), data=(x, y), lrr=0.1)


def test_evaluate_on_a_truncated_checkpoint_is_one_clean_line_every_time(tmp_path):
  """Orbax leaves reads behind when one array is damaged: their tracebacks used to follow the error now and
  then (about one run in six), and the error carried TensorStore's spec dump."""
  import os
  model = fj.models.create_model("lenet5", 10, (8, 8, 1))
  params = fj.models.init_params(model, jax.random.key(0), (8, 8, 1))
  ckpt = fj.save_checkpoint(tmp_path / "c", params, {"model": "lenet5", "num_classes": 10, "image_shape": [8, 8, 1],
                                                     "data": {"dataset": "digits"}})
  data_files = sorted((ckpt / "params").rglob("ocdbt.process_0/d/*"), key=lambda f: f.stat().st_size)
  largest = data_files[-1]
  largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 3])
  env = {**os.environ, "PYTHONPATH": str(Path(fj.__file__).resolve().parents[1]), "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, "-m", "famr_jax.cli", "evaluate", "--checkpoint", str(ckpt)]
  runs = []
  for _ in range(3):   # 12 runs, 4 at a time
    batch = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    runs += [(p.wait(timeout=300), p.stderr.read()) for p in batch]
  for code, err in runs:
    assert code != 0 and err.count("\n") == 1 and err.startswith("famr-jax: error: cannot read the arrays in "), err
    assert "corrupt or truncated" in err and not re.search(r"TensorStore|pybind|Traceback|Event loop", err), err
