"""Sample-request methods (issue 23): MSG, CT, NegGrad+'s Deep Unlearn recipe, calibrated FAMR, Langevin, SISA.

Each is checked on a tiny problem against an independent reference: NumPy gradients
and masks, hand-computed schedules and bounds, NumPy votes.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famr_jax.errors import FamrError
from famr_jax.methods import deep_unlearn
from famr_jax.methods.deep_unlearn import MSGConfig, RetainFinetuneConfig
from famr_jax.methods.registry import get_method
from famr_jax.methods.resolve import Request, resolve_config


def _np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _np_ce_grad(w, b, x, y):
  """Gradient of the mean cross-entropy of ``x @ w + b`` (NumPy, by hand)."""
  p = _np_softmax(x @ w + b)
  p[np.arange(len(y)), y] -= 1.0
  return x.T @ p / len(y), p.mean(0)


def _linear(p, x):
  return x.reshape(x.shape[0], -1) @ p["fc"]["kernel"] + p["fc"]["bias"]


def test_small_gradient_mask_matches_numpy_per_layer():
  rng = np.random.default_rng(0)
  grads = {"a": rng.normal(size=(3, 3, 2, 4)), "b": rng.normal(size=(5, 7)), "c": rng.normal(size=6)}
  selected = {"a": True, "b": True, "c": False}
  got = deep_unlearn.small_gradient_mask(jax.tree.map(jnp.asarray, grads), 0.3, selected)
  for name in ("a", "b"):
    g = np.abs(grads[name]).ravel()
    k = int(round(0.3 * g.size))
    want = np.zeros(g.size, bool)
    want[np.argsort(g)[:k]] = True
    np.testing.assert_array_equal(np.asarray(got[name]).ravel(), want)
    assert np.abs(grads[name]).ravel()[want].max() < np.abs(grads[name]).ravel()[~want].min()
  assert not np.any(np.asarray(got["c"]))


def test_msg_reinitializes_exactly_the_numpy_smallest_gradients_and_keeps_the_rest():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(60, 4)).astype(np.float32)
  y = rng.integers(0, 3, 60).astype(np.int32)
  w, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
  params = {"fc": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}
  xf, yf, xr, yr = x[:10], y[:10], x[10:], y[10:]
  key = jax.random.key(3)
  # Reference: the retained subset MSG draws, then NumPy's accumulated gradient (one batch each side here).
  sub = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), len(xr)))[:len(xf)]
  g = _np_ce_grad(w, b, xr[sub], yr[sub])[0] - _np_ce_grad(w, b, xf, yf)[0]
  k = int(round(0.25 * g.size))
  want = np.zeros(g.size, bool)
  want[np.argsort(np.abs(g).ravel())[:k]] = True
  want = want.reshape(g.shape)
  # A negligible fine-tune (one step at lr 1e-12, no decay) leaves the re-initialized start in place.
  cfg = MSGConfig(epochs=1, steps=1, lr=1e-12, coupled_weight_decay=0.0, init_rate=0.25, layers="kernels")
  r = deep_unlearn.msg_unlearn(_linear, params, xf, yf, xr, yr, cfg, key, show_progress=False)
  new = np.asarray(r.params["fc"]["kernel"])
  np.testing.assert_allclose(new[~want], w[~want], atol=1e-6)
  assert np.all(np.abs(new[want] - w[want]) > 1e-6)
  np.testing.assert_allclose(np.asarray(r.params["fc"]["bias"]), b, atol=1e-6)   # not a selected layer
  with pytest.raises(FamrError, match="layers='kernels'"):
    deep_unlearn.msg_unlearn(_linear, params, xf, yf, xr, yr, MSGConfig(), key, show_progress=False)


def test_msg_scales_the_kept_weights_gradient_by_a_tenth():
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(8, 4)).astype(np.float32), rng.integers(0, 3, 8).astype(np.int32)
  w, b = rng.normal(size=(4, 3)).astype(np.float32), np.zeros(3, np.float32)
  mask = rng.random((4, 3)) < 0.3
  scales = {"fc": {"kernel": jnp.where(mask, 1.0, 0.1), "bias": jnp.ones(3)}}
  grad = jax.grad(deep_unlearn.scaled_ce_loss, argnums=1)(
      _linear, {"fc": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}, (x, y), jnp.ones(8), scales)
  gw, gb = _np_ce_grad(w, b, x, y)
  np.testing.assert_allclose(np.asarray(grad["fc"]["kernel"]), np.where(mask, gw, 0.1 * gw), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grad["fc"]["bias"]), gb, rtol=1e-4, atol=1e-6)


def test_schedules_match_the_hand_values():
  # MSG: warm up over (5 + 1) // 2 = 3 epochs, decay to 0 at epoch 6: 1/3, 2/3, 1, 2/3, 1/3.
  got = [float(deep_unlearn.epoch_lr_factor("warmup-decay", e, 5)) for e in range(5)]
  np.testing.assert_allclose(got, [1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3], rtol=1e-6)
  # CT: cosine annealing with T_max 3: (1 + cos(pi e / 3)) / 2 = 1, 0.75, 0.25.
  got = [float(deep_unlearn.epoch_lr_factor("cosine", e, 3)) for e in range(3)]
  np.testing.assert_allclose(got, [1.0, 0.75, 0.25], rtol=1e-6)


def test_ct_transposes_square_conv_kernels_then_fine_tunes_on_retained_data():
  rng = np.random.default_rng(3)
  k = rng.normal(size=(3, 3, 1, 2)).astype(np.float32)
  params = {"conv": {"kernel": jnp.asarray(k), "bias": jnp.zeros(2)}, "fc": {"kernel": jnp.ones((2, 3))}}

  def apply_fn(p, x):
    h = jax.lax.conv_general_dilated(x, p["conv"]["kernel"], (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["conv"]["bias"]
    return jnp.mean(h, axis=(1, 2)) @ p["fc"]["kernel"]

  x = rng.normal(size=(16, 5, 5, 1)).astype(np.float32)
  y = rng.integers(0, 3, 16).astype(np.int32)
  r = deep_unlearn.ct_unlearn(apply_fn, params, x, y, RetainFinetuneConfig(steps=1, lr=1e-12, coupled_weight_decay=0.0),
                              jax.random.key(0), show_progress=False)
  np.testing.assert_allclose(np.asarray(r.params["conv"]["kernel"]), np.swapaxes(k, 0, 1), atol=1e-6)
  # A real fine-tune lowers the retained loss from the transposed start.
  r2 = deep_unlearn.ct_unlearn(apply_fn, params, x, y, RetainFinetuneConfig(epochs=20, lr=0.1, batch_size=8),
                               jax.random.key(0), show_progress=False)
  ce = lambda p: float(jnp.mean(jax.nn.logsumexp(apply_fn(p, x), -1) - apply_fn(p, x)[np.arange(16), y]))
  assert ce(r2.params) < ce(r.params)
  bad = {"conv": {"kernel": jnp.zeros((3, 1, 1, 2))}}
  with pytest.raises(FamrError, match="square"):
    deep_unlearn.transpose_conv_kernels(bad)


def test_deep_unlearn_methods_are_registered_with_their_recipes():
  assert resolve_config("msg", Request("samples"), "mlp") == MSGConfig()
  assert (MSGConfig().epochs, MSGConfig().lr, MSGConfig().init_rate, MSGConfig().coupled_weight_decay) == (5, 1e-3, 0.3, 5e-4)
  assert (RetainFinetuneConfig().epochs, RetainFinetuneConfig().momentum) == (3, 0.9)
  ng = resolve_config("neggrad+du", Request("samples"), "mlp")
  assert (ng.w_r, ng.w_f, ng.lr, ng.optimizer, ng.epochs) == (0.95, 0.05, 0.01, "momentum", 10)


# ----------------------------------------------------------------------------- famr-calibrated

from famr_jax.methods import calibrated  # noqa: E402
from famr_jax.methods.calibrated import CalibratedFAMRConfig  # noqa: E402


def _np_ce(probs, y):
  return float(-np.mean(np.log(probs[np.arange(len(y)), y])))


def test_temperature_target_matches_the_held_out_mean_loss():
  rng = np.random.default_rng(4)
  y_f, y_h = rng.integers(0, 4, 50), rng.integers(0, 4, 80)
  z_f = rng.normal(size=(50, 4)) + 6.0 * np.eye(4)[y_f]      # members: confident
  z_h = rng.normal(size=(80, 4)) + 2.0 * np.eye(4)[y_h]      # non-members: less so
  q, t = calibrated.temperature_target(z_f, y_f, z_h, y_h)
  # NumPy: the held-out mean cross-entropy, and the forget set's at T by an independent softmax.
  goal = _np_ce(_np_softmax(z_h), y_h)
  assert t > 1.0
  np.testing.assert_allclose(_np_ce(_np_softmax(z_f / t), y_f), goal, rtol=1e-6)
  np.testing.assert_allclose(q, _np_softmax(z_f / t), rtol=1e-9)


def test_quantile_target_takes_the_held_out_quantiles_per_class_and_keeps_the_other_ratios():
  rng = np.random.default_rng(5)
  y_f, y_h = np.repeat([0, 1, 2], 10), np.repeat([0, 1, 2], 30)
  z_f = rng.normal(size=(30, 3)) + 5.0 * np.eye(3)[y_f]
  z_h = rng.normal(size=(90, 3)) + 1.5 * np.eye(3)[y_h]
  q = calibrated.quantile_target(z_f, y_f, z_h, y_h)
  p_f, p_h = _np_softmax(z_f), _np_softmax(z_h)
  np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-9)
  for c in range(3):
    rows = np.flatnonzero(y_f == c)
    conf_f, conf_h = p_f[rows, c], p_h[y_h == c, c]
    order = np.argsort(conf_f)
    want = np.quantile(conf_h, (np.arange(10) + 0.5) / 10)   # rank r gets quantile (r + 1/2) / n
    np.testing.assert_allclose(q[rows[order], c], want, rtol=1e-9)
    other = [k for k in range(3) if k != c]
    np.testing.assert_allclose(q[rows][:, other[0]] / q[rows][:, other[1]],
                               p_f[rows][:, other[0]] / p_f[rows][:, other[1]], rtol=1e-6)


def test_famr_calibrated_moves_forget_confidence_to_the_held_out_level_and_keeps_the_rest():
  rng = np.random.default_rng(6)
  centers = 3.0 * rng.normal(size=(3, 5))
  y = np.repeat([0, 1, 2], 40).astype(np.int32)
  x = (centers[y] + rng.normal(size=(120, 5))).astype(np.float32)
  w = jnp.asarray(np.linalg.lstsq(x, 8.0 * np.eye(3)[y] - 4.0, rcond=None)[0], jnp.float32)
  f = lambda p, x: x @ p
  xh = (centers[y] + 6.0 * rng.normal(size=(120, 5))).astype(np.float32)   # held out: noisier, less confident
  idx = np.arange(0, 120, 10)
  cfg = CalibratedFAMRConfig(epochs=300, lr=0.02, lam=0.01, optimizer="adam")
  r = calibrated.calibrated_famr_unlearn(f, w, x[idx], y[idx], xh, y, cfg, jax.random.key(0), show_progress=False)
  conf = lambda p, xs, ys: _np_softmax(np.asarray(f(p, xs), np.float64))[np.arange(len(ys)), ys]
  target = r.history[0]["target_conf"]
  assert abs(target - np.mean(conf(w, xh, y))) < 0.05          # the target's level is the held-out one
  assert abs(np.mean(conf(r.params, x[idx], y[idx])) - target) < 0.05
  assert np.mean(conf(w, x[idx], y[idx])) - target > 0.1       # and it is not where the original was
  with pytest.raises(FamrError, match="calibration must be one of"):
    CalibratedFAMRConfig(calibration="uniform").validate()


# ----------------------------------------------------------------------------- Langevin

from famr_jax.methods import langevin  # noqa: E402
from famr_jax.methods.langevin import LangevinConfig  # noqa: E402


def test_langevin_epsilon_equals_the_hand_formula_and_the_best_renyi_order():
  # By hand: c = max(|1 - 0.5 * 0.1|, |1 - 0.5 * 1.0|) = 0.95; a = c^(2K) R^2 / (lr sigma^2), K = 40, R = 2.
  c = langevin.contraction_factor(0.5, 0.1, 1.0)
  assert c == pytest.approx(0.95)
  a = 0.95 ** 80 * 2.0 ** 2 / (0.5 * 0.5 ** 2)
  want = a + 2.0 * math.sqrt(a * math.log(1e5))
  eps, alpha = langevin.langevin_epsilon(c, 40, 2.0, 0.5, 0.5, 1e-5)
  assert eps == pytest.approx(want, rel=1e-12)
  # It is the minimum over Rényi orders of alpha a + log(1/delta) / (alpha - 1) (a fine grid, independently).
  grid = np.geomspace(1.0001, 1e6, 200001)
  assert np.min(grid * a + math.log(1e5) / (grid - 1)) == pytest.approx(eps, rel=1e-6)
  assert alpha == pytest.approx(grid[np.argmin(grid * a + math.log(1e5) / (grid - 1))], rel=1e-3)


def test_langevin_smoothness_of_a_logistic_model_is_half_the_largest_squared_input_norm_plus_one():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(30, 4)).astype(np.float32)
  params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
  f = lambda p, x: x @ p["w"] + p["b"]
  want = 0.5 * (np.max(np.sum(x.astype(np.float64) ** 2, 1)) + 1.0) + 0.01   # J_i = I (x) [x_i; 1]
  assert langevin.smoothness_bound(f, params, x, 0.01) == pytest.approx(want, rel=1e-5)


def test_langevin_noise_has_the_stated_scale_and_comes_from_the_key():
  # A model whose loss has zero gradient (and l2 = 0): one step moves the params by the noise alone.
  f = lambda p, x: x @ (0.0 * p)
  x, y = np.ones((8, 2), np.float32), np.zeros(8, np.int32)
  cfg = LangevinConfig(steps=1, batch_size=8, lr=0.02, sigma=0.3, l2=0.0, radius=None)
  run = lambda key: np.asarray(langevin.langevin_unlearn(f, jnp.zeros((2, 50000)), x, y, cfg, key,
                                                         show_progress=False).params)
  a, b = run(jax.random.key(0)), run(jax.random.key(1))
  std = math.sqrt(2 * 0.02) * 0.3
  # The sample sd of 100,000 normals is within 1% of sigma with overwhelming probability (its sd is 0.22%).
  assert abs(a.std() / std - 1.0) < 0.01 and abs(a.mean()) < 5 * std / math.sqrt(a.size)
  assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02
  np.testing.assert_array_equal(a, run(jax.random.key(0)))


def test_langevin_certifies_a_convex_projected_model_and_says_why_not_otherwise():
  rng = np.random.default_rng(8)
  x = rng.normal(size=(64, 3)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32)
  f = lambda p, x: x @ p["w"] + p["b"]
  params = {"w": 5.0 * jnp.ones((3, 2)), "b": jnp.zeros(2)}
  cfg = LangevinConfig(epochs=3, lr=0.1, batch_size=16, l2=0.1, radius=2.0, sigma=0.05)
  r = langevin.langevin_unlearn(f, params, x, y, cfg, jax.random.key(0), show_progress=False)
  cert = r.history[-1]
  assert cert["certified"] and cert["steps"] == 12
  assert float(optax_norm(r.params)) <= 2.0 + 1e-5
  smooth = 0.5 * (np.max(np.sum(x.astype(np.float64) ** 2, 1)) + 1.0) + 0.1
  c = max(1 - 0.1 * 0.1, abs(1 - 0.1 * smooth))
  a = c ** 24 * 4.0 / (0.1 * 0.05 ** 2)
  assert cert["epsilon"] == pytest.approx(a + 2 * math.sqrt(a * math.log(1e5)), rel=1e-5)
  mlp = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
  not_convex = langevin.langevin_unlearn(mlp, {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}, x, y, cfg,
                                         jax.random.key(0), show_progress=False).history[-1]
  assert not not_convex["certified"] and "not affine" in not_convex["reason"] and not_convex["epsilon"] is None
  too_big = langevin.langevin_certificate(f, params, x, LangevinConfig(lr=10.0, radius=1.0), 10, jax.random.key(0))
  assert not too_big.certified and "too large" in too_big.reason


def optax_norm(tree):
  return math.sqrt(sum(float(jnp.sum(jnp.square(l))) for l in jax.tree.leaves(tree)))


# ----------------------------------------------------------------------------- SISA

from famr_jax.methods import sisa  # noqa: E402
from famr_jax.methods.sisa import SISAConfig  # noqa: E402


def test_sisa_retrains_only_touched_shards_leaves_the_rest_bit_identical_and_votes_like_numpy():
  rng = np.random.default_rng(9)
  x = rng.normal(size=(90, 4)).astype(np.float32)
  y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(np.int32) + (x[:, 2] > 1).astype(np.int32)
  f = lambda p, x: x @ p["w"] + p["b"]
  init = lambda k: {"w": 0.1 * jax.random.normal(k, (4, 3)), "b": jnp.zeros(3)}
  cfg = SISAConfig(shards=6, epochs=3, batch_size=16, lr=0.05)
  ens, _ = sisa.sisa_train(f, init, x, y, cfg, jax.random.key(0))
  forget = np.flatnonzero(ens.shard_of == 2)[:3].tolist() + np.flatnonzero(ens.shard_of == 4)[:1].tolist()
  new, info = sisa.sisa_delete(ens, forget, f, init, x, y, cfg)
  assert (info["shards"], info["shards_retrained"], info["retrained"]) == (6, 2, [2, 4])
  for i in range(6):
    old_i, new_i = (jax.tree.map(lambda a: np.asarray(a[i]), t.params) for t in (ens, new))
    same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old_i), jax.tree.leaves(new_i)))
    assert same == (i not in (2, 4)), i
  # No kept shard trained on a forgotten example; each shard's members are what it was trained on.
  assert np.all(new.shard_of[forget] == -1)
  members = np.flatnonzero(new.shard_of == 2)
  assert set(members).isdisjoint(forget) and len(members) == np.sum(ens.shard_of == 2) - 3
  # The aggregate against NumPy: each shard's logits by hand, a majority vote (ties to the lowest class), a mean.
  x_test = rng.normal(size=(25, 4)).astype(np.float32)
  per_shard = np.stack([x_test @ np.asarray(new.params["w"][i]) + np.asarray(new.params["b"][i]) for i in range(6)])
  votes = np.zeros((25, 3), int)
  for s in range(6):
    votes[np.arange(25), per_shard[s].argmax(1)] += 1
  got_vote = np.asarray(sisa.sisa_apply_fn(f, "vote")(new.params, jnp.asarray(x_test)))
  np.testing.assert_array_equal(got_vote.argmax(1), votes.argmax(1))
  np.testing.assert_allclose(np.exp(got_vote).sum(1), 1.0, rtol=1e-5)
  got_mean = np.asarray(sisa.sisa_apply_fn(f, "mean")(new.params, jnp.asarray(x_test)))
  np.testing.assert_allclose(got_mean, per_shard.mean(0), rtol=1e-5, atol=1e-6)


def test_sisa_through_the_registry_reports_its_cost_and_its_own_apply_fn():
  from famr_jax import forget_samples, load_dataset, models
  from famr_jax.methods.registry import UnlearnTask
  d = load_dataset("digits")
  d = d._replace(x_train=d.x_train[:120], y_train=d.y_train[:120])
  m = models.create_model("logistic", 10, d.image_shape)
  apply_fn = models.make_apply_fn(m)
  params = models.init_params(m, jax.random.key(0), d.image_shape)
  task = UnlearnTask(apply_fn, params, m, d, forget_samples([0, 1], 120, 10), jax.random.key(1), False)
  r = get_method("sisa").run(task, SISAConfig(shards=3, epochs=2))
  h = r.history[0]
  assert h["shards"] == 3 and 1 <= h["shards_retrained"] <= 2 and r.run_s == h["retrain_s"] > 0
  scores = r.apply_fn(r.params, jnp.asarray(d.x_test[:5]))
  assert scores.shape == (5, 10)
  with pytest.raises(FamrError, match="shards must be"):
    SISAConfig(shards=0).validate()


def test_sisa_is_refused_where_one_models_params_are_needed():
  import famr_jax as fj
  x = np.eye(3, dtype=np.float32).repeat(4, 0)
  y = np.arange(3).repeat(4)
  with pytest.raises(FamrError, match="shard ensemble"):
    fj.unlearn("sisa", lambda p, x: x @ p, jnp.eye(3), fj.forget_samples([0], 12, 3), jax.random.key(0), data=(x, y))
  from famr_jax.audit.shadows import check_auditable
  with pytest.raises(FamrError, match="shard ensembles"):
    check_auditable(fj.forget_samples([0, 1], 12, 3), ("sisa",))


def test_the_audit_farm_unlearns_shadows_with_the_new_methods():
  import dataclasses as dc
  from famr_jax import TrainConfig, forget_samples, load_dataset, models
  from famr_jax.audit.shadows import AuditConfig, train_shadow_farm, unlearn_farm
  d = load_dataset("digits")
  d = d._replace(x_train=d.x_train[:160], y_train=d.y_train[:160])
  m = models.create_model("logistic", 10, d.image_shape)
  f = models.make_apply_fn(m)
  req = forget_samples(list(range(8)), 160, 10)
  farm = train_shadow_farm(m, f, d, req, TrainConfig(epochs=2), AuditConfig(shadows=2), jax.random.key(0))
  ng = dc.replace(resolve_config("neggrad+du", Request("samples", 8), "logistic"), epochs=1)
  vm = unlearn_farm("neggrad+du", ng, farm.originals, f, m, d, req, jax.random.key(1), mode="vmap")
  lp = unlearn_farm("neggrad+du", ng, farm.originals, f, m, d, req, jax.random.key(1), mode="loop")
  assert vm.mode == "vmap"
  for a, b in zip(jax.tree.leaves(vm.params), jax.tree.leaves(lp.params)):   # one program = the runs one by one
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  for name, cfg in (("famr-calibrated", CalibratedFAMRConfig(steps=2)), ("langevin", LangevinConfig(steps=2)),
                    ("msg", MSGConfig(steps=2, layers="kernels"))):
    r = unlearn_farm(name, cfg, farm.originals, f, m, d, req, jax.random.key(1))
    assert r.mode == "loop" and jax.tree.leaves(r.params)[0].shape[0] == 2
