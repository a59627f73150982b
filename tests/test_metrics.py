"""Metrics against NumPy references and a hand-built membership-inference case."""

import jax.numpy as jnp
import numpy as np
import pytest

from famr_jax.evaluation import metrics
from famr_jax.data.forget import forget_classes, forget_samples

RNG = np.random.default_rng(0)


def test_batched_apply_equals_one_big_apply():
  x = jnp.asarray(RNG.normal(size=(1030, 3)).astype(np.float32))
  w = jnp.asarray(RNG.normal(size=(3, 4)).astype(np.float32))
  np.testing.assert_allclose(metrics.batched_apply(lambda p, x: x @ p, w, x, batch_size=256), x @ w, rtol=1e-6)


def test_accuracy_and_per_class_accuracy_match_numpy():
  logits = RNG.normal(size=(50, 4))
  labels = RNG.integers(0, 3, size=50)   # class 3 absent
  pred = logits.argmax(1)
  assert float(metrics.accuracy(jnp.asarray(logits), jnp.asarray(labels))) == pytest.approx(np.mean(pred == labels))
  per = np.asarray(metrics.per_class_accuracy(jnp.asarray(logits), jnp.asarray(labels), 4))
  for c in range(3):
    assert per[c] == pytest.approx(np.mean(pred[labels == c] == c))
  assert np.isnan(per[3])


def test_true_class_confidence_matches_softmax():
  logits = RNG.normal(size=(6, 3))
  labels = np.array([0, 1, 2, 0, 1, 2])
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(metrics.true_class_confidence(jnp.asarray(logits), jnp.asarray(labels)),
                             p[np.arange(6), labels], rtol=1e-5)


def test_mia_efficacy_separable_case():
  """Members are confident (~0.99), non-members not (~0.3): the SVC separates them."""
  members = RNG.uniform(0.97, 1.0, size=300)
  non_members = RNG.uniform(0.1, 0.5, size=300)
  looks_unseen = RNG.uniform(0.1, 0.5, size=40)
  looks_seen = RNG.uniform(0.97, 1.0, size=40)
  assert metrics.mia_efficacy(members, non_members, looks_unseen) == 1.0
  assert metrics.mia_efficacy(members, non_members, looks_seen) == 0.0
  mixed = np.concatenate([looks_unseen[:10], looks_seen[:30]])
  assert metrics.mia_efficacy(members, non_members, mixed) == pytest.approx(0.25)


def test_mia_efficacy_is_deterministic_given_seed():
  members, non_members = RNG.uniform(size=500), RNG.uniform(size=400)
  forget = RNG.uniform(size=50)
  assert metrics.mia_efficacy(members, non_members, forget, seed=3) == metrics.mia_efficacy(
      members, non_members, forget, seed=3)


class _Data:
  def __init__(self, x_train, y_train, x_test, y_test, num_classes):
    self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
    self.num_classes = num_classes


def test_evaluate_unlearning_class_and_sample_conventions():
  # A fixed linear "model" whose predictions we can compute in NumPy.
  w = RNG.normal(size=(5, 3)).astype(np.float32)
  apply_fn = lambda p, x: x @ p
  x_train = RNG.normal(size=(120, 5)).astype(np.float32)
  x_test = RNG.normal(size=(60, 5)).astype(np.float32)
  y_train = (x_train @ w).argmax(1)
  y_train[:20] = (y_train[:20] + 1) % 3      # some training errors
  y_test = RNG.integers(0, 3, size=60)
  data = _Data(x_train, y_train, x_test, y_test, 3)
  delta = RNG.normal(size=w.shape).astype(np.float32)
  w0 = w + delta
  fs = forget_classes(y_train, [1], 3)
  m = metrics.evaluate_unlearning(apply_fn, jnp.asarray(w), data, fs, params0=jnp.asarray(w0))
  pred_test, pred_train = (x_test @ w).argmax(1), (x_train @ w).argmax(1)
  assert m["retain_acc"] == pytest.approx(np.mean(pred_test[y_test != 1] == y_test[y_test != 1]))
  assert m["forget_acc"] == pytest.approx(np.mean(pred_test[y_test == 1] == 1))
  assert m["test_acc"] == pytest.approx(np.mean(pred_test == y_test))
  assert m["forget_train_acc"] == pytest.approx(np.mean(pred_train[y_train == 1] == 1))
  z = x_train[y_train == 1] @ w
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  assert m["forget_ce"] == pytest.approx(-np.mean(logp[:, 1]), rel=1e-4)
  assert m["forget_entropy"] == pytest.approx(np.mean(-(np.exp(logp) * logp).sum(1)), rel=1e-4)
  z0 = x_train[y_train == 1] @ w0
  logp0 = z0 - np.log(np.exp(z0).sum(1, keepdims=True))
  assert m["kl_from_original"] == pytest.approx(np.mean((np.exp(logp0) * (logp0 - logp)).sum(1)), rel=1e-4)
  assert m["param_distance"] == pytest.approx(np.sqrt(np.sum(delta.astype(np.float64) ** 2)), rel=1e-5)
  assert 0.0 <= m["mia_efficacy"] <= 1.0
  ss = forget_samples(np.arange(10), 120, 3)
  m2 = metrics.evaluate_unlearning(apply_fn, jnp.asarray(w), data, ss)
  assert m2["forget_acc"] == pytest.approx(np.mean(pred_train[:10] == y_train[:10]))
  assert m2["retain_acc"] == pytest.approx(np.mean(pred_train[10:] == y_train[10:]))
  assert "kl_from_original" not in m2
