"""Benchmark: class-impression generation speed vs the PyTorch figures of issue 3.

The authors' procedure makes one impression at a time (1000 Adam steps each).
Measured in PyTorch on this 2-core CPU for LeNet5 (10 classes x 100
impressions): 0.31 s per impression at the input of the last dense layer
(84-d) and 0.55 s at the first dense layer's input (400-d), i.e. 5-9 minutes;
the same work batched into one tensor took 0.6 s and 3.8 s. famr-jax makes
all 1000 at once (``vmap`` over impressions and classes, the 1000 steps one
``lax.scan`` in one ``jit``); this prints its compile and run times next to
those figures, plus the machine's load and a matmul throughput measured at
the same time (the machine is shared: timings move with its load).

  python experiments/bench_impressions.py                      # LeNet5 28x28, random weights
  python experiments/bench_impressions.py --checkpoint runs/fmnist_lenet5 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax import models
from famr_jax.methods.impressions import ImpressionConfig, class_impressions, impression_target, optimize_impressions

# Issue 3: PyTorch on this machine. (per impression one at a time, 10 x 100 batched)
PYTORCH = {"fc3": (0.31, 0.6), "fc1": (0.55, 3.8)}


def matmul_gflops(seconds: float = 1.0) -> float:
  """Throughput of a jitted 1000x400 @ 400x120 matmul right now (a load gauge)."""
  a, w = jnp.ones((1000, 400)), jnp.ones((400, 120))
  f = jax.jit(lambda a, w: a @ w)
  f(a, w).block_until_ready()
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    r = f(a, w)
    n += 1
  r.block_until_ready()
  return 2 * 1000 * 400 * 120 * n / (time.perf_counter() - t0) / 1e9


def program_gflop(model, params, shape, num_classes, cfg) -> float | None:
  """XLA's own FLOP count of the compiled impression program (None if the backend gives none)."""
  tail_fn, ishape, _ = impression_target(model, params, shape, cfg)
  n = num_classes * cfg.num_per_class
  run = jax.jit(optimize_impressions, static_argnames=("tail_fn", "steps", "lr", "beta", "lower", "upper",
                                                       "log_softmax"))

  def flops(lowered):
    cost = lowered.compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return (cost or {}).get("flops")

  x0 = jnp.zeros((n, *ishape))
  one_step = flops(run.lower(tail_fn=tail_fn, params=params, targets=jnp.zeros((n,), jnp.int32), x0=x0,
                             steps=1, lr=cfg.lr))
  # The program ends with a forward pass for the logits, which is not a step: count it once.
  forward = flops(jax.jit(lambda x: jax.vmap(lambda xi: tail_fn(params, xi[None])[0])(x)).lower(x0))
  if one_step is None or forward is None:
    return None
  return ((one_step - forward) * cfg.steps + forward) / 1e9


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", help="a LeNet5 checkpoint (default: random LeNet5 weights, 28x28x1)")
  parser.add_argument("--layers", default="fc3,fc1")
  parser.add_argument("--per-class", type=int, default=100)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--repeats", type=int, default=1, help="runs per layer (the best is reported)")
  parser.add_argument("--pixel", action="store_true", help="also time pixel-space impressions (slow on CPU)")
  args = parser.parse_args(argv)

  if args.checkpoint:
    from famr_jax.workflows import load_model
    loaded = load_model(args.checkpoint)
    model, params, shape, num_classes = (loaded.model, loaded.params, loaded.data.image_shape,
                                         loaded.data.num_classes)
  else:
    shape, num_classes = (28, 28, 1), 10
    model = models.create_model("lenet5", num_classes, shape)
    params = models.init_params(model, jax.random.key(0), shape)
  print(f"devices: {jax.devices()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
        f"matmul gauge {matmul_gflops():.1f} GFLOP/s")
  print(f"{num_classes} classes x {args.per_class} impressions x {args.steps} Adam steps, all at once\n")
  print("| space | dim | compile s | run s | per impression ms | kept | GFLOP (XLA) | achieved GFLOP/s | "
        "PyTorch one-at-a-time s | PyTorch batched s | speed-up vs batched |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  runs = [("activation", layer) for layer in args.layers.split(",")]
  if args.pixel:
    runs.append(("pixel", None))
  for space, layer in runs:
    cfg = ImpressionConfig(num_per_class=args.per_class, steps=args.steps, space=space, layer=layer)
    best = None
    for rep in range(args.repeats):
      s = class_impressions(model, params, range(num_classes), num_classes, shape, cfg, jax.random.key(rep))
      best = s if best is None or s.run_s < best.run_s else best
    dim = int(np.prod(best.inputs.shape[1:]))
    n = num_classes * args.per_class
    torch_one, torch_batched = PYTORCH.get(layer, (None, None)) if space == "activation" else (None, None)
    fmt = lambda v: "-" if v is None else f"{v}"
    speedup = "-" if torch_batched is None else f"{torch_batched / best.run_s:.1f}x"
    gflop = program_gflop(model, params, shape, num_classes, cfg)
    gf = "-" if gflop is None else f"{gflop:.2f}"
    rate = "-" if gflop is None else f"{gflop / best.run_s:.1f}"
    print(f"| {space}{'' if layer is None else ' @ ' + layer} | {dim} | {best.compile_s:.2f} | {best.run_s:.3f} | "
          f"{1000 * best.run_s / n:.3f} | {int(best.kept_per_class.sum())}/{n} | {gf} | {rate} | "
          f"{fmt(None if torch_one is None else round(torch_one * n))} | {fmt(torch_batched)} | {speedup} |")
  print(f"\nload average after: {os.getloadavg()[0]:.1f}; matmul gauge {matmul_gflops():.1f} GFLOP/s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
