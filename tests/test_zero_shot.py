"""Zero-shot unlearning (class impressions): tail-only updates, sign conventions, no data, digits, bad input."""

import inspect
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famr_jax import models
from famr_jax.io import checkpoints
from famr_jax.cli.main import main
from famr_jax.errors import FamrError
from famr_jax.data.forget import forget_classes
from famr_jax.methods.registry import UnlearnTask, get_method
from famr_jax.methods.resolve import run_task
from famr_jax.evaluation.metrics import evaluate_unlearning
from famr_jax.losses import masked_kl
from famr_jax.methods.head_tail import first_responsive_layer, infer_input_shape, split_model
from famr_jax.methods.zero_shot import (ZeroShotConfig, ZeroShotFAMRConfig, famr_zero_shot_unlearn,
                                        zero_shot_unlearn)
from famr_jax.engine.parallel import CompileCounter
from famr_jax.methods.zero_shot_descent import differential_losses, scale_jitter

TINY = dict(impressions_per_class=10, impression_steps=200)


def _np_smoothed_ce(logits, labels, s):
  logits = np.asarray(logits, np.float64)
  z = logits - logits.max(1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
  q = np.full_like(log_p, s / logits.shape[1])
  q[np.arange(len(labels)), labels] += 1 - s
  return float(np.mean(-(q * log_p).sum(1)))


@pytest.fixture(scope="module")
def default_run(trained_digits):
  d = trained_digits
  r = zero_shot_unlearn(d.model, d.params, [1, 2, 3, 4], 10, d.data.image_shape, ZeroShotConfig(),
                        jax.random.key(0), show_progress=False)
  return r


def test_default_forgets_digits_and_keeps_the_rest(trained_digits, default_run):
  """Spec: forget accuracy <= 5% and retain accuracy within 3 points of the original."""
  d = trained_digits
  forget = forget_classes(d.data.y_train, [1, 2, 3, 4], 10)
  before = evaluate_unlearning(d.apply_fn, d.params, d.data, forget)
  after = evaluate_unlearning(d.apply_fn, default_run.params, d.data, forget)
  assert before["forget_acc"] > 0.9
  assert after["forget_acc"] <= 0.05
  assert after["retain_acc"] >= before["retain_acc"] - 0.03
  assert default_run.impressions.kept_per_class.sum() > 0
  assert default_run.history[-1]["forget_impression_acc"] < default_run.history[0]["forget_impression_acc"]


def test_only_the_tail_changes(trained_digits, default_run):
  """Default tail = last stage ('head'): fc1 and fc2 bit-identical, head changed."""
  d = trained_digits
  assert default_run.layer == "head"
  for layer in ("fc1", "fc2"):
    for name in ("kernel", "bias"):
      np.testing.assert_array_equal(np.asarray(default_run.params[layer][name]), np.asarray(d.params[layer][name]))
  assert not np.allclose(np.asarray(default_run.params["head"]["kernel"]), np.asarray(d.params["head"]["kernel"]))
  # A deeper tail, pixel-space impressions and the authors' loss: the head is still untouched.
  cfg = ZeroShotConfig.authors("as_published", epochs=2, tail_layer="fc2", impression_space="pixel", **TINY)
  r = zero_shot_unlearn(d.model, d.params, [5], 10, d.data.image_shape, cfg, jax.random.key(1), show_progress=False)
  np.testing.assert_array_equal(np.asarray(r.params["fc1"]["kernel"]), np.asarray(d.params["fc1"]["kernel"]))
  assert not np.allclose(np.asarray(r.params["fc2"]["kernel"]), np.asarray(d.params["fc2"]["kernel"]))


@pytest.mark.parametrize("sign", ["intended", "as_published"])
def test_one_step_of_each_sign(trained_digits, sign):
  """intended: one forget step raises the forget CE, one retain step lowers the retain CE; as_published the opposite.

  The losses are measured by an independent NumPy label-smoothed cross-entropy.
  """
  d = trained_digits
  config = ZeroShotConfig.authors(sign, lr=1e-3, **TINY)
  split = split_model(d.model, d.params, "head")
  from famr_jax.methods.impressions import class_impressions
  imp = class_impressions(d.model, d.params, range(10), 10, d.data.image_shape,
                          config.impression_config().__class__(num_per_class=10, steps=200, layer="head"),
                          jax.random.key(3))
  h_f, y_f = imp.select([1, 2])
  h_r, y_r = imp.select([0, 5, 7])
  forget_loss, retain_loss = differential_losses(split.tail_fn, config)
  opt = config.make_optimizer()

  def one_step(loss, h, y):
    @jax.jit   # one compiled step, not hundreds of eagerly compiled primitives
    def step(params, h, y):
      grads = jax.grad(loss)(params, h, y, jnp.ones(len(y)), None)
      updates, _ = opt.update(grads, opt.init(params), params)
      return jax.tree.map(lambda p, u: p + u, params, updates)
    return step(d.params, jnp.asarray(h), jnp.asarray(y))

  tail_fn = jax.jit(split.tail_fn)
  ce = lambda p, h, y: _np_smoothed_ce(tail_fn(p, jnp.asarray(h)), y, 0.1)
  after_f = one_step(forget_loss, h_f, y_f)
  after_r = one_step(retain_loss, h_r, y_r)
  d_forget = ce(after_f, h_f, y_f) - ce(d.params, h_f, y_f)
  d_retain = ce(after_r, h_r, y_r) - ce(d.params, h_r, y_r)
  if sign == "intended":
    assert d_forget > 0 and d_retain < 0
  else:
    assert d_forget < 0 and d_retain > 0


def test_masked_kl_matches_numpy():
  rng = np.random.default_rng(0)
  z0, z = rng.normal(size=(2, 4, 5)) * 3
  keep = np.array([True, False, True, True, False])
  q = np.where(keep, np.exp(z0), 0)
  q /= q.sum(1, keepdims=True)
  p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  ref = np.sum(np.where(keep, q * (np.log(np.where(keep, q, 1)) - np.log(p)), 0), 1)
  np.testing.assert_allclose(np.asarray(masked_kl(jnp.asarray(z0), jnp.asarray(z), jnp.asarray(keep))), ref,
                             rtol=1e-5, atol=1e-6)


def test_entry_points_take_no_data_and_the_registry_never_reads_it(trained_digits):
  for fn in (zero_shot_unlearn, famr_zero_shot_unlearn):
    params = list(inspect.signature(fn).parameters)
    assert params[:7] == ["model", "params", "forget_classes", "num_classes", "input_shape", "config", "key"]
    assert not {"data", "x", "x_forget", "x_retain", "dataset"} & set(params)

  class NoData:
    def __getattr__(self, name):
      raise AssertionError(f"a zero-shot method read task.data.{name}")

  d = trained_digits
  forget = forget_classes(d.data.y_train, [3], 10)
  for name, cfg in (("impressions", ZeroShotConfig(epochs=2, **TINY)),
                    ("famr-zeroshot", ZeroShotFAMRConfig(epochs=2, **TINY))):
    spec = get_method(name)
    assert not spec.uses_data and spec.config_cls is type(cfg)
    task = UnlearnTask(d.apply_fn, d.params, d.model, NoData(), forget, jax.random.key(0), False)
    result = run_task(spec, task, cfg)   # the one caller of a method's run
    assert len(result.history) == 3


def test_deterministic_and_compiled_once(trained_digits):
  d = trained_digits
  cfg = ZeroShotConfig(epochs=3, **TINY)
  a = zero_shot_unlearn(d.model, d.params, [2], 10, d.data.image_shape, cfg, jax.random.key(7), show_progress=False)
  with CompileCounter() as count:
    b = zero_shot_unlearn(d.model, d.params, [2], 10, d.data.image_shape, cfg, jax.random.key(7), show_progress=False)
  assert count.count == 0
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert a.history == b.history


def test_joint_steps_forget_digits_and_keep_the_rest(trained_digits):
  """One step per (forget, retain) pair of minibatches: the same spec as the default's separate passes."""
  d = trained_digits
  r = zero_shot_unlearn(d.model, d.params, [1, 2, 3, 4], 10, d.data.image_shape,
                        ZeroShotConfig(separate_steps=False), jax.random.key(0), show_progress=False)
  forget = forget_classes(d.data.y_train, [1, 2, 3, 4], 10)
  before = evaluate_unlearning(d.apply_fn, d.params, d.data, forget)
  after = evaluate_unlearning(d.apply_fn, r.params, d.data, forget)
  assert after["forget_acc"] <= 0.05
  assert after["retain_acc"] >= before["retain_acc"] - 0.03
  assert [h["epoch"] for h in r.history] == list(range(31)) and "loss" in r.history[-1]


def test_scale_jitter_is_log_uniform_and_new_every_epoch():
  """The jitter's draws: log t uniform on [log scale_min, 0], different rows and epochs differ."""
  h = jnp.ones((4000, 1))
  t = np.asarray(scale_jitter(jax.random.key(0), 0, jnp.arange(4000), h, 0.01))[:, 0]
  log_t = np.log(t) / np.log(0.01)             # uniform on [0, 1]
  assert log_t.min() >= 0 and log_t.max() <= 1
  assert abs(log_t.mean() - 0.5) < 0.02 and abs(log_t.var() - 1 / 12) < 0.01
  other = np.asarray(scale_jitter(jax.random.key(1), 0, jnp.arange(4000), h, 0.01))[:, 0]
  retain = np.asarray(scale_jitter(jax.random.key(0), 1, jnp.arange(4000), h, 0.01))[:, 0]
  assert np.mean(t == other) < 0.01 and np.mean(t == retain) < 0.01
  assert np.array_equal(np.asarray(scale_jitter(jax.random.key(0), 0, jnp.arange(3), h[:3], 1.0)), np.ones((3, 1)))


def test_zero_shot_famr_tail_only(trained_digits):
  d = trained_digits
  r = famr_zero_shot_unlearn(d.model, d.params, [4], 10, d.data.image_shape,
                             ZeroShotFAMRConfig(epochs=3, **TINY), jax.random.key(0), show_progress=False)
  np.testing.assert_array_equal(np.asarray(r.params["fc2"]["kernel"]), np.asarray(d.params["fc2"]["kernel"]))
  assert r.history[-1]["forget_kl_from_original"] > r.history[0]["forget_kl_from_original"] == 0.0


def test_bad_input(trained_digits):
  d = trained_digits
  args = (d.model, d.params)
  cfg = ZeroShotConfig(epochs=1, **TINY)
  for classes, msg in (([10], "out of range"), ([], "empty"), (list(range(10)), "every class")):
    with pytest.raises(FamrError, match=msg):
      zero_shot_unlearn(*args, classes, 10, d.data.image_shape, cfg, jax.random.key(0), show_progress=False)
  with pytest.raises(FamrError, match="unknown layer 'conv9'"):
    zero_shot_unlearn(*args, [1], 10, d.data.image_shape, ZeroShotConfig(tail_layer="conv9"), jax.random.key(0))
  with pytest.raises(FamrError, match="empty tail"):
    split_model(d.model, {k: v for k, v in d.params.items() if k != "head"}, "head")
  with pytest.raises(FamrError, match="sign"):
    ZeroShotConfig(sign="backwards").validate()
  # A class no impression can reach: its logit is -1000 whatever the (clipped) pixels are.
  apply_fn = lambda p, x: x.reshape(len(x), -1) @ p["w"] + p["b"]
  params = {"w": jnp.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]]),
            "b": jnp.array([0.0, 0.0, -1000.0])}
  with pytest.raises(FamrError, match=r"class\(es\) \[2\] reached its target"):
    zero_shot_unlearn(apply_fn, params, [0], 3, (2, 2, 1),
                      ZeroShotConfig(impression_space="pixel", **TINY), jax.random.key(0), show_progress=False)


def test_first_responsive_layer_needs_every_class():
  """Class 2 is unreachable at the head's (post-ReLU) input: no stage is responsive."""
  model = models.create_model("mlp", 3, (2, 2, 1), hidden=(4,))
  params = models.init_params(model, jax.random.key(0), (2, 2, 1))
  # Class 2's logit is <= -5 < 0 <= the others' for every h >= 0 (reachable only with h < 0).
  params["head"] = {"kernel": jnp.array([[1.0, 0, -1], [0, 1.0, -1], [0, 0, -1], [0, 0, -1]]),
                    "bias": jnp.array([0.0, 0.0, -5.0])}
  r = first_responsive_layer(model, params, 3, (2, 2, 1), jax.random.key(0), num_per_class=5, steps=50)
  assert r.layer is None
  assert r.success["head"] == [1.0, 1.0, 0.0]
  params["head"] = {"kernel": jnp.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0, 0]]),
                    "bias": jnp.zeros(3)}
  r = first_responsive_layer(model, params, 3, (2, 2, 1), jax.random.key(0), num_per_class=5, steps=50)
  assert r.success["head"] == [1.0, 1.0, 1.0]
  assert r.layer == "head"


def test_input_shape_is_inferred_from_params_alone():
  for name, shape in (("lenet5", (8, 8, 1)), ("karpathynet", (32, 32, 3)), ("mlp", (8, 8, 1))):
    model = models.create_model(name, 10, shape)
    params = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0), shape))
    assert infer_input_shape(model, params) == shape


def test_cli_unlearn_impressions_and_refusals(trained_digits, tmp_path, capsys):
  d = trained_digits
  ck = tmp_path / "ck"
  checkpoints.save_checkpoint(ck, d.params, {
      "model": "mlp", "model_overrides": {}, "num_classes": 10, "image_shape": [8, 8, 1],
      "data": {"dataset": "digits", "data_dir": None, "max_train": None, "max_test": None},
      "train_config": {"epochs": 30, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4}, "seed": 0,
      "timings_s": {"train": 1.0, "compile": 0.0}})
  out = tmp_path / "out"
  code = main(["unlearn", "--method", "impressions", "--checkpoint", str(ck), "--forget-classes", "1,2,3,4",
               "--impressions-per-class", "10", "--impression-steps", "200", "--epochs", "30", "--out", str(out)])
  assert code == 0
  rep = json.loads((out / "report.json").read_text())
  assert rep["method"] == "impressions" and rep["config"]["method"]["forget_objective"] == "masked_kl"
  assert rep["metrics"]["unlearned"]["forget_acc"] < 0.2
  capsys.readouterr()
  before = sorted(p.name for p in tmp_path.iterdir())
  for argv, msg in ((["--forget-classes", "0,1,2,3,4,5,6,7,8,9"], "every class"),
                    (["--forget-classes", "12"], "out of range"),
                    (["--forget-classes", "1", "--tail-layer", "fc7"], "unknown layer"),
                    (["--forget-classes", "1", "--lam", "0.5"], "has no option --lam")):
    code = main(["unlearn", "--method", "impressions", "--checkpoint", str(ck), "--out", str(tmp_path / "bad"),
                 "--impressions-per-class", "2", "--impression-steps", "5", *argv])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
  assert sorted(p.name for p in tmp_path.iterdir()) == before
