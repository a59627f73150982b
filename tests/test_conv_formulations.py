"""conv_ops: every plan of forward / input-grad / weight-grad formulations is lax.conv's function.

References: ``lax.conv_general_dilated`` and its autodiff gradients (float32),
and central finite differences of the convolution in float64 (independent of
any formulation's gradient rule).
"""

from __future__ import annotations

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famr_jax import models
from famr_jax.errors import FamrError
from famr_jax.models import conv_ops
from famr_jax.models.layers import Conv, conv_formulation

# (x shape, kernel shape, strides, padding): LeNet5 conv1/conv2, strided asymmetric, a patch embedding.
CASES = [
    ((2, 8, 8, 1), (5, 5, 1, 3), (1, 1), ((2, 2), (2, 2))),
    ((2, 6, 6, 3), (3, 3, 3, 4), (1, 1), ((0, 0), (0, 0))),
    ((2, 7, 6, 2), (3, 2, 2, 3), (2, 1), ((1, 0), (0, 2))),
    ((1, 8, 8, 2), (4, 4, 2, 3), (4, 4), ((0, 0), (0, 0))),
]
PLANS = [conv_ops.ConvPlan(*p) for p in itertools.product(conv_ops.PARTS_FORMULATIONS, repeat=3)]


def _arrays(case, dtype, seed=0):
  x_shape, k_shape, strides, padding = case
  rng = np.random.default_rng(seed)
  x, k = rng.normal(size=x_shape), rng.normal(size=k_shape)
  y_shape = jax.eval_shape(lambda x, k: conv_ops.forward_lax(x, k, strides, padding),
                           jax.ShapeDtypeStruct(x_shape, jnp.float32), jax.ShapeDtypeStruct(k_shape, jnp.float32)).shape
  r = rng.normal(size=y_shape)
  return tuple(jnp.asarray(a, dtype) for a in (x, k, r))


@pytest.mark.parametrize('case', CASES)
def test_every_plan_equals_lax_conv_and_its_gradients_float32(case):
  x, k, r = _arrays(case, jnp.float32)
  _, _, strides, padding = case

  def all_plans(x, k, r):
    ref, vjp = jax.vjp(lambda x, k: conv_ops.forward_lax(x, k, strides, padding), x, k)
    outs = []
    for plan in PLANS:
      y, v = jax.vjp(lambda x, k: conv_ops.conv2d(x, k, strides, padding, plan), x, k)
      outs.append((y, *v(r)))
    return (ref, *vjp(r)), outs

  ref, outs = jax.jit(all_plans)(x, k, r)
  for plan, out in zip(PLANS, outs):
    for name, a, b in zip(('y', 'dx', 'dk'), out, ref):
      scale = max(1.0, float(jnp.abs(b).max()))
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5 * scale,
                                 err_msg=f'{plan} {name} {case}')


@pytest.mark.parametrize('case', CASES[:3])
def test_gradients_match_finite_differences_float64(case):
  with jax.enable_x64():
    x, k, r = _arrays(case, jnp.float64, seed=1)
    _, _, strides, padding = case
    eps = 1e-6
    rng = np.random.default_rng(2)
    u, v = (jnp.asarray(rng.normal(size=a.shape)) for a in (x, k))
    # <r, conv(x + eps u, k + eps v)>: its directional derivative is <dx, u> + <dk, v>
    f = jax.jit(lambda x, k: jnp.vdot(r, conv_ops.forward_lax(x, k, strides, padding)))
    fd = (f(x + eps * u, k + eps * v) - f(x - eps * u, k - eps * v)) / (2 * eps)
    for plan in PLANS:
      _, vjp = jax.vjp(lambda x, k: conv_ops.conv2d(x, k, strides, padding, plan), x, k)
      dx, dk = vjp(r)
      directional = jnp.vdot(dx, u) + jnp.vdot(dk, v)
      np.testing.assert_allclose(float(directional), float(fd), rtol=1e-7, err_msg=f'{plan} {case}')


def test_measured_conv_in_a_model_equals_lax():
  model = models.create_model('lenet5', 10, (28, 28, 1))
  apply_fn = models.make_apply_fn(model)
  params = models.init_params(model, jax.random.key(0), (28, 28, 1))
  x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
  loss = lambda p, x: jnp.sum(jnp.sin(apply_fn(p, x)))
  outs = {}
  for f in ('measured', 'lax'):
    with conv_formulation(f):
      outs[f] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
  for a, b in zip(jax.tree.leaves(outs['measured']), jax.tree.leaves(outs['lax'])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_plan_table_is_a_measured_artefact():
  with open(conv_ops.TABLE_PATH) as f:
    table = json.load(f)
  # every recorded plan names, per part, the formulation with the smallest recorded median
  for backend, plans in table['plans'].items():
    for key, plan in plans.items():
      for part, chosen in plan.items():
        times = table['timings_ms'][backend][key][part]
        assert chosen == min(times, key=times.get), (backend, key, part)
  key_plan = conv_ops.measured_plan((128, 28, 28, 1), (5, 5, 1, 6), (1, 1), ((2, 2), (2, 2)), backend='cpu')
  assert key_plan == conv_ops.ConvPlan(**table['plans']['cpu']['28x28x1 k5x5x6 s1x1 p2,2,2,2'])
  # unmeasured shape, backend or dtype: lax.conv for every part
  assert conv_ops.measured_plan((1, 3, 3, 7), (1, 1, 7, 1), (1, 1), ((0, 0), (0, 0))) == conv_ops.ConvPlan()
  assert conv_ops.measured_plan((128, 28, 28, 1), (5, 5, 1, 6), (1, 1), ((2, 2), (2, 2)),
                                backend='gpu') == conv_ops.ConvPlan()
  assert conv_ops.measured_plan((128, 28, 28, 1), (5, 5, 1, 6), (1, 1), ((2, 2), (2, 2)),
                                dtype=jnp.bfloat16, backend='cpu') == conv_ops.ConvPlan()


def test_bad_plan_and_kernel_that_does_not_fit():
  with pytest.raises(FamrError, match='forward must be one of'):
    conv_ops.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1)), plan=conv_ops.ConvPlan('fft'))
  with pytest.raises(FamrError, match='does not fit'):
    conv_ops.conv2d(jnp.ones((1, 2, 2, 1)), jnp.ones((3, 3, 1, 1)), plan=conv_ops.ConvPlan('shifted'))
  with pytest.raises(FamrError, match='unknown conv formulation'):
    Conv(2, (3, 3), formulation='winograd').init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
