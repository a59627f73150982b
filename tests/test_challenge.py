"""The NeurIPS 2023 unlearning challenge's score (famr_jax.audit.challenge) against hand-computed values, a
brute-force NumPy evaluation of its rules, torch.linspace, and (opt-in) the organizers' metric.py.

The reference test runs when FAMR_JAX_CHALLENGE_REFERENCE names a copy of
google-deepmind/unlearning_evaluation's metric.py (it needs torch; its .cuda() calls run on CPU here).
"""

from __future__ import annotations

import os
import types
import warnings

import numpy as np
import pytest

from famr_jax.audit import challenge
from famr_jax.errors import FamrError

DELTA = 1e-5


# ----------------------------------------------------------------------------- hand-computed values

def test_confidence_is_floored_log_odds():
  logits = np.array([[2.0, 0.0, -1.0], [0.0, -np.inf, -np.inf], [-np.inf, 0.0, 1.0]])
  y = np.array([0, 0, 0])
  p = np.exp(2.0) / (np.exp(2.0) + 1 + np.exp(-1.0))
  got = challenge.challenge_confidence(logits, y)
  assert got[0] == pytest.approx(np.log(p) - np.log(1 - p), abs=1e-12)
  assert got[1] == pytest.approx(-np.log(1e-45), abs=1e-9)        # nothing wrong: the floor
  assert got[2] == pytest.approx(np.log(1e-45) - np.log(1.0 + 1e-45), abs=1e-9)
  assert challenge.challenge_confidence(np.zeros((2, 3, 4)), np.zeros((2, 3), int)).shape == (2, 3)
  for bad in ([[np.inf, 0.0]], [[-np.inf, -np.inf]], [[np.nan, 0.0]]):
    with pytest.raises(FamrError):
      challenge.challenge_confidence(np.array(bad), np.array([0]))


def test_max_epsilon_and_buckets_by_hand():
  assert [challenge.max_epsilon(n) for n in (2, 3, 4, 16, 64, 512)] == [0.0, 1.0, 2.0, 3.0, 5.0, 7.0]
  # N = 4: max epsilon ceil(log 3) = 2, buckets [0,.5) [.5,1) [1,1.5) [1.5,2) worth 1, 1/2, 1/4, 1/8.
  eps = np.array([0.0, 0.49, 0.5, 1.0, 1.99, 2.0, 50.0])
  assert challenge.score_from_epsilons(eps, 4) == pytest.approx((1 + 1 + .5 + .25 + .125) / 7)
  assert challenge.score_from_epsilons(np.zeros(3), 2) == 0.0     # 2 models: nothing is scoreable
  with pytest.raises(FamrError):
    challenge.score_from_epsilons(np.zeros((2, 2)), 4)


def test_epsilons_by_hand():
  r = np.array([0.0, 1.0, 2.0, 3.0])
  u = r + 2.5                      # same range; best rules misclassify one of four on each side
  both_spread = np.stack([u, r], 1), np.stack([r, r], 1)
  eps = challenge.challenge_epsilons(np.c_[u, r, np.full(4, 7.0), r + 10], np.c_[r, r, r, r])
  assert eps[0] == pytest.approx(np.log((0.75 - DELTA) / 0.25), abs=2e-6)   # FPR = FNR = 1/4
  assert eps[1] == 0.0             # identical groups
  assert eps[2] == 50.0            # a constant group: the peakiness rule
  assert eps[3] == 50.0            # separated: FPR = FNR = 0, infinite, capped
  assert both_spread[0].shape == (4, 2)
  q = challenge.forgetting_quality(np.c_[u, r, np.full(4, 7.0)], np.c_[r, r, r])
  assert q == pytest.approx((0.25 + 1.0 + 0.0) / 3)                        # N = 4: eps 1.0986 is worth 1/4


def test_peakiness_threshold_is_one_percent():
  r = np.linspace(0.0, 1.0, 16)
  r[8] = 0.5                       # range exactly 1; a retrained value inside the peaky group: no separation
  base = np.linspace(-0.5, 0.5, 16)
  for ratio, capped in [(0.0099, True), (0.011, False)]:
    u = 0.5 + ratio * base
    eps = challenge.challenge_epsilons(u[:, None], r[:, None])
    assert bool(eps[0] == 50.0) is capped
    if not capped:
      assert 0.0 < eps[0] < np.log(15.0) + 1e-6     # a finite rule's most: FPR = 1/16, FNR = 1/16


def test_two_constant_groups_of_one_value_score_zero():
  # The reference raises here (every rule discarded); no rule tells them apart: epsilon 0.
  assert challenge.challenge_epsilons(np.ones((8, 1)), np.ones((8, 1))).tolist() == [0.0]


def test_bad_inputs_are_refused():
  for u, r in [(np.zeros((4, 2)), np.zeros((4, 3))), (np.zeros((1, 2)), np.zeros((1, 2))),
               (np.full((4, 1), np.inf), np.zeros((4, 1))), (np.zeros(4), np.zeros(4))]:
    with pytest.raises(FamrError):
      challenge.challenge_epsilons(u, r)


# ----------------------------------------------------------------------------- brute force of the rules

def _brute_epsilon(u, r):
  """One example, every rule enumerated explicitly from the definition (no search, no histogram)."""
  pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
  pd, nd = np.ptp(pos), np.ptp(neg)
  small, large = (nd, pd) if pd > nd else (pd, nd)
  with np.errstate(all="ignore"):
    if small / large < 0.01:
      return 50.0
  n = len(pos)
  rates = []
  lo, hi = min(pos.min(), neg.min()), max(pos.max(), neg.max())
  import torch
  t = torch.linspace(float(lo), float(hi), int(np.ceil((hi - lo) * 100))).numpy().astype(np.float64)
  rates.append((np.mean(neg[:, None] >= t, 0), np.mean(pos[:, None] < t, 0)))
  peaky, broad = (neg, pos) if pd >= nd else (pos, neg)
  w = small
  rights = np.linspace(peaky.min() + w - 2, peaky.max() + 2, int(np.ceil((peaky.max() + 2 - (peaky.min() + w - 2)) * 100)))
  lefts = np.stack([np.linspace(tr - w - 2, tr - w + 2, 400) for tr in rights])
  inside = lambda v: (lefts[..., None] <= v) & (v <= rights[:, None, None])
  rates.append((np.mean(inside(broad), -1).ravel(), 1 - np.mean(inside(peaky), -1).ravel()))
  best = -np.inf
  for fpr, fnr in rates:
    fpr, fnr = fpr.astype(np.float32), fnr.astype(np.float32)
    with np.errstate(all="ignore"):
      e = np.fmax(np.log(np.float32(1 - DELTA) - fpr) - np.log(fnr), np.log(np.float32(1 - DELTA) - fnr) - np.log(fpr))
    e = np.clip(e, 0, None)
    e = np.where((fpr == 0) & (fnr == 0), np.inf, np.where((fpr == 0) | (fnr == 0), np.nan, e))
    if np.any(~np.isnan(e)):
      best = max(best, float(np.nanmax(e)))
  return float(np.clip(0.0 if best == -np.inf else best, 0, 50))


def test_vectorised_rules_equal_a_brute_force_enumeration():
  pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  u = np.c_[rng.normal(0.4, 1, (8, 3)), np.round(rng.normal(0, 1, (8, 2)) * 2) / 2, rng.normal(0, .3, (8, 1))]
  r = np.c_[rng.normal(0, 1, (8, 3)), np.round(rng.normal(0, 1, (8, 2)) * 2) / 2, rng.normal(0, 1, (8, 1))]
  got = challenge.challenge_epsilons(u, r)
  want = [_brute_epsilon(u[:, s], r[:, s]) for s in range(u.shape[1])]
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_threshold_grid_is_torch_linspace():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(2)
  starts, stops = rng.normal(0, 20, 12), rng.normal(0, 20, 12) + 40
  nums = np.r_[1, 2, 3, 17, 64, 65, rng.integers(100, 9000, 6)]
  grid = challenge._torch_linspace_f32(starts, stops, nums, int(nums.max()))
  for row, a, b, n in zip(grid, starts, stops, nums):
    want = torch.linspace(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), int(n)).numpy()
    np.testing.assert_array_equal(row[:n], want)
    assert np.isinf(row[n:]).all()


# ----------------------------------------------------------------------------- the organizers' code (opt-in)

REFERENCE = os.environ.get("FAMR_JAX_CHALLENGE_REFERENCE")


@pytest.fixture
def reference(monkeypatch):
  if not REFERENCE:
    pytest.skip("set FAMR_JAX_CHALLENGE_REFERENCE to a copy of unlearning_evaluation's metric.py")
  torch = pytest.importorskip("torch")
  monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)   # its .cuda() calls, on CPU
  module = types.ModuleType("challenge_reference")
  with open(REFERENCE) as f:
    # optimize=1 drops its `assert thr_eps`, which raises on any array of more than one kept rule.
    exec(compile(f.read(), REFERENCE, "exec", optimize=1), module.__dict__)
  return module


def _reference_epsilons(ref, u, r):
  pos_first = np.median(r, 0) > np.median(u, 0)
  return np.asarray(ref._get_epsilons(np.where(pos_first, r, u), np.where(pos_first, u, r), delta=ref.DELTA),
                    np.float64)


def _cases():
  rng = np.random.default_rng(2023)
  yield "random N=16", rng.normal(0.5, 1, (16, 6)), rng.normal(0, 1, (16, 6))
  yield "random N=32 shifted", rng.normal(1.5, 2, (32, 4)), rng.normal(0, 1, (32, 4))
  yield "random N=7", rng.normal(0, 1, (7, 4)), rng.normal(0.2, 0.5, (7, 4))
  yield "ties", np.round(rng.normal(0, 1, (16, 4))), np.round(rng.normal(0.3, 1, (16, 4)))
  const = np.c_[np.full(16, 2.0), np.full(16, -1.0), rng.normal(size=16)]
  yield "constant groups", const, np.c_[rng.normal(size=16), np.full(16, 3.0), rng.normal(size=16)]
  peaky = 0.1 + np.c_[0.005, 0.02, 0.0101, 0.0099] * rng.uniform(-0.5, 0.5, (16, 4))
  r = rng.uniform(-0.5, 0.5, (16, 4)); r = (r - r.min(0)) / np.ptp(r, 0)
  yield "peaky groups", peaky, r
  yield "separated", rng.normal(10, 1, (16, 2)), rng.normal(0, 1, (16, 2))
  logits = rng.normal(0, 3, (16 * 2 * 3, 5)); logits[rng.random(len(logits)) < 0.3, 1:] = -np.inf
  logits[(rng.random(len(logits)) < 0.3) & np.isfinite(logits[:, 1]), 0] = -np.inf
  labels = np.zeros(len(logits), int)
  conf = challenge.challenge_confidence(logits, labels).reshape(2, 16, 3)
  yield "floored (infinite logits)", conf[0], conf[1]
  yield "wide range", rng.normal(0, 40, (8, 2)), rng.normal(5, 40, (8, 2))


@pytest.mark.parametrize("name,u,r", list(_cases()), ids=[c[0] for c in _cases()])
def test_matches_the_reference(reference, name, u, r):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    want = _reference_epsilons(reference, u, r)
    want_score = reference.compute_forget_score_from_confs(u, r)
  got = challenge.challenge_epsilons(u, r)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  assert challenge.forgetting_quality(u, r) == pytest.approx(want_score, abs=1e-12)


def test_confidence_matches_the_reference(reference):
  rng = np.random.default_rng(5)
  for dtype in (np.float32, np.float64):
    logits = rng.normal(0, 8, (64, 10)).astype(dtype)
    logits[::5, 3:] = -np.inf
    labels = rng.integers(0, 10, 64)
    _, want = reference.compute_logit_scaled_confidence(logits.copy(), labels)
    np.testing.assert_allclose(challenge.challenge_confidence(logits, labels), want, rtol=0, atol=1e-9)


def test_reference_raises_where_ours_reads_zero(reference):
  with warnings.catch_warnings(), pytest.raises(ValueError):
    warnings.simplefilter("ignore")
    _reference_epsilons(reference, np.ones((8, 1)), np.ones((8, 1)))
