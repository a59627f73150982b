"""Compile once (issue 12, part 2): a repeated call of a method, or one with another seed, compiles nothing.

Each method runs once to fill the caches, then again with the same arguments
and once more with another key; :class:`famr_jax.engine.parallel.CompileCounter`
counts XLA backend compilations during the last two. A tiny MLP keeps the
first compilations short.
"""

import dataclasses

import jax
import numpy as np
import pytest

from famr_jax import models
from famr_jax.engine.parallel import CompileCounter
from famr_jax.engine.training import TrainConfig, train_classifier
from famr_jax.methods.baselines import GAConfig, baseline_unlearn
from famr_jax.methods.famr import FAMRConfig, famr_unlearn
from famr_jax.methods.scrub import SCRUBConfig, scrub_unlearn
from famr_jax.methods.variants import famr_variant_unlearn, variant_defaults

C, SHAPE = 3, (4, 4, 1)
_MODEL = models.create_model("mlp", C, SHAPE, hidden=(8,))
_APPLY = models.make_apply_fn(_MODEL)


def _data():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(48,) + SHAPE).astype(np.float32)
  y = (np.arange(48) % C).astype(np.int32)
  params = models.init_params(_MODEL, jax.random.key(0), SHAPE)
  return x, y, params


def _famr(x, y, p, key):
  return famr_unlearn(_APPLY, p, x[y == 0], FAMRConfig(epochs=2, batch_size=8), key, y_forget=y[y == 0],
                      show_progress=False)


def _variant(x, y, p, key):
  # famr-plus with a frozen head (only the MLP's head trains), as it runs on LeNet5.
  cfg = dataclasses.replace(variant_defaults("famr-plus", "mlp"), epochs=2, batch_size=8, train_from="head")
  return famr_variant_unlearn(_APPLY, p, x[y == 0], cfg, key, y_forget=y[y == 0], forget_classes=[0],
                              retain_data=(x[y != 0], y[y != 0]), model=_MODEL, show_progress=False)


def _ga(x, y, p, key):
  return baseline_unlearn("ga", _APPLY, p, x[y == 0], y[y == 0], GAConfig(epochs=2, batch_size=8), key,
                          show_progress=False)


def _train(x, y, p, key):
  return train_classifier(_APPLY, p, x, y, TrainConfig(epochs=2, batch_size=16), key,
                          eval_data=(x[:8], y[:8]), show_progress=False)


def _scrub(x, y, p, key):
  return scrub_unlearn(_APPLY, p, x[y == 0], y[y == 0], SCRUBConfig(epochs=2, max_epochs=1, batch_size=8), key,
                       retain_data=(x[y != 0], y[y != 0]))


@pytest.mark.parametrize("run", [_famr, _variant, _ga, _train, _scrub], ids=lambda f: f.__name__.strip("_"))
def test_a_second_call_and_another_seed_compile_nothing(run):
  x, y, params = _data()
  first = run(x, y, params, jax.random.key(0))
  with CompileCounter() as again:
    second = run(x, y, params, jax.random.key(0))
  with CompileCounter() as other_seed:
    run(x, y, params, jax.random.key(1))
  assert (again.count, other_seed.count) == (0, 0)
  for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
