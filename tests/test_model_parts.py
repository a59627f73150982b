"""Bring your own model (issue 12, part 5): Linen, NNX and plain-function models the library never saw.

Each model is defined and trained here (a hand-written optax loop on
scikit-learn digits), cut into a frozen head and a trainable tail by
famr_jax.models.parts, and unlearned zero-shot. The references are the
models' own forward passes and their measured accuracies.
"""


import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from famr_jax.data.datasets import load_dataset
from famr_jax.engine.parallel import CompileCounter
from famr_jax.errors import FamrError
from famr_jax.methods.impressions import ImpressionConfig, class_impressions
from famr_jax.methods.zero_shot import ZeroShotConfig, zero_shot_unlearn
from famr_jax.models.parts import ModelParts, linen_parts, nnx_parts

FORGET = 3
# Small enough for a test, as in tests/test_zero_shot.py's fixture runs.
ZS = ZeroShotConfig(impressions_per_class=40, impression_steps=200, epochs=30)
JOINT = dataclasses.replace(ZS, separate_steps=False)   # fewer programs to compile than separate passes


@pytest.fixture(scope="module")
def digits():
  return load_dataset("digits")


def _train(apply_fn, params, data, *, epochs=8, lr=3e-3, batch=64, seed=0):
  """A plain optax Adam loop on softmax cross-entropy (what a user would write)."""
  opt = optax.adam(lr)

  @jax.jit
  def step(params, opt_state, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, x), y).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = opt.init(params)
  rng = np.random.default_rng(seed)
  n = (len(data.x_train) // batch) * batch
  for _ in range(epochs):
    order = rng.permutation(len(data.x_train))[:n].reshape(-1, batch)
    for idx in order:
      params, opt_state = step(params, opt_state, data.x_train[idx], data.y_train[idx])
  return params


def _accuracies(apply_fn, params, data):
  """(accuracy on the forget class, accuracy on the others) on the test split."""
  pred = np.asarray(jnp.argmax(jax.jit(apply_fn)(params, data.x_test), -1))
  is_f = data.y_test == FORGET
  return float(np.mean(pred[is_f] == FORGET)), float(np.mean(pred[~is_f] == data.y_test[~is_f]))


# ----------------------------------------------------------------------------- the three models


class LinenCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name="conv1")(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(32, name="fc1")(x))
    return nn.Dense(10, name="fc2")(x)


class NNXCNN(nnx.Module):
  def __init__(self, rngs):
    self.conv1 = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.fc1 = nnx.Linear(8 * 8 * 8, 32, rngs=rngs)
    self.fc2 = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv1(x))
    x = nnx.relu(self.fc1(x.reshape((x.shape[0], -1))))
    return self.fc2(x)


def plain_head(p, x):
  return jax.nn.relu(x.reshape((x.shape[0], -1)) @ p["w1"] + p["b1"])


def plain_tail(p, h):
  return h @ p["w2"] + p["b2"]


def plain_apply(p, x):
  return plain_tail(p, plain_head(p, x))


@pytest.fixture(scope="module")
def linen_model(digits):
  model = LinenCNN()
  params = model.init(jax.random.key(0), digits.x_train[:1])["params"]
  apply_fn = lambda p, x: model.apply({"params": p}, x)
  return model, _train(apply_fn, params, digits), apply_fn


@pytest.fixture(scope="module")
def nnx_model(digits):
  graphdef, state = nnx.split(NNXCNN(nnx.Rngs(0)))
  apply_fn = lambda s, x: nnx.merge(graphdef, s)(x)
  return graphdef, _train(apply_fn, state, digits), apply_fn


@pytest.fixture(scope="module")
def plain_model(digits):
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {"w1": jax.random.normal(k1, (64, 32)) / 8.0, "b1": jnp.zeros(32),
            "w2": jax.random.normal(k2, (32, 10)) / np.sqrt(32.0), "b2": jnp.zeros(10)}
  return _train(plain_apply, params, digits, epochs=15)


# ----------------------------------------------------------------------------- checks


def _check_cut(parts, params, apply_fn, x):
  """head then tail is the model's own forward pass (eager and jitted)."""
  ref = np.asarray(apply_fn(params, x))
  np.testing.assert_allclose(np.asarray(parts.tail_fn(params, parts.head_fn(params, x))), ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(jax.jit(parts.apply_fn)(params, x)), ref, rtol=1e-5, atol=1e-5)


def _check_unlearning(parts, params, apply_fn, data, head_keys, tail_keys, config=ZS):
  """Zero-shot unlearning of FORGET: only the tail moves; the class goes, the others stay."""
  forget0, retain0 = _accuracies(apply_fn, params, data)
  r = zero_shot_unlearn(parts, params, [FORGET], 10, data.image_shape, config, jax.random.key(0),
                        show_progress=False)
  for k in head_keys:   # bit-identical head
    for a, b in zip(jax.tree.leaves(r.params[k]), jax.tree.leaves(params[k])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for k in tail_keys:
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(r.params[k]), jax.tree.leaves(params[k])))
  forget1, retain1 = _accuracies(apply_fn, r.params, data)
  # Measured (digits test split, 3 models): forget 0.96-0.98 -> 0.00; retain 0.968-0.975 -> 0.958-0.978.
  assert forget0 > 0.9 and retain0 > 0.93
  assert forget1 <= 0.05
  assert retain1 >= retain0 - 0.04
  return r


def test_linen_cnn(digits, linen_model):
  model, params, apply_fn = linen_model
  x = digits.x_test[:64]
  deep = linen_parts(model, params, "fc1", x[:1])
  _check_cut(deep, params, apply_fn, x)
  assert {k: all(jax.tree.leaves(v)) for k, v in deep.trainable_mask.items()} == {
      "conv1": False, "fc1": True, "fc2": True}
  parts = linen_parts(model, params, "fc2", jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))
  _check_cut(parts, params, apply_fn, x)
  assert parts.head_fn(params, x).shape == (64, 32)
  # Memoized: rebuilding the parts gives the same functions (compiled programs are found again).
  again = linen_parts(model, params, "fc2", x[:5])
  assert again.head_fn is parts.head_fn and again.tail_fn is parts.tail_fn
  _check_unlearning(parts, params, apply_fn, digits, ["conv1", "fc1"], ["fc2"])


def test_nnx_cnn(digits, nnx_model):
  graphdef, state, apply_fn = nnx_model
  x = digits.x_test[:64]
  deep = nnx_parts(graphdef, state, "fc1", x[:1])
  _check_cut(deep, state, apply_fn, x)
  assert {k: all(jax.tree.leaves(deep.trainable_mask[k])) for k in ("conv1", "fc1", "fc2")} == {
      "conv1": False, "fc1": True, "fc2": True}
  parts = nnx_parts(graphdef, state, "fc2", x[:1])
  _check_cut(parts, state, apply_fn, x)
  r = _check_unlearning(parts, state, apply_fn, digits, ["conv1", "fc1"], ["fc2"], JOINT)
  assert isinstance(r.params, nnx.State)
  # The user's way back to a module.
  model = nnx.merge(graphdef, r.params)
  np.testing.assert_allclose(np.asarray(model(x)), np.asarray(apply_fn(r.params, x)), rtol=1e-6)


def test_plain_function_with_dict_params(digits, plain_model):
  params = plain_model
  parts = ModelParts(plain_head, plain_tail, {"w1": False, "b1": False, "w2": True, "b2": True}, "w2")
  _check_cut(parts, params, plain_apply, digits.x_test[:64])
  _check_unlearning(parts, params, plain_apply, digits, ["w1", "b1"], ["w2", "b2"], JOINT)
  # A second identical call compiles nothing.
  with CompileCounter() as count:
    zero_shot_unlearn(parts, params, [FORGET], 10, digits.image_shape, JOINT, jax.random.key(0),
                      show_progress=False)
  assert count.count == 0
  # Pixel-space impressions run through head and tail.
  imp = class_impressions(parts, params, [0, 1], 10, digits.image_shape,
                          ImpressionConfig(num_per_class=3, steps=50, space="pixel"), jax.random.key(1))
  assert imp.inputs.shape[1:] == (8, 8, 1) and imp.kept_per_class.sum() > 0


def test_bad_cuts():
  class Twice(nn.Module):
    @nn.compact
    def __call__(self, x):
      d = nn.Dense(4, name="shared")
      return nn.Dense(2, name="out")(d(nn.relu(d(x))))

  x = jnp.ones((1, 4))
  params = Twice().init(jax.random.key(0), x)["params"]
  with pytest.raises(FamrError, match="called 2 times"):
    linen_parts(Twice(), params, "shared", x)
  with pytest.raises(FamrError, match="in call order: shared, shared, out"):
    linen_parts(Twice(), params, "fc9", x)
  graphdef, state = nnx.split(NNXCNN(nnx.Rngs(0)))
  with pytest.raises(FamrError, match="in call order: conv1, fc1, fc2"):
    nnx_parts(graphdef, state, "conv9", jnp.ones((1, 8, 8, 1)))
  parts = linen_parts(Twice(), params, "out", x)
  with pytest.raises(FamrError, match="differs from the cut"):
    zero_shot_unlearn(parts, params, [0], 2, (4,), ZeroShotConfig(tail_layer="shared"), jax.random.key(0))
  with pytest.raises(FamrError, match=r"pass linen_parts\(module, params, layer, example_input\)"):
    zero_shot_unlearn(Twice(), params, [0], 2, (4,), ZeroShotConfig(), jax.random.key(0))
  with pytest.raises(FamrError, match="cannot cut a plain apply_fn"):
    zero_shot_unlearn(plain_apply, {}, [0], 2, (4,), ZeroShotConfig(tail_layer="w2"), jax.random.key(0))


def test_front_door_frozen_head_and_style_loss_with_nnx_parts(digits, nnx_model):
  # famr-plus with the parts' cut as its frozen head, and FAMR's style loss on the parts' head output,
  # through famr_jax.unlearn on a model the library never saw.
  import famr_jax as fj
  graphdef, state, apply_fn = nnx_model
  parts = nnx_parts(graphdef, state, "fc2", digits.x_test[:1])
  x, y = digits.x_train, digits.y_train
  forget = fj.forget_classes(y, [FORGET], 10)
  r = fj.unlearn("famr-plus", apply_fn, state, forget, jax.random.key(0), data=(x, y), model=parts)
  for name in ("conv1", "fc1"):   # the head: bit-identical
    for a, b in zip(jax.tree.leaves(state[name]), jax.tree.leaves(r.params[name])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  test = digits.y_test == FORGET
  pred = lambda p, m: np.argmax(np.asarray(apply_fn(p, digits.x_test[m])), -1) == digits.y_test[m]
  assert pred(r.params, test).mean() <= 0.1 and pred(r.params, ~test).mean() >= pred(state, ~test).mean() - 0.03
  plain = fj.unlearn("famr", apply_fn, state, forget, jax.random.key(0), data=(x, y), model=parts, epochs=1)
  styled = fj.unlearn("famr", apply_fn, state, forget, jax.random.key(0), data=(x, y), model=parts, epochs=1,
                      beta=1.0)
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(plain.params),
                                                            jax.tree.leaves(styled.params)))
  assert diff > 0   # the style term moved the weights
  with pytest.raises(FamrError, match="differs from the model parts' cut"):
    fj.unlearn("famr", apply_fn, state, forget, jax.random.key(0), data=(x, y), model=parts, beta=1.0,
               style_layer="fc1")
