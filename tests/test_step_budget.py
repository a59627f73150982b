"""Step budgets: ``steps`` replaces ``epochs`` with a number of optimizer steps independent of the data size."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from famr_jax.methods.baselines import GAConfig, NegGradPlusConfig
from famr_jax.evaluation.compare import resolve_configs
from famr_jax.errors import FamrError
from famr_jax.methods.registry import get_method, with_overrides
from famr_jax.methods.resolve import Request, resolve_config
from famr_jax.engine.descent import minibatch_descent, step_schedule
from famr_jax.engine.parallel import ScaleConfig
from famr_jax.methods.famr import FAMRConfig
from famr_jax.methods.variants import FAMRVariantConfig


def _shrink_loss(p, batch, weights, context):
  # The gradient, 2p, does not depend on which examples a minibatch holds, so k SGD
  # steps of size lr give exactly p0 (1 - 2 lr)^k: a step counter with a closed form.
  del context
  return jnp.sum(weights * p ** 2) / jnp.sum(weights)


@pytest.mark.parametrize("steps", [1, 3, 4, 5, 11])
def test_budget_runs_exactly_that_many_steps_across_epochs(steps):
  x = np.arange(100.0, dtype=np.float32)[:, None]   # 4 minibatches of 32 per epoch
  r = minibatch_descent(_shrink_loss, jnp.ones(()), (x,), optax.sgd(0.1), epochs=99, batch_size=32,
                        key=jax.random.key(0), show_progress=False, max_steps=steps)
  np.testing.assert_allclose(float(r.params), 0.8 ** steps, rtol=1e-5)
  assert len(r.history) == -(-steps // 4)   # epochs run: the last one cut short


def test_no_budget_is_the_epoch_schedule():
  x = np.arange(100.0, dtype=np.float32)[:, None]
  r = minibatch_descent(_shrink_loss, jnp.ones(()), (x,), optax.sgd(0.1), epochs=2, batch_size=32,
                        key=jax.random.key(0), show_progress=False)
  np.testing.assert_allclose(float(r.params), 0.8 ** 8, rtol=1e-5)


def test_budget_visits_distinct_samples_of_one_permutation():
  # With fewer steps than an epoch, the steps take the first minibatches of one random
  # permutation: no sample twice. The loss's gradient w.r.t. the per-sample vector
  # marks every visited row.
  n, bs, steps = 50, 8, 3
  x = np.arange(n, dtype=np.float32)[:, None]

  def visit_loss(p, batch, weights, context):
    rows = batch[0][:, 0].astype(jnp.int32)
    return -jnp.sum(weights * p[rows])
  r = minibatch_descent(visit_loss, jnp.zeros(n), (x,), optax.sgd(1.0), epochs=1, batch_size=bs,
                        key=jax.random.key(3), show_progress=False, max_steps=steps)
  visits = np.asarray(r.params)
  assert set(np.unique(visits)) <= {0.0, 1.0} and int(visits.sum()) == steps * bs


def test_step_schedule_by_hand():
  assert step_schedule(135, 32, epochs=5) == (5, 5)
  assert step_schedule(6000, 32, epochs=5, max_steps=25) == (1, 25)
  assert step_schedule(135, 32, epochs=1, max_steps=25) == (5, 5)
  assert step_schedule(135, 32, epochs=1, max_steps=7) == (2, 2)
  with pytest.raises(FamrError, match="step budget must be positive"):
    step_schedule(10, 2, epochs=1, max_steps=0)


@pytest.mark.parametrize("loop", ["steps", "scan"])
@pytest.mark.parametrize("scale", [ScaleConfig(grad_accum=2), ScaleConfig(data_parallel=True)])
def test_budget_with_accumulation_and_devices_runs_exactly_that_many_steps(loop, scale):
  # One engine: step budgets hold under gradient accumulation and on a device mesh, in both loop forms.
  x = np.zeros((16, 1), np.float32)   # 4 minibatches of 4 per epoch; 6 steps cross an epoch
  r = minibatch_descent(_shrink_loss, jnp.ones(()), (x,), optax.sgd(0.1), epochs=1, batch_size=4,
                        key=jax.random.key(0), show_progress=False, max_steps=6, scale=scale, loop=loop)
  np.testing.assert_allclose(float(r.params), 0.8 ** 6, rtol=1e-5)
  assert len(r.history) == 2


@pytest.mark.parametrize("cls", [FAMRConfig, FAMRVariantConfig, GAConfig, NegGradPlusConfig])
@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_every_minibatch_method_validates_its_budget(cls, bad):
  with pytest.raises(FamrError, match="step budget"):
    cls(steps=bad).validate()


def test_explicit_epochs_clear_a_default_budget():
  assert with_overrides(GAConfig(steps=5), {"epochs": 3}) == GAConfig(epochs=3, steps=None)
  assert with_overrides(GAConfig(steps=5), {"epochs": 3, "steps": 7}).steps == 7
  assert with_overrides(GAConfig(steps=5), {"lr": 0.5}).steps == 5
  assert with_overrides(GAConfig(), {"epochs": 3}).steps is None


def test_sample_requests_take_the_sample_defaults():
  spec = get_method("ga")
  assert resolve_config(spec, Request("classes"), "lenet5") == GAConfig(epochs=1, lr=0.01)   # the defaults table
  samples = resolve_config(spec, Request("samples"), "lenet5")
  assert samples.steps == 5 and samples.lr == 1e-4 and samples.optimizer == "adam"
  configs = resolve_configs(["ga", "famr"], "lenet5", forget_kind="samples", flags={"lr": 1e-4})
  assert configs["ga"].steps == samples.steps and configs["ga"].lr == 1e-4
  assert resolve_configs(["ga"], "lenet5", forget_kind="classes")["ga"].steps is None
  # A flag naming epochs means epochs, for sample requests too.
  assert resolve_configs(["ga"], "lenet5", forget_kind="samples", flags={"epochs": 2})["ga"].steps is None


def test_budget_of_whole_epochs_is_the_epoch_schedule_on_a_real_loss():
  # A least-squares fit whose steps depend on which rows a minibatch holds: a budget of exactly
  # two epochs must take the same steps, in the same order, as epochs=2.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 3)).astype(np.float32)
  y = (x @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)

  def lsq(p, batch, weights, context):
    return jnp.sum(weights * (batch[0] @ p - batch[1]) ** 2) / jnp.sum(weights)
  kw = dict(batch_size=16, key=jax.random.key(1), show_progress=False)
  by_epochs = minibatch_descent(lsq, jnp.zeros(3), (x, y), optax.sgd(0.05), epochs=2, **kw)
  by_budget = minibatch_descent(lsq, jnp.zeros(3), (x, y), optax.sgd(0.05), epochs=7, max_steps=6, **kw)
  np.testing.assert_allclose(np.asarray(by_budget.params), np.asarray(by_epochs.params), rtol=1e-6, atol=1e-7)
  one_less = minibatch_descent(lsq, jnp.zeros(3), (x, y), optax.sgd(0.05), epochs=7, max_steps=5, **kw)
  assert not np.allclose(np.asarray(one_less.params), np.asarray(by_epochs.params))
