"""Tests for famr_jax.models.layers: the im2col and lax convolutions agree.

Both formulations must give the same outputs and the same gradients (w.r.t.
params and inputs) for every model and for random conv configurations, and
both must equal an independent reference, PyTorch's ``conv2d`` in float64 (committed
fixtures: tests/fixtures/conv_cases.safetensors).
conftest.py sets full matmul precision, so the tolerances hold on any backend.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famr_jax import models
from famr_jax.errors import FamrError
from famr_jax.models import layers
from famr_jax.models.layers import Conv, conv_formulation, resolve_formulation, set_conv_formulation

# 'auto' (the default) and every explicit formulation the layer takes (the layer's own list, if it has one).
FORMULATIONS = tuple(getattr(layers, 'FORMULATIONS', ('auto', 'im2col', 'lax')))

# (features, kernel, strides, padding, input NHWC shape): LeNet5 / KarpathyNet
# stages, a ViT patch embedding (stride = kernel), strided SAME, asymmetric
# explicit padding, a 1x1 conv and a non-square kernel on a non-square input.
CONFIGS = [
    (6, (5, 5), (1, 1), ((2, 2), (2, 2)), (2, 12, 12, 1)),
    (16, (5, 5), (1, 1), ((0, 0), (2, 2)), (2, 9, 4, 6)),
    (8, (4, 4), (4, 4), 'VALID', (2, 8, 12, 3)),
    (8, (3, 3), (3, 3), 'VALID', (1, 10, 7, 2)),
    (5, (3, 3), (2, 2), 'SAME', (3, 9, 8, 4)),
    (4, (3, 2), (2, 1), ((1, 0), (0, 2)), (2, 7, 6, 3)),
    (7, (1, 1), (1, 1), 'VALID', (2, 5, 5, 3)),
]


def compiled(fn, *args):
  """jit without backend optimizations: these tests are compile-bound."""
  return jax.jit(fn).lower(*args).compile(
      compiler_options={'xla_backend_optimization_level': 0})(*args)


def both_formulations(apply, params, x):
  """{formulation: (output, d<out, r>/dparams, d<out, r>/dx)} for im2col and lax.

  The formulation is read at trace time, so both go into one traced program
  and a case costs one compilation.
  """
  outs = {}
  for formulation in ('im2col', 'lax'):
    with conv_formulation(formulation):
      y, vjp = jax.vjp(apply, params, x)
    r = jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))  # a fixed cotangent
    outs[formulation] = (y, *vjp(r))
  return outs


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  """allclose leaf by leaf, atol relative to the leaf's largest entry (float32 sums)."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    u, v = np.asarray(u), np.asarray(v)
    np.testing.assert_allclose(u, v, rtol=rtol, atol=atol * max(1.0, float(np.abs(v).max())))


def test_formulations_agree_on_random_configs():
  rng = np.random.default_rng(0)
  cases = []
  for features, kernel, strides, padding, shape in CONFIGS:
    conv = Conv(features, kernel, strides=strides, padding=padding)
    params = {'params': {
        'kernel': jnp.asarray(rng.normal(size=(*kernel, shape[-1], features)), jnp.float32),
        'bias': jnp.asarray(rng.normal(size=features), jnp.float32)}}
    flax_conv = nn.Conv(features, kernel, strides=strides, padding=padding)
    cases.append((conv, flax_conv, params, jnp.asarray(rng.normal(size=shape), jnp.float32)))

  def run_all(params, xs):
    outs = []
    for (conv, flax_conv, _, _), p, x in zip(cases, params, xs):
      outs.append((both_formulations(conv.apply, p, x), flax_conv.apply(p, x)))
    return outs

  results = compiled(run_all, [c[2] for c in cases], [c[3] for c in cases])
  for config, (outs, flax_y) in zip(CONFIGS, results):
    try:
      assert_trees_close(outs['im2col'], outs['lax'])
      # flax's own layer is the same function of the same params
      assert_trees_close(outs['im2col'][0], flax_y)
    except AssertionError as e:
      raise AssertionError(f'config {config}: {e}') from None


def test_conv_matches_torch_conv2d():
  # PyTorch's float64 conv2d of these inputs, committed by tests/fixtures/make_fixtures.py (no torch
  # needed here; tests/test_torch_live.py checks the file against the installed PyTorch). Every
  # formulation of the public Conv layer must give it: the default ('auto') and each explicit one.
  from safetensors.numpy import load_file, safe_open
  path = str(Path(__file__).resolve().parent / 'fixtures' / 'conv_cases.safetensors')
  cases = load_file(path)
  with safe_open(path, 'np') as f:   # the fixtures are of these very configurations
    assert json.loads(f.metadata()['configs']) == json.loads(json.dumps(CONFIGS))
  arrays = [tuple(jnp.asarray(cases[f'{i}.{k}']) for k in 'xwb') for i in range(len(CONFIGS))]

  def run_all(arrays):
    outs = []
    for (features, kernel, strides, padding, _), (x, w, b) in zip(CONFIGS, arrays):
      params = {'params': {'kernel': w, 'bias': b}}
      outs.append({f: Conv(features, kernel, strides=strides, padding=padding,
                           formulation=f).apply(params, x) for f in FORMULATIONS})
    return outs

  results = compiled(run_all, arrays)
  for i, (config, outs) in enumerate(zip(CONFIGS, results)):
    assert cases[f'{i}.y'].shape == outs['auto'].shape, config
    for formulation, out in outs.items():
      np.testing.assert_allclose(np.asarray(out), cases[f'{i}.y'], rtol=1e-4, atol=1e-4,
                                 err_msg=f'{formulation} {config}')


@pytest.mark.parametrize('name, image_shape', [
    ('lenet5', (28, 28, 1)), ('lenet5', (8, 8, 1)), ('karpathynet', (32, 32, 3)),
    ('vit_nano', (8, 8, 1)),
])
def test_models_formulations_agree(name, image_shape):
  model = models.create_model(name, 10, image_shape)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))['params']
  rng = np.random.default_rng(2)
  params = jax.tree.map(
      lambda s: jnp.asarray(rng.normal(size=s.shape) / np.sqrt(max(s.shape[:-1] or (1,))),
                            jnp.float32), shapes)
  x = jnp.asarray(rng.uniform(size=(3, *image_shape)), jnp.float32)
  outs = compiled(functools.partial(both_formulations, models.make_apply_fn(model)), params, x)
  assert_trees_close(outs['im2col'], outs['lax'])


def test_param_tree_and_init_equal_flax_conv():
  # Checkpoints written with nn.Conv load unchanged: same names, shapes, values.
  x = jnp.zeros((1, 8, 8, 3))
  ours, theirs = compiled(lambda key: (
      Conv(4, (3, 3), padding=((1, 1), (1, 1))).init(key, x),
      nn.Conv(4, (3, 3), padding=((1, 1), (1, 1))).init(key, x)), jax.random.key(3))
  assert_trees_close(ours, theirs, rtol=0, atol=0)
  lenet = jax.eval_shape(models.create_model('lenet5', 10, (28, 28, 1)).init,
                         jax.random.key(0), jnp.zeros((1, 28, 28, 1)))['params']
  assert {k: v.shape for k, v in lenet['conv1'].items()} == {'kernel': (5, 5, 1, 6), 'bias': (6,)}


def test_auto_override_and_explicit_formulation():
  from famr_jax.models.layers import in_loop_body
  assert resolve_formulation('auto') == 'lax'
  with in_loop_body():   # a scan body on CPU takes im2col
    assert resolve_formulation('auto') == ('im2col' if jax.default_backend() == 'cpu' else 'lax')
    with conv_formulation('lax'):   # an explicit setting wins
      assert resolve_formulation('auto') == 'lax'
  assert resolve_formulation('auto') == 'lax'
  with conv_formulation('lax'):
    assert resolve_formulation('auto') == 'lax'
    assert resolve_formulation('im2col') == 'im2col'  # an explicit choice wins
    with conv_formulation('im2col'):
      assert resolve_formulation('auto') == 'im2col'
    assert resolve_formulation('auto') == 'lax'
  with pytest.raises(RuntimeError), conv_formulation('lax'):
    raise RuntimeError('restored on the way out')
  assert resolve_formulation('auto') == 'lax'
  previous = set_conv_formulation('im2col')
  assert previous is None and resolve_formulation('auto') == 'im2col'
  set_conv_formulation('auto')
  with pytest.raises(FamrError, match='unknown conv formulation'):
    set_conv_formulation('winograd')
  with pytest.raises(FamrError, match='unknown conv formulation'):
    Conv(2, (3, 3), formulation='fft').init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))


def test_batch_axes_dtype_and_bad_padding():
  key = jax.random.key(0)
  x = jax.ShapeDtypeStruct((2, 5, 6, 6, 2), jnp.float32)
  for formulation in ('im2col', 'lax'):
    conv = Conv(3, (3, 3), padding='SAME', formulation=formulation)
    params = jax.eval_shape(conv.init, key, x)
    assert jax.eval_shape(conv.apply, params, x).shape == (2, 5, 6, 6, 3)
    unbatched = jax.ShapeDtypeStruct((6, 6, 2), jnp.float32)  # as nn.Conv allows
    assert jax.eval_shape(conv.apply, params, unbatched).shape == (6, 6, 3)
    half = Conv(3, (3, 3), dtype=jnp.bfloat16, formulation=formulation)
    assert jax.eval_shape(half.apply, params, unbatched).dtype == jnp.bfloat16
  small = jax.ShapeDtypeStruct((1, 3, 6, 2), jnp.float32)
  with pytest.raises(FamrError, match='padding'):
    jax.eval_shape(Conv(3, (3, 3), padding='CIRCULAR').init, key, small)
  with pytest.raises(FamrError, match='does not fit'):
    jax.eval_shape(Conv(3, (5, 5), padding='VALID', formulation='im2col').init, key, small)
