"""FAMR (Algorithm 1): exact update rule, forgetting on digits, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from famr_jax.errors import FamrError
from famr_jax.data.forget import forget_classes
from famr_jax.methods.famr import FAMRConfig, famr_unlearn


def _linear_apply(params, x):
  return x @ params["w"] + params["b"]


def _np_softmax(z):
  z = z - z.max(1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(1, keepdims=True)


def test_one_epoch_of_single_batch_is_exactly_algorithm_1_step():
  """theta <- theta - eta (g_forget + lam (theta - theta0)), g computed by hand."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 4)).astype(np.float32)
  params = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
  eta, lam = 0.3, 0.5
  result = famr_unlearn(_linear_apply, params, x, FAMRConfig(epochs=2, lr=eta, lam=lam, batch_size=8),
                        jax.random.key(0), show_progress=False)
  w, b = params["w"].astype(np.float64), params["b"].astype(np.float64)
  for _ in range(2):   # two full-batch steps: the batch order cannot matter
    dz = (_np_softmax(x @ w + b) - 1 / 3) / 8
    gw, gb = x.T @ dz, dz.sum(0)
    w, b = w - eta * (gw + lam * (w - params["w"])), b - eta * (gb + lam * (b - params["b"]))
  np.testing.assert_allclose(result.params["w"], w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(result.params["b"], b, rtol=1e-5, atol=1e-6)


def test_padded_last_batch_counts_each_example_once():
  """7 examples with batch 4: the padded batch's mean is over its 3 real rows."""
  x = np.eye(7, 4, dtype=np.float32)
  params = {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}
  params = {"w": params["w"] * np.array([1, 2, 3], np.float32), "b": params["b"]}
  result = famr_unlearn(_linear_apply, params, x, FAMRConfig(epochs=1, lr=1.0, lam=0.0, batch_size=4),
                        jax.random.key(3), show_progress=False)
  # Replay with the same permutation and explicit per-batch means.
  perm = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(3), 0), 7))
  w, b = params["w"].astype(np.float64), params["b"].astype(np.float64)
  for batch in (perm[:4], perm[4:]):
    xb = x[batch]
    dz = (_np_softmax(xb @ w + b) - 1 / 3) / len(batch)
    w, b = w - xb.T @ dz, b - dz.sum(0)
  np.testing.assert_allclose(result.params["w"], w, rtol=1e-5, atol=1e-6)


def test_famr_forgets_a_digit_class(trained_digits):
  d = trained_digits
  forget = forget_classes(d.data.y_train, [3], d.data.num_classes)
  x_f, y_f = d.data.x_train[forget.indices], d.data.y_train[forget.indices]
  result = famr_unlearn(d.apply_fn, d.params, x_f, FAMRConfig(), jax.random.key(0), y_forget=y_f,
                        show_progress=False)
  logits = np.asarray(d.apply_fn(result.params, jnp.asarray(d.data.x_test)))
  p = _np_softmax(logits.astype(np.float64))
  test_forget = d.data.y_test == 3
  forget_acc = np.mean(np.argmax(logits[test_forget], 1) == 3)
  train_logits = np.asarray(d.apply_fn(result.params, jnp.asarray(x_f))).astype(np.float64)
  pt = _np_softmax(train_logits)
  entropy = np.mean(-np.sum(pt * np.log(pt), 1))
  assert entropy >= 0.9 * np.log(10), entropy
  assert forget_acc <= 0.10 + 0.05, forget_acc
  assert np.all(np.isfinite(p))
  # History: epoch 0 is the original; forget accuracy falls, KL from the original grows.
  assert result.history[0]["epoch"] == 0 and len(result.history) == FAMRConfig().epochs + 1
  assert result.history[-1]["forget_acc"] < result.history[0]["forget_acc"]
  assert result.history[-1]["forget_kl_from_original"] > result.history[0]["forget_kl_from_original"] == 0.0
  distance = np.sqrt(sum(np.sum((np.asarray(a) - np.asarray(b)) ** 2)
                         for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(d.params))))
  assert result.history[-1]["param_distance"] == pytest.approx(distance, rel=1e-4)


def test_same_key_same_params_other_key_other_params(trained_digits):
  d = trained_digits
  x_f = d.data.x_train[d.data.y_train == 5]
  cfg = FAMRConfig(epochs=2)
  a = famr_unlearn(d.apply_fn, d.params, x_f, cfg, jax.random.key(7), show_progress=False).params
  b = famr_unlearn(d.apply_fn, d.params, x_f, cfg, jax.random.key(7), show_progress=False).params
  c = famr_unlearn(d.apply_fn, d.params, x_f, cfg, jax.random.key(8), show_progress=False).params
  assert all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert not all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def test_trainable_mask_freezes_leaves_bit_for_bit(trained_digits):
  d = trained_digits
  mask = {k: k == "head" for k in d.params}
  mask = jax.tree.map(lambda leaf, m: m, d.params, {k: jax.tree.map(lambda _: mask[k], v)
                                                    for k, v in d.params.items()})
  x_f = d.data.x_train[d.data.y_train == 1]
  out = famr_unlearn(d.apply_fn, d.params, x_f, FAMRConfig(epochs=2), jax.random.key(0),
                     trainable_mask=mask, show_progress=False).params
  for name in d.params:
    same = all(np.array_equal(u, v) for u, v in zip(jax.tree.leaves(out[name]), jax.tree.leaves(d.params[name])))
    assert same == (name != "head"), name


def test_custom_optax_optimizer_is_used():
  x = np.ones((4, 2), np.float32)
  params = {"w": np.eye(2, 3, dtype=np.float32), "b": np.zeros(3, np.float32)}
  r = famr_unlearn(_linear_apply, params, x, FAMRConfig(epochs=1, batch_size=4), jax.random.key(0),
                   optimizer=optax.sgd(0.0), show_progress=False)
  np.testing.assert_array_equal(r.params["w"], params["w"])


@pytest.mark.parametrize("fields, message", [   # a bad number is refused when the config is built
    ({"lr": 0.0}, "learning rate"),
    ({"epochs": 0}, "epochs"),
    ({"lam": -1.0}, "lambda"),
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"beta": 1.0}, "style"),
])
def test_bad_config_is_refused(fields, message):
  with pytest.raises(FamrError, match=message):
    cfg = FAMRConfig(**fields)
    famr_unlearn(_linear_apply, {"w": np.eye(2, 3, dtype=np.float32), "b": np.zeros(3, np.float32)},
                 np.ones((2, 2), np.float32), cfg, jax.random.key(0), show_progress=False)


def test_nan_inputs_are_refused():
  x = np.ones((2, 2), np.float32)
  x[0, 0] = np.nan
  with pytest.raises(FamrError, match="NaN"):
    famr_unlearn(_linear_apply, {"w": np.eye(2, 3, dtype=np.float32), "b": np.zeros(3, np.float32)},
                 x, FAMRConfig(), jax.random.key(0), show_progress=False)
