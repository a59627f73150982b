"""Style forgetting (issue 16): the style task, the Gram loss against NumPy, the task end to end on digits."""

import jax
import numpy as np
import pytest

from famr_jax import losses, models
from famr_jax.data.datasets import load_dataset
from famr_jax.data.styles import TEXTURE_STRENGTH, make_style_task
from famr_jax.errors import FamrError


@pytest.fixture(scope="module")
def digits():
  return load_dataset("digits")


# ----------------------------------------------------------------------------- the style transform


@pytest.mark.parametrize("style", ["invert", "texture"])
def test_style_task_is_seeded_stratified_and_leaves_the_rest_untouched(digits, style):
  a = make_style_task(digits, style, 0.2, jax.random.key(3))
  b = make_style_task(digits, style, 0.2, jax.random.key(3))
  c = make_style_task(digits, style, 0.2, jax.random.key(4))
  assert np.array_equal(a.forget.indices, b.forget.indices)
  assert a.data.x_train.tobytes() == b.data.x_train.tobytes()
  assert a.x_test_styled.tobytes() == b.x_test_styled.tobytes()
  assert not np.array_equal(a.forget.indices, c.forget.indices)
  # Stratified: round(20%) of every class.
  for k in range(10):
    n_k = int(np.sum(digits.y_train == k))
    assert int(np.sum(digits.y_train[a.forget.indices] == k)) == max(1, round(0.2 * n_k))
  keep = a.forget.retain_mask(len(digits.y_train))
  assert a.data.x_train[keep].tobytes() == digits.x_train[keep].tobytes()    # un-chosen: byte-identical
  assert np.array_equal(a.data.y_train, digits.y_train) and a.data.x_test.tobytes() == digits.x_test.tobytes()
  chosen, styled = digits.x_train[a.forget.indices], a.data.x_train[a.forget.indices]
  assert np.all(np.abs(styled - chosen).reshape(len(chosen), -1).max(axis=1) > 0.1)   # every chosen one changed
  if style == "invert":
    np.testing.assert_array_equal(styled, 1.0 - chosen)
    np.testing.assert_array_equal(a.x_test_styled, 1.0 - digits.x_test)
  else:
    # One fixed texture T for every image (train and test): styled = (1 - s) x + s T.
    texture = (a.x_test_styled[0] - (1 - TEXTURE_STRENGTH) * digits.x_test[0]) / TEXTURE_STRENGTH
    np.testing.assert_allclose(styled, (1 - TEXTURE_STRENGTH) * chosen + TEXTURE_STRENGTH * texture, atol=1e-5)
    assert texture.std() > 0.1 and texture.min() >= -1e-6 and texture.max() <= 1 + 1e-6
    assert not np.allclose(texture, (c.x_test_styled[0] - (1 - TEXTURE_STRENGTH) * digits.x_test[0])
                           / TEXTURE_STRENGTH, atol=1e-3)   # another seed, another texture


def test_style_task_refuses_bad_requests(digits):
  with pytest.raises(FamrError, match="unknown style"):
    make_style_task(digits, "sepia", 0.2, jax.random.key(0))
  with pytest.raises(FamrError, match="strictly between 0 and 1"):
    make_style_task(digits, "invert", 1.0, jax.random.key(0))


# ----------------------------------------------------------------------------- the Gram loss vs NumPy


def _numpy_lenet_conv1(params, x):
  """LeNet5's conv1 stage in NumPy: 5x5 conv (padding 2), bias, ReLU, 2x2 max pool (floor)."""
  k = np.asarray(params["conv1"]["kernel"], np.float64)     # [5, 5, Cin, Cout]
  bias = np.asarray(params["conv1"]["bias"], np.float64)
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (2, 2), (2, 2), (0, 0)))
  n, h, w = x.shape[0], x.shape[1], x.shape[2]
  out = np.zeros((n, h, w, k.shape[-1]))
  for i in range(h):
    for j in range(w):
      out[:, i, j, :] = np.einsum("nabc,abcd->nd", xp[:, i:i + 5, j:j + 5, :], k) + bias
  out = np.maximum(out, 0.0)
  return out[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, -1).max(axis=(2, 4))


def _numpy_gram(f):
  flat = f.reshape(f.shape[0], -1, f.shape[-1])
  return np.einsum("bmk,bml->bkl", flat, flat) / flat.shape[1]


def test_style_loss_and_gram_targets_match_numpy_on_lenet_conv1(digits):
  from famr_jax.methods.famr import style_features
  from famr_jax.methods.style import gram_targets

  model = models.create_model("lenet5", 10, digits.image_shape)
  rng = np.random.default_rng(0)   # conv1's params only: the style layer's features read nothing else
  params = {"conv1": {"kernel": rng.normal(0, 0.3, (5, 5, 1, 6)).astype(np.float32),
                      "bias": rng.normal(0, 0.1, 6).astype(np.float32)}}
  x, y = digits.x_train[:40], digits.y_train[:40]
  x_f, y_f = 1.0 - digits.x_train[40:46], digits.y_train[40:46]
  feats = _numpy_lenet_conv1(params, x)
  feats_f = _numpy_lenet_conv1(params, x_f)
  assert feats.shape == (40, 4, 4, 6)
  grams, grams_f = _numpy_gram(feats), _numpy_gram(feats_f)
  target = grams.mean(axis=0)
  expected = np.sum((grams_f - target) ** 2, axis=(1, 2))
  feature_fn = style_features(model, "conv1")
  got = np.asarray(losses.style_loss(feature_fn(params, x_f), losses.mean_gram(feature_fn, params, x, batch_size=16)))
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  # The per-class target: the mean Gram of the retained images of each forget image's own class.
  per_class = gram_targets(feature_fn, params, "class-mean", retain=(x, y), y_forget=y_f, num_classes=10)
  for t, c in zip(per_class, y_f):
    np.testing.assert_allclose(t, grams[y == c].mean(axis=0), rtol=1e-4, atol=1e-7)
  shared = gram_targets(feature_fn, params, "retained-mean", retain=(x, y), y_forget=y_f, num_classes=10)
  np.testing.assert_allclose(shared, target, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- end to end

STYLE_STEPS = {"steps": 4, "lr": 1e-2}


@pytest.fixture(scope="module")
def style_board(digits, trained_digits):
  """The suite's MLP and recipe (programs compiled once), trained on digits with 20% of each class inverted,
  and the style board of two FAMR style variants (one compiled program: both have per-example targets)."""
  from famr_jax.evaluation.style import style_leaderboard, train_recipe

  task = make_style_task(digits, "invert", 0.2, jax.random.key(0))
  model, apply_fn, recipe = trained_digits.model, trained_digits.apply_fn, trained_digits.train_config
  params = train_recipe(model, apply_fn, digits.image_shape, recipe)(task.data.x_train, task.data.y_train,
                                                                     jax.random.key(5)).params
  board = style_leaderboard(task, digits.x_train, model, apply_fn, params, recipe, model_name="mlp",
                            methods=("famr-style-class", "famr-style-oracle"), overrides={"famr-style*": STYLE_STEPS})
  return task, model, apply_fn, params, board


def test_style_task_end_to_end_on_digits(digits, style_board):
  from famr_jax.evaluation.style import board_rows, format_style_board

  task, _, apply_fn, params, board = style_board
  assert set(board["summary"]) == {"original", "famr-style-class", "famr-style-oracle"}
  from famr_jax.methods.registry import method_names
  assert not set(board["summary"]) & set(method_names()) - {"original"}   # run as specs, never registered
  assert board["style"]["layer"] == "fc1" and board["style"]["beta"] > 0
  assert board["configs"]["famr-style-class"]["gram_target"] == "class-mean"
  assert board["configs"]["famr-style-oracle"]["alpha"] == 0.0 and board["configs"]["famr-style-oracle"]["steps"] == 4
  y = digits.y_test
  acc = lambda p, x: float(np.mean(np.argmax(np.asarray(apply_fn(p, x)), -1) == y))
  original = next(r for r in board["runs"] if r["method"] == "original")
  assert original["extra"]["styled_test_acc"] == pytest.approx(acc(params, 1.0 - digits.x_test), abs=1e-6)
  assert original["extra"]["clean_test_acc"] == pytest.approx(acc(params, digits.x_test), abs=1e-6)
  # The model that never saw the style is far worse on it than the one trained with it.
  gold = board["retrained"][0]["extra"]
  assert gold["styled_test_acc"] < original["extra"]["styled_test_acc"] - 0.2
  for r in board["runs"]:
    assert r["extra_gaps"]["styled_test_acc"] == pytest.approx(
        100 * abs(r["extra"]["styled_test_acc"] - gold["styled_test_acc"]), abs=1e-9)
  rows = {r["method"]: r for r in board_rows(board)}
  assert rows["retrained"]["styled_test_acc"] == pytest.approx(100 * gold["styled_test_acc"])
  assert {"retrained", "original", "famr-style-class", "famr-style-oracle"} == set(rows)
  board = {**board, "model": "mlp", "dataset": "digits"}
  assert "famr-style-class" in format_style_board(board) and "retrained (gold)" in format_style_board(board)


def test_gram_loss_alone_moves_only_the_layers_below_the_style_layer(digits, style_board):
  """With alpha 0, nothing after the style layer has a gradient: Adam leaves it bit-identical; the style
  layer moves, and the forget images' Gram distance to their per-class targets (NumPy) falls."""
  from famr_jax.methods.famr import FAMRConfig, style_features
  from famr_jax.methods.style import famr_style_unlearn, gram_targets

  task, model, apply_fn, params, board = style_board
  feature_fn = style_features(model, "fc1")
  idx, keep = task.forget.indices, task.forget.retain_mask(len(digits.y_train))
  x_f, y_f = task.data.x_train[idx], digits.y_train[idx]
  targets = gram_targets(feature_fn, params, "class-mean", retain=(task.data.x_train[keep], digits.y_train[keep]),
                         y_forget=y_f, num_classes=10)
  settings = {k: v for k, v in board["configs"]["famr-style-class"].items() if k != "gram_target"}
  new = famr_style_unlearn(apply_fn, params, x_f, targets, FAMRConfig(**settings), jax.random.key(0),
                           feature_fn=feature_fn, y_forget=y_f).params   # the board's program, from the cache
  later = [k for k in params if k != "fc1"]
  assert later
  for a, b in zip(jax.tree.leaves({k: params[k] for k in later}), jax.tree.leaves({k: new[k] for k in later})):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(params["fc1"]["kernel"]), np.asarray(new["fc1"]["kernel"]))

  def distance(p):   # fc1 in NumPy: relu(flatten(x) W + b); a vector's Gram is its outer product
    f = np.maximum(x_f.reshape(len(x_f), -1) @ np.asarray(p["fc1"]["kernel"]) + np.asarray(p["fc1"]["bias"]), 0)
    return np.mean(np.sum((f[:, :, None] * f[:, None, :] - targets) ** 2, axis=(1, 2)))
  assert distance(new) < distance(params)
