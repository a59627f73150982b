"""Times each part of each convolution of the models by every formulation; writes the plan table.

For every convolution LeNet5 (28x28x1 and 8x8x1 inputs) and KarpathyNet
(32x32x3) trace, at batch ``--batch``, it times the forward pass, the input
gradient and the weight gradient as ``shifted`` (only up to ``--max-shifted-cin``
input channels), ``im2col`` and ``lax`` (each a lone jitted call, median of
``--repeats``) and records the fastest formulation of each part per backend in
``famr_jax/models/conv_plans.json`` (``--write``), which ``Conv``'s
``measured`` formulation reads.

  PYTHONPATH=$PWD python3 experiments/bench_conv.py --repeats 15 --write
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from famr_jax import models
from famr_jax.models import conv_ops
from famr_jax.models.layers import Conv, _pair, explicit_padding

MODELS = (('lenet5', (28, 28, 1)), ('lenet5', (8, 8, 1)), ('karpathynet', (32, 32, 3)))


def conv_shapes(name, image_shape, batch):
  """(x shape, kernel shape, strides, padding) of every Conv the model calls."""
  found = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, Conv) and context.method_name == '__call__':
      x = args[0]
      k, s = _pair(module.kernel_size, 'kernel_size'), _pair(module.strides, 'strides')
      found.append(((batch, *x.shape[-3:]), (*k, x.shape[-1], module.features), s,
                    explicit_padding(module.padding, x.shape[-3:-1], k, s)))
    return next_fun(*args, **kwargs)

  model = models.create_model(name, 10, image_shape)
  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((batch, *image_shape)))
  return found


def median_ms(fn, args, repeats):
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def time_parts(x_shape, k_shape, strides, padding, repeats, max_shifted_cin):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  k = jnp.asarray(rng.normal(size=k_shape), jnp.float32)
  y = conv_ops.forward_lax(x, k, strides, padding)
  dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  times = {part: {} for part in conv_ops.ConvPlan._fields}
  for f in conv_ops.PARTS_FORMULATIONS:
    # shifted forward / input grad cost kh*kw*channels broadcast products: only for few channels
    if f != 'shifted' or k_shape[2] <= max_shifted_cin:
      times['forward'][f] = median_ms(lambda x, k: conv_ops.FORWARDS[f](x, k, strides, padding), (x, k), repeats)
    if f != 'shifted' or k_shape[3] <= max_shifted_cin:
      times['input_grad'][f] = median_ms(
          lambda dy, k: conv_ops.input_grad(dy, k, x_shape[1:3], strides, padding, f), (dy, k), repeats)
    times['weight_grad'][f] = median_ms(
        lambda x, dy: conv_ops.weight_grad(x, dy, k_shape[:2], strides, padding, f), (x, dy), repeats)
  return times


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--repeats', type=int, default=15)
  p.add_argument('--max-shifted-cin', type=int, default=16)
  p.add_argument('--write', action='store_true', help='update famr_jax/models/conv_plans.json')
  args = p.parse_args()
  backend = jax.default_backend()
  try:
    with open(conv_ops.TABLE_PATH) as f:
      table = json.load(f)
  except FileNotFoundError:
    table = {}
  plans = table.setdefault('plans', {}).setdefault(backend, {})
  timings = table.setdefault('timings_ms', {}).setdefault(backend, {})
  print(f'backend {backend}, batch {args.batch}, median of {args.repeats}; milliseconds per call')
  print('| conv | part | shifted | im2col | lax | chosen |\n|---|---|---|---|---|---|')
  seen = set()
  for name, image_shape in MODELS:
    for shapes in conv_shapes(name, image_shape, args.batch):
      key = conv_ops.shape_key(*shapes)
      if key in seen:
        continue
      seen.add(key)
      times = time_parts(*shapes, args.repeats, args.max_shifted_cin)
      plans[key] = {part: min(t, key=t.get) for part, t in times.items()}
      timings[key] = times
      for part, t in times.items():
        cells = ' | '.join(f'{t[f]:.2f}' if f in t else '-' for f in conv_ops.PARTS_FORMULATIONS)
        print(f'| {name} {key} | {part} | {cells} | {plans[key][part]} |', flush=True)
  table['note'] = (f'written by experiments/bench_conv.py: fastest median of {args.repeats} lone jitted calls '
                   f'at batch {args.batch}, float32')
  if args.write:
    with open(conv_ops.TABLE_PATH, 'w') as f:
      json.dump(table, f, indent=1, sort_keys=True)
    print(f'wrote {conv_ops.TABLE_PATH}')


if __name__ == '__main__':
  main()
