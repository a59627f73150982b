"""An audit's scores with their uncertainty, its power, and verdicts by equivalence (issue 22, items 2-5).

Pure, vectorised NumPy on ``[models, forget examples]`` statistics; every random choice takes an explicit
seed (an ``int``, a ``numpy.random.Generator`` or a JAX PRNG key).

* **Interval** (:func:`auc_evidence`): the U-LiRA scores of every (model, example) cell are computed once
  (:func:`famr_jax.audit.attacks.ulira_scores`); a replicate draws models (each group on its own, or pairs
  when ``paired``) and forget examples with replacement, independently, and takes the weighted AUC of the
  drawn cells: the two-way ("pigeonhole") bootstrap of a crossed design (Owen 2007, Ann. Appl. Stat. 1(1);
  it is conservative: each variance component is counted once and the interaction twice). The interval is
  the replicates' percentile interval; the difference to chance is ``AUC - 0.5`` with the same interval
  shifted.
* **Seeds pooled** (:func:`pool_seeds`): the mean of the seeds' estimates; a pooled replicate is the mean of
  one replicate of each seed (the seeds' farms are independent), so its interval narrows as
  ``1 / sqrt(seeds)``.
* **Null** (:func:`permutation_null`): the AUC of two groups that should be exchangeable (the reference
  retrains and the independent retrains) after permuting which model is in which group (swapping within
  pairs when ``paired``); its standard deviation is the audit's resolution.
* **Power** (:func:`power`): powered iff ``|AUC_original - 0.5| > 3`` null sds (a one-sided z-test at
  about 0.13% that the untouched original is seen at all; below 0.5 counts as seen) AND the null is narrow
  enough for an equivalence verdict: ``z_{1-alpha} * null_sd < margin``, so that a method exactly at chance
  would pass the TOST (a 90% interval of ``+-1.645`` null sds inside the margin). Without the second
  condition an audit can see the original yet certify nothing: its verdicts would be "inconclusive" for
  every honest method, and the board reads "underpowered" instead.
* **Verdict** (:func:`verdict`), with margin ``m`` (default 0.02 AUC) and ``alpha`` (default 0.05):
  ``"equivalent to retraining"`` iff the two one-sided tests of ``delta <= -m`` and ``delta >= m`` both
  reject at ``alpha``, i.e. the ``1 - 2 alpha`` (90%) percentile interval of ``delta = AUC - 0.5`` lies
  inside ``(-m, m)`` (Schuirmann 1987); else ``"distinguishable"`` iff the ``1 - alpha`` (95%) interval
  excludes 0 (either side); else ``"inconclusive"``. A row equivalent within the margin is not called
  distinguishable even when its interval excludes 0: the margin is the difference the audit tolerates.
  Without power every verdict is ``"underpowered"``.
* **Pick** (:func:`pick`): the cheapest method whose verdict is ``"equivalent to retraining"``; ``None`` when
  none is or when the audit is underpowered.
* **Per example** (:func:`per_example_pvalues`, :func:`benjamini_hochberg`): a two-sided rank-sum statistic
  ``|U / (N N') - 1/2|`` of the example's statistic under the two groups, its permutation p-value over
  permutations of the models' group labels (``(1 + #{T* >= T}) / (1 + P)``, Phipson & Smyth 2010), and
  Benjamini-Hochberg at 5% across the forget examples.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
from scipy import stats

from famr_jax.audit import attacks
from famr_jax.errors import FamrError

EQUIVALENT = "equivalent to retraining"
DISTINGUISHABLE = "distinguishable"
INCONCLUSIVE = "inconclusive"
UNDERPOWERED = "underpowered"
VERDICTS = (EQUIVALENT, DISTINGUISHABLE, INCONCLUSIVE, UNDERPOWERED)
DEFAULT_MARGIN = 0.02
DEFAULT_ALPHA = 0.05
POWER_SDS = 3.0
CHANCE = 0.5


def as_generator(seed) -> np.random.Generator:
  """A NumPy generator from an ``int``, a generator or a JAX PRNG key (new- or old-style).

  Example:
    >>> float(as_generator(0).random()) == float(np.random.default_rng(0).random())
    True
  """
  if isinstance(seed, np.random.Generator):
    return seed
  if isinstance(seed, (int, np.integer)):
    return np.random.default_rng(int(seed))
  import jax   # a JAX key: its raw bits seed the generator
  data = jax.random.key_data(seed) if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key) else seed
  return np.random.default_rng(np.asarray(data, np.uint32).ravel().tolist())


class AucEvidence(NamedTuple):
  """An AUC with its bootstrap: ``auc``, ``ci`` (``(lo, hi)`` at ``level``) and ``replicates`` ``[B]``."""
  auc: float
  ci: tuple[float, float]
  replicates: np.ndarray
  level: float

  @property
  def delta(self) -> float:
    """``AUC - 0.5``."""
    return self.auc - CHANCE

  def interval(self, level: float) -> tuple[float, float]:
    """The percentile interval of the AUC at ``level``."""
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(self.replicates, [tail, 100.0 - tail])
    return float(lo), float(hi)

  def as_row(self) -> dict:
    """The leaderboard's fields: ``ulira_auc``, ``ulira_auc_ci`` and ``delta_vs_chance`` ``{"mean", "ci"}``."""
    lo, hi = self.ci
    return {"ulira_auc": self.auc, "ulira_auc_ci": [lo, hi],
            "delta_vs_chance": {"mean": self.delta, "ci": [lo - CHANCE, hi - CHANCE]}}


def _run_ids(sorted_scores: np.ndarray) -> np.ndarray:
  return np.r_[0, np.cumsum(sorted_scores[1:] != sorted_scores[:-1])]


def weighted_auc(scores: np.ndarray, member: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """AUCs ``[B]`` of one set of scores under ``B`` rows of cell weights ``[B, n]`` (ties count one half).

  With integer weights it is the AUC of the sample repeating each cell that many times.

  Example:
    >>> s, m = np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0], bool)
    >>> weighted_auc(s, m, np.ones((1, 4))).tolist(), weighted_auc(s, m, np.array([[2.0, 1, 1, 1]])).tolist()
    ([0.875], [0.9166666666666666])
  """
  scores = np.nan_to_num(np.asarray(scores, np.float64).ravel(), nan=-np.inf)
  member = np.asarray(member, bool).ravel()
  weights = np.atleast_2d(np.asarray(weights, np.float64))
  order = np.argsort(scores, kind="stable")
  runs = _run_ids(scores[order])
  w = weights[:, order]
  pos, neg = w * member[order], w * ~member[order]
  neg_run = _bincount_rows(runs, neg)                 # negative weight of each run of tied scores
  below = np.cumsum(neg_run, axis=1) - neg_run
  credit = below[:, runs] + 0.5 * neg_run[:, runs]
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.sum(pos * credit, axis=1) / (pos.sum(1) * neg.sum(1))


def _bincount_rows(ids: np.ndarray, values: np.ndarray) -> np.ndarray:
  """``bincount`` of each row of ``values`` ``[B, n]`` over the same ``ids`` ``[n]``."""
  size = int(ids[-1]) + 1
  flat = (np.arange(len(values))[:, None] * size + ids[None, :]).ravel()
  return np.bincount(flat, values.ravel(), minlength=len(values) * size).reshape(len(values), size)


def draw_counts(rng: np.random.Generator, replicates: int, n: int) -> np.ndarray:
  """``[B, n]`` multiplicities of a with-replacement draw of ``n`` out of ``n`` (each row sums to ``n``).

  Example:
    >>> draw_counts(np.random.default_rng(0), 2, 5).sum(axis=1).tolist()
    [5.0, 5.0]
  """
  return rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float64)


def auc_evidence(phi_unlearned: np.ndarray, phi_retrained: np.ndarray, seed, *, replicates: int = 1000,
                 level: float = 0.95, paired: bool = False, fixed_variance: bool = False,
                 scorer: Callable | None = None) -> AucEvidence:
  """U-LiRA AUC of unlearned ``[N, S]`` vs retrained ``[N', S]`` with a two-way bootstrap interval.

  Args:
    phi_unlearned: the statistic under the unlearned models (or any group audited against the retrains).
    phi_retrained: the statistic under the retrained models.
    seed: the bootstrap's randomness (int, generator or JAX key).
    replicates: bootstrap replicates.
    level: the interval's coverage.
    paired: model ``i`` of both groups share an initialisation and data order (common random numbers): draw
      pairs, not models (needs ``N == N'``).
    fixed_variance: U-LiRA with one global variance.
    scorer: ``scorer(u, r) -> (scores, member)`` of ``[N + N', S]`` cells; default U-LiRA
      (:func:`famr_jax.audit.attacks.ulira_scores`); :func:`famr_jax.audit.rmia.rmia_scores` fits too.

  Example:
    >>> rng = np.random.default_rng(0)
    >>> e = auc_evidence(rng.normal(size=(16, 30)), rng.normal(size=(16, 30)), 0, replicates=200)
    >>> bool(e.ci[0] < 0.5 < e.ci[1])
    True
  """
  u, r = np.asarray(phi_unlearned, np.float64), np.asarray(phi_retrained, np.float64)
  if paired and u.shape != r.shape:
    raise FamrError(f"a paired audit needs groups of one shape, got {u.shape} and {r.shape}")
  if not 0.0 < level < 1.0 or replicates < 10:
    raise FamrError(f"level must be in (0, 1) and replicates at least 10, got {level}, {replicates}")
  scorer = scorer or (lambda a, b: attacks.ulira_scores(a, b, fixed_variance=fixed_variance))
  scores, member = scorer(u, r)
  rng = as_generator(seed)
  nu, nr, s = len(u), len(r), u.shape[1]
  out = np.empty(replicates)
  chunk = max(1, int(2e6 // scores.size))
  for start in range(0, replicates, chunk):
    b = min(chunk, replicates - start)
    wu = draw_counts(rng, b, nu)
    wr = wu if paired else draw_counts(rng, b, nr)
    ws = draw_counts(rng, b, s)
    w = np.concatenate([wu, wr], axis=1)[:, :, None] * ws[:, None, :]
    out[start:start + b] = weighted_auc(scores, member, w.reshape(b, -1))
  auc = float(attacks.roc_auc(scores, member))
  tail = 50.0 * (1.0 - level)
  lo, hi = np.percentile(out, [tail, 100.0 - tail])
  return AucEvidence(auc, (float(lo), float(hi)), out, level)


def pool_seeds(evidence: Sequence[AucEvidence]) -> AucEvidence:
  """Several farm seeds (each its own forget set and models) as one estimate: the mean, with its bootstrap.

  Example:
    >>> rng = np.random.default_rng(1)
    >>> seeds = [auc_evidence(rng.normal(size=(8, 20)), rng.normal(size=(8, 20)), k, replicates=100)
    ...          for k in range(3)]
    >>> pooled = pool_seeds(seeds)
    >>> bool(pooled.ci[1] - pooled.ci[0] < max(e.ci[1] - e.ci[0] for e in seeds))
    True
  """
  evidence = list(evidence)
  if not evidence:
    raise FamrError("pooling needs at least one seed")
  sizes = {len(e.replicates) for e in evidence}
  levels = {e.level for e in evidence}
  if len(sizes) != 1 or len(levels) != 1:
    raise FamrError("seeds pooled need the same number of replicates and the same level")
  reps = np.mean([e.replicates for e in evidence], axis=0)
  level = levels.pop()
  tail = 50.0 * (1.0 - level)
  lo, hi = np.percentile(reps, [tail, 100.0 - tail])
  return AucEvidence(float(np.mean([e.auc for e in evidence])), (float(lo), float(hi)), reps, level)


def permutation_null(phi_a: np.ndarray, phi_b: np.ndarray, seed, *, permutations: int = 200,
                     paired: bool = False, fixed_variance: bool = False,
                     scorer: Callable | None = None) -> np.ndarray:
  """AUCs ``[P]`` of groups ``a`` vs ``b`` after permuting the models' group labels (the null's draws).

  Feed two groups that should be exchangeable (the reference retrains and the independent retrains); the
  draws' standard deviation is the ``null_sd`` of :func:`power`. ``paired`` swaps within pairs instead.

  Example:
    >>> rng = np.random.default_rng(0)
    >>> null = permutation_null(rng.normal(size=(16, 40)), rng.normal(size=(16, 40)), 0, permutations=50)
    >>> bool(abs(null.mean() - 0.5) < 0.02 and 0.0 < null.std() < 0.05)
    True
  """
  a, b = np.asarray(phi_a, np.float64), np.asarray(phi_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise FamrError("a permutation null needs [models, examples] statistics of the same examples")
  if paired and a.shape != b.shape:
    raise FamrError(f"a paired null needs groups of one shape, got {a.shape} and {b.shape}")
  scorer = scorer or (lambda x, y: attacks.ulira_scores(x, y, fixed_variance=fixed_variance))
  rng = as_generator(seed)
  both = np.concatenate([a, b])
  out = np.empty(permutations)
  for k in range(permutations):
    if paired:
      swap = rng.random(len(a)) < 0.5
      x, y = np.where(swap[:, None], b, a), np.where(swap[:, None], a, b)
    else:
      order = rng.permutation(len(both))
      x, y = both[order[:len(a)]], both[order[len(a):]]
    out[k] = attacks.roc_auc(*scorer(x, y))
  return out


def power(original: AucEvidence | float, null_sd: float | np.ndarray, *, sds: float = POWER_SDS,
          margin: float = DEFAULT_MARGIN, alpha: float = DEFAULT_ALPHA) -> dict:
  """Whether the audit can give verdicts: ``{"original_minus_chance", "null_sd", "powered"}``.

  Powered iff the untouched original is more than ``sds`` null sds from chance (either side) and the
  null is narrow enough that a row at chance passes the equivalence test (``z_{1-alpha} null_sd < margin``).

  Args:
    original: the original row's evidence (or its AUC).
    null_sd: the null's standard deviation, or its draws (:func:`permutation_null`).
    sds: how many null sds from chance the original must be (either side).
    margin: the equivalence margin of :func:`verdict`.
    alpha: the level of :func:`verdict`'s one-sided tests.

  Example:
    >>> power(0.586, 0.008)
    {'original_minus_chance': 0.08599999999999997, 'null_sd': 0.008, 'powered': True}
    >>> power(0.486, 0.008)["powered"], power(0.586, 0.018)["powered"]
    (False, False)
  """
  auc = original.auc if isinstance(original, AucEvidence) else float(original)
  sd = float(np.std(null_sd)) if np.ndim(null_sd) else float(null_sd)
  if not (np.isfinite(sd) and sd > 0):
    raise FamrError(f"the null's standard deviation must be positive and finite, got {sd}")
  diff = auc - CHANCE
  resolves = bool(stats.norm.ppf(1.0 - alpha) * sd < margin)   # a method at chance could pass the TOST
  return {"original_minus_chance": diff, "null_sd": sd, "powered": bool(abs(diff) > sds * sd) and resolves}


def power_message(power_row: Mapping, *, shadows: int, forget_examples: int, paired: bool = False,
                  sds: float = POWER_SDS) -> str:
  """One line: powered, or why not and what would give power.

  Example:
    >>> power_message(power(0.486, 0.018), shadows=4, forget_examples=135)[:12]
    'underpowered'
  """
  diff, sd = float(power_row["original_minus_chance"]), float(power_row["null_sd"])
  if not power_row["powered"] and abs(diff) > sds * sd:   # the original is seen, the margin is not resolved
    return (f"underpowered: the original is {abs(diff) / sd:.1f} null sds from chance, but the null sd "
            f"{sd:.4f} ({shadows} shadows, {forget_examples} forget examples) is too wide to certify "
            f"equivalence within the margin; no method is named. For power: more shadow models per group, "
            f"more farm seeds, a larger forget set" + ("" if paired else ", or a paired design"))
  if power_row["powered"]:
    return (f"powered: the original is {abs(diff) / sd:.1f} null sds from chance "
            f"(AUC {CHANCE + diff:.3f}, null sd {sd:.4f})")
  # The null's sd falls about as 1 / sqrt(models per group): the shadows that would put |diff| at `sds` sds.
  need = math.ceil(shadows * (sds * sd / abs(diff)) ** 2) if abs(diff) > 0 else None
  more = f"about {need} shadow models per group" if need else "many more shadow models per group"
  pairing = "" if paired else "; or a paired design (each retrain sharing its original's init and data order)"
  return (f"underpowered: the untouched original's AUC is {CHANCE + diff:.3f}, {abs(diff) / sd:.1f} null sds "
          f"from chance (needs {sds:g}; null sd {sd:.4f} with {shadows} shadows, {forget_examples} forget "
          f"examples); no method is named. For power: {more} (if the original's difference holds), a larger "
          f"forget set{pairing}")


def verdict(evidence: AucEvidence, *, margin: float = DEFAULT_MARGIN, alpha: float = DEFAULT_ALPHA,
            powered: bool = True) -> str:
  """The row's verdict: equivalence (TOST) on ``AUC - 0.5`` with ``margin``, else a two-sided difference test.

  Example:
    >>> e = lambda lo, hi: AucEvidence(0.5, (lo, hi), np.linspace(lo, hi, 1001), 0.95)
    >>> verdict(e(0.49, 0.51)), verdict(e(0.53, 0.60)), verdict(e(0.40, 0.46)), verdict(e(0.49, 0.56))
    ('equivalent to retraining', 'distinguishable', 'distinguishable', 'inconclusive')
  """
  if not (margin > 0 and 0 < alpha < 0.5):
    raise FamrError(f"margin must be positive and alpha in (0, 0.5), got {margin}, {alpha}")
  if not powered:
    return UNDERPOWERED
  lo90, hi90 = evidence.interval(1.0 - 2.0 * alpha)
  if lo90 - CHANCE > -margin and hi90 - CHANCE < margin:
    return EQUIVALENT
  lo95, hi95 = evidence.interval(1.0 - alpha)
  if lo95 > CHANCE or hi95 < CHANCE:
    return DISTINGUISHABLE
  return INCONCLUSIVE


def pick(verdicts: Mapping[str, str], costs: Mapping[str, float]) -> str | None:
  """The cheapest method whose verdict is ``equivalent to retraining``; None when none is or underpowered.

  Only the methods named in ``costs`` compete (leave the sanity rows out of it).

  Example:
    >>> pick({"ft": EQUIVALENT, "ga": DISTINGUISHABLE, "rl": EQUIVALENT}, {"ft": 2.0, "ga": 0.1, "rl": 1.0})
    'rl'
    >>> pick({"ft": UNDERPOWERED}, {"ft": 1.0}) is None
    True
  """
  if any(v == UNDERPOWERED for v in verdicts.values()):
    return None
  unknown = set(verdicts.values()) - set(VERDICTS)
  if unknown:
    raise FamrError(f"unknown verdicts {sorted(unknown)}; expected one of {VERDICTS}")
  candidates = [(float(costs[name]), name) for name, v in verdicts.items() if v == EQUIVALENT and name in costs]
  return min(candidates)[1] if candidates else None


def _rank_sum_stat(ranks: np.ndarray, labels: np.ndarray, n_a: int, n_b: int) -> np.ndarray:
  """``|U / (n_a n_b) - 1/2|`` ``[P, S]`` for label rows ``[P, n]`` (1: group a) and ranks ``[n, S]``."""
  u = labels @ ranks - n_a * (n_a + 1) / 2.0
  return np.abs(u / (n_a * n_b) - 0.5)


def per_example_pvalues(phi_a: np.ndarray, phi_b: np.ndarray, seed, *, permutations: int = 10000,
                        paired: bool = False) -> np.ndarray:
  """Per forget example, the permutation p-value ``[S]`` that groups ``a`` and ``b`` differ on it.

  Example:
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(16, 3)), rng.normal(size=(16, 3)); a[:, 0] += 5
    >>> p = per_example_pvalues(a, b, 0, permutations=999)
    >>> bool(p[0] == 0.001 and p[1] > 0.01)
    True
  """
  a, b = np.asarray(phi_a, np.float64), np.asarray(phi_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 1:
    raise FamrError("per-example p-values need [models, examples] statistics of the same examples")
  if paired and a.shape != b.shape:
    raise FamrError(f"paired p-values need groups of one shape, got {a.shape} and {b.shape}")
  rng = as_generator(seed)
  na, nb = len(a), len(b)
  ranks = stats.rankdata(np.concatenate([a, b]), axis=0)
  observed = _rank_sum_stat(ranks, np.r_[np.ones(na), np.zeros(nb)][None], na, nb)[0]
  exceed = np.zeros(a.shape[1])
  chunk = max(1, int(4e6 // ((na + nb) * a.shape[1])))
  for start in range(0, permutations, chunk):
    p = min(chunk, permutations - start)
    if paired:
      swap = rng.random((p, na)) < 0.5
      labels = np.concatenate([~swap, swap], axis=1).astype(np.float64)
    else:
      labels = (np.argsort(rng.random((p, na + nb)), axis=1) < na).astype(np.float64)
    exceed += np.sum(_rank_sum_stat(ranks, labels, na, nb) >= observed - 1e-12, axis=0)
  return (1.0 + exceed) / (1.0 + permutations)


def benjamini_hochberg(pvalues: np.ndarray, q: float = 0.05) -> np.ndarray:
  """Benjamini-Hochberg at false-discovery rate ``q``: which hypotheses ``[S]`` are rejected (bool).

  Example:
    >>> benjamini_hochberg(np.array([0.001, 0.02, 0.03, 0.5]), 0.05).tolist()
    [True, True, True, False]
  """
  p = np.asarray(pvalues, np.float64)
  if p.ndim != 1 or np.any((p < 0) | (p > 1)) or not 0 < q < 1:
    raise FamrError("BH needs a [hypotheses] array of p-values in [0, 1] and q in (0, 1)")
  m = p.size
  order = np.argsort(p, kind="stable")
  passed = p[order] <= q * np.arange(1, m + 1) / m
  k = np.nonzero(passed)[0].max() + 1 if passed.any() else 0
  out = np.zeros(m, bool)
  out[order[:k]] = True
  return out


class ExposedExamples(NamedTuple):
  """Forget examples an attacker still identifies: ``count``, ``indices`` (into the forget set), ``pvalues``."""
  count: int
  indices: np.ndarray
  pvalues: np.ndarray


def exposed_examples(phi_unlearned: np.ndarray, phi_retrained: np.ndarray, seed, *, q: float = 0.05,
                     permutations: int = 10000, paired: bool = False) -> ExposedExamples:
  """Per-example permutation p-values, Benjamini-Hochberg at ``q``: which forget examples stay exposed.

  Example:
    >>> rng = np.random.default_rng(0)
    >>> u, r = rng.normal(size=(32, 40)), rng.normal(size=(32, 40)); u[:, :3] += 3
    >>> exposed_examples(u, r, 0, permutations=2000).indices.tolist()
    [0, 1, 2]
  """
  p = per_example_pvalues(phi_unlearned, phi_retrained, seed, permutations=permutations, paired=paired)
  hit = benjamini_hochberg(p, q)
  return ExposedExamples(int(hit.sum()), np.nonzero(hit)[0], p)
