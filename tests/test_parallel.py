"""Data parallelism, FSDP, bfloat16, gradient accumulation and multi-process runs.

The 8-device and 2-process checks run in subprocesses (tests/scale_worker.py):
the main pytest process has already started JAX with one CPU device.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famr_jax.errors import FamrError
from famr_jax.data.forget import forget_classes
from famr_jax.engine.descent import minibatch_descent, plan_segments
from famr_jax.engine.parallel import (DistributedConfig, ScaleConfig, ShardedData, compute_dtype_apply_fn,
                               fsdp_spec, make_data_mesh, peak_memory, process_rows, shard_rows)
from famr_jax.methods.famr import FAMRConfig, famr_unlearn

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("scale_worker.py")
# Compile-time only: XLA's CPU backend optimizations off (same semantics, ~30% faster compiles).
FAST_COMPILE = "--xla_backend_optimization_level=0"


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
  env["JAX_PLATFORMS"] = "cpu"
  env["FAMR_JAX_NO_PROGRESS"] = "1"
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = np.asarray(v)
  return out


def _max_diff(flat_a: dict, flat_b: dict) -> float:
  assert set(flat_a) == set(flat_b)
  return max(float(np.max(np.abs(flat_a[k].astype(np.float64) - flat_b[k].astype(np.float64))))
             for k in flat_a)


@pytest.fixture(scope="module")
def params_npz(trained_digits, tmp_path_factory):
  path = tmp_path_factory.mktemp("params") / "mlp_digits.npz"
  np.savez(path, **_flatten(trained_digits.params))
  return path


# The run every variant is compared with: FAMR on one device, the library's first engine.
FAMR_CONFIG = FAMRConfig(epochs=4, batch_size=20)   # 20 is not a multiple of 8 (nor of 4)


@pytest.fixture(scope="module")
def single_device_famr(trained_digits):
  d = trained_digits
  forget = forget_classes(d.data.y_train, [3], d.data.num_classes)
  return famr_unlearn(d.apply_fn, d.params, d.data.x_train[forget.indices], FAMR_CONFIG, jax.random.key(5),
                      y_forget=d.data.y_train[forget.indices], show_progress=False)


def _load_npz(path) -> dict:
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def eight_devices(params_npz, tmp_path_factory):
  root = tmp_path_factory.mktemp("eight")
  out = root / "report.json"
  proc = subprocess.run([sys.executable, str(WORKER), "parallel8", str(out), str(root / "ckpt"), str(params_npz)],
                        env=_env(8), capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  report["params"] = {name: _load_npz(root / f"params_{name}.npz") for name in ("dp", "mesh_change", "bf16")}
  return report


def _history_diff(a, b) -> float:
  assert [h["epoch"] for h in a] == [h["epoch"] for h in b]
  return max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in x)


# ----------------------------------------------------------------------------- 8 fake devices

def test_sharded_famr_equals_single_device_with_padded_batch(eight_devices, single_device_famr):
  r, ref = eight_devices, single_device_famr
  assert r["device_count"] == 8
  # batch 20 on 8 devices is padded to 24 with zero-weight examples.
  assert _max_diff(r["params"]["dp"], _flatten(ref.params)) < 1e-5
  assert _history_diff(r["dp_history"], ref.history) < 1e-5
  assert ref.history[-1]["forget_acc"] < 0.5 * ref.history[0]["forget_acc"]


def test_params_replicated_batch_sharded_fsdp_params_sharded(eight_devices):
  r = eight_devices
  assert r["dp_batch_spec"] == "P('data',)"
  assert r["dp_param_spec"] == "P()"
  assert r["fsdp_batch_spec"] == "P('data',)"
  # w is (16, 32): FSDP shards its largest axis divisible by 8.
  assert r["fsdp_param_spec"] == "P(None, 'data')"
  assert r["dp_result_devices"] == r["fsdp_result_devices"] == 1   # handed back as ordinary arrays


def test_checkpoint_of_8_device_fsdp_mesh_resumes_on_one_device(eight_devices, single_device_famr):
  r, ref = eight_devices, single_device_famr
  assert r["stopped"] and r["stopped_step"] == 10
  assert _max_diff(r["params"]["mesh_change"], _flatten(ref.params)) < 1e-5
  assert _history_diff(r["mesh_change_history"], ref.history) < 1e-5


def test_bfloat16_with_grad_accumulation_forgets(eight_devices, single_device_famr):
  r = eight_devices
  hist = r["bf16_history"]
  assert r["bf16_param_dtypes"] == ["float32"]
  assert hist[0]["forget_acc"] > 0.9
  assert hist[-1]["forget_acc"] < 0.5 * hist[0]["forget_acc"]
  assert hist[-1]["forget_entropy"] > 0.6 * math.log(10) > hist[0]["forget_entropy"]
  # The bf16 path really ran in bf16 (not bit-equal to float32) yet stays close to it.
  assert 0.0 < _max_diff(r["params"]["bf16"], _flatten(single_device_famr.params)) < 0.05


# ----------------------------------------------------------------------------- two processes

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_give_the_params_of_one_process(trained_digits, params_npz, single_device_famr,
                                                     tmp_path):
  d = trained_digits
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, str(WORKER), "multiprocess", str(tmp_path), str(params_npz),
                             str(port), str(i), "2"], env=_env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    outputs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  reports = [json.loads((tmp_path / f"report_{i}.json").read_text()) for i in range(2)]
  assert [r["process_count"] for r in reports] == [2, 2]
  assert [r["device_count"] for r in reports] == [4, 4]
  forget = forget_classes(d.data.y_train, [3], d.data.num_classes)
  n = forget.indices.size
  # Each process loaded its own contiguous rows, together all of them.
  assert reports[0]["rows"][0] == 0 and reports[0]["rows"][1] == reports[1]["rows"][0]
  assert reports[1]["rows"][1] == n
  single = single_device_famr
  expected = _flatten(single.params)
  for i in range(2):
    assert _max_diff(_load_npz(tmp_path / f"params_{i}.npz"), expected) < 1e-5
  assert _history_diff(reports[0]["history"], single.history) < 1e-5


# ----------------------------------------------------------------------------- one device

def _np_softmax(z):
  z = z - z.max(1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(1, keepdims=True)


def test_grad_accumulation_on_a_mesh_is_algorithm_1_by_hand():
  """7 examples in one minibatch, 3 microbatches (padded to 9): one exact FAMR step."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 4)).astype(np.float32)
  params = {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
  eta, lam = 0.3, 0.5
  apply_fn = lambda p, xb: xb @ p["w"] + p["b"]
  result = famr_unlearn(apply_fn, params, x, FAMRConfig(epochs=2, lr=eta, lam=lam, batch_size=7),
                        jax.random.key(0), show_progress=False,
                        scale=ScaleConfig(data_parallel=True, grad_accum=3))
  w, b = params["w"].astype(np.float64), params["b"].astype(np.float64)
  for _ in range(2):
    dz = (_np_softmax(x @ w + b) - 1 / 3) / 7      # d KL(u || softmax z) / dz, mean over 7
    gw, gb = x.T @ dz, dz.sum(0)
    w, b = w - eta * (gw + lam * (w - params["w"])), b - eta * (gb + lam * (b - params["b"]))
  np.testing.assert_allclose(result.params["w"], w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(result.params["b"], b, rtol=1e-5, atol=1e-6)


def test_plan_segments_pads_batches_for_devices_and_microbatches():
  # 100 examples, batch 10 on 8 devices: 10 steps, each padded to 16 columns.
  p = plan_segments(100, 10, num_devices=8)
  assert (p.padded_batch, p.num_batches, p.segment_steps, p.num_segments) == (16, 10, 10, 1)
  # batch 10 with 3 microbatches on 2 devices: a multiple of 6 -> 12.
  assert plan_segments(25, 10, num_devices=2, grad_accum=3).padded_batch == 12
  # checkpoints every 4 steps: 3 segments of 4 (the last one runs 2 real steps).
  p = plan_segments(100, 10, segment_steps=4)
  assert (p.padded_batch, p.num_segments, p.segment_steps) == (10, 3, 4)
  with pytest.raises(FamrError, match="empty"):
    plan_segments(0, 10)


def test_fsdp_spec_and_process_rows_rules():
  P = jax.sharding.PartitionSpec
  assert fsdp_spec((768, 3072), 8, 1024) == P(None, "data")     # the largest divisible axis
  assert fsdp_spec((3072, 768), 8, 1024) == P("data")
  assert fsdp_spec((100, 7), 8, 1) == P()                       # no axis divisible by 8
  assert fsdp_spec((8, 8), 8, 1000) == P()                      # below the size threshold
  assert fsdp_spec((16, 16), 8, 1) == P("data")                 # ties: the first axis
  mesh = make_data_mesh(1)
  assert process_rows(10, mesh) == slice(0, 10)
  data = shard_rows([np.arange(5.0), np.arange(5)], mesh)
  assert data.num_examples == 5 and data.arrays[0].shape == (5,)
  with pytest.raises(FamrError, match="first axis"):
    shard_rows([np.arange(5.0), np.arange(4)], mesh)


def test_bfloat16_forward_keeps_float32_params_logits_and_gradients():
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(4, 16)), jnp.float32)
  f32 = lambda p, xb: jnp.tanh(xb @ p["w"])
  bf16 = compute_dtype_apply_fn(f32, "bfloat16")
  out = bf16(params, x)
  grads = jax.grad(lambda p: jnp.sum(bf16(p, x) ** 2))(params)
  assert out.dtype == jnp.float32 and grads["w"].dtype == jnp.float32
  reference = np.tanh(np.asarray(x, np.float64) @ np.asarray(params["w"], np.float64))
  err = np.max(np.abs(np.asarray(out) - reference))
  assert 0 < err < 3e-2      # bf16 has 8 mantissa bits: visibly rounded, still close
  assert compute_dtype_apply_fn(f32, "float32") is f32
  with pytest.raises(FamrError, match="compute dtype"):
    compute_dtype_apply_fn(f32, "float16")


def test_scale_and_distributed_configs_refuse_bad_values(monkeypatch):
  with pytest.raises(FamrError, match="grad_accum"):
    ScaleConfig(grad_accum=0).validate()
  with pytest.raises(FamrError, match="compute dtype"):
    ScaleConfig(compute_dtype="float16").validate()
  with pytest.raises(FamrError, match="devices exist"):
    ScaleConfig(data_parallel=True, num_devices=jax.device_count() + 1).validate()
  with pytest.raises(FamrError, match="all of coordinator"):
    DistributedConfig(num_processes=2).validate()
  with pytest.raises(FamrError, match="host:port"):
    DistributedConfig("localhost", 2, 0).validate()
  with pytest.raises(FamrError, match="not in 0..1"):
    DistributedConfig("127.0.0.1:1234", 2, 2).validate()
  env = {"FAMR_JAX_COORDINATOR_ADDRESS": "10.0.0.1:99", "FAMR_JAX_NUM_PROCESSES": "4",
         "FAMR_JAX_PROCESS_ID": "3"}
  assert DistributedConfig(process_id=1).merged_with_env(env) == DistributedConfig("10.0.0.1:99", 4, 1)
  with pytest.raises(FamrError, match="integer"):
    DistributedConfig.from_env({"FAMR_JAX_NUM_PROCESSES": "two"})


def test_sharded_data_needs_a_mesh():
  data = ShardedData((jnp.zeros((4, 2)),), 4)
  with pytest.raises(FamrError, match="mesh"):
    minibatch_descent(lambda p, b, w, c: jnp.sum(p), jnp.zeros(()), data, __import__("optax").sgd(0.1),
                      epochs=1, batch_size=2, key=jax.random.key(0), show_progress=False)


def test_peak_memory_names_its_source():
  info = peak_memory()
  assert info["process_peak_rss_bytes"] > 10 * 2 ** 20
  if jax.devices()[0].platform == "cpu":
    assert info["per_device_bytes"] is None and "RSS" in info["source"]
