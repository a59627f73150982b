"""Orbax checkpoints: round trip, no silent overwrite, foreign architectures refused."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from famr_jax.io import checkpoints
from famr_jax.errors import FamrError


def _params():
  rng = np.random.default_rng(0)
  return {"conv1": {"kernel": jnp.asarray(rng.normal(size=(5, 5, 1, 6)), jnp.float32),
                    "bias": jnp.zeros(6)},
          "fc": {"kernel": jnp.asarray(rng.normal(size=(12, 10)), jnp.float32), "bias": jnp.ones(10)}}


def test_round_trip_is_exact_with_and_without_template(tmp_path):
  params = _params()
  fisher = jax.tree.map(lambda a: a * 2, params)
  path = checkpoints.save_checkpoint(tmp_path / "ck", params, {"model": "lenet5", "config": {"lr": 0.1}},
                                     extras={"fisher": fisher})
  assert path.is_absolute() and (path / "famr_jax.json").is_file()
  meta = json.loads((path / "famr_jax.json").read_text())
  assert meta["param_shapes"]["conv1/kernel"] == [[5, 5, 1, 6], "float32"]
  for template in (None, params):
    ck = checkpoints.load_checkpoint(tmp_path / "ck", template=template)
    for a, b in zip(jax.tree.leaves(ck.params), jax.tree.leaves(params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert ck.metadata["model"] == "lenet5" and ck.metadata["config"] == {"lr": 0.1}
    np.testing.assert_array_equal(np.asarray(ck.extras["fisher"]["fc"]["bias"]), 2 * np.ones(10))


def test_existing_directory_is_never_overwritten_unless_asked(tmp_path):
  target = tmp_path / "ck"
  target.mkdir()
  (target / "keep.txt").write_text("precious")
  with pytest.raises(FamrError, match="already exists"):
    checkpoints.save_checkpoint(target, _params(), {})
  assert (target / "keep.txt").read_text() == "precious"
  with pytest.raises(FamrError, match="no .famr-jax-output marker"):   # a user's folder: never replaced
    checkpoints.save_checkpoint(target, _params(), {"v": 2}, overwrite=True)
  assert (target / "keep.txt").read_text() == "precious"
  ours = tmp_path / "ours"
  checkpoints.save_checkpoint(ours, _params(), {"v": 1})
  checkpoints.save_checkpoint(ours, _params(), {"v": 2}, overwrite=True)   # famr-jax's own: replaced
  assert checkpoints.read_metadata(ours)["v"] == 2
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "ours"]   # no staging or lock left behind


def test_foreign_architecture_is_refused(tmp_path):
  checkpoints.save_checkpoint(tmp_path / "ck", _params(), {})
  other = _params()
  other["fc"]["kernel"] = jnp.zeros((12, 7))
  with pytest.raises(FamrError, match=r"different architecture: fc/kernel has shape \(12, 10\)"):
    checkpoints.load_checkpoint(tmp_path / "ck", template=other)
  with pytest.raises(FamrError, match="different architecture"):
    checkpoints.load_checkpoint(tmp_path / "ck", template={"head": {"kernel": jnp.zeros(3)}})


def test_missing_and_non_checkpoint_directories(tmp_path):
  with pytest.raises(FamrError, match="does not exist"):
    checkpoints.load_checkpoint(tmp_path / "nothing")
  (tmp_path / "plain").mkdir()
  with pytest.raises(FamrError, match="not a famr-jax checkpoint"):
    checkpoints.load_checkpoint(tmp_path / "plain")


def test_checkpoint_saved_on_other_devices_loads_on_this_one(tmp_path):
  """A checkpoint keeps the devices it was saved from (here: device 7 of 8); loading must not need them.

  This is the CPU-trained checkpoint opened on a GPU machine ("Topology mismatch" before the fix).
  """
  import os
  import subprocess
  import sys
  code = (
      "import jax, jax.numpy as jnp, numpy as np\n"
      "from famr_jax.io import checkpoints\n"
      "dev = jax.devices()[7]\n"
      "params = {'fc': {'kernel': jax.device_put(jnp.arange(6.0).reshape(2, 3), dev),\n"
      "                 'bias': jax.device_put(jnp.ones(3), dev)}}\n"
      f"checkpoints.save_checkpoint({str(tmp_path / 'ckpt')!r}, params, {{'model': 'x'}},\n"
      "                            extras={'fisher': jax.tree.map(lambda a: 2 * a, params)})\n")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=300)
  for template in (None, {"fc": {"kernel": np.zeros((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}):
    restored = checkpoints.load_checkpoint(tmp_path / "ckpt", template=template)
    np.testing.assert_array_equal(restored.params["fc"]["kernel"], np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(restored.extras["fisher"]["fc"]["bias"], 2 * np.ones(3))
    assert restored.params["fc"]["kernel"].sharding.device_set == {jax.local_devices()[0]}
