"""Per-step time and images/s of FAMR's minibatch step, on 1 device and on all devices.

For each model the script builds exactly the engine's program
(:func:`famr_jax.engine.descent.prepare_descent`: FAMR's uniform-KL + anchor
loss, SGD, batch sharded over a "data" mesh, params replicated), measures the
compile time apart (XLA's backend compile events), then times ``--calls``
calls of ``--steps`` steps each and asserts that none of them compiled again.
FLOPs per step come from XLA's cost analysis of the compiled program; with
``--peak-tflops`` (the device's dense peak in the compute dtype) the model
FLOPs utilization is reported too.

  # CPU here, 8 fake devices (they share the same cores: no speedup is expected)
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/bench_scale.py \
      --models lenet5,karpathynet,vit_ti,vit_s,vit_b --vit-image-size 32 --batch 32 --json runs/scale/bench.json
  # a GPU (H100: 989 dense bf16 TFLOP/s), ViT-B at 224x224 in bfloat16
  python experiments/bench_scale.py --models vit_b --batch 256 --compute-dtype bfloat16 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np
import optax

from famr_jax import models
from famr_jax import losses
from famr_jax.engine.descent import prepare_descent
from famr_jax.engine.parallel import CompileCounter, ScaleConfig, compute_dtype_apply_fn, peak_memory

IMAGE_SHAPES = {"lenet5": (28, 28, 1), "karpathynet": (32, 32, 3), "mlp": (28, 28, 1), "logistic": (28, 28, 1)}


def image_shape(model: str, vit_size: int) -> tuple[int, int, int]:
  return IMAGE_SHAPES.get(model, (vit_size, vit_size, 3))


def vit_train_flops_per_image(model_name: str, shape, num_classes: int) -> float | None:
  """Model FLOPs of one training step per image for a ViT preset (None for other models).

  Forward: patch embedding, per block the qkv / attention scores / attention-weighted values / output
  projection / MLP matmuls, and the head (2 FLOPs per multiply-add); a training step is 3x the
  forward (the backward computes gradients of activations and of weights). This is what MFU is
  measured against: XLA's cost analysis does not count the FLOPs of library calls (cuBLAS, cuDNN) on
  a GPU, so its figure there is far too low (ViT-B, H100: 329 GFLOP/step counted vs ~27 TFLOP real).
  """
  if not model_name.startswith("vit"):
    return None
  from famr_jax.models.vit import auto_patch_size, vit_config
  cfg = vit_config(model_name)
  h, w, c = shape
  patch = cfg.patch_size or auto_patch_size(h, w)
  patches = (h // patch) * (w // patch)
  t, d, m = patches + 1, cfg.hidden_dim, cfg.mlp_dim
  block = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * m
  forward = 2 * patches * patch * patch * c * d + cfg.depth * block + 2 * d * num_classes
  return 3.0 * forward


def bench_one(model_name: str, devices: int, args) -> dict:
  shape = image_shape(model_name, args.vit_image_size)
  model = models.create_model(model_name, args.num_classes, shape)
  apply_fn = models.make_apply_fn(model)
  params = models.init_params(model, jax.random.key(0), shape)
  forward = compute_dtype_apply_fn(apply_fn, args.compute_dtype)

  def loss_fn(p, batch, weights, params0):   # FAMR, Eq. 1 (mean uniform KL + anchor)
    return losses.famr_objective(forward, p, params0, batch[0], lam=0.1, weights=weights,
                                     reduction="mean")

  n = args.batch * args.steps
  x = np.random.default_rng(0).uniform(size=(n, *shape)).astype(np.float32)
  scale = ScaleConfig(data_parallel=True, num_devices=devices, compute_dtype=args.compute_dtype,
                      grad_accum=args.grad_accum)
  prep = prepare_descent(loss_fn, params, (x,), optax.sgd(1e-4), batch_size=args.batch, key=jax.random.key(1),
                         context=params, scale=scale)
  state = (prep.params, prep.opt_state)

  def call(epoch):
    p, s, _, m = prep.segment(*state, prep.data, prep.context, prep.key_data, prep.scalar(epoch),
                              prep.scalar(0), prep.zero_acc)
    m["loss"].block_until_ready()
    return p, s

  with CompileCounter() as first:
    t0 = time.perf_counter()
    state = call(0)
    first_call_s = time.perf_counter() - t0
  times = []
  with CompileCounter() as later:
    for i in range(args.calls):
      t0 = time.perf_counter()
      state = call(i + 1)
      times.append(time.perf_counter() - t0)
  if later.count:
    raise AssertionError(f"{model_name} on {devices} device(s): {later.count} recompilation(s) after the first step")
  lowered = prep.segment.lower(*state, prep.data, prep.context, prep.key_data, prep.scalar(0), prep.scalar(0),
                               prep.zero_acc)
  cost = lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_call = float(cost.get("flops", float("nan"))) if cost else float("nan")
  step_s = float(np.median(times)) / args.steps
  row = {"model": model_name, "devices": devices, "image_shape": list(shape), "batch": args.batch,
         "params": models.count_params(params), "compute_dtype": args.compute_dtype,
         "compile_s": first.seconds, "compiles_first_call": first.count, "first_call_s": first_call_s,
         "recompiles_after_first": later.count, "step_ms": 1e3 * step_s, "images_per_s": args.batch / step_s,
         # XLA counts the FLOPs of the per-device (SPMD) program: times the devices for the step.
         "xla_flops_per_step": flops_call / args.steps * devices}
  per_image = vit_train_flops_per_image(model_name, shape, args.num_classes)
  row["model_flops_per_step"] = None if per_image is None else per_image * args.batch
  if args.peak_tflops:
    # MFU from the model's own FLOP count where it is known (ViT), else from XLA's count.
    flops = row["model_flops_per_step"] or row["xla_flops_per_step"]
    row["mfu"] = flops / step_s / (args.peak_tflops * 1e12 * devices)
  return row


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="lenet5,karpathynet,vit_ti,vit_s,vit_b")
  p.add_argument("--devices", default="1,all", help="comma list of device counts; 'all' = every device")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=4, help="steps per compiled call")
  p.add_argument("--calls", type=int, default=3, help="timed calls after the first")
  p.add_argument("--num-classes", type=int, default=100)
  p.add_argument("--vit-image-size", type=int, default=224)
  p.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--grad-accum", type=int, default=1)
  p.add_argument("--peak-tflops", type=float, default=None, help="dense peak TFLOP/s of one device")
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)
  counts = []
  for item in args.devices.split(","):
    c = jax.device_count() if item.strip() == "all" else int(item)
    if c not in counts:
      counts.append(c)
  rows = []
  print(f"{jax.device_count()} {jax.devices()[0].platform} device(s); batch {args.batch}, "
        f"{args.steps} steps per call, {args.compute_dtype}", flush=True)
  print("| model | devices | params | compile s | step ms | images/s | XLA GFLOP/step | model GFLOP/step |" +
        (" MFU |" if args.peak_tflops else ""))
  print("|---|---|---|---|---|---|---|---|" + ("---|" if args.peak_tflops else ""))
  for name in args.models.split(","):
    for c in counts:
      r = bench_one(name.strip(), c, args)
      rows.append(r)
      line = (f"| {r['model']} | {c} | {r['params']:,} | {r['compile_s']:.1f} | {r['step_ms']:.1f} | "
              f"{r['images_per_s']:.0f} | {r['xla_flops_per_step'] / 1e9:.2f} | "
              + ("-" if r["model_flops_per_step"] is None else f"{r['model_flops_per_step'] / 1e9:.0f}") + " |")
      if args.peak_tflops:
        line += f" {100 * r['mfu']:.1f}% |"
      print(line, flush=True)
  result = {"device_count": jax.device_count(), "platform": jax.devices()[0].platform,
            "device_kind": jax.devices()[0].device_kind, "rows": rows, "memory": peak_memory()}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
