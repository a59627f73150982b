"""Objectives against independent NumPy references and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famr_jax import losses


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_softmax(z):
  return np.exp(np_log_softmax(z))


RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(7, 5)) * 3


def test_uniform_kl_matches_numpy_definition():
  p = np_softmax(LOGITS)
  u = np.full_like(p, 1 / p.shape[1])
  expected = np.sum(u * (np.log(u) - np.log(p)), axis=1)
  np.testing.assert_allclose(losses.uniform_kl(jnp.asarray(LOGITS, jnp.float32)), expected, rtol=1e-5, atol=1e-6)


def test_uniform_kl_is_zero_at_uniform_and_finite_at_extreme_logits():
  assert abs(float(losses.uniform_kl(jnp.full((1, 10), 3.0))[0])) < 1e-6
  extreme = jnp.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]])
  values = losses.uniform_kl(extreme)
  grads = jax.grad(lambda z: losses.uniform_kl(z).sum())(extreme)
  assert bool(jnp.all(jnp.isfinite(values))) and bool(jnp.all(jnp.isfinite(grads)))
  # Hand value for [1e4, -1e4, 0]: log p = [0, -2e4, -1e4] -> KL = -log 3 + 1e4.
  np.testing.assert_allclose(float(values[0]), -np.log(3) + 1e4, rtol=1e-6)
  assert abs(float(values[1])) < 1e-4   # all equal -> uniform


def test_kl_entropy_cross_entropy_match_numpy():
  other = RNG.normal(size=LOGITS.shape)
  p, q = np_softmax(LOGITS), np_softmax(other)
  np.testing.assert_allclose(losses.kl_divergence(jnp.asarray(LOGITS), jnp.asarray(other)),
                             np.sum(p * np.log(p / q), 1), rtol=1e-4)
  np.testing.assert_allclose(losses.entropy(jnp.asarray(LOGITS)), -np.sum(p * np.log(p), 1), rtol=1e-4)
  labels = RNG.integers(0, 5, size=7)
  np.testing.assert_allclose(losses.cross_entropy(jnp.asarray(LOGITS), jnp.asarray(labels)),
                             -np.log(p[np.arange(7), labels]), rtol=1e-4)


def test_gram_matrix_and_style_loss_match_loops():
  feats = RNG.normal(size=(2, 3, 4, 5)).astype(np.float32)
  expected = np.zeros((2, 5, 5))
  for b in range(2):
    for k in range(5):
      for l in range(5):
        expected[b, k, l] = np.sum(feats[b, :, :, k] * feats[b, :, :, l]) / 12.0
  np.testing.assert_allclose(losses.gram_matrix(jnp.asarray(feats)), expected, rtol=1e-5)
  target = RNG.normal(size=(5, 5))
  np.testing.assert_allclose(losses.style_loss(jnp.asarray(feats), jnp.asarray(target)),
                             ((expected - target) ** 2).sum((1, 2)), rtol=1e-4)


def test_mean_gram_is_the_average_over_batches():
  feats = RNG.normal(size=(5, 2, 2, 3)).astype(np.float32)
  per = np.einsum("bmk,bml->bkl", feats.reshape(5, 4, 3), feats.reshape(5, 4, 3)) / 4
  np.testing.assert_allclose(losses.mean_gram(lambda p, x: x, None, jnp.asarray(feats), batch_size=2),
                             per.mean(0), rtol=1e-5)


def test_l2_anchor_with_and_without_mask():
  p = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array([[3.0]])}}
  p0 = {"a": jnp.array([0.0, 0.0]), "b": {"c": jnp.array([[1.0]])}}
  assert float(losses.l2_anchor(p, p0, 0.5)) == pytest.approx(0.25 * (1 + 4 + 4))
  mask = {"a": False, "b": {"c": True}}
  assert float(losses.l2_anchor(p, p0, 0.5, mask)) == pytest.approx(0.25 * 4)


def _linear_apply(params, x):
  return x @ params["w"] + params["b"]


def test_forget_loss_and_famr_objective_match_numpy():
  x = RNG.normal(size=(6, 4)).astype(np.float32)
  params = {"w": RNG.normal(size=(4, 3)).astype(np.float32), "b": RNG.normal(size=3).astype(np.float32)}
  params0 = {"w": np.zeros((4, 3), np.float32), "b": np.ones(3, np.float32)}
  logits = x @ params["w"] + params["b"]
  kl = -np.log(3) - np_log_softmax(logits).mean(1)
  feats = x.reshape(6, 2, 2)   # [B, M=2, K=2]
  grams = np.einsum("bmk,bml->bkl", feats, feats) / 2
  target = np.eye(2)
  style = ((grams - target) ** 2).sum((1, 2))
  alpha, beta, lam = 0.7, 0.3, 0.2
  weights = np.array([1, 1, 1, 1, 0, 0], np.float32)
  expected_mean = np.sum(weights * (alpha * kl + beta * style)) / 4
  got = losses.forget_loss(_linear_apply, params, jnp.asarray(x), alpha=alpha, beta=beta,
                               feature_fn=lambda p, x: x.reshape(-1, 2, 2), target_gram=jnp.asarray(target),
                               weights=jnp.asarray(weights))
  np.testing.assert_allclose(float(got), expected_mean, rtol=1e-5)
  got_sum = losses.forget_loss(_linear_apply, params, jnp.asarray(x), reduction="sum")
  np.testing.assert_allclose(float(got_sum), kl.sum(), rtol=1e-5)
  anchor = lam / 2 * (np.sum(params["w"] ** 2) + np.sum((params["b"] - 1) ** 2))
  j = losses.famr_objective(_linear_apply, params, params0, jnp.asarray(x), lam=lam)
  np.testing.assert_allclose(float(j), kl.mean() + anchor, rtol=1e-5)


def test_famr_objective_gradient_matches_finite_differences_and_closed_form():
  with jax.enable_x64(True):
    x = jnp.asarray(RNG.normal(size=(5, 4)))
    params = {"w": jnp.asarray(RNG.normal(size=(4, 3))), "b": jnp.asarray(RNG.normal(size=3))}
    params0 = jax.tree.map(lambda a: a + 0.3, params)
    lam = 0.4
    f = lambda p: losses.famr_objective(_linear_apply, p, params0, x, lam=lam, alpha=1.0)
    grads = jax.grad(f)(params)
    # Closed form: d KL(u||softmax z)/dz = softmax(z) - u, averaged over the batch.
    p = np_softmax(np.asarray(_linear_apply(params, x)))
    dz = (p - 1 / 3) / 5
    np.testing.assert_allclose(grads["w"], np.asarray(x).T @ dz + lam * (params["w"] - params0["w"]), rtol=1e-10)
    np.testing.assert_allclose(grads["b"], dz.sum(0) + lam * (params["b"] - params0["b"]), rtol=1e-10)
    # Central finite differences along a random direction.
    v = jax.tree.map(lambda a: jnp.asarray(RNG.normal(size=a.shape)), params)
    eps = 1e-6
    plus = f(jax.tree.map(lambda a, d: a + eps * d, params, v))
    minus = f(jax.tree.map(lambda a, d: a - eps * d, params, v))
    directional = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(v)))
    np.testing.assert_allclose(float((plus - minus) / (2 * eps)), float(directional), rtol=1e-7)


def test_style_term_gradient_matches_finite_differences():
  with jax.enable_x64(True):
    x = jnp.asarray(RNG.normal(size=(3, 2, 2, 2)))
    params = {"w": jnp.asarray(RNG.normal(size=(2, 3)))}
    feature_fn = lambda p, x: jnp.tanh(x @ p["w"])           # [B, 2, 2, 3] features
    target = jnp.asarray(RNG.normal(size=(3, 3)))
    apply_fn = lambda p, x: feature_fn(p, x).mean((1, 2))
    f = lambda p: losses.forget_loss(apply_fn, p, x, alpha=0.5, beta=2.0, feature_fn=feature_fn,
                                         target_gram=target)
    g = jax.grad(f)(params)["w"]
    num = np.zeros((2, 3))
    for i in range(2):
      for j in range(3):
        e = np.zeros((2, 3)); e[i, j] = 1e-6
        num[i, j] = (f({"w": params["w"] + e}) - f({"w": params["w"] - e})) / 2e-6
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-9)
