"""End-to-end and unit tests of famr_jax.theory.verification (tiny configuration).

Independent references: scikit-learn's L-BFGS logistic regression for the
ground-truth trainer, ``jax.grad`` of a directly written FAMR objective for the
minimizer's stationarity, and NumPy re-computations of the table's figures
from the raw curves in theory.json.
"""

import dataclasses
import json
import os
import typing

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

from famr_jax.theory import minimize
from famr_jax.theory import problems
from famr_jax.theory import verification as theory
from famr_jax.errors import FamrError
from famr_jax.losses import uniform_kl


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp('theory')
  result = theory.run_theory_verification(theory.quick_theory_config(), str(out),
                                          jax.random.key(0))
  return result, out


def _rows(result, section, forget='samples'):
  return {r['claim']: r for r in result['rows']
          if r['section'] == section and r['forget_set'] == forget}


def test_quick_run_writes_table_json_and_plots(quick_run):
  result, out = quick_run
  for name in ('theory.json', 'theory.md', 'eq9_bound.png', 'tradeoff.png', 'contraction.png'):
    assert os.path.getsize(out / name) > 0, name
  with open(out / 'theory.json', encoding='utf-8') as f:
    loaded = json.load(f)
  assert len(loaded['rows']) == len(result['rows'])
  allowed = {'held', 'FAILED', 'premise fails', 'measured', 'n/a', 'held (estimate)'}
  for row in loaded['rows']:
    assert set(row) >= {'section', 'forget_set', 'claim', 'quantity', 'predicted', 'measured',
                        'status', 'held'}
    assert row['status'] in allowed
    assert row['held'] == {'held': True, 'FAILED': False}.get(row['status'])
  assert {r['section'] for r in loaded['rows']} == {theory.CONVEX, theory.NONCONVEX}
  md = (out / 'theory.md').read_text()
  assert '| claim | quantity checked | predicted | measured | status |' in md
  assert not jax.config.jax_enable_x64  # the run restored the global setting


def test_quick_run_convex_claims(quick_run):
  result, _ = quick_run
  rows = _rows(result, theory.CONVEX)
  for claim in ('ground truth', 'library: CG solve', 'Eq. 9 (corrected, ERRATA 8) [exact]',
                'Eq. 9 rate [exact]', 'Eq. 7 (sign of ERRATA 6): theta_IF ~ w* [exact]',
                'Eq. 10 / Theorem .3', 'Theorem .1 (J strongly convex: linear model, convex KL)',
                'FAMR minimizer found (Eq. 6 stationarity)', 'Proposition .2'):
    assert rows[claim]['status'] == 'held', (claim, rows[claim]['measured'])
  assert rows['Eq. 7 (sign of ERRATA 6): theta_IF ~ w* [exact]']['values']['cosine'] > 0.99
  # Every claim of the issue has a row, held or not.
  for claim in ('Sec. 3.2 "as lambda -> 0, theta* -> w*" (ERRATA 8)', 'Proposition .4 (certificate)',
                'Prop. .2 vs .4 trade-off (ERRATA 9)',
                'predicted vs actual test-loss change [exact]',
                'Eq. 9 as stated: ||theta - w*|| = O(lambda) [exact]'):
    assert claim in rows


def test_eq9_figures_recomputed_from_curves(quick_run):
  result, _ = quick_run
  inf = result['curves'][f'{theory.CONVEX}/samples']['influence']
  lams = np.asarray(inf['lambdas'])
  lam_min = inf['lambda_min']
  g_norm = _rows(result, theory.CONVEX)['Eq. 9 (corrected, ERRATA 8) [exact]']['values']['g_norm']
  bound = lams * g_norm / (lam_min * (lam_min + lams))
  np.testing.assert_allclose(inf['eq9_bound'], bound, rtol=1e-12)
  assert np.all(np.asarray(inf['dist_to_theta_if']) <= bound * (1 + 1e-9))
  small = lams <= 0.01 * lam_min
  slope = np.polyfit(np.log(lams[small]), np.log(np.asarray(inf['dist_to_theta_if'])[small]), 1)[0]
  assert abs(slope - 1) < 0.05
  # The damped step converges to theta_IF, hence to the Newton error, not to w*.
  np.testing.assert_allclose(inf['damped_dist_to_w_star'][0], inf['newton_error'], rtol=1e-2)


# The two tests below use the shapes and loss objects of the quick run, so its
# compiled programs are reused (the fixture has run by then).
_N, _D, _C, _BATCH = 240, 64, 10, 256


def test_ground_truth_trainer_matches_sklearn(quick_run):
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(_N, _D)) * (rng.uniform(size=_D) < 0.7)
  y = rng.integers(0, _C, size=_N)
  mu = 1.0
  with jax.enable_x64(True):
    loss = problems.weighted_ce_for(problems.logistic_apply)
    zeros = {'w': jnp.zeros((_D, _C)), 'b': jnp.zeros((_C,))}
    data = (jnp.asarray(x), jnp.asarray(y, jnp.int32), jnp.ones(_N))
    obj = minimize.Objective(loss, data, mu, zeros, _BATCH)
    params, info = minimize.newton_minimize(obj, zeros, grad_tol=1e-10)
  assert info.grad_norm <= 1e-10
  # sklearn: C * sum CE + 1/2 ||W||^2; a constant column makes the bias penalized like ours.
  xa = np.hstack([x, np.ones((_N, 1))])
  ref = LogisticRegression(C=1 / mu, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(xa, y)
  ours = np.vstack([np.asarray(params['w']), np.asarray(params['b'])[None]]).T  # [C, d+1]
  np.testing.assert_allclose(ours, ref.coef_, rtol=1e-4, atol=1e-5)


def test_famr_minimizer_is_stationary_for_the_written_objective(quick_run):
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    x_t = jnp.asarray(rng.uniform(size=(12, _D)))
    theta0 = {'w': jnp.asarray(rng.normal(size=(_D, _C))), 'b': jnp.asarray(rng.normal(size=_C))}
    lam = 0.3
    obj = minimize.Objective(problems.kl_loss_for(problems.logistic_apply), x_t, lam, theta0, _BATCH)
    theta, _ = minimize.newton_minimize(obj, theta0, grad_tol=1e-11)

    def famr_j(p):  # Eq. 1 with Eq. 2, written out directly
      logits = x_t @ p['w'] + p['b']
      sq = sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(theta0)))
      return jnp.sum(uniform_kl(logits)) + 0.5 * lam * sq

    grad = ravel_pytree(jax.jit(jax.grad(famr_j))(theta))[0]
    assert float(jnp.linalg.norm(grad)) <= 1e-10
    famr_j = jax.jit(famr_j)
    assert float(famr_j(theta)) < float(famr_j(theta0))


def test_config_is_cli_friendly_and_validated():
  hints = typing.get_type_hints(theory.TheoryConfig)
  for f in dataclasses.fields(theory.TheoryConfig):
    tp = hints[f.name]
    origin = typing.get_origin(tp)
    assert tp in (int, float, str) or origin in (tuple, typing.Literal), (f.name, tp)
  cfg = theory.TheoryConfig()
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.seed = 1  # type: ignore[misc]
  assert cfg.validate() is cfg
  bad = [dict(lambdas=(1.0, 0.1)), dict(lambdas=(0.0, 1.0)), dict(lambdas=(1.0,)),
         dict(forget_sets=('styles',)), dict(forget_sets=()), dict(convex_weight_decay=0.0),
         dict(nonconvex_model='lenet'), dict(batch_size=0), dict(mlp_activation='gelu'),
         dict(nonconvex_contraction_lambda=-1.0)]
  for kwargs in bad:
    with pytest.raises(FamrError):
      theory.run_theory_verification(dataclasses.replace(cfg, **kwargs))


def test_format_table_both_formats():
  rows = [dict(section='convex', forget_set='samples', claim='Eq. 9', quantity='a | b',
               predicted='p', measured='m', status='held'),
          dict(section='convex', forget_set='samples', claim='Thm', quantity='q',
               predicted='p', measured='m', status='FAILED')]
  md = theory.format_theory_table({'rows': rows}, 'markdown')
  assert '| Eq. 9 | a \\| b | p | m | **held** |' in md
  assert md.strip().endswith('status counts: FAILED: 1, held: 1')
  text = theory.format_theory_table({'rows': rows}, 'text')
  assert '[FAILED] Thm' in text
  with pytest.raises(FamrError):
    theory.format_theory_table({'rows': rows}, 'html')
