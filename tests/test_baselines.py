"""Baselines: losses against NumPy, saliency and random labels by hand, every baseline forgets on digits."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import famr_jax as fj

from famr_jax.methods import baselines
from famr_jax.methods.baselines import (FTConfig, GAConfig, NegGradPlusConfig, RLConfig, SalUnConfig, baseline_loss,
                                random_wrong_labels, saliency_mask)
from famr_jax.errors import FamrError
from famr_jax.data.forget import forget_classes
from famr_jax.methods.registry import get_method
from famr_jax.methods.scrub import SCRUBConfig
from famr_jax.methods.ssd import SSDConfig


def _np_ce(logits, y):
  z = logits - logits.max(-1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -log_p[np.arange(len(y)), y]


def test_baseline_losses_match_numpy():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3, 4))
  apply_fn = lambda p, x: x @ p
  x_f, y_f = rng.normal(size=(5, 3)), rng.integers(0, 4, 5)
  x_r, y_r = rng.normal(size=(5, 2, 3)), rng.integers(0, 4, (5, 2))
  weights = np.array([1, 1, 1, 0, 1.0])
  batch = tuple(jnp.asarray(a, jnp.float32 if a.dtype.kind == "f" else jnp.int32) for a in (x_f, y_f, x_r, y_r))
  ce_f = np.sum(weights * _np_ce(x_f @ w, y_f)) / weights.sum()
  w_r = np.repeat(weights, 2)
  ce_r = np.sum(w_r * _np_ce(x_r.reshape(-1, 3) @ w, y_r.reshape(-1))) / w_r.sum()
  cases = {"ga": (GAConfig(), -ce_f), "ft": (FTConfig(), ce_r),
           "neggrad+": (NegGradPlusConfig(w_f=0.3, w_r=0.7), 0.7 * ce_r - 0.3 * ce_f),
           "rl": (RLConfig(w_r=2.0), ce_f + 2.0 * ce_r), "salun": (SalUnConfig(w_r=0.5), ce_f + 0.5 * ce_r)}
  for method, (config, want) in cases.items():
    got = baseline_loss(method, apply_fn, jnp.asarray(w, jnp.float32), batch, jnp.asarray(weights), config)
    np.testing.assert_allclose(float(got), want, rtol=1e-5, err_msg=method)


def test_random_wrong_labels_are_wrong_allowed_and_cover_the_choices():
  labels = np.array([0, 1, 2, 3] * 200)
  allowed = np.array([True, True, False, True, True])
  r = random_wrong_labels(jax.random.key(0), labels, allowed)
  assert np.all(r != labels) and np.all(allowed[r])
  # Label 0 may go to 1, 3 or 4, each about a third of the time.
  counts = np.bincount(r[labels == 0], minlength=5)
  assert counts[2] == 0 and counts[0] == 0 and np.all(counts[[1, 3, 4]] > 40)
  np.testing.assert_array_equal(r, random_wrong_labels(jax.random.key(0), labels, allowed))
  with pytest.raises(FamrError):
    random_wrong_labels(jax.random.key(0), np.array([1]), np.array([False, True]))


def test_saliency_mask_keeps_the_largest_fraction_over_the_whole_tree():
  rng = np.random.default_rng(1)
  grads = {"a": rng.normal(size=(4, 5)), "b": rng.normal(size=7)}
  mask = saliency_mask(jax.tree.map(jnp.asarray, grads), 0.25)
  flat = np.abs(np.concatenate([grads["a"].ravel(), grads["b"]]))
  k = round(0.25 * flat.size)
  top = set(np.argsort(-flat)[:k].tolist())
  got = np.concatenate([np.asarray(mask["a"]).ravel(), np.asarray(mask["b"])])
  assert set(np.flatnonzero(got).tolist()) == top


TINY = {"ft": FTConfig(epochs=3, lr=0.1, retain_ratio=2), "ga": GAConfig(epochs=2, lr=0.01),
        "neggrad+": NegGradPlusConfig(epochs=2, lr=0.01), "rl": RLConfig(epochs=2, lr=0.01),
        "salun": SalUnConfig(epochs=2, lr=0.01), "scrub": SCRUBConfig(), "ssd": SSDConfig(),
        "retrain": None}


@pytest.mark.parametrize("method", list(TINY))
def test_every_baseline_runs_on_digits_and_reduces_forget_accuracy(trained_digits, method):
  d = trained_digits
  forget = forget_classes(d.data.y_train, [3], d.data.num_classes)
  config = TINY[method] or dataclasses.replace(d.train_config, epochs=10)
  result = fj.unlearn(method, d.apply_fn, d.params, forget, jax.random.key(0), data=d.data, config=config,
                      model=d.model)
  test3 = d.data.y_test == 3

  def forget_acc(params):
    return float(np.mean(np.argmax(np.asarray(d.apply_fn(params, d.data.x_test[test3])), -1) == 3))
  before, after = forget_acc(d.params), forget_acc(result.params)
  assert before > 0.9
  assert after < before - 0.05, (method, before, after)
  assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(result.params))
  assert result.run_s > 0


def test_bad_baseline_input():
  with pytest.raises(FamrError, match="saliency"):
    SalUnConfig(saliency=0.0).validate()
  with pytest.raises(FamrError, match="learning rate"):
    GAConfig(lr=0.0).validate()
  with pytest.raises(FamrError, match="unknown baseline"):
    baselines.baseline_unlearn("bogus", lambda p, x: x, None, np.ones((1, 1)), np.zeros(1), GAConfig(),
                               jax.random.key(0))
  with pytest.raises(FamrError, match="unknown method 'nope'"):
    get_method("nope")
