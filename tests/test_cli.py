"""The famr-jax CLI end to end on digits (tiny configs), and every bad input."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from famr_jax.cli.main import main
from famr_jax.data.datasets import write_idx

REPORT_METRICS = {"retain_acc", "forget_acc", "test_acc", "forget_train_acc", "forget_ce",
                  "forget_entropy", "mia_efficacy"}


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  ck = root / "original"
  code = main(["train", "--dataset", "digits", "--model", "mlp", "--epochs", "15", "--out", str(ck)])
  assert code == 0
  return ck


def _snapshot(root):
  return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_train_unlearn_retrain_evaluate(trained_checkpoint, tmp_path, capsys):
  out = tmp_path / "unlearned"
  code = main(["unlearn", "--checkpoint", str(trained_checkpoint), "--method", "famr",
               "--forget-classes", "3", "--retrain", "--epochs", "8", "--out", str(out)])
  assert code == 0
  printed = capsys.readouterr().out
  assert "original" in printed and "retrained" in printed and "faster than retraining" in printed
  report = json.loads((out / "report.json").read_text())
  assert set(report) == {"famr_jax_version", "dataset", "model", "method", "forget", "config", "metrics",
                         "timings_s", "history"}
  assert report["forget"] == {"kind": "classes", "classes": [3], "num_forget_train": 137}
  assert report["config"]["method"]["epochs"] == 8
  assert set(report["metrics"]) == {"original", "unlearned", "retrained"}
  assert set(report["metrics"]["original"]) == REPORT_METRICS
  for role in ("unlearned", "retrained"):
    assert set(report["metrics"][role]) == REPORT_METRICS | {"kl_from_original", "param_distance"}
  for role in report["metrics"].values():
    for key in ("retain_acc", "forget_acc", "test_acc", "forget_train_acc", "mia_efficacy"):
      assert 0.0 <= role[key] <= 1.0
  assert report["metrics"]["retrained"]["forget_acc"] == 0.0   # never saw class 3
  assert {"train", "unlearn", "retrain", "compile"} <= set(report["timings_s"])
  assert [h["epoch"] for h in report["history"]] == list(range(9))
  assert (out / "forgetting.png").stat().st_size > 1000
  assert (out / "class_accuracy.png").stat().st_size > 1000

  code = main(["evaluate", "--checkpoint", str(out / "unlearned"), "--json"])
  assert code == 0
  evaluated = json.loads(capsys.readouterr().out)
  assert evaluated["forget_classes"] == [3]
  assert evaluated["metrics"]["forget_acc"] == pytest.approx(report["metrics"]["unlearned"]["forget_acc"])


def test_sample_forgetting(trained_checkpoint, tmp_path, capsys):
  out = tmp_path / "samples"
  assert main(["unlearn", "--checkpoint", str(trained_checkpoint), "--forget-samples", "0,5,9,100",
               "--epochs", "2", "--out", str(out)]) == 0
  report = json.loads((out / "report.json").read_text())
  assert report["forget"] == {"kind": "samples", "classes": [], "num_forget_train": 4}
  assert set(report["metrics"]) == {"original", "unlearned"}
  # The honest default: no method named, and the audit backs none for samples: the run says so.
  assert report["method"] == "ga"
  assert report["audit_status"].startswith("no sample method is shown equivalent to retraining")
  assert "audit status of ga (no method named): no sample method is shown equivalent" in capsys.readouterr().out
  named = tmp_path / "named"
  assert main(["unlearn", "--checkpoint", str(trained_checkpoint), "--forget-samples", "0,5", "--method", "ga",
               "--out", str(named)]) == 0
  assert "audit_status" not in json.loads((named / "report.json").read_text())


def test_style_forgetting_through_the_cli(trained_checkpoint, tmp_path):
  out = tmp_path / "style"
  assert main(["unlearn", "--checkpoint", str(trained_checkpoint), "--forget-classes", "2", "--epochs", "2",
               "--beta", "0.5", "--style-layer", "fc1", "--out", str(out)]) == 0
  report = json.loads((out / "report.json").read_text())
  assert report["config"]["method"]["beta"] == 0.5 and report["config"]["method"]["style_layer"] == "fc1"


def _write_nan_idx(directory):
  directory.mkdir()
  images = np.zeros((4, 8, 8), np.float32)
  images[0, 0, 0] = np.nan
  write_idx(directory / "train-images-idx3-ubyte", images)
  write_idx(directory / "t10k-images-idx3-ubyte", np.zeros((2, 8, 8), np.float32))
  write_idx(directory / "train-labels-idx1-ubyte", np.array([0, 1, 0, 1], np.uint8))
  write_idx(directory / "t10k-labels-idx1-ubyte", np.array([0, 1], np.uint8))


def _foreign_checkpoint(trained_checkpoint, tmp_path):
  foreign = tmp_path / "foreign"
  shutil.copytree(trained_checkpoint, foreign)
  meta = json.loads((foreign / "famr_jax.json").read_text())
  meta["model"] = "logistic"
  (foreign / "famr_jax.json").write_text(json.dumps(meta))
  return foreign


BAD_UNLEARN = [
    (["--forget-classes", "10"], "out of range"),
    (["--forget-classes", "-1"], "out of range"),
    (["--forget-classes", ""], "exactly one forget set"),
    (["--forget-classes", "3,3"], "more than once"),
    (["--forget-classes", "0,1,2,3,4,5,6,7,8,9"], "every class"),
    (["--forget-classes", "3", "--lr", "0"], "learning rate"),
    (["--forget-classes", "3", "--lr", "-0.1"], "learning rate"),
    (["--forget-classes", "3", "--epochs", "0"], "epochs"),
    (["--forget-classes", "3", "--lam", "-1"], "lambda"),
    (["--forget-classes", "3", "--method", "magic"], "unknown method"),
    (["--forget-classes", "3", "--method", "ga", "--lr", "1000", "--epochs", "30"], "ga diverged"),
    (["--forget-classes", "3", "--method", "ga", "--lr", "1e9"], "at most 1000"),
    (["--forget-classes", "x"], "unknown class 'x'; the classes are 0, 1, 2"),
    (["--forget-random", "1.5"], "between 0 and 1"),
    (["--forget-classes", "3", "--beta", "1"], "--style-layer"),
    (["--forget-classes", "3", "--beta", "1", "--style-layer", "conv9"], "unknown layer"),
    (["--forget-classes", "3", "--method", "ssd", "--selection-weight", "0"], "selection weight"),
    # --alpha is FAMR's forget-loss weight; SSD's selection weight has its own name.
    (["--forget-classes", "3", "--method", "ssd", "--alpha", "1"], "has no option --alpha"),
    (["--forget-classes", "3", "--method", "scrub", "--alpha", "1"], "has no option --alpha"),
    (["--forget-classes", "3", "--method", "scrub", "--temperature", "-1"], "temperature"),
    (["--forget-classes", "3", "--method", "ssd", "--data-parallel"], "runs on one device"),
    (["--forget-classes", "3", "--method", "ssd", "--checkpoint-every", "10"], "runs on one device"),
]


@pytest.mark.parametrize("extra, message", BAD_UNLEARN)
def test_bad_unlearn_input(trained_checkpoint, tmp_path, capsys, extra, message):
  before = _snapshot(trained_checkpoint.parent)
  out = tmp_path / "out"
  code = main(["unlearn", "--checkpoint", str(trained_checkpoint), "--out", str(out)] + extra)
  err = capsys.readouterr().err
  assert code == 2
  assert err.startswith("famr-jax: error: ") and err.count("\n") == 1 and message in err, err
  assert not out.exists()
  assert _snapshot(trained_checkpoint.parent) == before


def test_bad_checkpoints_and_existing_output(trained_checkpoint, tmp_path, capsys):
  cases = [
      (["unlearn", "--checkpoint", str(tmp_path / "missing"), "--forget-classes", "3", "--out",
        str(tmp_path / "o1")], "does not exist"),
      (["unlearn", "--checkpoint", str(_foreign_checkpoint(trained_checkpoint, tmp_path)),
        "--forget-classes", "3", "--out", str(tmp_path / "o2")], "different architecture"),
      (["evaluate", "--checkpoint", str(tmp_path)], "not a famr-jax checkpoint"),
  ]
  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "keep.txt").write_text("mine")
  cases.append((["unlearn", "--checkpoint", str(trained_checkpoint), "--forget-classes", "3",
                 "--out", str(existing)], "already exists"))
  cases.append((["train", "--out", str(existing)], "already exists"))
  for argv, message in cases:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, (argv, err)
  assert (existing / "keep.txt").read_text() == "mine" and len(list(existing.iterdir())) == 1
  assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "cifar7"], "unknown"),
    (["train", "--model", "resnet999"], "unknown model"),
    (["train", "--lr", "0"], "learning rate"),
    (["train", "--epochs", "-3"], "epochs"),
    (["train", "--epochs", "ten"], "integer"),
    (["demo", "--famr-lam", "-0.5"], "lambda"),
    (["frobnicate"], "invalid choice"),
    (["verify-theory", "--lambdas", "0,-1"], "lambda"),
    (["verify-theory", "--lambdas", "a,b"], "comma-separated"),
])
def test_bad_train_and_demo_input(tmp_path, capsys, argv, message):
  out = tmp_path / "o"
  code = main(argv + ["--out", str(out)])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("famr-jax: error: ") and err.count("\n") == 1 and message in err, err
  assert not out.exists()


def test_nan_in_inputs_is_refused(tmp_path, capsys):
  _write_nan_idx(tmp_path / "nan")
  code = main(["train", "--dataset", f"idx:{tmp_path / 'nan'}", "--out", str(tmp_path / "o")])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1 and "NaN" in err, err
  assert not (tmp_path / "o").exists()


def test_console_script_exit_status_and_one_line(tmp_path):
  """The installed entry point, as a user runs it: one line on stderr, exit 2."""
  proc = subprocess.run([sys.executable, "-m", "famr_jax.cli.main", "unlearn", "--checkpoint",
                         str(tmp_path / "nope"), "--forget-classes", "1", "--out", str(tmp_path / "o")],
                        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("famr-jax: error:"), proc.stderr
