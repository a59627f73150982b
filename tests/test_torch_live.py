"""The PyTorch cross-checks with PyTorch itself (marker ``torch``; `pip install -e ".[test,torch]"`).

The default suite reads what PyTorch computed from tests/fixtures/ (tests/test_weight_import.py,
tests/test_conv.py). Here the installed PyTorch recomputes it all: the committed files must still be
what it gives, and a full-size torchvision ResNet-18 goes through the CLI. Without torch these tests
skip, saying so; with FAMR_JAX_REQUIRE_TORCH=1 (.ci/run sets it) a missing torch is a failure.
"""

import hashlib
import os
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, safe_open, save_file

pytestmark = pytest.mark.torch
if os.environ.get("FAMR_JAX_REQUIRE_TORCH") == "1":
  import torch   # CI installed the torch extra: its absence is an error, not a skip
else:
  torch = pytest.importorskip("torch", reason="the live PyTorch checks need the torch extra", exc_type=ImportError)

import famr_jax as fj  # noqa: E402
from famr_jax import models  # noqa: E402
from famr_jax.cli.main import main  # noqa: E402
from famr_jax.io.torch_weights import read_state_dict  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import make_fixtures  # noqa: E402
import torch_reference as ref  # noqa: E402


def test_the_committed_fixtures_are_what_pytorch_computes():
  built = make_fixtures.build()
  assert set(built) == {p.name for p in FIXTURES.glob("*.safetensors")}
  for name, (arrays, metadata) in built.items():
    committed = load_file(str(FIXTURES / name))
    assert set(committed) == set(arrays), name
    for key, value in arrays.items():
      if name.startswith("weights_") or key.endswith(".x"):   # the inputs: exactly
        np.testing.assert_array_equal(committed[key], value, err_msg=f"{name} {key}")
      else:   # PyTorch's outputs: to float rounding (another torch version, another BLAS)
        np.testing.assert_allclose(committed[key], value, rtol=1e-5, atol=1e-5, err_msg=f"{name} {key}")
    with safe_open(str(FIXTURES / name), "np") as f:
      stored = {k: v for k, v in f.metadata().items() if k != "torch"}
    assert stored == {k: v for k, v in metadata.items() if k != "torch"}, name


def test_full_size_resnet18_through_the_cli_gives_pytorch_logits(tmp_path):
  torch.manual_seed(0)
  net = ref.randomize_batch_norm(ref.ResNet(ref.BasicBlock, [2, 2, 2, 2], num_classes=7))
  weights = tmp_path / "resnet18.safetensors"
  save_file(ref.state_dict_numpy(net), str(weights))
  assert main(["import", "--from", "torchvision:resnet18", "--weights", str(weights), "--image-size", "32",
               "--out", str(tmp_path / "ckpt")]) == 0
  saved = fj.load_model(tmp_path / "ckpt")
  x = make_fixtures.inputs(2, 3, 32, seed=0)
  with torch.no_grad():
    expected = net(torch.from_numpy(x)).numpy()
  got = np.asarray(jax.jit(models.make_apply_fn(saved.model))(saved.params, x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(got, expected, atol=1e-4)
  assert saved.metadata["imported"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
  # torchvision's published ResNet-18 size, with a 7-class head instead of 1000 classes
  assert models.count_params(saved.params) == 11_689_512 - 513_000 + 512 * 7 + 7


def test_a_pth_is_read_through_torch_load(tmp_path):
  sd = load_file(str(FIXTURES / "weights_resnet18.safetensors"))
  path = tmp_path / "w.pth"
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
  read = read_state_dict(path)
  assert set(read) == set(sd)
  for key in sd:
    np.testing.assert_array_equal(read[key], sd[key])
