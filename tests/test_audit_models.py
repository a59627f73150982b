"""The audit audits the user's model: BatchNorm shadows trained in train mode with their own running
statistics, and the caller's own training function for every shadow and retrain (issue 22 item 7)."""

import jax
import numpy as np
import pytest

from famr_jax import models
from famr_jax.audit import challenge
from famr_jax.audit.audit import INDEPENDENT_RETRAIN_ROW, ORIGINAL_ROW, REFERENCE_ROW, EvidenceConfig, audit_request
from famr_jax.audit.shadows import AuditConfig, model_keys, train_models, train_shadow_farm
from famr_jax.workflows import train_and_recompute
from famr_jax.data.datasets import load_dataset
from famr_jax.data.forget import forget_samples
from famr_jax.engine.training import TrainConfig, train_classifier
from famr_jax.errors import FamrError
from famr_jax.methods.resolve import Request, resolve_config

_FAST = EvidenceConfig(replicates=50, null_permutations=10, example_permutations=99)


@pytest.fixture(scope="module")
def digits():
  return load_dataset("digits", max_train=96, max_test=40)


@pytest.fixture(scope="module")
def bn_model(digits):
  return models.create_model("resnet18_cifar", 10, digits.image_shape, width=2, stage_sizes=(1,))


def _leaves_close(a, b, tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=tol, rtol=tol)


@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_batchnorm_shadows_get_the_running_statistics_of_the_normal_training_path(digits, bn_model, mode):
  config = TrainConfig(epochs=2, batch_size=32, lr=1e-2)
  key, n = jax.random.key(3), 2
  group = train_models(bn_model, models.make_apply_fn(bn_model), digits.x_train, digits.y_train, config, key, n,
                       digits.image_shape, mode=mode)
  init = models.init_batch_stats(bn_model, digits.image_shape)
  init_keys, order_keys = model_keys(key, n)
  for i in range(n):
    stats_i = jax.tree.map(lambda a: np.asarray(a[i]), group.stats)
    moved = [float(np.max(np.abs(s - s0))) for s, s0 in zip(jax.tree.leaves(stats_i), jax.tree.leaves(init))]
    assert min(moved) > 1e-3   # every mean and variance left its initial value
    # The CLI's `train` path: train mode, then the running statistics recomputed over the training data.
    p0 = models.init_params(bn_model, init_keys[i], digits.image_shape)
    result, bound, _ = train_and_recompute(bn_model, models.make_apply_fn(bn_model), p0, digits.x_train,
                                           digits.y_train, config, order_keys[i], show_progress=False)
    _leaves_close(jax.tree.map(lambda a: a[i], group.params), result.params, 2e-4)
    _leaves_close(stats_i, models.batch_stats_of(bound), 2e-4)
  # Eval-mode training (what the farm did before) gives other params: the farm trained in train mode.
  eval_trained = train_classifier(models.make_apply_fn(bn_model), models.init_params(bn_model, init_keys[0],
                                  digits.image_shape), digits.x_train, digits.y_train, config, order_keys[0],
                                  show_progress=False).params
  diff = max(float(np.max(np.abs(np.asarray(a[0]) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(group.params), jax.tree.leaves(eval_trained)))
  assert diff > 1e-3


def test_a_batchnorm_audit_evaluates_each_shadow_with_its_own_statistics(digits, bn_model):
  forget = forget_samples(list(range(0, 24, 2)), len(digits.y_train), 10)
  config = TrainConfig(epochs=1, batch_size=32, lr=1e-2)
  out = audit_request(models.make_apply_fn(bn_model), bn_model, digits, forget, config,
                      {"ga": resolve_config("ga", Request("samples"))},
                      AuditConfig(shadows=2), jax.random.key(0), evidence_config=_FAST)
  assert out["costs"]["ga"]["mode"] == "loop"
  farm = train_shadow_farm(bn_model, models.make_apply_fn(bn_model), digits, forget, config, AuditConfig(shadows=2),
                           jax.random.fold_in(jax.random.key(0), 0))
  # The original row's statistic: each shadow's eval-mode logits with its own recomputed statistics.
  xf, yf = digits.x_train[forget.indices], digits.y_train[forget.indices]
  for i in range(2):
    bound = models.with_batch_stats(bn_model, jax.tree.map(lambda a: np.asarray(a[i]), farm.stats["originals"]))
    logits = np.asarray(models.make_apply_fn(bound)(jax.tree.map(lambda a: a[i], farm.originals), xf))
    np.testing.assert_allclose(out["confidences"][ORIGINAL_ROW][i], challenge.challenge_confidence(logits, yf),
                               rtol=1e-4, atol=1e-4)
  with pytest.raises(FamrError, match="one by one"):
    audit_request(models.make_apply_fn(bn_model), bn_model, digits, forget, config, {"ga": None},
                  AuditConfig(shadows=2, mode="vmap"), jax.random.key(0))


def test_a_user_train_fn_trains_every_shadow_and_its_params_are_attacked(digits):
  model = models.create_model("logistic", 10, digits.image_shape)
  apply_fn = models.make_apply_fn(model)
  forget = forget_samples(list(range(0, 30, 3)), len(digits.y_train), 10)
  calls = []

  def train_fn(x, y, key):   # the user's own recipe: SGD from a zero init, its own key use
    params = jax.tree.map(np.zeros_like, models.init_params(model, jax.random.key(0), digits.image_shape))
    out = train_classifier(apply_fn, params, x, y, TrainConfig(epochs=1, lr=0.05, batch_size=16), key,
                           show_progress=False).params
    calls.append((len(y), out))
    return out

  out = audit_request(apply_fn, model, digits, forget, None, {}, AuditConfig(shadows=3), jax.random.key(1),
                      evidence_config=_FAST, train_fn=train_fn)
  n, kept = len(digits.y_train), len(digits.y_train) - len(forget.indices)
  assert [c[0] for c in calls] == [n] * 3 + [kept] * 6   # originals, retrains, independent retrains
  xf, yf = digits.x_train[forget.indices], digits.y_train[forget.indices]
  for row, first in ((ORIGINAL_ROW, 0), (REFERENCE_ROW, 3), (INDEPENDENT_RETRAIN_ROW, 6)):
    for i in range(3):
      logits = np.asarray(apply_fn(calls[first + i][1], xf))
      np.testing.assert_allclose(out["confidences"][row][i], challenge.challenge_confidence(logits, yf), rtol=1e-5,
                                 atol=1e-5)


def test_a_bad_train_fn_is_refused_before_any_work(digits):
  model = models.create_model("logistic", 10, digits.image_shape)
  forget = forget_samples([0, 1, 2], len(digits.y_train), 10)
  calls = []
  with pytest.raises(FamrError, match=r"\(x, y, key\)"):
    audit_request(models.make_apply_fn(model), model, digits, forget, None, {}, AuditConfig(shadows=2),
                  jax.random.key(0), train_fn=lambda x, y: calls.append(1))
  assert not calls
  with pytest.raises(FamrError, match="not the model's"):
    train_models(model, models.make_apply_fn(model), digits.x_train, digits.y_train, None, jax.random.key(0), 2,
                 digits.image_shape, train_fn=lambda x, y, key: {"w": np.zeros(3)})


def test_a_batchnorm_train_fn_may_return_its_own_running_statistics(digits, bn_model):
  stats0 = models.init_batch_stats(bn_model, digits.image_shape)
  mine = jax.tree.map(lambda a: np.full_like(a, 0.25), stats0)   # what the user's own training left

  def train_fn(x, y, key):
    return {"params": models.init_params(bn_model, key, digits.image_shape), "batch_stats": mine}

  group = train_models(bn_model, models.make_apply_fn(bn_model), digits.x_train, digits.y_train, None,
                       jax.random.key(0), 2, digits.image_shape, train_fn=train_fn)
  for leaf in jax.tree.leaves(group.stats):
    np.testing.assert_array_equal(np.asarray(leaf), 0.25)
  # Params alone: the statistics are recomputed over the training data (precise BN), as `train` does.
  group = train_models(bn_model, models.make_apply_fn(bn_model), digits.x_train, digits.y_train, None,
                       jax.random.key(0), 2, digits.image_shape, train_fn=lambda x, y, key: train_fn(x, y, key)["params"])
  p0 = models.init_params(bn_model, model_keys(jax.random.key(0), 2)[0][1], digits.image_shape)
  _leaves_close(jax.tree.map(lambda a: a[1], group.stats), models.recompute_batch_stats(bn_model, p0, digits.x_train),
                1e-5)
