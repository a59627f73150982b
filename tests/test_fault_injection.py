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

TRAIN = ["--dataset", "digits", "--model", "mlp", "--epochs", "2", "--batch-size", "128", "--max-train", "400",
         "--max-test", "200"]
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


# ----------------------------------------------------------------------------- kill -9, Ctrl-C

def _victim(jobs: list) -> list:
  """Runs the jobs in forked children of one process (tests/fault_victim.py); returns their outcomes."""
  env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, str(VICTIM), json.dumps(jobs)], capture_output=True, text=True,
                        env=env, timeout=600, start_new_session=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  outcomes = sorted((json.loads(line) for line in proc.stdout.splitlines()), key=lambda o: o["job"])
  assert len(outcomes) == len(jobs), proc.stdout
  return outcomes


def _leftovers(root: Path) -> list:
  return [str(p) for p in root.rglob(".*") if any(t in p.name for t in (".famr-staging-", ".famr-replaced-",
                                                                           ".famr-lock"))]


def _board_metrics(path: Path) -> list:
  """The leaderboard's measured quality (gold and every method's metrics), without timings."""
  board = json.loads((path / "leaderboard.json").read_text())
  return [g["metrics"] for g in board["retrained"]] + [(r["method"], r["metrics"]) for r in board["runs"]]


def test_kill9_at_random_points_then_rerun(trained, tmp_path):
  """SIGKILL at a seeded random filesystem event of train / unlearn / fisher / compare, then the same
  command again: nothing pre-existing changed, and the rerun's output equals an uninterrupted run's."""
  rng = np.random.default_rng(13)
  commands = {   # name: (argv of a work dir, about how many filesystem events an uninterrupted run makes)
      "train": (lambda d: ["train", *TRAIN, "--out", str(d / "out"), "--overwrite"], 20),
      "unlearn": (lambda d: ["unlearn", "--checkpoint", str(d / "ck"), *UNLEARN, "--out", str(d / "out"),
                             "--overwrite"], 26),
      "fisher": (lambda d: ["fisher", "--checkpoint", str(d / "ck")], 30),
      "compare": (lambda d: ["compare", "--checkpoint", str(d / "ck"), *COMPARE, "--out", str(d / "out"),
                             "--gold-cache", str(d / "gold"), "--overwrite"], 28),
  }
  argv_of_unlearn = commands["unlearn"][0]
  jobs, dirs = [], {}
  for name, (argv, events) in commands.items():
    d = tmp_path / name
    _copy(trained, d / "ck")
    (d / "notes.txt").write_text(f"notes of {name}")
    if name != "fisher":   # an earlier famr-jax output that the killed run was asked to replace
      (d / "out").mkdir()
      (d / "out" / "earlier.txt").write_text("earlier")
      outputs.write_marker(d / "out", "train")
    dirs[name] = d
    jobs.append({"argv": argv(d), "kill_at": int(rng.integers(1, events + 1))})
  # Ctrl-C (SIGINT) at a seeded filesystem event of an unlearning run replacing an earlier output
  interrupted = tmp_path / "interrupted"
  _copy(trained, interrupted / "ck")
  (interrupted / "out").mkdir()
  (interrupted / "out" / "earlier.txt").write_text("earlier")
  outputs.write_marker(interrupted / "out", "train")
  int_job = {"argv": argv_of_unlearn(interrupted), "kill_at": int(rng.integers(1, 27)), "signal": "INT",
             "stderr": str(tmp_path / "interrupted.err")}
  before = {name: _hashes(d) for name, d in dirs.items()}
  before_int = _hashes(interrupted)
  *outcomes, int_outcome = _victim(jobs + [int_job])
  print("kill -9 outcomes:", [(name, job["kill_at"], o) for name, job, o in zip(dirs, jobs, outcomes)],
        "ctrl-c:", int_job["kill_at"], int_outcome)
  err = (tmp_path / "interrupted.err").read_text()
  if int_outcome["rc"] == 130:   # else it had finished before that event (then it replaced the output)
    assert err.strip() == "famr-jax: interrupted", err
    _assert_kept(interrupted, before_int)
    assert not _leftovers(interrupted)   # no partial output, staging or lock
  else:
    assert int_outcome["rc"] == 0 and (interrupted / "out" / "report.json").is_file(), (int_outcome, err)
  for (name, d), job, outcome in zip(dirs.items(), jobs, outcomes):
    replaced = name != "fisher" and not (d / "out" / "earlier.txt").exists()
    if replaced:   # only ever by a complete new output, in one step: never neither
      assert outputs.is_famr_output(d / "out") and len(list((d / "out").iterdir())) > 2, (name, outcome)
    earlier = {"out/earlier.txt", "out/.famr-jax-output"} if replaced else set()
    _assert_kept(d, {k: v for k, v in before[name].items() if k not in earlier},
                 changed_ok={"ck/famr_jax.json"} if name == "fisher" else ())   # replaced atomically, or not
    checkpoints.read_metadata(d / "ck")
    assert outcome["signal"] == signal.SIGKILL or outcome["rc"] == 0, (name, outcome)
    assert main(job["argv"]) == 0, name                      # the same command again
    assert not _leftovers(d), (name, _leftovers(d))          # what the killed run left is cleaned up
    assert (d / "notes.txt").read_text() == f"notes of {name}"
  # against uninterrupted runs
  _assert_same_params(dirs["train"] / "out", trained)
  ref = tmp_path / "ref"
  _copy(trained, ref / "ck")
  argv = {name: argv_of for name, (argv_of, _) in commands.items()}
  assert main(argv["unlearn"](ref)) == 0
  _assert_same_params(dirs["unlearn"] / "out" / "unlearned", ref / "out" / "unlearned")
  assert main(argv["fisher"](ref)) == 0
  for a, b in zip(checkpoints.load_checkpoint(dirs["fisher"] / "ck").extras["fisher"].values(),
                  checkpoints.load_checkpoint(ref / "ck").extras["fisher"].values()):
    np.testing.assert_array_equal(np.asarray(__import__("jax").tree.leaves(a)[0]),
                                  np.asarray(__import__("jax").tree.leaves(b)[0]))
  assert main(argv["compare"](ref)) == 0
  assert _board_metrics(dirs["compare"] / "out") == _board_metrics(ref / "out")


def test_ctrl_c_exits_130_with_one_line_and_no_output(trained, tmp_path):
  out = tmp_path / "out"
  (tmp_path / "keep.txt").write_text("keep")
  before = _hashes(tmp_path)
  env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "JAX_PLATFORMS": "cpu",
         "FAMR_JAX_NO_PROGRESS": "1"}
  proc = subprocess.Popen([sys.executable, "-m", "famr_jax.cli", "train", "--dataset", "digits", "--model",
                           "mlp", "--epochs", "5000", "--out", str(out)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env)
  import time
  deadline = time.monotonic() + 120
  while not any(p.name.startswith(".out.famr-staging-") for p in tmp_path.iterdir()):   # the run has begun
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
    time.sleep(0.05)
  time.sleep(float(np.random.default_rng(130).uniform(0.0, 1.0)))
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130 and err.strip() == "famr-jax: interrupted", err
  _assert_kept(tmp_path, before)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]   # no output, staging or lock


# ----------------------------------------------------------------------------- read-only, full disk

@pytest.fixture
def small_tmpfs(tmp_path):
  """A 128 KiB tmpfs (root and a working mount only; skipped otherwise)."""
  if os.geteuid() != 0 or shutil.which("mount") is None:
    pytest.skip("needs root to mount a tmpfs")
  mnt = tmp_path / "mnt"
  mnt.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mnt)],
                    capture_output=True).returncode != 0:
    pytest.skip("mount does not work here")
  yield mnt
  subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_read_only_output_parent(trained, small_tmpfs, capsys):
  (small_tmpfs / "keep.txt").write_text("keep")
  before = _hashes(small_tmpfs)
  assert subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)]).returncode == 0
  for argv in (["train", *TRAIN, "--out", str(small_tmpfs / "m")],
               ["unlearn", "--checkpoint", str(trained), *UNLEARN, "--out", str(small_tmpfs / "u")]):
    _one_line_error(capsys, main(argv), "cannot write", "Read-only file system")
  _assert_kept(small_tmpfs, before)
  assert sorted(p.name for p in small_tmpfs.iterdir()) == ["keep.txt"]


def test_full_disk(trained, small_tmpfs, capsys):
  (small_tmpfs / "keep.txt").write_text("keep")
  (small_tmpfs / "filler").write_bytes(b"\0" * (100 << 10))   # leaves less than a checkpoint needs
  before = _hashes(small_tmpfs)
  _one_line_error(capsys, main(["train", *TRAIN, "--out", str(small_tmpfs / "m")]), "No space left")
  _one_line_error(capsys, main(["fisher", "--checkpoint", str(trained), "--out", str(small_tmpfs / "f")]),
                  "No space left")
  _assert_kept(small_tmpfs, before)
  assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler", "keep.txt"]


# ----------------------------------------------------------------------------- untrusted files

def _damage(ck: Path, how: str) -> str:
  """Damages a checkpoint copy; returns a fragment the one-line error must contain."""
  meta_file = ck / "famr_jax.json"
  meta = json.loads(meta_file.read_text())
  if how == "truncated array":
    data = max((p for p in (ck / "params").rglob("*") if p.is_file() and "/d/" in str(p)),
               key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:20])
    return "params"
  if how == "garbage manifest":
    (ck / "params" / "manifest.ocdbt").write_bytes(b"\x00garbage" * 10)
    return "params"
  if how == "truncated metadata":
    meta_file.write_text(meta_file.read_text()[:50])
    return "famr_jax.json"
  if how == "metadata is a list":
    meta_file.write_text("[1, 2]")
    return "famr_jax.json"
  if how == "deep model":
    meta["model_overrides"] = {"hidden": [8] * 100000}
  elif how == "huge width":
    meta["model_overrides"] = {"hidden": [1 << 40]}
  elif how == "huge shapes":
    meta["param_shapes"]["fc1/kernel"][0] = [1 << 30, 1 << 30]
  elif how == "bad image shape":
    meta["image_shape"] = [8, -8, "x"]
  elif how == "unknown data key":
    meta["data"]["evil"] = 1
  elif how == "bad recipe":
    meta["train_config"] = {"epochs": "many"}
  meta_file.write_text(json.dumps(meta))
  return "metadata is invalid" if how not in ("huge shapes",) else "parameters"


@pytest.mark.parametrize("how", ["truncated array", "garbage manifest", "truncated metadata", "metadata is a list",
                                 "deep model", "huge width", "huge shapes", "bad image shape",
                                 "unknown data key", "bad recipe"])
def test_damaged_checkpoint_gives_one_line(trained, tmp_path, capsys, how):
  ck = _copy(trained, tmp_path / "ck")
  fragment = _damage(ck, how)
  before = _hashes(tmp_path)
  argv = (["unlearn", "--checkpoint", str(ck), *UNLEARN, "--out", str(tmp_path / "o")] if how == "bad recipe"
          else ["evaluate", "--checkpoint", str(ck)])
  _one_line_error(capsys, main(argv), fragment)
  _assert_kept(tmp_path, before)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_damaged_resume_step_falls_back_to_an_older_one(trained, tmp_path, caplog):
  out, resume = tmp_path / "m", tmp_path / "m.resume" / "train"
  argv = ["train", *TRAIN, "--out", str(out), "--checkpoint-every", "2", "--checkpoint-keep", "3",
          "--stop-after-steps", "5"]   # 8 steps in all: saved at 2, 4, 6, stopped at 6
  assert main(argv) == 3
  steps = sorted(int(p.name) for p in resume.iterdir() if p.name.isdigit())
  assert len(steps) >= 2
  meta = next((resume / str(steps[-1])).rglob("metadata"), None) or next((resume / str(steps[-1]) / "meta").rglob("*"))
  meta.write_text("{not json")
  argv.remove("--stop-after-steps"), argv.remove("5")
  assert main(argv) == 0
  assert "skipped damaged resume checkpoints" in caplog.text
  _assert_same_params(out, trained)   # resumed from the older step: the same model as uninterrupted
  assert not (tmp_path / "m.resume").exists()


def test_gold_cache_key_is_the_contents_not_the_path(trained, tmp_path):
  from famr_jax.cli.compare_run import _gold_key, content_digest
  from famr_jax.workflows import load_model
  from famr_jax.data.forget import forget_classes
  from famr_jax.engine.training import TrainConfig

  a = load_model(trained)
  moved = load_model(_copy(trained, tmp_path / "moved"))
  forget = forget_classes(a.data.y_train, (3,), a.data.num_classes)
  key = lambda loaded: _gold_key(content_digest(loaded), forget, 0, TrainConfig())  # noqa: E731
  assert key(a) == key(moved)                     # same contents elsewhere: the cache is reused
  changed = a.__class__(a.model, a.apply_fn, __import__("jax").tree.map(lambda p: p + 1e-6, a.params),
                        a.metadata, a.data)
  assert key(changed) != key(a)                   # other contents at the same path: not reused
  other_data = a.__class__(a.model, a.apply_fn, a.params, a.metadata,
                           a.data._replace(y_train=a.data.y_train[::-1].copy()))
  assert key(other_data) != key(a)


def test_idx_header_overflow_and_slash_keys_are_refused_early(tmp_path):
  import struct
  from famr_jax.data.datasets import read_idx
  path = tmp_path / "x-idx3-ubyte"
  path.write_bytes(struct.pack(">HBB", 0, 0x08, 4) + struct.pack(">4I", *([0xFFFFFFFF] * 4)) + b"\0" * 16)
  with pytest.raises(FamrError, match="more than famr-jax reads"):
    read_idx(path)
  import jax.numpy as jnp
  with pytest.raises(FamrError, match="contain '/'"):
    checkpoints.save_checkpoint(tmp_path / "ck", {"a/b": jnp.ones(2)})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["x-idx3-ubyte"]
