"""SCRUB and SSD against NumPy re-derivations on a linear softmax model; bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famr_jax.errors import FamrError
from famr_jax.losses import distill_kl
from famr_jax.methods.scrub import SCRUBConfig, scrub_max_loss, scrub_min_loss, scrub_unlearn
from famr_jax.methods.ssd import SSDConfig, dampening_factors, ssd_unlearn


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _linear(p, x):
  return x @ p


# ----------------------------------------------------------------------------- SSD


def test_dampening_factors_match_the_papers_rule_elementwise():
  rng = np.random.default_rng(0)
  full = rng.exponential(size=50)
  forget = full * rng.choice([0.5, 5.0, 20.0, 200.0], size=50)
  forget[:3] = 0.0
  full[3] = 0.0                        # zero training importance, positive forget importance
  alpha, lam = 10.0, 2.0
  want = np.ones(50)
  for i in range(50):                  # Foster et al., Eq. (3) / Algorithm 1
    if forget[i] > alpha * full[i]:
      want[i] = min(lam * full[i] / forget[i], 1.0)
  got = np.asarray(dampening_factors(jnp.asarray(full, jnp.float32), jnp.asarray(forget, jnp.float32), alpha, lam))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got[3] == 0.0 and np.all(got[:3] == 1.0)


def _np_fisher(w, x, y):
  """Diagonal empirical Fisher of the linear softmax model: mean of (x (p - onehot))^2 per example."""
  p = _softmax(x @ w)
  p[np.arange(len(y)), y] -= 1.0
  return np.mean(np.einsum("ni,nj->nij", x, p) ** 2, axis=0)


def test_ssd_matches_a_numpy_rederivation():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(6, 4))
  x = rng.normal(size=(40, 6)).astype(np.float32)
  y = rng.integers(0, 4, 40).astype(np.int32)
  x[:5] *= 4.0                           # the forget set: large inputs, so its importance stands out
  alpha, lam = 3.0, 1.0

  def rule(full, forget):
    return np.where(forget > alpha * full, np.minimum(lam * full / np.maximum(forget, 1e-30), 1.0), 1.0)

  # Per-example importances (the diagonal empirical Fisher).
  beta = rule(_np_fisher(w, x, y), _np_fisher(w, x[:5], y[:5]))
  assert 0 < np.mean(beta < 1) < 1      # some, not all, weights are dampened
  cfg = SSDConfig(selection_weight=alpha, dampening=lam, importance="fisher")
  r = ssd_unlearn(_linear, jnp.asarray(w, jnp.float32), x[:5], y[:5], cfg, jax.random.key(0), train_data=(x, y))
  np.testing.assert_allclose(np.asarray(r.params), beta * w, rtol=2e-4, atol=1e-7)
  # A given importance (a stored Fisher) is used instead of the training data.
  r2 = ssd_unlearn(_linear, jnp.asarray(w, jnp.float32), x[:5], y[:5], cfg, jax.random.key(0),
                   importance_full=jnp.asarray(_np_fisher(w, x, y), jnp.float32))
  np.testing.assert_allclose(np.asarray(r2.params), beta * w, rtol=2e-4, atol=1e-7)

  # Minibatch importances (the authors' code): squared minibatch-mean gradients, averaged over
  # the minibatches of jax.random.permutation(fold_in(key, 0 | 1)); the last batch is short.
  def np_minibatch(xs, ys, key, bs):
    order = np.asarray(jax.random.permutation(key, len(ys)))
    total = 0.0
    for i in range(0, len(ys), bs):
      b = order[i:i + bs]
      p = _softmax(xs[b] @ w)
      p[np.arange(len(b)), ys[b]] -= 1.0
      total = total + (xs[b].T @ p / len(b)) ** 2
    return total / -(-len(ys) // bs)
  key = jax.random.key(5)
  beta = rule(np_minibatch(x, y, jax.random.fold_in(key, 0), 16), np_minibatch(x[:5], y[:5], jax.random.fold_in(key, 1), 16))
  assert 0 < np.mean(beta < 1) < 1
  r3 = ssd_unlearn(_linear, jnp.asarray(w, jnp.float32), x[:5], y[:5],
                   SSDConfig(selection_weight=alpha, dampening=lam, batch_size=16),
                   key, train_data=(x, y))
  np.testing.assert_allclose(np.asarray(r3.params), beta * w, rtol=2e-4, atol=1e-7)


# ----------------------------------------------------------------------------- SCRUB


def _np_kd(zs, zt, t):
  ps, pt = _softmax(zs / t), _softmax(zt / t)
  return t * t * np.sum(pt * (np.log(pt) - np.log(ps)), -1)


def test_distillation_losses_match_numpy():
  rng = np.random.default_rng(2)
  zs, zt = rng.normal(size=(5, 4)) * 3, rng.normal(size=(5, 4)) * 3
  np.testing.assert_allclose(np.asarray(distill_kl(jnp.asarray(zs), jnp.asarray(zt), 4.0)), _np_kd(zs, zt, 4.0),
                             rtol=1e-5)
  w = rng.normal(size=(3, 4))
  x, y = rng.normal(size=(5, 3)), rng.integers(0, 4, 5)
  weights = np.array([1, 1, 0, 1, 1.0])
  cfg = SCRUBConfig(kl_weight=0.3, gamma=0.7, temperature=2.0)
  z = x @ w
  ce = -np.log(_softmax(z)[np.arange(5), y])
  want_min = np.sum(weights * (0.7 * ce + 0.3 * _np_kd(z, zt, 2.0))) / weights.sum()
  want_max = -np.sum(weights * _np_kd(z, zt, 2.0)) / weights.sum()
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  got_min = scrub_min_loss(_linear, f32(w), (f32(x), jnp.asarray(y), f32(zt)), f32(weights), cfg)
  got_max = scrub_max_loss(_linear, f32(w), (f32(x), f32(zt)), f32(weights), cfg)
  np.testing.assert_allclose([float(got_min), float(got_max)], [want_min, want_max], rtol=1e-5)


def test_scrub_rounds_match_a_numpy_rederivation():
  """Two rounds (max, min, max, min) of SGD on full batches, derived by hand.

  d/dz_s of T^2 KL(p_t^T || p_s^T) is T (p_s^T - p_t^T); of CE, p_s - onehot; the
  coupled weight decay adds wd * W. The retained pool is one example repeated,
  so which rows a round draws does not matter.
  """
  rng = np.random.default_rng(3)
  w0 = rng.normal(size=(3, 4))
  x_f, y_f = rng.normal(size=(6, 3)), rng.integers(0, 4, 6)
  x_r, y_r = np.repeat(rng.normal(size=(1, 3)), 10, 0), np.full(10, 2)
  cfg = SCRUBConfig(epochs=2, max_epochs=2, lr=0.3, optimizer="sgd", batch_size=8, kl_weight=0.5, gamma=0.9,
                    temperature=2.0, coupled_weight_decay=0.05)
  t = cfg.temperature

  def kd_grad(w, x, teacher):
    return x.T @ (t * (_softmax(x @ w / t) - _softmax(teacher / t))) / len(x)

  w = w0.copy()
  zt_f = x_f @ w0
  zt_r = x_r[:6] @ w0
  for _ in range(2):
    w = w - cfg.lr * (-kd_grad(w, x_f, zt_f) + cfg.coupled_weight_decay * w)             # max phase
    p = _softmax(x_r[:6] @ w)
    p[np.arange(6), y_r[:6]] -= 1.0
    g = cfg.gamma * x_r[:6].T @ p / 6 + cfg.kl_weight * kd_grad(w, x_r[:6], zt_r)
    w = w - cfg.lr * (g + cfg.coupled_weight_decay * w)                                    # min phase
  r = scrub_unlearn(_linear, jnp.asarray(w0, jnp.float32), x_f.astype(np.float32), y_f.astype(np.int32), cfg,
                    jax.random.key(0), retain_data=(x_r.astype(np.float32), y_r.astype(np.int32)))
  np.testing.assert_allclose(np.asarray(r.params), w, rtol=1e-4, atol=1e-6)
  assert [h["phase"] for h in r.history] == ["max", "min", "max", "min"]
  # The first max step starts at the teacher, where the KL's gradient is zero: it moves by the decay only.
  r1 = scrub_unlearn(_linear, jnp.asarray(w0, jnp.float32), x_f.astype(np.float32), y_f.astype(np.int32),
                     SCRUBConfig(epochs=1, max_epochs=1, lr=0.3, optimizer="sgd", batch_size=8, gamma=0.0,
                                 kl_weight=0.0, coupled_weight_decay=0.05),
                     jax.random.key(0), retain_data=(x_r.astype(np.float32), y_r.astype(np.int32)))
  np.testing.assert_allclose(np.asarray(r1.params), w0 * (1 - 0.3 * 0.05) ** 2, rtol=1e-5)


def test_scrub_step_budget_caps_each_phase():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(20, 3)).astype(np.float32)
  y = rng.integers(0, 4, 20).astype(np.int32)
  w0 = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  # Only weight decay acts (gamma = alpha = 0, the max phase at the teacher has zero gradient
  # in round 1): SGD multiplies W by (1 - lr wd) per step, so the step count is readable.
  cfg = SCRUBConfig(epochs=1, max_epochs=0, lr=0.1, optimizer="sgd", batch_size=4, gamma=0.0, kl_weight=0.0,
                    coupled_weight_decay=0.1)
  full = scrub_unlearn(_linear, w0, x, y, cfg, jax.random.key(0), retain_data=(x, y))
  capped = scrub_unlearn(_linear, w0, x, y, dataclasses.replace(cfg, steps=2), jax.random.key(0),
                         retain_data=(x, y))
  np.testing.assert_allclose(np.asarray(full.params), np.asarray(w0) * 0.99 ** 5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(capped.params), np.asarray(w0) * 0.99 ** 2, rtol=1e-5)


# ----------------------------------------------------------------------------- registry and bad input


def test_bad_scrub_and_ssd_input():
  with pytest.raises(FamrError, match="temperature"):
    SCRUBConfig(temperature=0.0).validate()
  with pytest.raises(FamrError, match="selection weight"):
    SSDConfig(selection_weight=0.0).validate()
  with pytest.raises(FamrError, match="importance must be minibatch or fisher"):
    SSDConfig(importance="nope").validate()
  with pytest.raises(FamrError, match="empty"):
    ssd_unlearn(_linear, jnp.zeros((2, 2)), np.zeros((0, 2)), np.zeros(0), SSDConfig(), jax.random.key(0),
                train_data=(np.ones((3, 2)), np.zeros(3)))


def test_renamed_fields_keep_their_old_keywords():
  # SSD's alpha / lam and SCRUB's alpha were renamed (FAMR's --alpha and --lam mean other things);
  # the old keywords still work in Python, with a warning, and are no fields (so no flags).
  with pytest.warns(DeprecationWarning) as record:
    cfg = SSDConfig(alpha=2.0, lam=0.5)
  assert sorted(str(w.message).split(": ")[1] for w in record) == ["use dampening=...", "use selection_weight=..."]
  assert (cfg.selection_weight, cfg.dampening) == (2.0, 0.5)
  assert dataclasses.replace(cfg, importance="fisher").selection_weight == 2.0
  with pytest.warns(DeprecationWarning, match="kl_weight"):
    assert SCRUBConfig(alpha=0.2).kl_weight == 0.2
  with pytest.warns(DeprecationWarning, match="coupled_weight_decay"):
    assert SCRUBConfig(weight_decay=0.1).coupled_weight_decay == 0.1
  with pytest.raises(FamrError, match="give only selection_weight"):
    SSDConfig(alpha=2.0, selection_weight=3.0)
  assert not {"alpha", "lam"} & {f.name for f in dataclasses.fields(SSDConfig)}
  assert not {"alpha", "weight_decay"} & {f.name for f in dataclasses.fields(SCRUBConfig)}
