"""Fault-injection helper of tests/test_fault_injection.py: CLI runs killed at chosen filesystem events.

``python fault_victim.py JOBS_JSON`` imports famr-jax once (no JAX computation, so forking is safe),
then forks one child per job; the child counts its filesystem mutations (rename, replace, mkdir,
unlink, rmdir, rmtree, opening a file for writing) and SIGKILLs itself at the job's ``kill_at``-th
one (or sends itself SIGINT there, as Ctrl-C would), or runs ``famr_jax.cli.main.main`` to the end.
The jobs run concurrently (one process group); the parent prints one JSON line per job: its index, the signal that ended it or its exit
status, and the number of events it saw.
"""

import builtins
import io
import json
import os
import shutil
import signal
import sys

os.environ.setdefault("FAMR_JAX_NO_PROGRESS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")   # the children compile less; their outputs are
os.environ.setdefault("MPLBACKEND", "Agg")                      # replaced by the reruns anyway

import matplotlib.pyplot  # noqa: E402,F401 - imported once, before forking, not in every child
import sklearn.svm  # noqa: E402,F401

import famr_jax.cli.compare_run  # noqa: E402,F401 - every command's imports, before forking
import famr_jax.cli.runs  # noqa: E402,F401
import famr_jax.theory.fisher  # noqa: E402,F401
from famr_jax.cli.flags import add_config_flags  # noqa: E402,F401
from famr_jax.cli.main import build_parser, main  # noqa: E402

build_parser()   # imports the method configs


def _arm(kill_at: int, sig: int) -> None:
  """Wraps the filesystem mutations so that the ``kill_at``-th one sends ``sig`` to this process first."""
  seen = [0]

  def tick():
    seen[0] += 1
    if seen[0] == kill_at:
      os.kill(os.getpid(), sig)

  def wrap(owner, name):
    real = getattr(owner, name)

    def hooked(*args, **kwargs):
      tick()
      return real(*args, **kwargs)
    setattr(owner, name, hooked)

  for name in ("rename", "replace", "mkdir", "unlink", "rmdir"):
    wrap(os, name)
  wrap(shutil, "rmtree")
  real_open = builtins.open

  def hooked_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+"):
      tick()
    return real_open(file, mode, *args, **kwargs)
  builtins.open = hooked_open
  io.open = hooked_open   # pathlib's write_text goes through io.open


def run(jobs: list) -> None:
  children = {}
  for i, job in enumerate(jobs):
    pid = os.fork()
    if pid == 0:
      sink = os.open(job.get("stderr", os.devnull), os.O_WRONLY | os.O_CREAT, 0o644)
      os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
      os.dup2(sink, 2)
      sig = getattr(signal, "SIG" + job.get("signal", "KILL"))
      _arm(int(job["kill_at"]), sig)
      if sig == signal.SIGINT:   # as the console script runs: main() reads sys.argv and owns Ctrl-C
        sys.argv = ["famr-jax", *job["argv"]]
        sys.exit(main())
      os._exit(main(job["argv"]))
    children[pid] = i
  for _ in jobs:
    pid, status = os.wait()
    killed = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    rc = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    print(json.dumps({"job": children[pid], "signal": killed, "rc": rc}), flush=True)


if __name__ == "__main__":
  run(json.loads(sys.argv[1]))
