"""FAMR variants: each objective against NumPy, the diagonal Fisher against its definition,
the exact-curvature anchor's gradient against a dense (H + lambda I) d, the retrain-like target."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famr_jax.methods import variants
from famr_jax.errors import FamrError
from famr_jax.theory.fisher import diagonal_fisher, load_fisher, match_params
from famr_jax.methods.variants import (FAMRVariantConfig, VariantBatch, curvature_anchor, famr_variant_unlearn,
                               retrain_target, target_kl, variant_objective)

C, D = 4, 3


def _linear(params, x):
  return x @ params["w"] + params["b"]


def _np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  p0 = {"w": rng.normal(size=(D, C)), "b": rng.normal(size=C)}
  p = {"w": p0["w"] + 0.3 * rng.normal(size=(D, C)), "b": p0["b"] + 0.3 * rng.normal(size=C)}
  b, k = 5, 2
  x_f = rng.normal(size=(b, D))
  x_r = rng.normal(size=(b, k, D))
  y_r = rng.integers(0, C, size=(b, k))
  z0_r = np.einsum("bkd,dc->bkc", x_r, p0["w"]) + p0["b"]
  weights = np.array([1, 1, 1, 1, 0], np.float64)   # the last row is padding
  f32 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), t)
  return dict(p0=p0, p=p, x_f=x_f, x_r=x_r, y_r=y_r, z0_r=z0_r, w=weights, f32=f32,
              fisher={"w": rng.uniform(size=(D, C)), "b": rng.uniform(size=C)})


def _np_kl(t, logits):
  log_p = _np_log_softmax(logits)
  safe = np.where(t > 0, t, 1.0)
  return np.sum(np.where(t > 0, t * (np.log(safe) - log_p), 0.0), -1)


def _np_linear_hessian(w, b, x, weights):
  """Dense Hessian of the weighted-mean CE of a linear softmax model, [w.ravel(), b] order (exact; = GN)."""
  n_params = D * C + C
  h = np.zeros((n_params, n_params))
  for xi, wi in zip(x, weights):
    p = _np_softmax(xi @ w + b)
    a = np.diag(p) - np.outer(p, p)            # d^2 CE / dz^2
    jac = np.zeros((C, n_params))              # dz / d[w, b]
    for c in range(C):
      jac[c, [d * C + c for d in range(D)]] = xi
      jac[c, D * C + c] = 1.0
    h += wi * jac.T @ a @ jac
  return h / max(weights.sum(), 1.0)


def _np_objective(pb, cfg, target, fisher=None):
  """The variant objective re-derived in NumPy (float64) for the linear model."""
  p, p0, w = pb["p"], pb["p0"], pb["w"]
  kl_f = _np_kl(target, pb["x_f"] @ p["w"] + p["b"])
  loss = cfg.alpha * np.sum(w * kl_f) / w.sum()
  x_r = pb["x_r"].reshape(-1, D)
  w_r = np.repeat(w, pb["x_r"].shape[1])
  if cfg.retain_weight:
    z0 = pb["z0_r"].reshape(-1, C)
    p0r = _np_softmax(z0)
    kl_r = np.sum(p0r * (_np_log_softmax(z0) - _np_log_softmax(x_r @ p["w"] + p["b"])), -1)
    loss += cfg.retain_weight * np.sum(w_r * kl_r) / w_r.sum()
  d = np.concatenate([(p["w"] - p0["w"]).ravel(), p["b"] - p0["b"]])
  if cfg.anchor == "l2":
    loss += 0.5 * cfg.lam * d @ d
  elif cfg.anchor == "fisher":
    f = np.concatenate([fisher["w"].ravel(), fisher["b"]])
    loss += 0.5 * np.sum((cfg.curvature_weight * f + cfg.lam) * d * d)
  else:
    h = _np_linear_hessian(p0["w"], p0["b"], x_r, w_r)
    loss += 0.5 * d @ (cfg.curvature_weight * h + cfg.lam * np.eye(len(d))) @ d
  return loss


@pytest.mark.parametrize("overrides", [
    dict(),                                                   # the paper's FAMR
    dict(target="retrain"),
    dict(anchor="fisher", curvature_weight=3.0, lam=0.2),
    dict(anchor="gauss-newton", curvature_weight=2.0, lam=0.1),
    dict(anchor="hessian", curvature_weight=2.0, lam=0.1),
    dict(retain_weight=1.5, alpha=0.5),
    dict(target="retrain", retain_weight=1.0, anchor="fisher"),
], ids=["famr", "retrain-target", "fisher", "gauss-newton", "hessian", "function", "composed"])
def test_variant_objective_matches_numpy(problem, overrides):
  pb = problem
  cfg = FAMRVariantConfig(**overrides)
  forgotten = np.array([False, True, False, False])
  z0_f = pb["x_f"] @ pb["p0"]["w"] + pb["p0"]["b"]
  if cfg.target == "retrain":
    p0f = _np_softmax(z0_f) * ~forgotten
    target = p0f / p0f.sum(-1, keepdims=True)
  else:
    target = np.full((len(pb["x_f"]), C), 1.0 / C)
  f32 = pb["f32"]
  batch = VariantBatch(jnp.asarray(pb["x_f"], jnp.float32), jnp.asarray(target, jnp.float32),
                       jnp.asarray(pb["x_r"], jnp.float32), jnp.asarray(pb["y_r"], jnp.int32),
                       jnp.asarray(pb["z0_r"], jnp.float32))
  got = variant_objective(_linear, f32(pb["p"]), batch, jnp.asarray(pb["w"], jnp.float32), f32(pb["p0"]), cfg,
                          f32(pb["fisher"]))
  want = _np_objective(pb, cfg, target, pb["fisher"])
  np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-6)


def test_retrain_target_sums_to_one_and_is_zero_on_forgotten_classes():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 5)) * np.array([1, 1, 1, 1, 1000.0])   # huge forgotten logit too
  mask = np.array([False, True, False, False, True])
  t = np.asarray(retrain_target(jnp.asarray(logits, jnp.float32), jnp.asarray(mask)))
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
  assert np.all(t[:, mask] == 0.0)
  kept = _np_softmax(logits[:, ~mask])          # the original distribution over retained classes
  np.testing.assert_allclose(t[:, ~mask], kept, rtol=1e-5, atol=1e-7)
  # KL(t || p) is zero at p = t and finite with the zeros of t.
  assert np.all(np.asarray(target_kl(jnp.asarray(t), jnp.log(jnp.asarray(t) + 1e-30))) < 1e-5)


def _tiny_mlp():
  rng = np.random.default_rng(2)
  params = {"w1": jnp.asarray(rng.normal(size=(3, 4)) * 0.7, jnp.float32),
            "b1": jnp.asarray(rng.normal(size=4) * 0.1, jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(4, 3)) * 0.7, jnp.float32)}

  def apply_fn(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]
  return apply_fn, params, rng


@pytest.mark.parametrize("kind", ["hessian", "gauss-newton"])
def test_curvature_anchor_gradient_is_dense_h_plus_lambda_times_d(kind):
  apply_fn, p0, rng = _tiny_mlp()
  from jax.flatten_util import ravel_pytree
  flat0, unravel = ravel_pytree(p0)
  x = jnp.asarray(rng.normal(size=(7, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 3, size=7), jnp.int32)
  w = jnp.ones(7)
  d = jnp.asarray(rng.normal(size=flat0.shape) * 0.2, jnp.float32)
  p = unravel(flat0 + d)
  lam, c = 0.3, 2.0

  def retained_loss(flat):   # the mean retained cross-entropy of the flat params
    logits = apply_fn(unravel(flat), x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

  if kind == "hessian":
    dense = jax.jit(jax.hessian(retained_loss))(flat0)   # reverse-over-reverse, dense
  else:   # J^T (diag p - p p^T) J / n with a dense Jacobian
    jac = jax.jit(jax.jacobian(lambda f: apply_fn(unravel(f), x)))(flat0)   # [n, C, P]
    probs = np.asarray(jax.nn.softmax(apply_fn(p0, x)), np.float64)
    jac = np.asarray(jac, np.float64)
    dense = sum(jac[i].T @ (np.diag(probs[i]) - np.outer(probs[i], probs[i])) @ jac[i] for i in range(7)) / 7
  want = (c * np.asarray(dense, np.float64) + lam * np.eye(len(d))) @ np.asarray(d, np.float64)
  matvec = variants.retained_matvec(apply_fn, p0, x, y, w, kind)
  value, grad = jax.jit(jax.value_and_grad(lambda q: curvature_anchor(q, p0, matvec, lam, c)))(p)
  np.testing.assert_allclose(np.asarray(ravel_pytree(grad)[0]), want, rtol=1e-4, atol=1e-5)
  dd = np.asarray(d, np.float64)
  np.testing.assert_allclose(float(value), 0.5 * dd @ ((c * np.asarray(dense) + lam * np.eye(len(d))) @ dd),
                             rtol=1e-4)


def test_diagonal_fisher_matches_its_definition():
  apply_fn, params, rng = _tiny_mlp()
  x = rng.normal(size=(11, 3)).astype(np.float32)
  y = rng.integers(0, 3, size=11).astype(np.int32)
  got = diagonal_fisher(apply_fn, params, x, y, batch_size=4)   # 3 chunks, the last one padded

  def ce(p, xi, yi):
    return -jax.nn.log_softmax(apply_fn(p, xi[None]))[0, yi]
  want = jax.tree.map(jnp.zeros_like, params)
  grad = jax.jit(jax.grad(ce))
  for xi, yi in zip(x, y):   # one example at a time: (1/N) sum_n g_n^2
    g = grad(params, jnp.asarray(xi), jnp.int32(yi))
    want = jax.tree.map(lambda a, b: a + np.asarray(b, np.float64) ** 2 / len(x), want, g)
  for k in params:
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-5, atol=1e-8)


def test_diagonal_fisher_of_a_linear_model_in_closed_form():
  rng = np.random.default_rng(3)
  params = {"w": rng.normal(size=(D, C)).astype(np.float32), "b": rng.normal(size=C).astype(np.float32)}
  x = rng.normal(size=(9, D)).astype(np.float32)
  y = rng.integers(0, C, size=9)
  got = diagonal_fisher(_linear, params, x, y)
  err = _np_softmax(x.astype(np.float64) @ params["w"] + params["b"]) - np.eye(C)[y]   # dCE/dz
  np.testing.assert_allclose(got["w"], np.mean(np.einsum("nd,nc->ndc", x, err) ** 2, 0), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(got["b"], np.mean(err ** 2, 0), rtol=1e-4, atol=1e-7)


def test_missing_fisher_is_one_line_and_says_how_to_compute_it(tmp_path):
  from famr_jax.io import checkpoints
  ckpt = checkpoints.save_checkpoint(tmp_path / "ckpt", {"w": jnp.zeros((2, 3))}, {"model": "toy"})
  with pytest.raises(FamrError, match=r"no stored Fisher.*famr-jax fisher --checkpoint") as e:
    load_fisher(ckpt)
  assert "\n" not in str(e.value)
  with_fisher = checkpoints.save_checkpoint(tmp_path / "ckpt2", {"w": jnp.zeros((2, 3))}, {"model": "toy"},
                                            extras={"fisher": {"w": jnp.ones((2, 3))}})
  assert float(jnp.sum(load_fisher(with_fisher, like={"w": jnp.zeros((2, 3))})["w"])) == 6.0
  with pytest.raises(FamrError, match="does not match"):
    match_params({"w": jnp.ones((2, 3))}, {"other": jnp.zeros(3)})


def test_frozen_head_stays_bit_identical_and_retrain_target_forgets(trained_digits):
  from famr_jax.data.forget import forget_classes
  d = trained_digits
  forget = forget_classes(d.data.y_train, [3], d.data.num_classes)
  keep = forget.retain_mask(len(d.data.y_train))
  cfg = FAMRVariantConfig(epochs=3, lr=0.01, target="retrain", retain_weight=1.0, train_from="head")
  r = famr_variant_unlearn(d.apply_fn, d.params, d.data.x_train[forget.indices], cfg, jax.random.key(0),
                           y_forget=d.data.y_train[forget.indices], forget_classes=(3,), num_classes=10,
                           retain_data=(d.data.x_train[keep], d.data.y_train[keep]), model=d.model,
                           show_progress=False)
  np.testing.assert_array_equal(np.asarray(r.params["fc1"]["kernel"]), np.asarray(d.params["fc1"]["kernel"]))
  assert not np.array_equal(np.asarray(r.params["head"]["kernel"]), np.asarray(d.params["head"]["kernel"]))
  pred = np.argmax(np.asarray(d.apply_fn(r.params, d.data.x_test)), -1)
  test3 = d.data.y_test == 3
  assert np.mean(pred[test3] == 3) <= 0.05                     # forgotten
  assert np.mean(pred[~test3] == d.data.y_test[~test3]) >= 0.9  # the rest kept
  assert r.history[-1]["forget_acc"] < r.history[0]["forget_acc"]


def test_bad_variant_settings():
  with pytest.raises(FamrError, match="unknown anchor"):
    FAMRVariantConfig(anchor="bogus").validate()
  with pytest.raises(FamrError, match="retain_ratio"):
    FAMRVariantConfig(retain_ratio=0).validate()
  x = np.ones((4, D), np.float32)
  p = {"w": jnp.zeros((D, C)), "b": jnp.zeros(C)}
  with pytest.raises(FamrError, match="whole classes"):
    famr_variant_unlearn(_linear, p, x, FAMRVariantConfig(target="retrain"), jax.random.key(0),
                         show_progress=False)
  with pytest.raises(FamrError, match="needs the diagonal Fisher: pass fisher"):
    famr_variant_unlearn(_linear, p, x, FAMRVariantConfig(anchor="fisher"), jax.random.key(0),
                         show_progress=False)
  with pytest.raises(FamrError, match="retained data"):
    famr_variant_unlearn(_linear, p, x, FAMRVariantConfig(retain_weight=1.0), jax.random.key(0),
                         show_progress=False)
  assert dataclasses.replace(variants.variant_defaults("famr-plus", "lenet5"), lr=0.5).lr == 0.5


def _scale_problem():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(60, D)).astype(np.float32)
  y = (np.arange(60) % C).astype(np.int32)
  params = {"w": rng.normal(size=(D, C)).astype(np.float32), "b": np.zeros(C, np.float32)}
  return x[y == 0], y[y == 0], (x[y != 0], y[y != 0]), params


def _famr_plus(x_f, y_f, retain, params, **kwargs):
  cfg = dataclasses.replace(variants.variant_defaults("famr-plus", "mlp"), train_from=None, epochs=3,
                            batch_size=4, optimizer="adam", lr=0.05)
  return famr_variant_unlearn(_linear, params, x_f, cfg, jax.random.key(5), y_forget=y_f, forget_classes=[0],
                              retain_data=retain, show_progress=False, **kwargs)


def _ga(x_f, y_f, retain, params, **kwargs):
  from famr_jax.methods.baselines import GAConfig, baseline_unlearn
  del retain
  return baseline_unlearn("ga", _linear, params, x_f, y_f, GAConfig(epochs=3, batch_size=4, lr=0.05),
                          jax.random.key(5), show_progress=False, **kwargs)


@pytest.mark.parametrize("run", [_famr_plus, _ga], ids=["famr-plus", "ga"])
def test_gradient_accumulation_gives_the_same_params(run):
  from famr_jax.engine.parallel import ScaleConfig
  problem = _scale_problem()
  plain = run(*problem)
  accumulated = run(*problem, scale=ScaleConfig(grad_accum=2))
  for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(accumulated.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(plain.params["w"]), problem[3]["w"])   # it did move


def test_variant_stopped_and_resumed_is_bit_identical(tmp_path):
  from famr_jax.engine.resume import ResumeConfig, RunStopped
  problem = _scale_problem()   # 15 forget samples in batches of 4: 4 steps per epoch, 12 in all
  with pytest.raises(RunStopped) as stopped:
    _famr_plus(*problem, resume=ResumeConfig(str(tmp_path / "a"), checkpoint_every=3, stop_after_steps=5))
  assert stopped.value.step == 7            # saves at rows 3 and 4 of each epoch: steps 3, 4, 7 >= 5
  resumed = _famr_plus(*problem, resume=ResumeConfig(str(tmp_path / "a"), checkpoint_every=3))
  uninterrupted = _famr_plus(*problem, resume=ResumeConfig(str(tmp_path / "b"), checkpoint_every=3))
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(uninterrupted.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed.history == uninterrupted.history
  # Another variant setting is another run: the checkpoint refuses it, naming the setting.
  with pytest.raises(FamrError, match="retain_weight"):
    famr_variant_unlearn(_linear, problem[3], problem[0], dataclasses.replace(
        variants.variant_defaults("famr-plus", "mlp"), train_from=None, epochs=3, batch_size=4,
        optimizer="adam", lr=0.05, retain_weight=0.5), jax.random.key(5), y_forget=problem[1],
        forget_classes=[0], retain_data=problem[2], show_progress=False,
        resume=ResumeConfig(str(tmp_path / "a"), checkpoint_every=3, stop_after_steps=1))
