"""Designs that need fewer models (issue 22 item 6): common random numbers and the paired statistic,
checked against cases whose answer is known by hand."""

import math

import jax
import numpy as np
import pytest
from scipy import stats

from famr_jax import models
from famr_jax.audit import paired
from famr_jax.audit.audit import INDEPENDENT_RETRAIN_ROW, ORIGINAL_ROW, REFERENCE_ROW, EvidenceConfig, score_seed
from famr_jax.audit.shadows import AuditConfig, train_shadow_farm
from famr_jax.data.datasets import load_dataset
from famr_jax.data.forget import forget_samples
from famr_jax.engine.training import TrainConfig, train_classifier
from famr_jax.errors import FamrError
from famr_jax.methods.resolve import Request, resolve_config


def test_pair_credits_and_the_paired_auc_by_hand():
  u = np.array([[3.0, 1.0, 2.0], [0.0, 4.0, 4.0]])
  r = np.array([[1.0, 1.0, 5.0], [1.0, 2.0, 3.0]])
  # pair 0: above, tie, below; pair 1: below, above, above -> (1 + .5 + 0 + 0 + 1 + 1) / 6
  assert paired.pair_credits(u, r).tolist() == [[1.0, 0.5, 0.0], [0.0, 1.0, 1.0]]
  assert paired.paired_auc(u, r) == pytest.approx(3.5 / 6)
  with pytest.raises(FamrError, match="one shape"):
    paired.paired_auc(u, r[:1])


def test_the_paired_null_is_the_sign_flip_distribution():
  # Two pairs with credits 1 and 0 (mean 1/2: already centred): a swap turns a credit c into 1 - c, so the
  # draws are the mean of two fair coins: {0, 1/2, 1} with probabilities 1/4, 1/2, 1/4 (sd sqrt(1/8)).
  u = np.array([[1.0] * 5, [0.0] * 5])
  null = paired.paired_null(u, 1.0 - u, 0, permutations=20000)
  values, counts = np.unique(null, return_counts=True)
  assert values.tolist() == [0.0, 0.5, 1.0]
  np.testing.assert_allclose(counts / counts.sum(), [0.25, 0.5, 0.25], atol=0.02)
  assert float(np.std(null)) == pytest.approx(math.sqrt(1 / 8), abs=0.01)
  # Centred: two pairs of credit 1 (a large effect) leave no scatter about their mean, so no null spread.
  assert np.all(paired.paired_null(np.ones((2, 5)), np.zeros((2, 5)), 0, permutations=50) == 0.5)


def test_the_paired_auc_of_a_shift_under_shared_noise_is_the_normal_cdf():
  # phi_u = base + d + e1, phi_r = base + e2 with e ~ N(0, s^2): P(u > r) = Phi(d / (s sqrt 2)), whatever
  # the per-model base (which the pair shares).
  rng = np.random.default_rng(0)
  base = 3.0 * rng.normal(size=(64, 200))
  d, s = 0.05, 0.05
  u, r = base + d + s * rng.normal(size=base.shape), base + s * rng.normal(size=base.shape)
  e = paired.paired_auc_evidence(u, r, 0, replicates=300)
  assert e.auc == pytest.approx(stats.norm.cdf(d / (s * math.sqrt(2))), abs=0.015)
  assert e.ci[0] < e.auc < e.ci[1] and e.ci[0] > 0.7


def _confidences(shift_original, rng, n=32, s=100):
  base = 2.0 * rng.normal(size=(n, s))   # what model i of every group shares (its init and order)
  noise = lambda: 0.05 * rng.normal(size=(n, s))
  return {REFERENCE_ROW: base + noise(), ORIGINAL_ROW: base + shift_original + noise(),
          INDEPENDENT_RETRAIN_ROW: 2.0 * rng.normal(size=(n, s)) + noise()}


def test_a_paired_audit_sees_a_small_shift_that_the_independent_design_cannot():
  fast = dict(replicates=200, null_permutations=100, example_permutations=99)
  c = _confidences(0.02, np.random.default_rng(1))
  paired_seed = score_seed(c, np.arange(100), 0, EvidenceConfig(paired=True, **fast))
  assert paired_seed["power"]["powered"]
  assert paired_seed["rows"][ORIGINAL_ROW]["verdict"] == "distinguishable"
  assert paired_seed["rows"][ORIGINAL_ROW]["paired_auc"] > 0.6
  # The same arrays scored as independent groups: the shared base is noise to U-LiRA; no power.
  independent = score_seed(c, np.arange(100), 0, EvidenceConfig(**fast))
  assert not independent["power"]["powered"]
  assert paired_seed["power"]["null_sd"] < independent["power"]["null_sd"]


def test_a_zero_weight_row_keeps_its_place_and_adds_nothing_to_the_loss():
  rng = np.random.default_rng(0)
  x = rng.random((12, 2, 2, 1)).astype(np.float32)
  y = rng.integers(0, 3, 12).astype(np.int32)
  apply_fn = lambda p, xb: xb.reshape(len(xb), -1) @ p
  p0 = np.zeros((4, 3), np.float32)
  w = np.ones(12, np.float32)
  w[[1, 5, 6]] = 0.0
  config = TrainConfig(epochs=3, batch_size=12, lr=0.1, weight_decay=0.0)   # one full batch per epoch
  weighted = train_classifier(apply_fn, p0, x, y, config, jax.random.key(0), show_progress=False,
                              example_weights=w).params
  kept = train_classifier(apply_fn, p0, x[w > 0], y[w > 0], config, jax.random.key(1), show_progress=False).params
  np.testing.assert_allclose(np.asarray(weighted), np.asarray(kept), atol=1e-6)
  with pytest.raises(FamrError, match="example_weights"):
    train_classifier(apply_fn, p0, x, y, config, jax.random.key(0), show_progress=False,
                     example_weights=np.zeros(12))


def test_a_paired_farm_shares_each_originals_randomness_with_its_retrain():
  d = load_dataset("digits", max_train=200, max_test=40)
  model = models.create_model("mlp", 10, d.image_shape)
  apply_fn = models.make_apply_fn(model)
  forget = forget_samples(list(range(0, 200, 10)), len(d.y_train), 10)
  config = TrainConfig(epochs=3, batch_size=32)
  farm = train_shadow_farm(model, apply_fn, d, forget, config, AuditConfig(shadows=3, paired=True),
                           jax.random.key(0))
  x = d.x_train
  logits = lambda group, i: np.asarray(apply_fn(jax.tree.map(lambda a: a[i], group), x)).ravel()
  for i in range(3):
    o, r, ind = logits(farm.originals, i), logits(farm.retrains, i), logits(farm.independent_retrains, i)
    assert not np.allclose(o, r)   # the retrain did leave the forget rows out
    # Pair i shares its init and order: its retrain is far closer to its original than an independent one.
    assert np.mean((o - r) ** 2) < 0.5 * np.mean((o - ind) ** 2)
  bn = models.create_model("resnet18_cifar", 10, d.image_shape, width=2, stage_sizes=(1,))
  with pytest.raises(FamrError, match="BatchNorm"):
    train_shadow_farm(bn, models.make_apply_fn(bn), d, forget, config, AuditConfig(shadows=2, paired=True),
                      jax.random.key(0))


def test_augmented_views_by_hand_and_the_statistic_is_their_mean():
  from famr_jax.audit.audit import group_outputs
  from famr_jax.audit.challenge import challenge_confidence
  from famr_jax.audit.queries import augmented_views
  x = np.arange(1.0, 7.0).reshape(1, 2, 3, 1)
  views = augmented_views(x, ("flip", "shift"))
  got = [v[0, :, :, 0].tolist() for v in views]
  assert got == [[[1, 2, 3], [4, 5, 6]], [[3, 2, 1], [6, 5, 4]], [[0, 0, 0], [1, 2, 3]], [[4, 5, 6], [0, 0, 0]],
                 [[0, 1, 2], [0, 4, 5]], [[2, 3, 0], [5, 6, 0]]]
  with pytest.raises(FamrError, match="queries"):
    AuditConfig(queries=("rotate",)).validate()
  d = load_dataset("digits", max_train=40, max_test=20)
  rng = np.random.default_rng(0)
  w = rng.normal(size=(2, 64, 10)).astype(np.float32)
  apply_fn = lambda p, xb: xb.reshape(len(xb), -1) @ p
  forget = forget_samples([3, 7, 9], 40, 10)
  g = group_outputs(apply_fn, w, d, forget, jax.random.key(0), ("flip",))
  xf, yf = d.x_train[forget.indices], d.y_train[forget.indices]
  flat = lambda v: v.reshape(len(v), -1)
  by_hand = [(challenge_confidence(flat(xf) @ w[m], yf) + challenge_confidence(flat(xf[:, :, ::-1]) @ w[m], yf)) / 2
             for m in range(2)]
  np.testing.assert_allclose(g.phi, np.stack(by_hand), rtol=1e-5, atol=1e-5)


def test_a_randomized_membership_farm_forgets_complementary_halves_and_retrains_without_them():
  from famr_jax.audit.membership import complementary_halves, membership_audit
  f = complementary_halves(jax.random.key(1), 10, 6)
  assert f.sum(axis=1).tolist() == [5] * 6 and f.sum(axis=0).tolist() == [3] * 10   # every candidate in and out
  assert np.all(f[0] ^ f[1]) and np.all(f[2] ^ f[3]) and not np.array_equal(f[0], f[2])
  with pytest.raises(FamrError, match="even"):
    complementary_halves(jax.random.key(1), 10, 3)
  d = load_dataset("digits", max_train=60, max_test=20)
  model = models.create_model("logistic", 10, d.image_shape)
  apply_fn = models.make_apply_fn(model)
  seen = []

  def train_fn(x, y, key):   # records the rows each shadow is trained on
    seen.append(x.reshape(len(x), -1).copy())
    return train_classifier(apply_fn, models.init_params(model, key, d.image_shape), x, y,
                            TrainConfig(epochs=2, batch_size=16), key, show_progress=False).params

  pool = np.arange(0, 20)
  out = membership_audit(apply_fn, model, d, pool, None, {"ga": resolve_config("ga", Request("samples"))}, AuditConfig(shadows=4), jax.random.key(0),
                         train_fn=train_fn)
  flat = d.x_train.reshape(60, -1)
  assert [len(s) for s in seen] == [60] * 4 + [50] * 4
  for i in range(4):   # retrain i saw exactly the training set without its forgotten candidates
    rows = {flat[j].tobytes() for j in range(60) if not (j < 20 and out.forgotten[i, j])}
    assert {r.tobytes() for r in seen[4 + i]} == rows
  assert set(out.confidences) == {"original", "retrained", "ga"}
  assert all(c.shape == (4, 20) for c in out.confidences.values())
  assert all(0.0 <= a <= 1.0 for a in out.lira_auc.values())
