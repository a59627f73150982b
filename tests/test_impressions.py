"""Class impressions: Eq. 3 against a NumPy Adam, target logits, kept counts, grid, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from famr_jax import models
from famr_jax.engine.parallel import CompileCounter
from famr_jax.errors import FamrError
from famr_jax.methods.impressions import (ImpressionConfig, class_impressions, optimize_impressions,
                                  save_impression_grid, xavier_normal_std)


def _numpy_adam_impressions(w, b, targets, x0, steps, lr, beta, lower, upper):
  """Independent reference: per-impression Adam ascent on w[:, t] . x + b[t] - beta ||x||^2, clipped."""
  x = x0.astype(np.float64).copy()
  m, v = np.zeros_like(x), np.zeros_like(x)
  b1, b2, eps = 0.9, 0.999, 1e-8
  for t in range(1, steps + 1):
    g = -(w[:, targets].T - 2 * beta * x)          # gradient of the minimized -objective
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    x = x - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    x = np.clip(x, lower, upper)
  return x


def test_optimize_impressions_matches_numpy_adam_with_penalty_and_clipping():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(5, 3)).astype(np.float32)
  b = rng.normal(size=3).astype(np.float32)
  targets = np.array([0, 1, 2, 2])
  x0 = rng.uniform(0, 1, size=(4, 5)).astype(np.float32)
  tail = lambda p, x: x @ p[0] + p[1]
  x, logits = jax.jit(optimize_impressions, static_argnames=("tail_fn", "steps", "lr", "beta", "lower", "upper"))(
      tail_fn=tail, params=(w, b), targets=jnp.asarray(targets), x0=jnp.asarray(x0), steps=40, lr=0.05,
      beta=0.3, lower=0.0, upper=1.0)
  ref = _numpy_adam_impressions(w.astype(np.float64), b, targets, x0, 40, 0.05, 0.3, 0.0, 1.0)
  np.testing.assert_allclose(np.asarray(x), ref, atol=1e-5)
  np.testing.assert_allclose(np.asarray(logits), ref @ w + b, rtol=1e-5, atol=1e-5)


def test_each_impression_is_optimized_independently_of_the_batch():
  """vmap(grad): class 1's impressions are the same alone or batched with class 0's."""
  w = jnp.array([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.3]])
  tail = lambda p, x: jnp.tanh(x @ p) * 3.0
  x0 = jax.random.normal(jax.random.key(0), (4, 3))
  run = jax.jit(optimize_impressions, static_argnames=("tail_fn", "steps", "lr", "beta", "lower", "upper"))
  both, _ = run(tail_fn=tail, params=w, targets=jnp.array([0, 0, 1, 1]), x0=x0, steps=25, lr=0.1)
  alone, _ = run(tail_fn=tail, params=w, targets=jnp.array([1, 1]), x0=x0[2:], steps=25, lr=0.1)
  np.testing.assert_allclose(np.asarray(both[2:]), np.asarray(alone), atol=1e-6)


def test_xavier_std_is_pytorchs_for_a_batch_of_one():
  assert xavier_normal_std((84,)) == pytest.approx(np.sqrt(2 / 85))
  # [1, 16, 5, 5] in PyTorch: fan_in 16*25 = 400, fan_out 1*25.
  assert xavier_normal_std((5, 5, 16)) == pytest.approx(np.sqrt(2 / 425))


def test_activation_impressions_raise_their_logit_and_are_classified_as_target(trained_digits):
  d = trained_digits
  cfg = ImpressionConfig(num_per_class=8, steps=100, layer="head")
  imp = class_impressions(d.model, d.params, range(10), 10, d.data.image_shape, cfg, jax.random.key(0))
  tail = models.make_tail_apply_fn(d.model, "head")
  logits = np.asarray(tail(d.params, jnp.asarray(imp.inputs)))
  np.testing.assert_allclose(logits, imp.logits, rtol=1e-4, atol=1e-3)
  assert np.all(np.argmax(logits, -1) == imp.labels)
  assert imp.kept_per_class.tolist() == [int(np.sum(imp.labels == c)) for c in range(10)]
  assert imp.kept_per_class.sum() >= 70          # a trained MLP: nearly all reach their class
  # The starting noise (same key and std) had far lower target logits.
  x0 = xavier_normal_std((64,)) * jax.random.normal(jax.random.key(0), (80, 64))
  start = np.asarray(tail(d.params, x0))[np.arange(80), np.repeat(np.arange(10), 8)]
  kept_start = start.reshape(10, 8)
  for c in range(10):
    assert imp.logits[imp.labels == c, c].min() > kept_start[c].max()


def test_pixel_impressions_stay_in_range_and_nonnegative_projection(trained_digits):
  d = trained_digits
  imp = class_impressions(d.apply_fn, d.params, [3, 7], 10, d.data.image_shape,
                          ImpressionConfig(num_per_class=4, steps=60, space="pixel", norm_penalty=0.01),
                          jax.random.key(1))
  assert imp.inputs.shape[1:] == (8, 8, 1) and imp.layer is None
  assert imp.inputs.min() >= 0.0 and imp.inputs.max() <= 1.0
  logits = np.asarray(d.apply_fn(d.params, jnp.asarray(imp.inputs)))
  assert np.all(np.argmax(logits, -1) == imp.labels) and set(imp.labels) <= {3, 7}
  act = class_impressions(d.model, d.params, [0, 1], 10, d.data.image_shape,
                          ImpressionConfig(num_per_class=4, steps=60, layer="head", nonnegative=True),
                          jax.random.key(2))
  assert act.inputs.min() >= 0.0 and act.inputs.shape[1:] == (64,)


def test_impressions_are_deterministic(trained_digits):
  d = trained_digits
  cfg = ImpressionConfig(num_per_class=3, steps=30, layer="head")
  a = class_impressions(d.model, d.params, [1, 2], 10, d.data.image_shape, cfg, jax.random.key(5))
  b = class_impressions(d.model, d.params, [1, 2], 10, d.data.image_shape, cfg, jax.random.key(5))
  np.testing.assert_array_equal(a.inputs, b.inputs)
  with CompileCounter() as count:   # another key, same shapes: nothing compiles again
    c = class_impressions(d.model, d.params, [1, 2], 10, d.data.image_shape, cfg, jax.random.key(6))
  assert count.count == 0
  assert not np.array_equal(a.inputs, c.inputs)


def test_grid_png_has_one_row_per_class(tmp_path):
  from famr_jax.methods.impressions import ImpressionSet
  x = np.stack([np.full((3, 2, 1), v, np.float32) for v in (0.0, 0.5, 1.0)])
  s = ImpressionSet(x, np.array([4, 4, 9]), np.zeros((3, 10)), (4, 9), np.array([2, 1]), 2, "pixel", None, 0, 0)
  path = tmp_path / "grid.png"
  save_impression_grid(s, path, scale=1)
  g = np.asarray(Image.open(path))
  # 2 rows of height 3 and 2 columns of width 2, 1-pixel borders: 9 x 7.
  assert g.shape == (9, 7)
  assert (g[1:4, 1:3] == 0).all() and (g[1:4, 4:6] == 128).all()   # class 4: 0.0 and 0.5
  assert (g[5:8, 1:3] == 255).all() and (g[5:8, 4:6] == 0).all()   # class 9: 1.0, then empty
  act = s._replace(space="activation")
  with pytest.raises(FamrError, match="activations"):
    save_impression_grid(act, path)


def test_bad_impression_requests(trained_digits):
  d = trained_digits
  cfg = ImpressionConfig(num_per_class=2, steps=5)
  with pytest.raises(FamrError, match="out of range"):
    class_impressions(d.model, d.params, [10], 10, d.data.image_shape, cfg, jax.random.key(0))
  with pytest.raises(FamrError, match="no classes"):
    class_impressions(d.model, d.params, [], 10, d.data.image_shape, cfg, jax.random.key(0))
  with pytest.raises(FamrError, match="unknown layer 'fc9'"):
    class_impressions(d.model, d.params, [1], 10, d.data.image_shape,
                      ImpressionConfig(num_per_class=2, steps=5, layer="fc9"), jax.random.key(0))
  with pytest.raises(FamrError, match="named layers"):
    class_impressions(d.apply_fn, d.params, [1], 10, d.data.image_shape, cfg, jax.random.key(0))
  with pytest.raises(FamrError, match="impression space"):
    ImpressionConfig(space="latent").validate()


def _fake_tfds_cifar10(num_per_class=6, size=8, num_classes=10, channels=3, test_split="test",
                       varying_size=False):
  """A stand-in tensorflow_datasets with a tiny learnable data set (a bright patch per class).

  With ``varying_size`` every image has its own shape (as ImageNet's do) and the feature's shape is
  ``(None, None, C)``, so the loader must stream and resize; ``test_split="validation"`` as ImageNet.
  """
  import types
  rng = np.random.default_rng(0)

  def mark(x, c):   # class c: a bright 2x2 patch at one of 16 places, in channel (c + c // 16) % C
    cell = c % 16
    x[(cell // 4) * 2:(cell // 4) * 2 + 2, (cell % 4) * 2:(cell % 4) * 2 + 2, (c + c // 16) % channels] = 255
    return x

  def split(n):
    y = np.repeat(np.arange(num_classes), n)
    if varying_size:
      sides = size + rng.integers(0, 5, len(y))
      return [mark(rng.integers(0, 60, (s, s, channels)).astype(np.uint8), c) for s, c in zip(sides, y)], y
    x = rng.integers(0, 60, (len(y), size, size, channels)).astype(np.uint8)
    return [mark(xi, c) for xi, c in zip(x, y)], y

  splits = {"train": split(num_per_class), test_split: split(2)}

  class Builder:
    info = types.SimpleNamespace(
        splits={"train": None, test_split: None},
        features={"image": types.SimpleNamespace(shape=(None, None, channels) if varying_size
                                                 else (size, size, channels)),
                  "label": types.SimpleNamespace(names=[f"c{i}" for i in range(num_classes)],
                                                 num_classes=num_classes)})

    def download_and_prepare(self):
      pass

    def as_dataset(self, *, split, batch_size=None, as_supervised=False):
      x, y = splits[split]
      if batch_size is None:   # one (image, label) at a time
        return list(zip(x, np.asarray(y, np.int64)))
      return np.stack(x), np.asarray(y, np.int64)

  mod = types.ModuleType("tensorflow_datasets")
  mod.builder = lambda name, data_dir=None: Builder()
  mod.as_numpy = lambda x: x
  return mod


def test_experiment_script_runs_end_to_end_on_a_tiny_tfds_fixture(monkeypatch, tmp_path):
  """experiments/impressions_experiments.py --preset cifar10 (KarpathyNet, forget {3,4,8}) on a fake tfds."""
  import importlib.util
  import json
  import sys
  from pathlib import Path
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", _fake_tfds_cifar10(num_per_class=13))
  path = Path(__file__).resolve().parents[1] / "experiments" / "impressions_experiments.py"
  spec = importlib.util.spec_from_file_location("impressions_experiments", path)
  script = importlib.util.module_from_spec(spec)
  monkeypatch.setitem(sys.modules, "impressions_experiments", script)   # dataclasses need it registered
  spec.loader.exec_module(script)
  out = tmp_path / "cifar"
  code = script.main(["--preset", "cifar10", "--train-epochs", "60", "--impression-steps", "100",
                      "--impressions-per-class", "5", "--authors-epochs", "3",
                      "--only", "default (masked_kl);as-published sign (authors)", "--out", str(out)])
  assert code == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["model"] == "karpathynet" and summary["forget_classes"] == [3, 4, 8]
  assert [r["name"] for r in summary["rows"]] == ["default (masked_kl)", "as-published sign (authors)"]
  for row in summary["rows"]:
    assert "error" not in row, row
    rep = json.loads((out / row["dir"] / "report.json").read_text())
    assert set(rep["metrics"]) == {"original", "unlearned", "retrained"}
    assert rep["metrics"]["retrained"]["forget_acc"] == 0.0
    for png in ("class_accuracy.png", "accuracy_change.png"):
      assert (out / row["dir"] / png).stat().st_size > 1000
  assert "retrained (gold standard)" in (out / "table.md").read_text()


def _load_experiment_script(monkeypatch):
  import importlib.util
  import sys
  from pathlib import Path
  path = Path(__file__).resolve().parents[1] / "experiments" / "impressions_experiments.py"
  spec = importlib.util.spec_from_file_location("impressions_experiments", path)
  script = importlib.util.module_from_spec(spec)
  monkeypatch.setitem(sys.modules, "impressions_experiments", script)   # dataclasses need it registered
  spec.loader.exec_module(script)
  return script


@pytest.mark.parametrize("preset, fake, extra, forget", [
    # MNIST with LeNet5 (28x28x1 in the real data set; 12x12 here).
    ("mnist", dict(size=12, channels=1), [], list(range(1, 5))),
    # The ImageNet preset (100 of the classes forgotten, images of varying size resized while streamed,
    # a 'validation' split), with a tiny ViT instead of ViT-S at 224.
    ("imagenet", dict(size=12, num_classes=104, num_per_class=2, test_split="validation", varying_size=True),
     ["--model", "vit_nano", "--image-size", "8"], list(range(100))),
])
def test_tfds_presets_run_end_to_end_on_tiny_fixtures(monkeypatch, tmp_path, preset, fake, extra, forget):
  import json
  import sys
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", _fake_tfds_cifar10(**{"num_per_class": 8, **fake}))
  script = _load_experiment_script(monkeypatch)
  out = tmp_path / preset
  code = script.main(["--preset", preset, "--train-epochs", "5", "--impression-steps", "30",
                      "--impressions-per-class", "2", "--only", "default (masked_kl)", *extra, "--out", str(out)])
  assert code == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["forget_classes"] == forget
  (row,) = summary["rows"]
  assert "error" not in row, row
  rep = json.loads((out / row["dir"] / "report.json").read_text())
  assert set(rep["metrics"]) == {"original", "unlearned", "retrained"}
  assert rep["metrics"]["retrained"]["forget_acc"] == 0.0
