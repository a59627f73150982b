"""Which loop form, convolution and pooling the engine uses on this backend: a LeNet5 Adam step, timed.

Usage:
  python experiments/bench_loop_forms.py [--batches 40] [--repeats 3]

Runs, in one process, one LeNet5 training epoch of ``--batches`` minibatches of
128 (random Fashion-MNIST-shaped data) in every combination of

* loop form: a Python loop of jitted steps with buffer donation (``steps``) or one
  ``lax.scan`` over the epoch (``scan``);
* convolution: ``lax.conv_general_dilated`` (``lax``) or an im2col matmul (``im2col``),
  ``famr_jax.models.layers.Conv``;
* max pooling: ``flax.linen.max_pool`` (``reduce_window``, whose gradient is a
  select-and-scatter) or a reshape + max (``reshape``, ``famr_jax.models.base.max_pool2``);

and prints images/s and the ratio to the engine's form before issue 12 (scan,
lax, reduce_window). Best of ``--repeats`` timed epochs after a compiled warm-up.
"""

from __future__ import annotations

import argparse
import itertools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from famr_jax.models.base import max_pool2
from famr_jax.models.layers import Conv

BATCH = 128


def lenet5(pool, formulation):
  class LeNet5(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = pool(nn.relu(Conv(6, (5, 5), padding=((2, 2), (2, 2)), formulation=formulation)(x)))
      x = pool(nn.relu(Conv(16, (5, 5), padding="VALID", formulation=formulation)(x)))
      x = x.reshape(len(x), -1)
      x = nn.relu(nn.Dense(120)(x))
      x = nn.relu(nn.Dense(84)(x))
      return nn.Dense(10)(x)
  return LeNet5()


POOLS = {"reduce_window": lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)), "reshape": max_pool2}


def epoch_time(loop, formulation, pool, x, y, batches, repeats):
  model = lenet5(POOLS[pool], formulation)
  params = model.init(jax.random.key(0), x[:1])
  opt = optax.adam(1e-3)

  def step(p, s, i):
    xb = jax.lax.dynamic_slice_in_dim(x, i * BATCH, BATCH)
    yb = jax.lax.dynamic_slice_in_dim(y, i * BATCH, BATCH)
    loss = lambda q: optax.softmax_cross_entropy_with_integer_labels(model.apply(q, xb), yb).mean()
    updates, s = opt.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  if loop == "steps":
    jstep = jax.jit(step, donate_argnums=(0, 1))

    def run(p, s):
      for i in range(batches):
        p, s = jstep(p, s, i)
      return p
  else:
    jepoch = jax.jit(lambda p, s: jax.lax.scan(lambda c, i: (step(*c, i), None), (p, s),
                                                jnp.arange(batches))[0][0])
    run = jepoch
  fresh = lambda: (jax.tree.map(jnp.copy, params), opt.init(params))
  jax.block_until_ready(run(*fresh()))   # compile
  best = np.inf
  for _ in range(repeats):
    p, s = fresh()
    t0 = time.perf_counter()
    jax.block_until_ready(run(p, s))
    best = min(best, time.perf_counter() - t0)
  return batches * BATCH / best


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batches", type=int, default=40)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(args.batches * BATCH, 28, 28, 1)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 10, args.batches * BATCH).astype(np.int32))
  print(f"jax {jax.__version__} ({jax.default_backend()}), LeNet5 Adam step, batch {BATCH}, "
        f"{args.batches} steps, best of {args.repeats}")
  rows = {}
  for loop, formulation, pool in itertools.product(("scan", "steps"), ("lax", "im2col"), POOLS):
    rows[(loop, formulation, pool)] = epoch_time(loop, formulation, pool, x, y, args.batches, args.repeats)
  base = rows[("scan", "lax", "reduce_window")]
  for (loop, formulation, pool), speed in rows.items():
    print(f"{loop:6s} {formulation:7s} {pool:14s} {speed:9,.0f} images/s   {speed / base:5.2f}x "
          "the scan + lax + reduce_window step")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
