"""Every docstring example in the library runs and prints what it claims, and every module has one.

A module with no example would pass ``doctest.testmod`` having run nothing, so the examples are
collected first: only modules with at least one are run, and the modules without one are a short,
checked list (packages that only re-export, the CLI's argument plumbing, the error classes).
"""

import doctest
import importlib
import pkgutil

import pytest

import famr_jax

MODULES = sorted(m.name for m in pkgutil.walk_packages(famr_jax.__path__, "famr_jax.")
                 if not m.name.endswith(".__main__"))   # running it is the CLI, not an example
PACKAGES = {m.name for m in pkgutil.walk_packages(famr_jax.__path__, "famr_jax.") if m.ispkg}

# Modules (not packages: a package's __init__ re-exports) with no docstring example yet.
# New modules get an example; a module that gains one leaves this list (the test says so).
WITHOUT_EXAMPLES = frozenset({
    "famr_jax.evaluation.audit_plot",   # draws a PNG: tests/test_audit_evidence.py checks what it drew
    "famr_jax.cli.compare_run", "famr_jax.cli.flags", "famr_jax.cli.import_run", "famr_jax.cli.main",
    "famr_jax.errors", "famr_jax.evaluation.style", "famr_jax.io.vit_layouts",
    "famr_jax.theory.curvature", "famr_jax.theory.sections", "famr_jax.version",
})

_FINDER = doctest.DocTestFinder()


def _examples(name):
  return sum(len(t.examples) for t in _FINDER.find(importlib.import_module(name)))


WITH_EXAMPLES = [name for name in MODULES if _examples(name)]


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0, f"no docstring example ran in {name}"
  assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_the_modules_without_an_example_are_the_listed_ones():
  assert len(WITH_EXAMPLES) > 50   # the collection above found the library's examples
  missing = set(MODULES) - set(WITH_EXAMPLES) - PACKAGES
  assert missing <= WITHOUT_EXAMPLES, f"modules without a docstring example: {sorted(missing - WITHOUT_EXAMPLES)}"
  gained = WITHOUT_EXAMPLES - missing
  assert not gained, f"these have examples now (or are gone): remove them from WITHOUT_EXAMPLES: {sorted(gained)}"
