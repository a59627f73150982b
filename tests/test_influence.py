"""Tests of famr_jax.theory.influence against closed-form NumPy references.

On ridge regression (a quadratic loss) one Newton step is exact, so the
influence estimate must equal the weights retrained on D \\ T, which NumPy
computes independently by a linear solve.
"""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

from famr_jax.theory import curvature
from famr_jax.theory import influence
from famr_jax.errors import FamrError

MU = 0.7  # weight decay of the training objective


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _ridge_loss(params, batch):
  x, y = batch
  return 0.5 * (x @ params['w'] + params['b'] - y) ** 2


def _ridge_solution(x, y, mu):
  """argmin sum_i 0.5 (x_i w + b - y_i)^2 + mu/2 (|w|^2 + b^2), by NumPy."""
  xa = np.hstack([x, np.ones((len(x), 1))])
  theta = np.linalg.solve(xa.T @ xa + mu * np.eye(xa.shape[1]), xa.T @ y)
  return theta  # [w..., b], the ravel_pytree order of {'b', 'w'} is b first: see _flat


def _flat(theta):
  return np.concatenate([theta[-1:], theta[:-1]])  # {'b': (), 'w': (d,)} ravels b then w


def _data(seed=0, n=60, d=5, n_forget=9):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  y = x @ rng.normal(size=d) + 0.3 * rng.normal(size=n)
  return x, y, np.arange(n) < n - n_forget


def test_influence_is_exact_on_a_quadratic_loss(x64):
  x, y, keep = _data()
  theta0 = _ridge_solution(x, y, MU)
  w_star = _flat(_ridge_solution(x[keep], y[keep], MU))
  params = {'w': jnp.asarray(theta0[:-1]), 'b': jnp.asarray(theta0[-1])}
  retain = (jnp.asarray(x[keep]), jnp.asarray(y[keep]))
  forget = (jnp.asarray(x[~keep]), jnp.asarray(y[~keep]))
  for method in ('cg', 'dense'):
    est = influence.estimate_retrained_params(_ridge_loss, params, retain, forget,
                                              weight_decay=MU, method=method, batch_size=16)
    got = np.asarray(ravel_pytree(est.params)[0])
    assert np.linalg.norm(got - w_star) <= 1e-8 * np.linalg.norm(w_star), method
  assert est.cg_info is None


def test_forget_gradient_and_damped_estimate_match_numpy(x64):
  x, y, keep = _data(seed=1)
  theta0 = _ridge_solution(x, y, MU)
  params = {'w': jnp.asarray(theta0[:-1]), 'b': jnp.asarray(theta0[-1])}
  xa = np.hstack([x, np.ones((len(x), 1))])
  resid = xa @ theta0 - y
  g_ref = _flat((xa[~keep] * resid[~keep, None]).sum(0))
  g = influence.forget_gradient(_ridge_loss, params, (jnp.asarray(x[~keep]), jnp.asarray(y[~keep])),
                                batch_size=4)
  np.testing.assert_allclose(ravel_pytree(g)[0], g_ref, rtol=1e-12)
  perm = np.r_[xa.shape[1] - 1, 0:xa.shape[1] - 1]  # to ravel order (b first)
  h_r = (xa[keep].T @ xa[keep] + MU * np.eye(xa.shape[1]))[np.ix_(perm, perm)]
  op = curvature.dataset_hvp_operator(_ridge_loss, params,
                                      (jnp.asarray(x[keep]), jnp.asarray(y[keep])),
                                      weight_decay=MU)
  for lam in (1e-3, 1.0, 100.0):
    expected = _flat(theta0) + np.linalg.solve(h_r + lam * np.eye(len(h_r)), g_ref)
    cg = influence.damped_influence_estimate(params, g, op, lam)
    dense = influence.damped_influence_estimate_dense(params, g, jnp.asarray(h_r), lam)
    np.testing.assert_allclose(ravel_pytree(cg.params)[0], expected, rtol=1e-9)
    np.testing.assert_allclose(ravel_pytree(dense.params)[0], expected, rtol=1e-11)
    assert bool(cg.cg_info.converged)


def test_eq9_bound_on_random_spd_problem(x64):
  rng = np.random.default_rng(2)
  p = 30
  q, _ = np.linalg.qr(rng.normal(size=(p, p)))
  evals = np.logspace(-1, 2, p)
  h = (q * evals) @ q.T
  theta0 = rng.normal(size=p)
  g = rng.normal(size=p)
  lam_min = np.linalg.eigvalsh(h)[0]
  theta_if = theta0 + np.linalg.solve(h, g)
  for lam in np.logspace(-6, 2, 9):
    est = influence.damped_influence_estimate_dense(jnp.asarray(theta0), jnp.asarray(g),
                                                    jnp.asarray(h), lam)
    dist = np.linalg.norm(np.asarray(est.params) - theta_if)
    bound = lam * np.linalg.norm(g) / (lam_min * (lam_min + lam))
    assert dist <= bound * (1 + 1e-9), lam
  # The bound is attained when g lies along the lowest eigenvector.
  g_low = q[:, 0] * 3.0
  lam = 0.5
  est = influence.damped_influence_estimate_dense(jnp.zeros(p), jnp.asarray(g_low), jnp.asarray(h), lam)
  dist = np.linalg.norm(np.asarray(est.params) - np.linalg.solve(h, g_low))
  np.testing.assert_allclose(dist, lam * 3.0 / (lam_min * (lam_min + lam)), rtol=1e-9)


def test_predicted_loss_change_is_the_first_order_term(x64):
  x, y, _ = _data(seed=3, n=13)
  rng = np.random.default_rng(4)
  theta = rng.normal(size=x.shape[1] + 1)
  delta = rng.normal(size=x.shape[1] + 1)
  params = {'w': jnp.asarray(theta[:-1]), 'b': jnp.asarray(theta[-1])}
  dparams = {'w': jnp.asarray(delta[:-1]), 'b': jnp.asarray(delta[-1])}
  points = (jnp.asarray(x), jnp.asarray(y))
  xa = np.hstack([x, np.ones((len(x), 1))])
  # d/dt 0.5 (xa (theta + t delta) - y)^2 at t = 0
  expected = (xa @ theta - y) * (xa @ delta)
  pred = influence.predicted_loss_change(_ridge_loss, params, dparams, points, batch_size=5)
  np.testing.assert_allclose(np.asarray(pred), expected, rtol=1e-12)
  new = jax.tree.map(jnp.add, params, dparams)
  actual = influence.actual_loss_change(_ridge_loss, params, new, points, batch_size=5)
  np.testing.assert_allclose(np.asarray(actual), expected + 0.5 * (xa @ delta) ** 2, rtol=1e-10)


def test_bad_inputs_raise_one_line_errors(x64):
  params = jnp.zeros(3)
  g = jnp.ones(3)
  for lam in (0.0, -1.0, float('nan'), float('inf'), 'big'):
    with pytest.raises(FamrError, match='lambda'):
      influence.damped_influence_estimate(params, g, lambda v: v, lam)
    with pytest.raises(FamrError, match='lambda'):
      influence.damped_influence_estimate_dense(params, g, jnp.eye(3), lam)
  indefinite = jnp.array([2.0, -1.0, 1.0])
  with pytest.raises(FamrError, match='not positive definite'):
    influence.influence_estimate(params, g, lambda v: indefinite * v)
  with pytest.raises(FamrError, match='not positive definite'):
    influence.influence_estimate_dense(params, g, jnp.diag(indefinite))
  with pytest.raises(FamrError, match="method"):
    influence.estimate_retrained_params(lambda p, b: b * p[0], params, jnp.ones(2), jnp.ones(1),
                                        method='newton')
