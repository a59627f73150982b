"""Subprocess side of tests/test_parallel.py and tests/test_resume.py (not a test module).

The device count of a JAX process is fixed when JAX starts, so the 8-device
and multi-process checks run here, in fresh interpreters, and report JSON.

  python tests/scale_worker.py parallel8 OUT.json CKPT_DIR PARAMS.npz
  python tests/scale_worker.py multiprocess OUT_DIR PARAMS.npz PORT PROCESS_ID NUM_PROCESSES
"""

from __future__ import annotations

import json
import os
import sys


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _unflatten(flat):
  root = {}
  for path, value in flat.items():
    node = root
    parts = path.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = value
  return root


def parallel8(out_json: str, ckpt_dir: str, params_npz: str) -> None:
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from famr_jax import models
  from famr_jax.data.datasets import load_dataset
  from famr_jax.data.forget import forget_classes
  from famr_jax.engine.descent import minibatch_descent
  from famr_jax.engine.parallel import ScaleConfig
  from famr_jax.engine.resume import ResumeConfig, RunStopped
  from famr_jax.methods.famr import FAMRConfig, famr_unlearn

  t_start = time.perf_counter()
  marks = {}
  mark = lambda name: marks.__setitem__(name, round(time.perf_counter() - t_start, 2))
  report: dict = {"device_count": jax.device_count(), "marks": marks}
  data = load_dataset("digits")
  model = models.create_model("mlp", data.num_classes, data.image_shape)
  apply_fn = models.make_apply_fn(model)
  with np.load(params_npz, allow_pickle=False) as f:
    params = _unflatten({k: f[k] for k in f.files})
  mark("loaded")
  forget = forget_classes(data.y_train, [3], data.num_classes)
  x_f, y_f = data.x_train[forget.indices], data.y_train[forget.indices]
  # batch 20 is not a multiple of 8: the sharded runs pad it with zero-weight examples.
  cfg = FAMRConfig(epochs=4, batch_size=20)
  key = jax.random.key(5)
  outputs = {}   # params of each variant, compared with the 1-device run by the test
  dp = famr_unlearn(apply_fn, params, x_f, cfg, key, y_forget=y_f, show_progress=False,
                    scale=ScaleConfig(data_parallel=True))
  mark("dp")
  outputs["dp"] = dp.params
  report["dp_history"] = dp.history

  # FSDP run on 8 devices stopped part-way (checkpoint written with the 8-device
  # FSDP mesh), then resumed with no mesh at all (1 device).
  resume = ResumeConfig(ckpt_dir, checkpoint_every=3, stop_after_steps=10)
  try:
    famr_unlearn(apply_fn, params, x_f, cfg, key, y_forget=y_f, show_progress=False,
                 scale=ScaleConfig(fsdp=True, fsdp_min_size=64), resume=resume)
    report["stopped"] = False
  except RunStopped as e:
    report["stopped"] = True
    report["stopped_step"] = e.step
  resumed = famr_unlearn(apply_fn, params, x_f, cfg, key, y_forget=y_f, show_progress=False,
                         resume=ResumeConfig(ckpt_dir, checkpoint_every=3))
  mark("fsdp+resume")
  outputs["mesh_change"] = resumed.params
  report["mesh_change_history"] = resumed.history

  # bfloat16 forward pass + gradient accumulation, sharded.
  bf = famr_unlearn(apply_fn, params, x_f, cfg, key, y_forget=y_f, show_progress=False,
                    scale=ScaleConfig(data_parallel=True, compute_dtype="bfloat16", grad_accum=2))
  mark("bf16")
  report["bf16_history"] = bf.history
  report["bf16_param_dtypes"] = sorted({str(a.dtype) for a in jax.tree.leaves(bf.params)})
  outputs["bf16"] = bf.params

  # Shardings seen inside the compiled step (instrumented loss on a tiny linear model).
  seen: dict = {}

  def loss(p, batch, w, ctx):
    jax.debug.inspect_array_sharding(batch[0], callback=lambda s: seen.setdefault("batch", str(s.spec)))
    jax.debug.inspect_array_sharding(p["w"], callback=lambda s: seen.setdefault("w", str(s.spec)))
    z = batch[0] @ p["w"]
    return jnp.sum(w * jnp.sum(z ** 2, -1)) / jnp.maximum(jnp.sum(w), 1.0)

  x = np.random.default_rng(0).normal(size=(48, 16)).astype(np.float32)
  p0 = {"w": jnp.ones((16, 32)) * 0.01}
  for name, scale in (("dp", ScaleConfig(data_parallel=True)), ("fsdp", ScaleConfig(fsdp=True, fsdp_min_size=1))):
    seen.clear()
    r = minibatch_descent(loss, p0, (x,), optax.sgd(0.1), epochs=1, batch_size=16, key=jax.random.key(0),
                          show_progress=False, scale=scale)
    report[f"{name}_batch_spec"] = seen.get("batch")
    report[f"{name}_param_spec"] = seen.get("w")
    report[f"{name}_result_devices"] = len(r.params["w"].devices())
  mark("instrumented")
  for name, tree in outputs.items():
    np.savez(os.path.join(os.path.dirname(out_json), f"params_{name}.npz"),
             **{k: np.asarray(v) for k, v in _flatten(tree).items()})
  with open(out_json, "w") as f:
    json.dump(report, f)


def multiprocess(out_dir: str, params_npz: str, port: str, process_id: str, num_processes: str) -> None:
  from famr_jax.engine.parallel import DistributedConfig, initialize_distributed
  initialize_distributed(DistributedConfig(f"127.0.0.1:{port}", int(num_processes), int(process_id),
                                           timeout_s=60))
  import jax
  import numpy as np

  from famr_jax import models
  from famr_jax.data.datasets import load_dataset
  from famr_jax.data.forget import forget_classes
  from famr_jax.engine.parallel import ScaleConfig, make_data_mesh, process_rows, shard_rows
  from famr_jax.methods.famr import FAMRConfig, famr_unlearn

  data = load_dataset("digits")
  model = models.create_model("mlp", data.num_classes, data.image_shape)
  apply_fn = models.make_apply_fn(model)
  with np.load(params_npz, allow_pickle=False) as f:
    params = _unflatten({k: f[k] for k in f.files})
  forget = forget_classes(data.y_train, [3], data.num_classes)
  n = forget.indices.size
  mesh = make_data_mesh()
  rows = process_rows(n, mesh)
  # Each process loads only its own rows of the forget set.
  mine = forget.indices[rows]
  sharded = shard_rows([data.x_train[mine], data.y_train[mine]], mesh, num_examples=n, local=True)
  result = famr_unlearn(apply_fn, params, sharded, FAMRConfig(epochs=4, batch_size=20), jax.random.key(5),
                        show_progress=False, scale=ScaleConfig(data_parallel=True))
  flat = {k: np.asarray(v) for k, v in _flatten(result.params).items()}
  np.savez(os.path.join(out_dir, f"params_{process_id}.npz"), **flat)
  with open(os.path.join(out_dir, f"report_{process_id}.json"), "w") as f:
    json.dump({"process_count": jax.process_count(), "device_count": jax.device_count(),
               "rows": [rows.start, rows.stop], "history": result.history}, f)


if __name__ == "__main__":
  os.environ.setdefault("FAMR_JAX_NO_PROGRESS", "1")
  mode, args = sys.argv[1], sys.argv[2:]
  {"parallel8": parallel8, "multiprocess": multiprocess}[mode](*args)
