"""Issue 15 parts 1-2: the ResNet / AlexNet parameter counts and BatchNorm statistics bound to the model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import famr_jax as fj
from famr_jax import models
from famr_jax.data.datasets import load_dataset

# Published figures (torchvision's model docs; the CIFAR ResNet-18 of kuangliu/pytorch-cifar, SalUn, SCRUB).
PUBLISHED = [("resnet18", 1000, 224, 11_689_512), ("resnet34", 1000, 224, 21_797_672),
             ("resnet50", 1000, 224, 25_557_032), ("resnet18_cifar", 10, 32, 11_173_962),
             ("alexnet", 1000, 224, 61_100_840)]


@pytest.mark.parametrize("name,classes,size,expected", PUBLISHED)
def test_parameter_counts_match_the_published_figures(name, classes, size, expected):
  model = models.create_model(name, classes, (size, size, 3))
  params = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0), (size, size, 3)))
  assert models.count_params(params) == expected
  if name == "resnet18":   # running statistics are not params: 2 x the 4,800 BatchNorm channels, apart
    bn_channels = 64 + 4 * 64 + (4 * 128 + 128) + (4 * 256 + 256) + (4 * 512 + 512)
    assert models.count_params(models.init_batch_stats(model, (size, size, 3))) == 2 * bn_channels


class TinyBN:
  """A BatchNorm CNN small enough for the unit tests: the CIFAR ResNet-18 layout, width 2, one block."""

  def __init__(self):
    self.data = load_dataset("digits", max_train=200, max_test=60)
    self.model = models.create_model("resnet18_cifar", 10, (8, 8, 1), width=2, stage_sizes=(1,))
    self.params = models.init_params(self.model, jax.random.key(0), (8, 8, 1))
    rng = np.random.default_rng(0)
    stats = jax.tree.map(lambda a: (a + rng.uniform(0.1, 0.5, a.shape)).astype(np.float32),
                         models.init_batch_stats(self.model, (8, 8, 1)))
    self.bound = models.with_batch_stats(self.model, stats)


@pytest.fixture(scope="module")
def tiny():
  return TinyBN()


def _stem_conv_numpy(x, kernel):
  """conv1 of the CIFAR stem (3x3, stride 1, pad 1, no bias) in NumPy."""
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  return sum(np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + w], kernel[i, j]) for i in range(3) for j in range(3))


def test_eval_mode_normalizes_with_the_bound_statistics_and_never_differentiates_them(tiny):
  x = tiny.data.x_train[:5]
  stats = models.batch_stats_of(tiny.bound)["stem"]["bn1"]
  p = tiny.params["stem"]
  conv = _stem_conv_numpy(np.asarray(x, np.float64), np.asarray(p["conv1"]["kernel"], np.float64))
  expected = np.maximum((conv - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * p["bn1"]["scale"] + p["bn1"]["bias"], 0)
  got = models.make_feature_fn(tiny.bound, "stem")(tiny.params, x)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  # The statistics are constants of apply_fn: the gradient has the params' structure only, and other
  # statistics give other logits (they are used, not ignored).
  loss = lambda params: jnp.sum(models.make_apply_fn(tiny.bound)(params, x) ** 2)  # noqa: E731
  assert jax.tree.structure(jax.jit(jax.grad(loss))(tiny.params)) == jax.tree.structure(tiny.params)
  assert not np.allclose(jax.jit(models.make_apply_fn(tiny.bound))(tiny.params, x),
                         jax.jit(models.make_apply_fn(tiny.model))(tiny.params, x))


def test_recompute_batch_stats_is_the_population_mean_and_variance(tiny):
  x = tiny.data.x_train[:50]
  stats = models.recompute_batch_stats(tiny.model, tiny.params, x, batch_size=16)   # 4 uneven batches
  conv = _stem_conv_numpy(np.asarray(x, np.float64), np.asarray(tiny.params["stem"]["conv1"]["kernel"], np.float64))
  np.testing.assert_allclose(stats["stem"]["bn1"]["mean"], conv.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["stem"]["bn1"]["var"], conv.var((0, 1, 2)), rtol=1e-4, atol=1e-6)
  assert jax.tree.structure(stats) == jax.tree.structure(models.init_batch_stats(tiny.model, (8, 8, 1)))


def test_training_from_scratch_recomputes_the_statistics(tiny):
  from famr_jax.workflows import train_and_recompute
  from famr_jax.engine.training import TrainConfig
  x, y = tiny.data.x_train, tiny.data.y_train
  result, model, apply_fn = train_and_recompute(tiny.bound, models.make_apply_fn(tiny.bound), tiny.params, x, y,
                                                TrainConfig(epochs=1, batch_size=50), jax.random.key(1),
                                                show_progress=False)
  stem = result.params["stem"]
  conv = _stem_conv_numpy(np.asarray(x, np.float64), np.asarray(stem["conv1"]["kernel"], np.float64))
  stats = models.batch_stats_of(model)["stem"]["bn1"]
  np.testing.assert_allclose(stats["mean"], conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], conv.var((0, 1, 2)), rtol=1e-4, atol=1e-6)
  assert apply_fn is models.make_apply_fn(model)


def test_the_gold_standard_retrain_gets_its_own_statistics(tiny):
  """compare's retrained model: trained with batch statistics, evaluated with statistics recomputed on the
  retained data (NumPy), never with the original's."""
  from famr_jax.workflows import retrain_gold_standard
  from famr_jax.data.forget import forget_classes
  from famr_jax.engine.training import TrainConfig
  forget = forget_classes(tiny.data.y_train, [3], 10)
  gold = retrain_gold_standard(tiny.bound, models.make_apply_fn(tiny.bound), tiny.data, forget,
                               TrainConfig(epochs=1, batch_size=50), seed=0, show_progress=False)
  keep = forget.retain_mask(len(tiny.data.y_train))
  x = np.asarray(tiny.data.x_train[keep], np.float64)
  conv = _stem_conv_numpy(x, np.asarray(gold.params["stem"]["conv1"]["kernel"], np.float64))
  stats = models.batch_stats_of(gold.model)["stem"]["bn1"]
  np.testing.assert_allclose(stats["mean"], conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], conv.var((0, 1, 2)), rtol=1e-4, atol=1e-6)
  original = models.batch_stats_of(tiny.bound)["stem"]["bn1"]
  assert not np.allclose(stats["mean"], original["mean"])
  xs = tiny.data.x_test[:8]
  np.testing.assert_allclose(gold.apply_fn(gold.params, xs), models.make_apply_fn(gold.model)(gold.params, xs))


@pytest.mark.parametrize("method", ["famr-plus"])
def test_methods_that_freeze_statistics_leave_them_bit_identical(tiny, method):
  before = jax.tree.map(np.copy, models.batch_stats_of(tiny.bound))
  forget = fj.forget_classes(tiny.data.y_train, [3], 10)
  spec_fields = {f.name for f in dataclasses.fields(fj.get_method(method).config_cls)}
  budget = {k: v for k, v in {"epochs": 1, "steps": 2}.items() if k in spec_fields}
  result = fj.unlearn(method, models.make_apply_fn(tiny.bound), tiny.params, forget, jax.random.key(2),
                      data=tiny.data, model=tiny.bound, **budget)
  assert jax.tree.structure(result.params) == jax.tree.structure(tiny.params)   # no statistics leaked in
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(tiny.params)))
  after = models.batch_stats_of(tiny.bound)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))


def test_tail_split_of_a_resnet_composes_to_the_model(tiny):
  x = tiny.data.x_train[:4]
  full = models.make_apply_fn(tiny.bound)(tiny.params, x)
  for layer in ("layer1_0", "avgpool", "fc"):
    h = models.make_layer_input_fn(tiny.bound, layer)(tiny.params, x)
    np.testing.assert_allclose(models.make_tail_apply_fn(tiny.bound, layer)(tiny.params, h), full, atol=1e-6)
  mask = models.tail_param_mask(tiny.bound, tiny.params, "layer1_0")
  assert not mask["stem"]["conv1"]["kernel"] and mask["layer1_0"]["bn2"]["scale"] and mask["fc"]["kernel"]
