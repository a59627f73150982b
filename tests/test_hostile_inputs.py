"""Hostile inputs (issue 13, parts 2, 3, 5): each gets one line and a non-zero exit before any work.

Table-driven: every CLI case runs ``famr_jax.cli.main.main`` in-process and
checks exit status 2, exactly one line on stderr naming the flag, and that
no output folder appeared; every Python case checks one :class:`FamrError`
line and that the engine never ran (its epoch loop is replaced by a function
that fails the test). The references are independent: hand-written bad
values, a NumPy diagonal Fisher, a float32 run against a float64 one.
"""

import dataclasses
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import famr_jax as fj
from famr_jax import validation
from famr_jax.cli.main import main
from famr_jax.engine import descent
from famr_jax.engine.parallel import ScaleConfig
from famr_jax.engine.resume import ResumeConfig
from famr_jax.methods.baselines import GAConfig, SalUnConfig
from famr_jax.methods.scrub import SCRUBConfig
from famr_jax.methods.ssd import SSDConfig

NAN, INF = float("nan"), float("inf")

# ----------------------------------------------------------------------------- CLI: numeric flags

_OUT = "hostile-out"   # relative: resolved under tmp_path by the test (monkeypatch.chdir)
_CK = "no-such-checkpoint"   # never read: a bad flag fails while the flags are parsed
CLI_CASES = [
    # (argv, text the one line must contain)
    (["train", "--out", _OUT, "--lr", "inf"], "--lr (learning rate) must be a finite number"),
    (["train", "--out", _OUT, "--lr", "nan"], "--lr (learning rate) must be a finite number"),
    (["train", "--out", _OUT, "--lr", "-1"], "--lr (learning rate) must be positive"),
    (["train", "--out", _OUT, "--lr", "1e4"], "--lr (learning rate) must be at most 1000"),
    (["train", "--out", _OUT, "--weight-decay", "nan"], "--weight-decay must be a finite number"),
    (["train", "--out", _OUT, "--weight-decay", "-0.5"], "--weight-decay must be non-negative"),
    (["train", "--out", _OUT, "--epochs", "1e30"], "--epochs takes an integer"),
    (["train", "--out", _OUT, "--epochs", "2.5"], "--epochs takes an integer"),
    (["train", "--out", _OUT, "--epochs", "0"], "--epochs must be positive"),
    (["train", "--out", _OUT, "--epochs", "10000001"], "--epochs must be at most 10000000"),
    (["train", "--out", _OUT, "--batch-size", "-4"], "--batch-size must be positive"),
    (["train", "--out", _OUT, "--seed", str(2 ** 64)], "--seed must be at most 4294967295"),
    (["train", "--out", _OUT, "--seed", "-1"], "--seed must be non-negative"),
    (["train", "--out", _OUT, "--max-train", "1.5"], "--max-train takes an integer"),
    (["train", "--out", _OUT, "--grad-accum", "0"], "--grad-accum must be positive"),
    (["train", "--out", _OUT, "--checkpoint-every", "-1"], "--checkpoint-every must be non-negative"),
    (["unlearn", "--checkpoint", _CK, "--out", _OUT, "--lam", "nan"], "--lam (lambda) must be a finite number"),
    (["unlearn", "--checkpoint", _CK, "--out", _OUT, "--alpha", "inf"], "--alpha must be a finite number"),
    (["unlearn", "--checkpoint", _CK, "--out", _OUT, "--lr", "1e9"], "--lr (learning rate) must be at most"),
    (["unlearn", "--checkpoint", _CK, "--out", _OUT, "--steps", "1e30"], "--steps takes an integer"),
    (["unlearn", "--checkpoint", _CK, "--out", _OUT, "--temperature=-inf"], "--temperature must be a finite"),
    (["unlearn", "--checkpoint", _CK, "--out", _OUT, "--forget-random", "nan"], "--forget-random must be a finite"),
    (["unlearn", "--checkpoint", _CK, "--out", _OUT, "--forget-classes", "3.7"], "--forget-classes takes"),
    (["unlearn", "--checkpoint", _CK, "--out", _OUT, "--seed", str(2 ** 32)], "--seed must be at most"),
    (["demo", "--out", _OUT, "--famr-lam", "nan"], "--famr-lam (lambda) must be a finite number"),
    (["demo", "--out", _OUT, "--train-lr", "inf"], "--train-lr (learning rate) must be a finite number"),
    (["compare", "--checkpoint", _CK, "--out", _OUT, "--seeds", "100000000"], "--seeds must be at most"),
    (["fisher", "--checkpoint", _CK, "--batch-size", "0"], "--batch-size must be positive"),
    (["evaluate", "--checkpoint", _CK, "--forget-classes", "1.5"], "--forget-classes takes"),
    (["verify-theory", "--out", _OUT, "--lambdas", "1,nan"], "--lambdas must be a finite number"),
    (["verify-theory", "--out", _OUT, "--lanczos-iters", "-3"], "--lanczos-iters must be non-negative"),
]


def _one_line(err: str) -> str:
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("famr-jax: error: "), err
  return lines[0]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CLI_CASES])
def test_cli_bad_number_fails_before_work(argv, message, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  assert main(argv) == 2
  assert message in _one_line(capsys.readouterr().err)
  assert list(tmp_path.iterdir()) == []   # no output, no staging folder, nothing


def test_cli_bad_flag_in_a_fresh_process(tmp_path):
  """End to end, the console command: one line on stderr, exit 2, nothing written."""
  proc = subprocess.run([sys.executable, "-m", "famr_jax.cli", "train", "--out", str(tmp_path / "o"),
                         "--lr", "inf"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "--lr (learning rate) must be a finite number" in _one_line(proc.stderr)
  assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- Python: config fields

CONFIG_CASES = [
    (lambda: fj.FAMRConfig(lam=NAN), "FAMRConfig.lam (lambda) must be a finite number"),
    (lambda: fj.FAMRConfig(lr=INF), "FAMRConfig.lr (learning rate) must be a finite number"),
    (lambda: fj.FAMRConfig(epochs=2.5), "FAMRConfig.epochs must be an integer"),
    (lambda: fj.FAMRConfig(epochs=True), "FAMRConfig.epochs must be an integer"),
    (lambda: dataclasses.replace(fj.FAMRConfig(), lr=-1.0), "FAMRConfig.lr (learning rate) must be positive"),
    (lambda: fj.TrainConfig(epochs=10 ** 8), "TrainConfig.epochs must be at most 10000000"),
    (lambda: fj.TrainConfig(weight_decay=-1.0), "TrainConfig.weight_decay must be non-negative"),
    (lambda: fj.TrainConfig(lr="0.1"), "TrainConfig.lr (learning rate) must be a number"),
    (lambda: fj.FAMRVariantConfig(curvature_weight=NAN), "FAMRVariantConfig.curvature_weight must be a finite"),
    (lambda: fj.ZeroShotConfig(impression_lr=INF), "ZeroShotConfig.impression_lr (learning rate) must be a"),
    (lambda: fj.ZeroShotFAMRConfig(lam=NAN), "ZeroShotFAMRConfig.lam (lambda) must be a finite"),
    (lambda: fj.ImpressionConfig(input_range=(0.0, NAN)), "ImpressionConfig.input_range must be a finite"),
    (lambda: SCRUBConfig(temperature=0.0), "SCRUBConfig.temperature must be positive"),
    (lambda: SSDConfig(selection_weight=NAN), "SSDConfig.selection_weight must be a finite number"),
    (lambda: GAConfig(steps=1.5), "GAConfig.steps (step budget) must be an integer"),
    (lambda: SalUnConfig(saliency=-INF), "SalUnConfig.saliency must be a finite number"),
    (lambda: ScaleConfig(grad_accum=0), "ScaleConfig.grad_accum must be positive"),
    (lambda: ResumeConfig(checkpoint_every=-1), "ResumeConfig.checkpoint_every must be non-negative"),
    (lambda: fj.TheoryConfig(seed=2 ** 32), "TheoryConfig.seed must be at most 4294967295"),
    (lambda: fj.TheoryConfig(lambdas=(1.0, NAN)), "TheoryConfig.lambdas must be a finite number"),
]


@pytest.mark.parametrize("build, message", CONFIG_CASES, ids=[m.split(" must")[0] for _, m in CONFIG_CASES])
def test_config_field_refused_when_built(build, message):
  with pytest.raises(fj.FamrError) as err:
    build()
  assert message in str(err.value) and "\n" not in str(err.value)


def test_valid_configs_and_edge_values_still_build():
  assert fj.FAMRConfig(lam=0.0, beta=0.0, steps=None).lam == 0.0
  assert fj.TrainConfig(epochs=np.int64(3), lr=1).epochs == 3   # NumPy ints, ints for floats
  assert fj.TheoryConfig(seed=2 ** 32 - 1).seed == 2 ** 32 - 1
  assert fj.ImpressionConfig(input_range=(-1.0, 1.0)).input_range == (-1.0, 1.0)


# ----------------------------------------------------------------------------- Python: labels and classes

Y = np.arange(30) % 10

FORGET_CASES = [
    (lambda: fj.forget_classes(Y, [3.7], 10), "must be integer class ids, got 3.7"),
    (lambda: fj.forget_classes(Y, [True], 10), "must be integer class ids, got True"),
    (lambda: fj.forget_classes(Y, [NAN], 10), "must be integer class ids, got nan"),
    (lambda: fj.forget_classes(Y, "3", 10), "must be a list of integer class ids"),
    (lambda: fj.forget_classes(Y, [-1], 10), "out of range"),
    (lambda: fj.forget_classes(Y, [10], 10), "out of range"),
    (lambda: fj.forget_classes(Y, [3, 3], 10), "listed more than once"),
    (lambda: fj.forget_classes(Y, [3], 10.5), "num_classes must be an integer"),
    (lambda: fj.forget_classes(Y.astype(np.float32), [3], 10), "pass y.astype(np.int32)"),
    (lambda: fj.forget_classes(Y + 0.5, [3], 10), "non-integer values"),
    (lambda: fj.forget_classes(np.eye(10)[Y], [3], 10), "look one-hot"),
    (lambda: fj.forget_classes(Y + 5, [3], 10), "must be class ids in [0, 10)"),
    (lambda: fj.forget_samples([1.5], 30, 10), "must be integers, got dtype float64"),
    (lambda: fj.forget_samples(np.arange(30) < 3, 30, 10), "booleans (a mask?)"),
    (lambda: fj.forget_random(jax.random.key(0), NAN, 30, 10), "fraction must be a finite number"),
    (lambda: fj.forget_random(jax.random.key(0), 0.1, 30.0, 10), "num_train must be an integer"),
]


@pytest.mark.parametrize("build, message", FORGET_CASES, ids=[m for _, m in FORGET_CASES])
def test_forget_request_refused(build, message):
  with pytest.raises(fj.FamrError) as err:
    build()
  assert message in str(err.value) and "\n" not in str(err.value)


def test_integer_classes_of_any_integer_type_are_accepted():
  assert fj.forget_classes(Y, np.array([3, 5]), 10).classes == (3, 5)
  assert fj.forget_classes(Y, (np.int8(3),), 10).indices.tolist() == [3, 13, 23]


# ----------------------------------------------------------------------------- Python: the model and data

RNG = np.random.default_rng(0)
X = RNG.uniform(size=(30, 4, 4, 1)).astype(np.float32)
Y3 = np.arange(30) % 3
W = jnp.asarray(RNG.normal(size=(16, 3)), jnp.float32)


def linear(p, x):
  return x.reshape(len(x), -1) @ p["w"]


PARAMS = {"w": W}
FORGET = fj.forget_classes(Y3, [1], 3)
DATA = fj.Dataset("arrays", X, Y3, X, Y3, 3, (4, 4, 1), ())
DIGITS_X8 = fj.load_dataset("digits", max_train=100).x_train[:8]


@pytest.fixture
def engine_never_runs(monkeypatch):
  """Replaces the engine's epoch loop: reaching it means work started on a bad input."""
  def fail(*args, **kwargs):
    raise AssertionError("the engine ran on a bad input")
  monkeypatch.setattr(descent, "_run", fail)


def _unlearn(method="famr", apply_fn=linear, params=PARAMS, data=(X, Y3), **kw):
  return fj.unlearn(method, apply_fn, params, FORGET, jax.random.key(0), data=data, **kw)


API_CASES = [
    (lambda: _unlearn(data=((X * 255).astype(np.uint8), Y3)), "uint8 (integer pixels): pass floats, e.g. x.astype"),
    (lambda: _unlearn(data=(np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X).astype(np.float32), Y3)),
     "data x contain NaN or inf values"),
    (lambda: _unlearn(data=(X, np.eye(3)[Y3])), "look one-hot"),
    (lambda: _unlearn(data=(X, Y3.astype(np.float32))), "pass y.astype(np.int32)"),
    (lambda: _unlearn(data=(X, Y3 + 0.25)), "non-integer values"),
    (lambda: _unlearn(apply_fn=lambda p, x: jax.nn.softmax(linear(p, x))), "returns probabilities"),
    (lambda: _unlearn(apply_fn=lambda p, x: (linear(p, x), 0.0)), "returns a tuple"),
    (lambda: _unlearn(apply_fn=lambda p, x: {"logits": linear(p, x)}), "returns a dict"),
    (lambda: _unlearn(apply_fn=lambda p, x: linear(p, x)[:, :2]), "expected logits of shape (8, 3)"),
    (lambda: _unlearn(apply_fn=lambda p, x: linear(p, x).ravel()), "expected logits of shape (8, 3)"),
    (lambda: _unlearn(apply_fn=lambda p, x: p["missing"]), "apply_fn(params, x) failed on a batch of shape"),
    (lambda: _unlearn(params={"w": W.at[0, 0].set(jnp.nan)}), "params hold NaN or inf values (leaf ['w'])"),
    (lambda: _unlearn(config={"lr": 0.1}), "got a dict: pass FAMRConfig(**config)"),
    (lambda: _unlearn(config=fj.TrainConfig()), "must be a FAMRConfig"),
    (lambda: _unlearn(lr=NAN), "FAMRConfig.lr (learning rate) must be a finite number"),
    (lambda: _unlearn(epochs=1e30), "FAMRConfig.epochs must be an integer"),
    (lambda: fj.train_classifier(linear, PARAMS, (X * 255).astype(np.uint8), Y3, fj.TrainConfig(),
                                 jax.random.key(0)), "integer pixels"),
    (lambda: fj.train_classifier(linear, PARAMS, X, Y3 / 2, fj.TrainConfig(), jax.random.key(0)),
     "non-integer values"),
    (lambda: fj.train_classifier(lambda p, x: jax.nn.softmax(linear(p, x)), PARAMS, X, Y3, fj.TrainConfig(),
                                 jax.random.key(0)), "returns probabilities"),
    (lambda: fj.train_classifier(linear, PARAMS, X, Y3 + 2, fj.TrainConfig(), jax.random.key(0)),
     "must lie in [0, 3)"),
    (lambda: fj.evaluate_unlearning(linear, {"w": W * jnp.inf}, DATA, FORGET),
     "params of the evaluated model hold NaN or inf"),
    (lambda: fj.compare(["ga"], linear, PARAMS, (X, Y3), FORGET, retrain=lambda *a: PARAMS),
     "compare needs data as a famr_jax.Dataset"),
]


@pytest.mark.parametrize("call, message", API_CASES, ids=[m for _, m in API_CASES])
def test_api_refuses_before_work(call, message, engine_never_runs):
  with pytest.raises(fj.FamrError) as err:
    call()
  assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_logits_of_fresh_networks_are_not_taken_for_probabilities():
  """The probability test never trips on logits: fresh networks' outputs, log-probabilities, zeros."""
  x = np.asarray(DIGITS_X8)
  model = fj.models.create_model("mlp", 10, x.shape[1:])
  params = fj.models.init_params(model, jax.random.key(0), x.shape[1:])
  assert validation.check_logits_fn(fj.models.make_apply_fn(model), params, x, 10) == 10
  rng = np.random.default_rng(0)
  for _ in range(50):   # Glorot-initialised two-layer nets of random widths, in NumPy
    d, h, c = 64, int(rng.integers(8, 256)), int(rng.integers(2, 20))
    w1 = rng.normal(size=(d, h)) * np.sqrt(2 / (d + h))
    w2 = rng.normal(size=(h, c)) * np.sqrt(2 / (h + c))
    assert not validation.looks_like_probabilities(np.maximum(x.reshape(8, -1) @ w1, 0) @ w2)
  logits = rng.normal(size=(8, 10))
  assert not validation.looks_like_probabilities(np.zeros((8, 10)))            # a zero-initialised head
  assert not validation.looks_like_probabilities(logits - np.log(np.exp(logits).sum(1, keepdims=True)))
  assert validation.looks_like_probabilities(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
  assert not validation.looks_like_probabilities(np.full((8, 1), 1.0))   # one column: never called so


# ----------------------------------------------------------------------------- divergence

def test_diverged_unlearning_is_one_error_naming_the_step():
  grows = lambda p, x: jnp.exp(linear(p, x))   # gradient ascent overflows it within a few steps
  with pytest.raises(fj.Diverged) as err:
    _unlearn("ga", apply_fn=grows, params={"w": W * 0.1}, lr=1000.0, epochs=5)
  assert err.value.step is not None and 1 <= err.value.step <= 5
  assert str(err.value).startswith(f"ga diverged by step {err.value.step} ") and "\n" not in str(err.value)


def test_diverged_training_through_api_and_cli_writes_nothing(tmp_path, capsys):
  # lr * weight_decay = 1000: AdamW's decay multiplies the weights by -999 per step, an overflow in ~13.
  config = fj.TrainConfig(epochs=3, batch_size=2, lr=1000.0, weight_decay=1.0)   # 15 steps an epoch
  resume = ResumeConfig(checkpoint_every=10, checkpoint_dir=str(tmp_path / "resume"))
  with pytest.raises(fj.Diverged) as err:
    fj.train_classifier(linear, PARAMS, X, Y3, config, jax.random.key(1), show_progress=False, resume=resume)
  step = err.value.step
  assert 10 < step <= 20   # seen at the first epoch's end or the next checkpoint, not after 45 steps
  saved = sorted(int(p.name) for p in (tmp_path / "resume").rglob("*") if p.is_dir() and p.name.isdigit())
  assert all(s < step for s in saved)   # no kept resume step holds the diverged state

  out = tmp_path / "trained"
  argv = ["train", "--model", "logistic", "--max-train", "100", "--epochs", "2", "--batch-size", "4",
          "--lr", "1000", "--weight-decay", "1", "--out", str(out)]
  assert main(argv) == 2
  assert "train logistic diverged by step" in _one_line(capsys.readouterr().err)
  assert not out.exists()


def test_evaluating_a_non_finite_checkpoint_says_so(tmp_path, capsys):
  model = fj.models.create_model("logistic", 10, (8, 8, 1))
  params = fj.models.init_params(model, jax.random.key(0), (8, 8, 1))
  meta = {"model": "logistic", "model_overrides": {}, "num_classes": 10, "image_shape": [8, 8, 1],
          "data": {"dataset": "digits", "data_dir": None, "max_train": 100, "max_test": 100},
          "train_config": dataclasses.asdict(fj.TrainConfig()), "seed": 0,
          "timings_s": {"train": 1.0, "compile": 0.0}, "test_acc": 0.1}
  fj.save_checkpoint(tmp_path / "ok", params, meta)
  fj.save_checkpoint(tmp_path / "bad", jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), params), meta)
  assert main(["evaluate", "--checkpoint", str(tmp_path / "ok")]) == 0   # the same files, finite: evaluated
  capsys.readouterr()
  assert main(["evaluate", "--checkpoint", str(tmp_path / "bad")]) == 2
  assert "holds non-finite params (NaN or inf in" in _one_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------- float64 params

def _numpy_fisher(w, x, y):
  """Diagonal empirical Fisher of a linear softmax model by hand: mean over examples of grad**2."""
  z = x @ w
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1.0           # d CE / d logits
  grads = x[:, :, None] * p[:, None, :]    # per example d CE / d w
  return np.mean(grads ** 2, axis=0)


def test_float64_params_in_the_fisher_and_ssd():
  from famr_jax.theory.fisher import diagonal_fisher
  x, y = X.reshape(30, -1), Y3
  apply_fn = lambda p, x: x.reshape(len(x), -1) @ p["w"]
  reference = _numpy_fisher(np.asarray(W, np.float64), x.astype(np.float64), y)
  f32 = diagonal_fisher(apply_fn, {"w": W}, x, y)["w"]
  ssd32 = _unlearn("ssd", apply_fn=apply_fn).params["w"]
  with jax.enable_x64(True):
    w64 = jnp.asarray(W, jnp.float64)
    f64 = diagonal_fisher(apply_fn, {"w": w64}, x, y)["w"]
    ssd64 = _unlearn("ssd", apply_fn=apply_fn, params={"w": w64}).params["w"]
    assert f64.dtype == jnp.float64 and ssd64.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(f64), reference, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(np.asarray(f32), reference, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(np.asarray(ssd64), np.asarray(ssd32), rtol=1e-4, atol=1e-6)
  assert np.abs(np.asarray(ssd64) - np.asarray(W, np.float64)).max() > 1e-3   # SSD dampened something
