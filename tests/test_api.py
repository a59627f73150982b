"""The front door, ``famr_jax.unlearn``, on models the library never saw (a plain function, an NNX CNN).

Each model is defined and trained here with a hand-written optax loop; the
assertions read accuracies off the model's own forward pass (the reference).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import famr_jax as fj
from famr_jax.engine.parallel import CompileCounter

FORGET = 3


@pytest.fixture(scope="module")
def digits():
  d = fj.load_dataset("digits")
  return d.x_train, d.y_train


def _train(apply_fn, params, x, y, steps=300, lr=1e-2):
  opt = optax.adam(lr)

  @jax.jit
  def step(p, s):
    loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(apply_fn(q, x), y).mean()
    updates, s = opt.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  state = opt.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params


def _mlp_apply(p, x):
  h = jnp.tanh(x.reshape(len(x), -1) @ p["w1"] + p["b1"])
  return h @ p["w2"] + p["b2"]


@pytest.fixture(scope="module")
def plain_model(digits):
  x, y = digits
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"w1": jax.random.normal(k1, (64, 64)) * 0.125, "b1": jnp.zeros(64),
            "w2": jax.random.normal(k2, (64, 10)) * 0.125, "b2": jnp.zeros(10)}
  return _mlp_apply, _train(_mlp_apply, params, jnp.asarray(x), jnp.asarray(y))


class _NNXCNN(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.head = nnx.Linear(8 * 8 * 8, 10, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.conv(x)).reshape(len(x), -1))


@pytest.fixture(scope="module")
def nnx_model(digits):
  x, y = digits
  graphdef, state = nnx.split(_NNXCNN(nnx.Rngs(0)))
  apply_fn = lambda s, x: nnx.merge(graphdef, s)(x)
  return apply_fn, _train(apply_fn, state, jnp.asarray(x), jnp.asarray(y), steps=200)


def _accuracy(apply_fn, params, x, y):
  return float(np.mean(np.argmax(np.asarray(apply_fn(params, jnp.asarray(x))), -1) == y))


@pytest.mark.parametrize("which", ["plain_model", "nnx_model"])
def test_famr_plus_forgets_the_class_and_keeps_the_rest_and_compiles_once(which, digits, request):
  apply_fn, params = request.getfixturevalue(which)
  x, y = digits
  forget = fj.forget_classes(y, [FORGET], 10)
  keep = forget.retain_mask(len(y))
  before = _accuracy(apply_fn, params, x[keep], y[keep])
  assert _accuracy(apply_fn, params, x[~keep], y[~keep]) > 0.95 and before > 0.95
  call = lambda: fj.unlearn("famr-plus", apply_fn, params, forget, jax.random.PRNGKey(0), data=(x, y))
  result = call()
  assert _accuracy(apply_fn, result.params, x[~keep], y[~keep]) < 0.15                    # forgotten
  assert _accuracy(apply_fn, result.params, x[keep], y[keep]) >= before - 0.02             # the rest kept
  assert jax.tree.structure(result.params) == jax.tree.structure(params)
  with CompileCounter() as compiles:
    again = call()
  assert compiles.count == 0
  for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))                          # same seed, same result


def test_old_and_new_style_keys_give_the_same_result(plain_model, digits):
  apply_fn, params = plain_model
  x, y = digits
  forget = fj.forget_random(jax.random.PRNGKey(1), 0.05, len(y), 10)
  runs = [fj.unlearn("famr", apply_fn, params, forget, k, data=(x, y)) for k in
          (jax.random.PRNGKey(5), jax.random.key(5), jax.random.key(6))]
  leaves = [np.concatenate([np.ravel(a) for a in jax.tree.leaves(r.params)]) for r in runs]
  np.testing.assert_array_equal(leaves[0], leaves[1])
  assert not np.array_equal(leaves[0], leaves[2])
  # A sample request takes the sample defaults: a step budget of 25, cut to 5 passes over a smaller request.
  passes = 5 * -(-len(forget.indices) // 32)
  assert runs[0].config.steps == min(25, passes) and passes < 25


def test_data_free_method_on_a_plain_function(plain_model, digits):
  apply_fn, params = plain_model
  x, y = digits
  forget = fj.forget_classes(y, [FORGET], 10)
  r = fj.unlearn("impressions", apply_fn, params, forget, jax.random.key(0), input_shape=(8, 8, 1))
  keep = forget.retain_mask(len(y))
  assert _accuracy(apply_fn, r.params, x[~keep], y[~keep]) < 0.05
  assert _accuracy(apply_fn, r.params, x[keep], y[keep]) > 0.9


def test_result_prints_compactly(plain_model, digits):
  apply_fn, params = plain_model
  x, y = digits
  r = fj.unlearn("ga", apply_fn, params, fj.forget_classes(y, [FORGET], 10), jax.random.key(0), data=(x, y),
                 lr=1e-3)
  text = repr(r)
  assert text.startswith("UnlearnResult(method='ga'") and "4,810" in text and len(text) < 400
  assert "Array(" not in text and "[[" not in text
  assert r.config.lr == 1e-3


@pytest.mark.parametrize("call, message", [
    (lambda a, p, f, x, y: fj.unlearn("nope", a, p, f, jax.random.key(0), data=(x, y)), "unknown method 'nope'"),
    (lambda a, p, f, x, y: fj.unlearn("famr", a, p, f, jax.random.key(0)), "reads the training data"),
    (lambda a, p, f, x, y: fj.unlearn("famr", a, p, f, 0, data=(x, y)), "key must be a JAX PRNG key"),
    (lambda a, p, f, x, y: fj.unlearn("famr", a, p, f, jax.random.key(0), data=(x, y + 10)), "labels y must be"),
    (lambda a, p, f, x, y: fj.unlearn("famr", a, p, f, jax.random.key(0), data=(x, y), gamma=1.0),
     "has no option gamma"),
    (lambda a, p, f, x, y: fj.unlearn("famr", a, p, [3], jax.random.key(0), data=(x, y)), "forget must be"),
    (lambda a, p, f, x, y: fj.unlearn("famr", a, p, f, jax.random.key(0), data=(x[:10], y[:10])),
     "training examples but data holds 10"),
    (lambda a, p, f, x, y: fj.unlearn("famr", a, p, f, jax.random.key(0), data=(x, y),
                                      config=fj.TrainConfig()), "must be a FAMRConfig"),
])
def test_a_mistake_is_one_line(plain_model, digits, call, message):
  apply_fn, params = plain_model
  x, y = digits
  with pytest.raises(fj.FamrError, match=message) as err:
    call(apply_fn, params, fj.forget_classes(y, [FORGET], 10), x, y)
  assert "\n" not in str(err.value)


def test_compare_in_python_scores_against_the_users_retrain(plain_model, digits):
  apply_fn, params = plain_model
  x, y = digits
  data = fj.load_dataset("digits")
  k1, k2 = jax.random.split(jax.random.key(3))
  init = {"w1": jax.random.normal(k1, (64, 64)) * 0.125, "b1": jnp.zeros(64),
          "w2": jax.random.normal(k2, (64, 10)) * 0.125, "b2": jnp.zeros(10)}
  retrain = lambda xr, yr, key: _train(_mlp_apply, init, jnp.asarray(xr), jnp.asarray(yr))
  board = fj.compare(["famr-plus"], apply_fn, params, data, fj.forget_classes(y, [FORGET], 10),
                     retrain=retrain, seeds=1)
  s = board["summary"]
  # The retrained model never saw class 3; the original classifies it: a gap of ~100 forget points,
  # which famr-plus closes.
  assert s["original"]["gap_forget_acc"]["mean"] > 90
  assert s["famr-plus"]["avg_gap"]["mean"] < s["original"]["avg_gap"]["mean"] / 4
  assert board["retrained"][0]["metrics"]["forget_acc"] < 0.05
  with pytest.raises(fj.FamrError, match="listed more than once"):
    fj.compare(["ga", "ga"], apply_fn, params, data, fj.forget_classes(y, [FORGET], 10), retrain=retrain)


def test_load_model_needs_no_data(tmp_path):
  model = fj.models.create_model("lenet5", 10, (28, 28, 1))
  params = fj.models.init_params(model, jax.random.key(0), (28, 28, 1))
  fj.save_checkpoint(str(tmp_path / "c"), params, {"model": "lenet5", "num_classes": 10, "image_shape": [28, 28, 1],
                                                   "data": {"dataset": "idx:/nonexistent"}})
  loaded = fj.load_model(tmp_path / "c")
  x = jnp.ones((2, 28, 28, 1))
  np.testing.assert_array_equal(np.asarray(loaded.apply_fn(loaded.params, x)),
                                np.asarray(fj.models.make_apply_fn(model)(params, x)))
  assert "lenet5" in repr(loaded) and dataclasses.is_dataclass(loaded) is False
