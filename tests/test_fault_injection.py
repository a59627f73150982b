"""Issue 13: faults and hostile use never lose a file famr-jax did not create.

Every test hashes every file that exists before the fault and asserts that none changed or vanished
afterwards, and that the run either finished correctly (its output equals an uninterrupted run's) or
failed with exactly one line. The four data-loss scenarios of the issue come first.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from famr_jax.cli.main import main
from famr_jax.errors import FamrError
from famr_jax.io import checkpoints, outputs

TRAIN = ["--dataset", "digits", "--model", "mlp", "--epochs", "2", "--batch-size", "128"]
UNLEARN = ["--method", "ft", "--forget-classes", "3", "--epochs", "1"]
COMPARE = ["--methods", "ft", "--forget-classes", "3", "--seeds", "1", "--epochs", "1"]
VICTIM = Path(__file__).with_name("fault_victim.py")


def _hashes(root: Path) -> dict:
  """``{relative path: sha256}`` of every file under ``root`` (the "before" of a fault)."""
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_kept(root: Path, before: dict, changed_ok=()):
  after = _hashes(root)
  lost = sorted(k for k in before if k not in after)
  changed = sorted(k for k in before if k in after and after[k] != before[k] and k not in changed_ok)
  assert not lost and not changed, f"lost {lost[:5]}, changed {changed[:5]}"


def _one_line_error(capsys, code, *fragments):
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.strip()]
  assert code == 2 and len(lines) == 1 and lines[0].startswith("famr-jax: error: "), err
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


def _params(path) -> list:
  return [np.asarray(a) for a in __import__("jax").tree.leaves(checkpoints.load_checkpoint(path).params)]


def _assert_same_params(a, b):
  for x, y in zip(_params(a), _params(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """One tiny digits checkpoint (MLP, 2 epochs) shared by every test here; copy it before writing."""
  root = tmp_path_factory.mktemp("fault")
  assert main(["train", *TRAIN, "--out", str(root / "ckpt")]) == 0
  return root / "ckpt"


def _copy(src: Path, dst: Path) -> Path:
  shutil.copytree(src, dst)
  return dst


# ----------------------------------------------------------------------------- the four scenarios

def test_scenario1_fisher_keeps_every_file_next_to_the_checkpoint(trained, tmp_path, capsys):
  ck = _copy(trained, tmp_path / "ck")
  (ck / "notes.txt").write_text("my notes")
  (ck / "result").mkdir()
  (ck / "result" / "report.json").write_text("{\"mine\": 1}")
  before = _hashes(tmp_path)
  assert main(["fisher", "--checkpoint", str(ck)]) == 0
  _assert_kept(tmp_path, before, changed_ok={"ck/famr_jax.json"})
  meta = checkpoints.read_metadata(ck)
  assert "fisher" in meta["extras"] and meta["fisher"]["num_examples"] > 0
  old = json.loads((trained / "famr_jax.json").read_text())
  assert {k: meta[k] for k in old if k != "extras"} == {k: v for k, v in old.items() if k != "extras"}
  assert checkpoints.load_checkpoint(ck).extras["fisher"]   # the Fisher reads back
  # and an unlearning run may not write into the checkpoint at all
  code = main(["unlearn", "--checkpoint", str(ck), *UNLEARN, "--out", str(ck / "result2")])
  _one_line_error(capsys, code, "inside the input")


def test_scenario2_checkpoint_dir_keeps_the_users_folders(trained, tmp_path, capsys):
  d = tmp_path / "D"
  for stage in ("train", "unlearn", "retrain"):
    (d / stage).mkdir(parents=True)
    (d / stage / "notes.txt").write_text(stage)
  (d / "other.txt").write_text("other")
  before = _hashes(tmp_path)
  code = main(["train", *TRAIN, "--out", str(tmp_path / "m"), "--checkpoint-dir", str(d),
               "--checkpoint-every", "5"])
  _one_line_error(capsys, code, "did not write")
  _assert_kept(tmp_path, before)
  # A shared directory without stage folders: the run uses and then removes only its own.
  shared = tmp_path / "shared"
  shared.mkdir()
  (shared / "keep.txt").write_text("keep")
  before = _hashes(tmp_path)
  assert main(["train", *TRAIN, "--out", str(tmp_path / "m"), "--checkpoint-dir", str(shared),
               "--checkpoint-every", "5"]) == 0
  _assert_kept(tmp_path, before)
  assert sorted(p.name for p in shared.iterdir()) == ["keep.txt"]
  _assert_same_params(tmp_path / "m", trained)
  # the output may not overlap the checkpoint directory
  code = main(["train", *TRAIN, "--out", str(tmp_path / "m2"), "--checkpoint-dir", str(tmp_path / "m2" / "r"),
               "--checkpoint-every", "5"])
  _one_line_error(capsys, code, "overlaps")


def test_scenario3_two_writers_to_one_output(trained, tmp_path):
  from famr_jax.cli.runs import UnlearnRun, unlearn_model
  from famr_jax.methods.baselines import FTConfig

  out = tmp_path / "out"
  run = UnlearnRun(checkpoint=str(trained), out=str(out), method="ft", forget_classes=(3,),
                   method_config=FTConfig(epochs=1))
  results, barrier = [], threading.Barrier(2)

  def writer():
    barrier.wait()
    try:
      results.append(unlearn_model(run, show_progress=False))
    except FamrError as e:
      results.append(e)

  threads = [threading.Thread(target=writer) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  errors = [r for r in results if isinstance(r, FamrError)]
  assert len(errors) == 1, results   # never two "successes" of which one silently replaced the other
  assert "another famr-jax run" in str(errors[0]) or "already exists" in str(errors[0])
  assert outputs.is_famr_output(out) and (out / "report.json").is_file()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # no staging or lock left
  # A writer that finds the claim held fails at once with one line.
  with outputs.claim_output(outputs.resolve(tmp_path / "held")):
    with pytest.raises(outputs.OutputBusy, match="another famr-jax run"):
      with outputs.staged_directory(tmp_path / "held", overwrite=False):
        pass


def test_scenario4_overwrite_replaces_only_famr_jax_outputs(trained, tmp_path, capsys, monkeypatch):
  root = tmp_path / "root"
  parent = root / "models"
  ck = _copy(trained, parent / "ck")
  (parent / "notes.txt").write_text("notes")
  users = root / "users"
  users.mkdir()
  (users / "thesis.tex").write_text("precious")
  work = root / "work"
  work.mkdir()
  (work / "data.csv").write_text("1,2")
  monkeypatch.chdir(work)
  before = _hashes(root)
  cases = [(users, "no .famr-jax-output marker"), (ck, "is the input"), (parent, "contains the input"),
           (Path("."), "the working directory")]
  for out, message in cases:
    code = main(["unlearn", "--checkpoint", str(ck), *UNLEARN, "--out", str(out), "--overwrite"])
    _one_line_error(capsys, code, message)
  code = main(["train", *TRAIN, "--out", str(Path.home() if Path.home() != Path("/") else root), "--overwrite"])
  assert code == 2
  capsys.readouterr()
  _assert_kept(root, before)
  # a famr-jax output is replaced when asked, and only then
  out = root / "run"
  assert main(["unlearn", "--checkpoint", str(ck), *UNLEARN, "--out", str(out)]) == 0
  (out / "mine.txt").write_text("added by hand")
  _one_line_error(capsys, main(["unlearn", "--checkpoint", str(ck), *UNLEARN, "--out", str(out)]),
                  "already exists")
  assert main(["unlearn", "--checkpoint", str(ck), *UNLEARN, "--out", str(out), "--overwrite"]) == 0
  assert not (out / "mine.txt").exists() and (out / "report.json").is_file()
  _assert_kept(root, before)
