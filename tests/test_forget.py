"""Forget-set validation: every bad request is a one-line FamrError."""

import jax
import numpy as np
import pytest

from famr_jax.errors import FamrError
from famr_jax.data.forget import forget_classes, forget_random, forget_samples, parse_class_list

Y = np.array([0, 1, 2, 3, 1, 2, 0, 3])


def test_forget_classes_selects_exactly_those_examples():
  fs = forget_classes(Y, [2, 1], 4)
  assert fs.classes == (1, 2)
  assert fs.indices.tolist() == [1, 2, 4, 5]
  assert fs.retain_mask(8).tolist() == [True, False, False, True, False, False, True, True]
  assert fs.describe() == {"kind": "classes", "classes": [1, 2], "num_forget_train": 4}


@pytest.mark.parametrize("classes, message", [
    ([], "empty"), ([4], "out of range"), ([-1], "out of range"), ([1, 1], "more than once"),
    ([0, 1, 2, 3], "every class")])
def test_bad_forget_classes(classes, message):
  with pytest.raises(FamrError, match=message):
    forget_classes(Y, classes, 4)


def test_samples_and_random():
  assert forget_samples([5, 2], 8, 4).indices.tolist() == [2, 5]
  for bad, message in (([], "empty"), ([8], "0..7"), ([1, 1], "duplicates")):
    with pytest.raises(FamrError, match=message):
      forget_samples(bad, 8, 4)
  a = forget_random(jax.random.key(0), 0.25, 100, 4)
  b = forget_random(jax.random.key(0), 0.25, 100, 4)
  assert a.indices.size == 25 and np.array_equal(a.indices, b.indices)
  assert np.unique(a.indices).size == 25
  for bad in (0.0, 1.0, -0.1, 1.5):
    with pytest.raises(FamrError, match="between 0 and 1"):
      forget_random(jax.random.key(0), bad, 100, 4)


def test_parse_class_list():
  assert parse_class_list("1, 2,3") == (1, 2, 3)
  with pytest.raises(FamrError, match="integers"):
    parse_class_list("1,x")
