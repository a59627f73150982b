"""Issue 15 parts 3 and 7: torchvision / Hugging Face / timm weights into famr-jax, checked against PyTorch.

PyTorch itself is not needed: the weights and the logits PyTorch computed from them are committed under
tests/fixtures/ (tests/fixtures/make_fixtures.py wrote them; tests/test_torch_live.py checks with the
installed PyTorch that they are still what it computes).
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, safe_open   # the `test` extra installs safetensors

import famr_jax as fj
from famr_jax import models
from famr_jax.cli.main import main
from famr_jax.errors import FamrError
from famr_jax.io.torch_weights import read_state_dict
from famr_jax.io.weight_import import convert_weights

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import make_fixtures  # noqa: E402  (NumPy-only parts: the AlexNet seed)
sys.path.insert(0, str(FIXTURES.parent))
from vit_names import hf_to_timm  # noqa: E402

OUTPUTS = load_file(str(FIXTURES / "torch_outputs.safetensors"))
with safe_open(str(FIXTURES / "torch_outputs.safetensors"), "np") as _f:
  META = {k: json.loads(v) for k, v in _f.metadata().items() if k != "torch"}


def _weights(name):
  return load_file(str(FIXTURES / f"weights_{name}.safetensors"))


def _famr_logits(model, params, x):
  return np.asarray(jax.jit(models.make_apply_fn(model))(params, x.transpose(0, 2, 3, 1)))


def _param_count(sd):
  """The trainable parameters of a PyTorch state dict (BatchNorm statistics are not parameters)."""
  return sum(v.size for k, v in sd.items() if not k.endswith(("running_mean", "running_var")))


def test_resnet18_safetensors_import_through_the_cli_gives_pytorch_logits(tmp_path, capsys):
  weights = tmp_path / "resnet18.safetensors"
  shutil.copy(FIXTURES / "weights_resnet18.safetensors", weights)
  assert main(["import", "--from", "torchvision:resnet18", "--weights", str(weights), "--image-size", "32",
               "--out", str(tmp_path / "ckpt")]) == 0
  saved = fj.load_model(tmp_path / "ckpt")
  x = OUTPUTS["resnet18.x"]
  np.testing.assert_allclose(_famr_logits(saved.model, saved.params, x), OUTPUTS["resnet18.logits"], atol=1e-4)
  info = saved.metadata["imported"]
  assert info["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
  assert (info["source"], info["source_classes"], info["head"]) == ("torchvision:resnet18", 7, "loaded")
  assert saved.metadata["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
  assert models.count_params(saved.params) == _param_count(_weights("resnet18"))
  # An existing output is never replaced without --overwrite.
  assert main(["import", "--from", "torchvision:resnet18", "--weights", str(weights), "--image-size", "32",
               "--out", str(tmp_path / "ckpt")]) == 2


@pytest.mark.parametrize("name", ["resnet50", "resnet18_cifar"])
def test_torchvision_layouts_give_pytorch_logits(name):
  meta = META[name]
  converted = convert_weights(meta["source"], _weights(name), image_size=meta["image_size"])
  x = OUTPUTS[f"{name}.x"]
  np.testing.assert_allclose(_famr_logits(converted.model, converted.params, x), OUTPUTS[f"{name}.logits"],
                             atol=1e-4, rtol=1e-4)


def test_alexnet_gives_pytorch_logits():
  meta = META["alexnet"]   # 61M weights: drawn from the seed PyTorch was given, checked by their SHA-256
  sd = make_fixtures.seeded_state_dict(meta["shapes"], meta["seed"])
  assert make_fixtures.state_dict_sha256(sd) == meta["sha256"], "NumPy drew other weights than PyTorch was given"
  converted = convert_weights(meta["source"], sd, image_size=meta["image_size"])
  np.testing.assert_allclose(_famr_logits(converted.model, converted.params, OUTPUTS["alexnet.x"]),
                             OUTPUTS["alexnet.logits"], atol=1e-4, rtol=1e-4)


def test_hugging_face_and_timm_vits_give_the_reference_logits():
  sd = _weights("hf_vit")
  x, expected = OUTPUTS["hf_vit.x"], OUTPUTS["hf_vit.logits"]
  for source, weights in (("hf-vit", sd), ("timm:vit_nano_patch4", hf_to_timm(sd))):
    converted = convert_weights(source, weights, image_size=16)
    assert converted.model_name == "vit_nano" and converted.model_overrides == {"patch_size": 4}
    np.testing.assert_allclose(_famr_logits(converted.model, converted.params, x), expected, atol=1e-4)
  # Another image size: the position embeddings are resized; another class count: a zero head (the recipe).
  converted = convert_weights("hf-vit", sd, image_size=24, num_classes=3)
  assert converted.info["position_embeddings"] == "resized" and "zeros" in converted.info["head"]
  assert np.all(converted.params["head"]["kernel"] == 0) and converted.params["embed"]["pos_embedding"].shape == (1, 37, 32)


def _small_resnet18():
  """A width-2 resnet18 state dict with 7 classes (the committed fixture)."""
  return _weights("resnet18")


@pytest.mark.parametrize("edit,message", [
    (lambda sd: sd.pop("layer3.1.bn2.running_var"), "missing key 'layer3.1.bn2.running_var'"),
    (lambda sd: sd.update({"layer1.0.conv3.weight": np.zeros((8, 2, 1, 1), np.float32)}),
     "unexpected key 'layer1.0.conv3.weight'"),
    (lambda sd: sd.update({"layer2.0.conv1.weight": np.zeros((4, 2, 5, 5), np.float32)}),
     "key 'layer2.0.conv1.weight' has shape (4, 2, 5, 5), expected (4, 2, 3, 3)"),
])
def test_a_state_dict_with_a_missing_extra_or_misshapen_key_is_refused_by_name(edit, message):
  sd = _small_resnet18()
  edit(sd)
  with pytest.raises(FamrError, match=f"torchvision's resnet18: {message.replace('(', '[(]').replace(')', '[)]')}"):
    convert_weights("torchvision:resnet18", sd, image_size=16)


def test_another_architecture_is_refused_naming_its_first_foreign_key():
  # The file's keys in its own order (safetensors sorts them): bn3 comes before conv3.
  with pytest.raises(FamrError, match="not torchvision's resnet18: unexpected key 'layer1.0.bn3.bias'"):
    convert_weights("torchvision:resnet18", _weights("resnet50"), image_size=16)
  with pytest.raises(FamrError, match="not torchvision's resnet34: missing key 'layer1.2.conv1.weight'"):
    convert_weights("torchvision:resnet34", _small_resnet18(), image_size=16)
  with pytest.raises(FamrError, match="not a Hugging Face ViT: missing key"):
    convert_weights("hf-vit", _small_resnet18(), image_size=16)


def test_another_class_count_reinitialises_only_the_head_and_says_so():
  sd = _small_resnet18()
  same = convert_weights("torchvision:resnet18", sd, image_size=16)
  other = convert_weights("torchvision:resnet18", sd, image_size=16, num_classes=9, seed=4)
  assert other.info == {"source_classes": 7, "head": other.info["head"]} and "7 -> 9 classes" in other.info["head"]
  assert other.params["fc"]["kernel"].shape == (16, 9) and np.any(other.params["fc"]["kernel"] != 0)
  np.testing.assert_array_equal(other.params["layer4_1"]["conv2"]["kernel"], same.params["layer4_1"]["conv2"]["kernel"])
  # The body is the file's (NCHW -> HWIO), not a fresh initialisation.
  np.testing.assert_array_equal(other.params["layer4_1"]["conv2"]["kernel"],
                                sd["layer4.1.conv2.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(models.batch_stats_of(other.model)["stem"]["bn1"]["var"], sd["bn1.running_var"])


def test_bad_weight_files_are_one_line_errors(tmp_path, capsys, monkeypatch):
  corrupt = tmp_path / "bad.safetensors"
  corrupt.write_bytes(b"\xff\x00\x00\x00\x00\x00\x00\x00{not json")
  out = str(tmp_path / "ckpt")
  assert main(["import", "--from", "torchvision:resnet18", "--weights", str(corrupt), "--image-size", "16",
               "--out", out]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("famr-jax: error:") and "not a valid safetensors file" in err and "\n" not in err
  assert main(["import", "--from", "torchvision:vgg16", "--weights", str(corrupt), "--image-size", "16",
               "--out", out]) == 2
  assert "unknown weight source" in capsys.readouterr().err
  # Weights for RGB images and a grey-scale data set to record: refused before anything is written.
  rgb = FIXTURES / "weights_resnet18.safetensors"
  assert main(["import", "--from", "torchvision:resnet18", "--weights", str(rgb), "--image-size", "8",
               "--dataset", "digits", "--out", out]) == 2
  assert "take 3-channel images, the data set has 1 channels" in capsys.readouterr().err
  # A .pth is refused, never unpickled, without torch (tests/test_torch_live.py reads one with torch).
  pth = tmp_path / "w.pth"
  pth.write_bytes(b"\x80\x04not read")
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(FamrError, match="PyTorch pickle: reading it needs torch"):
    read_state_dict(pth)
  assert not (tmp_path / "ckpt").exists()
