"""Every docstring example in the library runs and prints what it claims."""

import doctest
import importlib
import pkgutil

import pytest

import famr_jax

MODULES = sorted(m.name for m in pkgutil.walk_packages(famr_jax.__path__, "famr_jax.")
                 if not m.name.endswith(".__main__"))   # running it is the CLI, not an example


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
