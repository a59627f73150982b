"""Inject deliberate bugs and record which tests catch each: the suite's tests can fail.

Each mutation replaces one exact piece of source text (it must occur exactly once, else the
mutation is stale and the script says so). For every mutation the script copies the committed
tree (``git archive HEAD``) to a temporary folder, applies the mutation, runs the named test files
there and lists the tests that failed. The unmutated copy runs the same files first: a mutation
counts as caught only by tests that pass without it.

Usage (prints a Markdown table for BUILD_NOTES.md, "Tests that can fail"; exits 1 when a
mutation is caught by no test)::

    python experiments/inject_bugs.py            # every mutation
    python experiments/inject_bugs.py tost-or    # one
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
import re
import subprocess
import sys
import tempfile

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  path: str          # relative to the repository root
  old: str           # exact text, present exactly once
  new: str
  what: str          # the bug, in words
  tests: tuple[str, ...]   # test files (or node ids) to run against it


MUTATIONS = (
    Mutation("famr-sign", "famr_jax/losses.py",
             "per_example = per_example + alpha * kl",
             "per_example = per_example - alpha * kl",
             "the sign of FAMR's forget term (uniform or retrained-target KL) flipped",
             ("tests/test_objectives.py", "tests/test_unlearning.py", "tests/test_famr_presets.py")),
    Mutation("uniform-kl-constant", "famr_jax/losses.py",
             "return -jnp.log(num_classes) - jnp.mean(log_p, axis=-1)",
             "return -jnp.mean(log_p, axis=-1)",
             "KL(u || p) without its -log C (a constant offset: same gradient, wrong value)",
             ("tests/test_objectives.py",)),
    Mutation("budget-off-by-one", "famr_jax/methods/defaults.py",
             "SAMPLE_BUDGET_EPOCHS * math.ceil(num_forget / batch)",
             "SAMPLE_BUDGET_EPOCHS * math.ceil(num_forget / batch) + 1",
             "a sample request's step budget one step over its 5 passes",
             ("tests/test_protocol.py", "tests/test_step_budget.py")),
    Mutation("skip-duplicate-check", "famr_jax/data/forget.py",
             'raise FamrError("forget sample indices contain duplicates")',
             'pass',
             "a forget request with duplicate indices accepted (a skipped validation)",
             ("tests/test_forget.py", "tests/test_hostile_inputs.py")),
    Mutation("skip-nan-pixels", "famr_jax/validation.py",
             'raise FamrError(f"{what} contain NaN or inf values")',
             'pass',
             "images holding NaN accepted (a skipped validation)",
             ("tests/test_hostile_inputs.py",)),
    Mutation("tost-or", "famr_jax/audit/evidence.py",
             "if lo90 - CHANCE > -margin and hi90 - CHANCE < margin:",
             "if lo90 - CHANCE > -margin or hi90 - CHANCE < margin:",
             "the equivalence test's two one-sided tests joined by 'or'",
             ("tests/test_evidence.py",)),
    Mutation("power-gate-margin", "famr_jax/audit/evidence.py",
             '"powered": bool(abs(diff) > sds * sd) and resolves}',
             '"powered": bool(abs(diff) > sds * sd)}',
             "the power gate forgets that the null must resolve the margin",
             ("tests/test_evidence.py",)),
)

_FAILED = re.compile(r"^FAILED (.+?)(?: - .*)?$", re.M)   # a node id may hold spaces; " - " starts the message
_ERROR = re.compile(r"^ERROR (.+?)(?: - .*)?$", re.M)


def _copy_tree(dest: Path) -> None:
  archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], check=True, capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def _run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, set[str]]:
  env = dict(os.environ, PYTHONPATH=str(tree))
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "-rfE",
                         *tests], cwd=tree, env=env, capture_output=True, text=True)
  out = proc.stdout + proc.stderr
  return proc.returncode, set(_FAILED.findall(out)) | set(_ERROR.findall(out))


def apply(tree: Path, mutation: Mutation) -> None:
  path = tree / mutation.path
  text = path.read_text()
  count = text.count(mutation.old)
  if count != 1:
    raise SystemExit(f"mutation {mutation.name} is stale: its text occurs {count} times in {mutation.path}")
  path.write_text(text.replace(mutation.old, mutation.new))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
  args = parser.parse_args(argv)
  chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
  unknown = set(args.names) - {m.name for m in MUTATIONS}
  if unknown:
    raise SystemExit(f"unknown mutation {', '.join(sorted(unknown))}; known: {', '.join(m.name for m in MUTATIONS)}")
  rows, missed = [], []
  with tempfile.TemporaryDirectory() as tmp:
    clean = Path(tmp) / "clean"
    clean.mkdir()
    _copy_tree(clean)
    for m in chosen:
      apply(clean, dataclasses.replace(m, new=m.old))   # checks the text is there, changes nothing
    baseline_failed = {}
    for tests in sorted({m.tests for m in chosen}):
      _, baseline_failed[tests] = _run_tests(clean, tests)
    for m in chosen:
      tree = Path(tmp) / m.name
      tree.mkdir()
      _copy_tree(tree)
      apply(tree, m)
      _, failed = _run_tests(tree, m.tests)
      caught = sorted(failed - baseline_failed[m.tests])
      if not caught:
        missed.append(m.name)
      shown = ", ".join(f"`{t.split('::', 1)[-1]}`" for t in caught[:4]) + (f" (+{len(caught) - 4})"
                                                                          if len(caught) > 4 else "")
      rows.append(f"| {m.name} | {m.what} | `{m.path}` | {len(caught)} | {shown or 'none'} |")
      print(f"{m.name}: {len(caught)} tests caught it", file=sys.stderr, flush=True)
  print("| mutation | bug | file | tests failing | which |")
  print("|---|---|---|---|---|")
  print("\n".join(rows))
  if missed:
    print(f"\nnot caught: {', '.join(missed)}", file=sys.stderr)
  return 1 if missed else 0


if __name__ == "__main__":
  sys.exit(main())
