"""Resumable runs: a killed run, rerun with the same command, ends with identical params."""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from famr_jax.io.checkpoints import load_checkpoint
from famr_jax.cli.main import main
from famr_jax.errors import FamrError
from famr_jax.engine.resume import ResumeConfig, RunStopped, fingerprint_difference, flatten_dict
from famr_jax.methods.famr import FAMRConfig, famr_unlearn

ROOT = Path(__file__).resolve().parents[1]


def _same(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def _finished_steps(directory: Path) -> list[int]:
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_killed_training_run_resumes_to_identical_params(tmp_path, caplog, capsys):
  out = tmp_path / "model"
  command = ["train", "--dataset", "digits", "--model", "logistic", "--epochs", "60", "--batch-size", "64",
             "--checkpoint-every", "100", "--out", str(out)]
  env = dict(os.environ, FAMR_JAX_NO_PROGRESS="1", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen([sys.executable, "-m", "famr_jax.cli.main", *command], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  resume_dir = tmp_path / "model.resume" / "train"
  deadline = time.monotonic() + 240
  try:
    while not _finished_steps(resume_dir) and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.02)
    proc.kill()   # SIGKILL: no cleanup, possibly in the middle of an asynchronous save
  finally:
    proc.kill()
    proc.wait(timeout=60)
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
  assert _finished_steps(resume_dir), f"no checkpoint appeared before the run ended: {stderr[-2000:]}"
  assert not out.exists(), "the run finished before it could be killed; make it longer"
  saved = max(_finished_steps(resume_dir))
  assert 0 < saved < 60 * 22

  # A changed setting is refused, naming it, and leaves the checkpoints alone.
  capsys.readouterr()
  assert main([*command[:-2], "--lr", "0.01", "--out", str(out)]) == 2
  assert "run.train.lr (checkpoint: 0.001, now: 0.01)" in capsys.readouterr().err
  assert max(_finished_steps(resume_dir)) == saved

  # The same command resumes and finishes; the checkpoints are removed at the end.
  with caplog.at_level(logging.INFO, logger="famr_jax"):
    assert main(command) == 0
  assert f"from step {saved} of 1320" in caplog.text
  assert not (tmp_path / "model.resume").exists()

  # An uninterrupted run of the same command: bit-identical params and history.
  reference = tmp_path / "reference"
  assert main([*command[:-1], str(reference)]) == 0
  resumed, uninterrupted = load_checkpoint(out), load_checkpoint(reference)
  assert _same(resumed.params, uninterrupted.params)
  assert resumed.metadata["history"] == uninterrupted.metadata["history"]


def test_changed_setting_is_refused_with_its_name(tmp_path, capsys):
  out = tmp_path / "model"
  base = ["train", "--dataset", "digits", "--model", "logistic", "--epochs", "3", "--checkpoint-every", "10",
          "--stop-after-steps", "15", "--out", str(out)]
  assert main(base) == 3                       # stopped on purpose, checkpoint kept
  assert "stopped after 20 steps" in capsys.readouterr().err   # segments of 10 steps: 10, 20 >= 15
  assert main([*base, "--lr", "0.01", "--epochs", "4"]) == 2
  err = capsys.readouterr().err
  assert "run.train.lr (checkpoint: 0.001, now: 0.01)" in err
  assert "engine.epochs (checkpoint: 3, now: 4)" in err
  assert "run.train.epochs" in err and not out.exists()


def test_famr_stopped_and_resumed_is_bit_identical(tmp_path):
  from famr_jax.data.datasets import load_dataset
  data = load_dataset("digits")
  x_f, y_f = data.x_train[data.y_train == 3], data.y_train[data.y_train == 3]
  rng = np.random.default_rng(0)   # a linear classifier keeps the compiles small
  params = {"w": rng.normal(size=(64, 10)).astype(np.float32), "b": np.zeros(10, np.float32)}
  apply_fn = lambda p, x: x.reshape(x.shape[0], -1) @ p["w"] + p["b"]
  cfg = FAMRConfig(epochs=3, batch_size=16, optimizer="adam", lr=0.01)   # 137 examples: 9 steps per epoch
  key = jax.random.key(2)
  run = lambda resume: famr_unlearn(apply_fn, params, x_f, cfg, key, y_forget=y_f, show_progress=False,
                                    resume=resume)
  with pytest.raises(RunStopped) as stopped:
    run(ResumeConfig(str(tmp_path / "a"), checkpoint_every=5, stop_after_steps=17))
  assert stopped.value.step == 18            # segments of 5 and 4 steps: 5, 9, 14, 18 >= 17
  resumed = run(ResumeConfig(str(tmp_path / "a"), checkpoint_every=5))
  uninterrupted = run(ResumeConfig(str(tmp_path / "b"), checkpoint_every=5))
  assert _same(resumed.params, uninterrupted.params)
  assert resumed.history == uninterrupted.history

  # Another forget set (same size, other examples) is another run.
  with pytest.raises(FamrError, match="data_digest"):
    famr_unlearn(apply_fn, params, x_f[::-1], cfg, key, show_progress=False,
                 resume=ResumeConfig(str(tmp_path / "a"), checkpoint_every=5))


def test_resume_config_and_fingerprint_helpers():
  with pytest.raises(FamrError, match="checkpoint directory"):
    ResumeConfig(checkpoint_every=5).validate()
  with pytest.raises(FamrError, match="checkpoint_keep"):
    ResumeConfig("/tmp/x", checkpoint_every=5, checkpoint_keep=0).validate()
  with pytest.raises(FamrError, match="needs checkpoints"):
    ResumeConfig("/tmp/x", stop_after_steps=3).validate()
  assert flatten_dict({"a": {"b": (1, 2)}, "c": 0.5}) == {"a.b": [1, 2], "c": 0.5}
  assert fingerprint_difference({"a": 1, "b": 2}, {"a": 1, "c": 2}) == ["b", "c"]
