"""Tests of famr_jax.theory.curvature against independent references.

References: ``jax.hessian`` / ``jax.jacobian`` on a flattened parameter vector
(not the HVP code path), central finite differences of the gradient,
``numpy.linalg.eigh`` and ``numpy.linalg.solve``. float64 is enabled per test
by the ``x64`` fixture and restored afterwards.
"""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

from famr_jax.theory import curvature
from famr_jax.errors import FamrError


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _mlp_apply(params, x):
  h = jnp.tanh(x @ params['w1'] + params['b1'])
  return h @ params['w2'] + params['b2']


def _problem(seed=0, n=23, d=4, hidden=5, classes=3):
  rng = np.random.default_rng(seed)
  params = {
      'w1': jnp.asarray(rng.normal(size=(d, hidden))),
      'b1': jnp.asarray(rng.normal(size=(hidden,)) * 0.1),
      'w2': jnp.asarray(rng.normal(size=(hidden, classes))),
      'b2': jnp.asarray(rng.normal(size=(classes,)) * 0.1),
  }
  x = jnp.asarray(rng.normal(size=(n, d)))
  y = jnp.asarray(rng.integers(0, classes, size=n), dtype=jnp.int32)
  return params, x, y


def _example_loss(params, batch):
  x, y = batch
  log_p = jax.nn.log_softmax(_mlp_apply(params, x), axis=-1)
  return -jnp.take_along_axis(log_p, y[:, None], axis=-1)[:, 0]


@jax.jit
def _reference_hessian_jit(params, x, y):
  flat, unravel = ravel_pytree(params)
  return jax.hessian(lambda f: jnp.sum(_example_loss(unravel(f), (x, y))))(flat)


def _flat_reference_hessian(params, x, y):
  """Dense Hessian by jax.hessian (reverse-over-forward on a flat vector)."""
  return np.asarray(_reference_hessian_jit(params, x, y))


def test_hvp_matches_dense_reference_hessian(x64):
  params, x, y = _problem()
  h_ref = _flat_reference_hessian(params, x, y)
  flat, unravel = ravel_pytree(params)
  v = np.random.default_rng(1).normal(size=flat.size)
  loss = lambda p: jnp.sum(_example_loss(p, (x, y)))
  hv = ravel_pytree(curvature.hvp(loss, params, unravel(jnp.asarray(v))))[0]
  expected = h_ref @ v
  assert np.linalg.norm(hv - expected) / np.linalg.norm(expected) <= 1e-10


def test_hvp_matches_finite_differences_of_gradient(x64):
  params, x, y = _problem(seed=2)
  flat, unravel = ravel_pytree(params)
  loss = lambda p: jnp.sum(_example_loss(p, (x, y)))
  v = np.random.default_rng(3).normal(size=flat.size)
  grad_flat = lambda f: np.asarray(ravel_pytree(jax.grad(loss)(unravel(jnp.asarray(f))))[0])
  eps = 1e-5
  fd = (grad_flat(flat + eps * v) - grad_flat(flat - eps * v)) / (2 * eps)
  hv = ravel_pytree(curvature.hvp(loss, params, unravel(jnp.asarray(v))))[0]
  assert np.linalg.norm(hv - fd) / np.linalg.norm(fd) <= 1e-7


def test_dataset_sums_match_full_batch_with_padding(x64):
  params, x, y = _problem(n=23)
  flat, unravel = ravel_pytree(params)
  full = lambda p: jnp.sum(_example_loss(p, (x, y)))
  v = unravel(jnp.asarray(np.random.default_rng(4).normal(size=flat.size)))
  # batch 7 -> 4 batches, the last padded with 5 repeated rows that must not count
  loss = curvature.dataset_loss(_example_loss, params, (x, y), batch_size=7)
  np.testing.assert_allclose(float(loss), float(full(params)), rtol=1e-12)
  g = ravel_pytree(curvature.dataset_grad(_example_loss, params, (x, y), batch_size=7))[0]
  np.testing.assert_allclose(g, ravel_pytree(jax.grad(full)(params))[0], rtol=1e-10, atol=1e-12)
  hv = ravel_pytree(curvature.dataset_hvp(_example_loss, params, v, (x, y), batch_size=7))[0]
  expected = _flat_reference_hessian(params, x, y) @ ravel_pytree(v)[0]
  assert np.linalg.norm(hv - expected) / np.linalg.norm(expected) <= 1e-10


def test_dense_hessian_matches_jax_hessian(x64):
  params, x, y = _problem(seed=5)
  h_ref = _flat_reference_hessian(params, x, y)
  h = curvature.dense_hessian(lambda p: jnp.sum(_example_loss(p, (x, y))), params, chunk_size=8)
  assert h.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(h), h_ref, rtol=1e-10, atol=1e-12)
  op = curvature.dataset_hvp_operator(_example_loss, params, (x, y), batch_size=6,
                                      weight_decay=0.3)
  h_op = curvature.dense_operator(op, params)
  np.testing.assert_allclose(np.asarray(h_op), h_ref + 0.3 * np.eye(len(h_ref)),
                             rtol=1e-10, atol=1e-12)


def test_gauss_newton_matches_explicit_jacobian_product(x64):
  params, x, y = _problem(seed=6, n=9)
  flat, unravel = ravel_pytree(params)
  jac = np.asarray(jax.jit(jax.jacobian(lambda f: _mlp_apply(unravel(f), x)))(flat))  # [B, C, P]
  p = np.asarray(jax.nn.softmax(_mlp_apply(params, x), axis=-1))
  h_out = np.stack([np.diag(pi) - np.outer(pi, pi) for pi in p])  # [B, C, C]
  gn = np.einsum('bcp,bcd,bdq->pq', jac, h_out, jac)
  v = np.random.default_rng(7).normal(size=flat.size)
  out = ravel_pytree(curvature.gauss_newton_hvp(_mlp_apply, params, x, unravel(jnp.asarray(v))))[0]
  np.testing.assert_allclose(out, gn @ v, rtol=1e-10, atol=1e-12)
  out_ds = ravel_pytree(curvature.dataset_gauss_newton_hvp(
      _mlp_apply, params, unravel(jnp.asarray(v)), x, batch_size=4))[0]
  np.testing.assert_allclose(out_ds, gn @ v, rtol=1e-10, atol=1e-12)
  # A general output loss: 0.5 ||z||^2 has H_out = I, so the product is J^T J v.
  sq = curvature.output_hvp_from_loss(lambda z: 0.5 * jnp.sum(z ** 2, axis=-1))
  out_sq = ravel_pytree(curvature.gauss_newton_hvp(_mlp_apply, params, x,
                                                   unravel(jnp.asarray(v)), sq))[0]
  np.testing.assert_allclose(out_sq, np.einsum('bcp,bcq->pq', jac, jac) @ v, rtol=1e-10)
  # PSD: the dense GN matrix has no negative eigenvalues (up to rounding).
  assert np.linalg.eigvalsh(gn).min() > -1e-10


def test_lanczos_full_krylov_matches_eigh(x64):
  params, x, y = _problem(seed=8)
  h_ref = _flat_reference_hessian(params, x, y)
  evals = np.linalg.eigvalsh(h_ref)
  assert evals[0] < 0 < evals[-1]  # an indefinite Hessian: both ends matter
  op = curvature.dataset_hvp_operator(_example_loss, params, (x, y))
  res = curvature.lanczos_extreme_eigenvalues(op, params, jax.random.key(0), num_iters=1000)
  assert res.num_iters == len(evals)  # capped at P
  np.testing.assert_allclose(float(res.lambda_min), evals[0], rtol=1e-7, atol=1e-9)
  np.testing.assert_allclose(float(res.lambda_max), evals[-1], rtol=1e-9)


def test_lanczos_few_iterations_finds_separated_extremes(x64):
  rng = np.random.default_rng(9)
  spectrum = np.concatenate([[-3.0], rng.uniform(1.0, 2.0, size=298), [40.0]])
  q, _ = np.linalg.qr(rng.normal(size=(300, 300)))
  a = jnp.asarray((q * spectrum) @ q.T)
  res = curvature.lanczos_extreme_eigenvalues(lambda v: a @ v, jnp.zeros(300),
                                              jax.random.key(1), num_iters=30)
  assert res.num_iters == 30
  np.testing.assert_allclose(float(res.lambda_min), -3.0, rtol=1e-8)
  np.testing.assert_allclose(float(res.lambda_max), 40.0, rtol=1e-8)


def test_cg_matches_numpy_solve(x64):
  rng = np.random.default_rng(10)
  q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
  a = (q * np.logspace(0, 3, 40)) @ q.T
  b = rng.normal(size=40)
  x, info = curvature.cg_solve(lambda v: jnp.asarray(a) @ v, jnp.asarray(b), tol=1e-12)
  expected = np.linalg.solve(a, b)
  assert np.linalg.norm(x - expected) / np.linalg.norm(expected) <= 1e-8
  assert bool(info.converged) and not bool(info.negative_curvature)
  assert float(info.residual_norm) <= 1e-9 * np.linalg.norm(b)
  # damped Hessian of a real model, on a params pytree
  params, xs, ys = _problem(seed=11)
  h_ref = _flat_reference_hessian(params, xs, ys)
  lam = abs(np.linalg.eigvalsh(h_ref)[0]) + 0.5  # makes H + lam I positive definite
  flat, unravel = ravel_pytree(params)
  rhs = rng.normal(size=flat.size)
  op = curvature.dataset_hvp_operator(_example_loss, params, (xs, ys))
  sol, _ = curvature.cg_solve(op, unravel(jnp.asarray(rhs)), damping=lam, tol=1e-12)
  expected = np.linalg.solve(h_ref + lam * np.eye(flat.size), rhs)
  got = ravel_pytree(sol)[0]
  assert np.linalg.norm(got - expected) / np.linalg.norm(expected) <= 1e-8
  # dense solve agrees too
  dense = ravel_pytree(curvature.dense_solve(jnp.asarray(h_ref), unravel(jnp.asarray(rhs)),
                                             damping=lam))[0]
  assert np.linalg.norm(dense - expected) / np.linalg.norm(expected) <= 1e-10


def test_cg_reports_instead_of_returning_garbage(x64):
  indefinite = jnp.array([1.0, -1.0, 2.0])
  b = jnp.ones(3)
  _, info = curvature.conjugate_gradient(lambda v: indefinite * v, b)
  assert bool(info.negative_curvature) and not bool(info.converged)
  with pytest.raises(FamrError, match='non-positive curvature'):
    curvature.cg_solve(lambda v: indefinite * v, b)
  singular = jnp.array([1.0, 1.0, 0.0])
  with pytest.raises(FamrError, match='not positive definite'):
    curvature.cg_solve(lambda v: singular * v, jnp.array([0.0, 0.0, 1.0]))
  with pytest.raises(FamrError, match='did not converge'):
    curvature.cg_solve(lambda v: jnp.arange(1.0, 11.0) * v, jnp.ones(10), maxiter=2)
  with pytest.raises(FamrError, match='damping'):
    curvature.cg_solve(lambda v: v, b, damping=-1.0)
  with pytest.raises(FamrError, match='not positive definite'):
    curvature.dense_solve(jnp.diag(indefinite), b)
  with pytest.raises(FamrError, match='damping'):
    curvature.dense_solve(jnp.eye(3), b, damping=-0.1)
  with pytest.raises(FamrError, match='damping'):
    curvature.dense_solve(jnp.eye(3), b, damping=float('nan'))


def test_dense_refuses_large_models_with_size():
  big = {'w': jnp.zeros((200, 150)), 'b': jnp.zeros((150,))}  # 30150 params, float32
  with pytest.raises(FamrError) as err:
    curvature.dense_hessian(lambda p: jnp.sum(p['w'] ** 2), big)
  message = str(err.value)
  assert f'{30150 * 30150 * 4:,} bytes' in message and '3.39 GiB' in message
  assert '\n' not in message
  with pytest.raises(FamrError, match='max_params=10'):
    curvature.dense_operator(lambda v: v, jnp.zeros(11), max_params=10)


def test_bad_data_is_a_one_line_error():
  params = {'a': jnp.ones(())}
  with pytest.raises(FamrError, match='one loss per example'):
    curvature.dataset_loss(lambda p, b: jnp.sum(b), params, jnp.ones(5))
  with pytest.raises(FamrError, match='empty'):
    curvature.dataset_loss(lambda p, b: b, params, jnp.ones((0,)))
  with pytest.raises(FamrError, match='same leading'):
    curvature.dataset_loss(lambda p, b: b[0], params, (jnp.ones(3), jnp.ones(4)))
  with pytest.raises(FamrError, match='num_iters'):
    curvature.lanczos_extreme_eigenvalues(lambda v: v, jnp.zeros(3), jax.random.key(0),
                                          num_iters=0)


def test_deterministic(x64):
  params, x, y = _problem(seed=12)
  op = curvature.dataset_hvp_operator(_example_loss, params, (x, y), weight_decay=2.0)
  r1 = curvature.lanczos_extreme_eigenvalues(op, params, jax.random.key(3), num_iters=1000)
  r2 = curvature.lanczos_extreme_eigenvalues(op, params, jax.random.key(3), num_iters=1000)
  np.testing.assert_array_equal(np.asarray(r1.ritz_values), np.asarray(r2.ritz_values))
  rhs = jax.tree.map(jnp.ones_like, params)
  s1, _ = curvature.cg_solve(op, rhs, damping=50.0)
  s2, _ = curvature.cg_solve(op, rhs, damping=50.0)
  np.testing.assert_array_equal(ravel_pytree(s1)[0], ravel_pytree(s2)[0])
