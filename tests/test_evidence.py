"""Evidence for an audit (famr_jax.audit.evidence, famr_jax.audit.rmia): intervals, pooling, the null, the power
gate, TOST verdicts, the pick, per-example p-values with Benjamini-Hochberg, RMIA; on synthetic data whose
answer is known, against hand computations, scipy and exact enumeration."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from scipy import stats

from famr_jax.audit import attacks, evidence, rmia
from famr_jax.errors import FamrError


def _fixed(lo, hi):
  """Evidence whose replicates are a uniform grid on [lo, hi]: its percentile intervals are known."""
  return evidence.AucEvidence((lo + hi) / 2, (lo, hi), np.linspace(lo, hi, 100001), 0.95)


# ----------------------------------------------------------------------------- intervals

def test_weighted_auc_is_the_auc_of_the_repeated_sample():
  rng = np.random.default_rng(0)
  scores = np.round(rng.normal(size=60), 1)            # ties
  member = rng.random(60) < 0.4
  counts = rng.integers(0, 4, (3, 60)).astype(float)
  got = evidence.weighted_auc(scores, member, counts)
  want = [attacks.roc_auc(np.repeat(scores, c.astype(int)), np.repeat(member, c.astype(int))) for c in counts]
  np.testing.assert_allclose(got, want, atol=1e-12)


def test_null_intervals_cover_chance_at_about_the_nominal_rate():
  rng = np.random.default_rng(1)
  draws, covered = 40, 0
  for k in range(draws):
    u, r = rng.normal(size=(8, 24)), rng.normal(size=(8, 24))
    ci = evidence.auc_evidence(u, r, k, replicates=200).ci
    covered += ci[0] <= 0.5 <= ci[1]
  # Nominal 95%: 38 of 40 expected; the two-way bootstrap is conservative, so at least 34 (binomial 1%).
  assert covered >= 34, covered


def test_a_shifted_group_is_detected_and_the_seed_fixes_the_interval():
  rng = np.random.default_rng(2)
  u, r = rng.normal(0.6, 1, (16, 40)), rng.normal(0, 1, (16, 40))
  e = evidence.auc_evidence(u, r, 3, replicates=300)
  assert e.ci[0] > 0.5 and evidence.verdict(e) == evidence.DISTINGUISHABLE
  assert e.ci == evidence.auc_evidence(u, r, 3, replicates=300).ci
  k = jax.random.key(7)
  assert evidence.auc_evidence(u, r, k, replicates=300).ci == evidence.auc_evidence(u, r, k, replicates=300).ci
  row = e.as_row()
  assert row["delta_vs_chance"]["mean"] == pytest.approx(row["ulira_auc"] - 0.5)
  assert row["delta_vs_chance"]["ci"] == pytest.approx([row["ulira_auc_ci"][0] - 0.5, row["ulira_auc_ci"][1] - 0.5])
  # Below chance is as detectable as above.
  low = evidence.auc_evidence(-u, r, 3, replicates=300)   # unlearned *lower* than retrained: ulira still sees it
  assert evidence.verdict(_fixed(0.40, 0.46)) == evidence.DISTINGUISHABLE and low.ci[0] > 0.5


def test_paired_bootstrap_draws_pairs():
  rng = np.random.default_rng(3)
  base = rng.normal(size=(12, 30))
  u, r = base + rng.normal(0, 0.3, base.shape), base + rng.normal(0, 0.3, base.shape)
  e = evidence.auc_evidence(u, r, 0, replicates=200, paired=True)
  assert e.ci[0] < e.auc < e.ci[1]
  with pytest.raises(FamrError):
    evidence.auc_evidence(u[:5], r, 0, paired=True)


def test_pooled_seeds_narrow_the_interval_and_cover_chance():
  rng = np.random.default_rng(4)
  seeds = [evidence.auc_evidence(rng.normal(size=(8, 24)), rng.normal(size=(8, 24)), k, replicates=300)
           for k in range(3)]
  pooled = evidence.pool_seeds(seeds)
  assert pooled.auc == pytest.approx(np.mean([s.auc for s in seeds]))
  width = lambda e: e.ci[1] - e.ci[0]
  assert width(pooled) < np.mean([width(s) for s in seeds]) * 0.75      # about 1 / sqrt(3)
  assert pooled.ci[0] <= 0.5 <= pooled.ci[1]
  with pytest.raises(FamrError):
    evidence.pool_seeds([])


# ----------------------------------------------------------------------------- the null and the power gate

def test_permutation_null_is_centred_and_its_sd_falls_with_models():
  rng = np.random.default_rng(5)
  sd = {}
  for n in (4, 16):
    null = evidence.permutation_null(rng.normal(size=(n, 40)), rng.normal(size=(n, 40)), n, permutations=60)
    assert abs(null.mean() - 0.5) < 3 * null.std() / np.sqrt(len(null)) + 0.01
    sd[n] = null.std()
  assert sd[16] < sd[4]
  paired = evidence.permutation_null(rng.normal(size=(8, 40)), rng.normal(size=(8, 40)), 0, permutations=30,
                                     paired=True)
  assert paired.shape == (30,) and 0.3 < paired.mean() < 0.7


def test_power_gate_both_ways():
  # Seeing the original: 3 null sds from chance, either side (null sd 0.006 resolves a 0.02 margin).
  on = evidence.power(0.586, 0.006)
  assert on == {"original_minus_chance": pytest.approx(0.086), "null_sd": 0.006, "powered": True}
  off = evidence.power(0.486, 0.006)
  assert off["powered"] is False and off["original_minus_chance"] == pytest.approx(-0.014)
  assert evidence.power(0.5 - 0.019, 0.006)["powered"] is True           # below chance counts too (3.2 sds)
  assert evidence.power(0.5 + 0.017, 0.006)["powered"] is False          # 2.8 sds
  # Certifying equivalence: 1.645 null sds must fit in the margin (0.02 / 1.645 = 0.01216), whatever the
  # original shows: the 16-shadow digits null (sd 0.018) sees the original (4.8 sds) but cannot
  # certify a method at chance, so it is underpowered.
  wide = evidence.power(0.586, 0.018)
  assert wide["powered"] is False
  assert evidence.power(0.6, 0.0121)["powered"] is True and evidence.power(0.6, 0.0122)["powered"] is False
  assert evidence.power(0.6, 0.0122, margin=0.03)["powered"] is True
  null = np.random.default_rng(0).normal(0.5, 0.01, 500)
  assert evidence.power(0.56, null)["null_sd"] == pytest.approx(np.std(null))
  msg = evidence.power_message(off, shadows=4, forget_examples=135)
  assert msg.startswith("underpowered") and "shadow" in msg and "forget set" in msg and "paired" in msg
  assert "no method" in msg
  msg = evidence.power_message(wide, shadows=16, forget_examples=135)
  assert msg.startswith("underpowered") and "margin" in msg and "no method" in msg
  assert evidence.power_message(on, shadows=16, forget_examples=135).startswith("powered")
  with pytest.raises(FamrError):
    evidence.power(0.6, 0.0)


# ----------------------------------------------------------------------------- verdicts and the pick

@pytest.mark.parametrize("lo,hi,margin,want", [
    (0.49, 0.51, 0.02, evidence.EQUIVALENT),         # 90% interval well inside (-0.02, 0.02)
    (0.503, 0.512, 0.02, evidence.EQUIVALENT),       # differs from 0.5, but by less than the margin
    (0.49, 0.51, 0.005, evidence.INCONCLUSIVE),      # the same interval, a tighter margin
    (0.53, 0.60, 0.02, evidence.DISTINGUISHABLE),
    (0.40, 0.46, 0.02, evidence.DISTINGUISHABLE),    # below chance
    (0.49, 0.56, 0.02, evidence.INCONCLUSIVE),       # covers 0.5 and the margin
    (0.505, 0.53, 0.02, evidence.DISTINGUISHABLE),   # excludes 0.5, not inside the margin
])
def test_tost_verdicts(lo, hi, margin, want):
  assert evidence.verdict(_fixed(lo, hi), margin=margin) == want
  assert evidence.verdict(_fixed(lo, hi), margin=margin, powered=False) == evidence.UNDERPOWERED


def test_tost_uses_the_90_percent_interval():
  # Uniform replicates on [0.48, 0.52]: the 90% interval is [0.482, 0.518], inside a margin of 0.019 (TOST
  # at alpha 0.05 equivalent) although the 95% one, [0.481, 0.519], is not inside a margin of 0.0185.
  e = _fixed(0.48, 0.52)
  assert evidence.verdict(e, margin=0.019) == evidence.EQUIVALENT
  assert evidence.verdict(e, margin=0.0175) == evidence.INCONCLUSIVE
  with pytest.raises(FamrError):
    evidence.verdict(e, margin=0.0)


def test_pick_is_the_cheapest_equivalent_and_none_without_one():
  v = {"ft": evidence.EQUIVALENT, "ga": evidence.DISTINGUISHABLE, "rl": evidence.EQUIVALENT,
       "original": evidence.DISTINGUISHABLE}
  assert evidence.pick(v, {"ft": 3.0, "ga": 0.1, "rl": 1.0}) == "rl"
  assert evidence.pick({"ga": evidence.INCONCLUSIVE}, {"ga": 0.1}) is None
  assert evidence.pick({"ft": evidence.EQUIVALENT, "x": evidence.UNDERPOWERED}, {"ft": 1.0}) is None
  with pytest.raises(FamrError):
    evidence.pick({"ft": "closest"}, {"ft": 1.0})


# ----------------------------------------------------------------------------- per example

def test_benjamini_hochberg_matches_scipy():
  rng = np.random.default_rng(6)
  for _ in range(20):
    p = np.r_[rng.uniform(0, 0.01, rng.integers(0, 6)), rng.uniform(0, 1, 30)]
    want = stats.false_discovery_control(p, method="bh") <= 0.05
    np.testing.assert_array_equal(evidence.benjamini_hochberg(p, 0.05), want)
  # By hand: sorted 0.01 0.02 0.03 0.2 vs 0.05 * k / 4 = .0125 .025 .0375 .05: the first three.
  assert evidence.benjamini_hochberg(np.array([0.2, 0.03, 0.01, 0.02])).tolist() == [False, True, True, True]


def test_permutation_pvalues_match_exact_enumeration():
  rng = np.random.default_rng(7)
  a, b = rng.normal(0.8, 1, (4, 5)), rng.normal(0, 1, (4, 5))
  both = np.concatenate([a, b])
  ranks = stats.rankdata(both, axis=0)
  stat = lambda idx: np.abs((ranks[list(idx)].sum(0) - 10) / 16 - 0.5)
  obs = stat(range(4))
  splits = list(itertools.combinations(range(8), 4))
  exact = np.mean([stat(s) >= obs - 1e-12 for s in splits], axis=0)
  got = evidence.per_example_pvalues(a, b, 0, permutations=20000)
  np.testing.assert_allclose(got, exact, atol=0.015)


def test_exposed_examples_finds_the_shifted_ones():
  rng = np.random.default_rng(8)
  u, r = rng.normal(size=(24, 50)), rng.normal(size=(24, 50))
  u[:, [3, 17, 30]] += 2.5
  out = evidence.exposed_examples(u, r, 0, permutations=5000)
  assert out.indices.tolist() == [3, 17, 30] and out.count == 3
  null = evidence.exposed_examples(rng.normal(size=(24, 50)), rng.normal(size=(24, 50)), 1, permutations=2000)
  assert null.count <= 1


# ----------------------------------------------------------------------------- RMIA

def test_rmia_null_is_chance_within_its_spread_and_a_shift_is_seen():
  rng = np.random.default_rng(9)
  u, r = rng.normal(1, 1, (4, 60)), rng.normal(1, 1, (4, 60))
  scorer = rmia.rmia_scores
  null = evidence.permutation_null(u, r, 0, permutations=40, scorer=scorer)
  auc = rmia.rmia(u, r).auc
  assert abs(auc - 0.5) < 3 * null.std() + 0.01
  shifted = rmia.rmia(rng.normal(2.5, 1, (2, 60)), rng.normal(0, 1, (2, 60)))    # two shadows per group
  assert shifted.auc > 0.9
  # With population examples (no model trained on them) and offline references.
  zu, zr = rng.normal(0, 1, (2, 30)), rng.normal(0, 1, (2, 30))
  pop = rmia.rmia(rng.normal(2.5, 1, (2, 60)), rng.normal(0, 1, (2, 60)), population_unlearned=zu,
                  population_retrained=zr)
  assert pop.auc > 0.75                 # 30 population examples: the score saturates at 1, ties
  assert rmia.rmia(rng.normal(2.5, 1, (4, 60)), rng.normal(0, 1, (4, 60)), offline_a=0.3).auc > 0.85
  e = evidence.auc_evidence(u, r, 0, replicates=100, scorer=scorer)
  assert e.ci[0] <= 0.5 <= e.ci[1]


def test_rmia_reference_mean_by_hand():
  # Two models per group: the target's references are the two models outside its pair.
  u = np.array([[0.0], [1.0]]); r = np.array([[2.0], [3.0]])
  s, m = rmia.rmia_scores(u, r)
  sig = lambda x: 1 / (1 + np.exp(-x))
  want_u0 = np.log(sig(0.0)) - np.log((sig(1.0) + sig(3.0)) / 2)     # pair 0 = (u0, r0) left out
  want_r1 = np.log(sig(3.0)) - np.log((sig(0.0) + sig(2.0)) / 2)
  assert s[0, 0] == pytest.approx(want_u0) and s[3, 0] == pytest.approx(want_r1)
  assert m[:, 0].tolist() == [True, True, False, False]
  with pytest.raises(FamrError):
    rmia.rmia_scores(u, r, population_unlearned=u)


def test_fast_ulira_scores_equal_the_generic_held_out_fit():
  rng = np.random.default_rng(10)
  for nu, nr, fixed in [(6, 6, False), (7, 4, False), (5, 5, True), (3, 6, True)]:
    u, r = rng.normal(0.3, 1, (nu, 9)), rng.normal(0, 1.5, (nr, 9))
    s, m = attacks.ulira_scores(u, r, fixed_variance=fixed)
    folds = np.r_[np.arange(nu), np.arange(nr)]
    want = attacks.lira_scores(np.concatenate([u, r]), m, folds=folds, fixed_variance=fixed)
    np.testing.assert_allclose(s, want, rtol=1e-9, atol=1e-9)
