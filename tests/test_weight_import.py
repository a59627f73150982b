"""Issue 15 parts 3 and 7: torchvision / Hugging Face / timm weights into famr-jax, checked against PyTorch."""

import hashlib
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import famr_jax as fj  # noqa: E402
from famr_jax import models  # noqa: E402
from famr_jax.cli.main import main  # noqa: E402
from famr_jax.errors import FamrError  # noqa: E402
from famr_jax.io.torch_weights import read_state_dict  # noqa: E402
from famr_jax.io.weight_import import convert_weights  # noqa: E402
import torch_reference as ref  # noqa: E402


def _inputs(n, channels, size, seed=0):
  return np.random.default_rng(seed).standard_normal((n, channels, size, size)).astype(np.float32)


def _torch_logits(model, x):
  with torch.no_grad():
    return model(torch.from_numpy(x)).numpy()


def _famr_logits(model, params, x):
  return np.asarray(jax.jit(models.make_apply_fn(model))(params, x.transpose(0, 2, 3, 1)))


def test_resnet18_safetensors_import_through_the_cli_gives_pytorch_logits(tmp_path, capsys):
  torch.manual_seed(0)
  net = ref.randomize_batch_norm(ref.ResNet(ref.BasicBlock, [2, 2, 2, 2], num_classes=7))
  weights = tmp_path / "resnet18.safetensors"
  safetensors_numpy.save_file(ref.state_dict_numpy(net), str(weights))
  assert main(["import", "--from", "torchvision:resnet18", "--weights", str(weights), "--image-size", "32",
               "--out", str(tmp_path / "ckpt")]) == 0
  saved = fj.load_model(tmp_path / "ckpt")
  x = _inputs(2, 3, 32)
  np.testing.assert_allclose(_famr_logits(saved.model, saved.params, x), _torch_logits(net, x), atol=1e-4)
  info = saved.metadata["imported"]
  assert info["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
  assert (info["source"], info["source_classes"], info["head"]) == ("torchvision:resnet18", 7, "loaded")
  assert saved.metadata["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
  assert models.count_params(saved.params) == 11_689_512 - 513_000 + 512 * 7 + 7
  # An existing output is never replaced without --overwrite.
  assert main(["import", "--from", "torchvision:resnet18", "--weights", str(weights), "--image-size", "32",
               "--out", str(tmp_path / "ckpt")]) == 2


@pytest.mark.parametrize("source,net,size", [
    ("torchvision:resnet50", lambda: ref.ResNet(ref.Bottleneck, [3, 4, 6, 3], 5, width=8), 32),
    ("torchvision:resnet18_cifar", lambda: ref.ResNet(ref.BasicBlock, [2, 2, 2, 2], 10, cifar=True, width=8), 16),
    ("torchvision:alexnet", lambda: ref.AlexNet(6), 64),
])
def test_torchvision_layouts_give_pytorch_logits(source, net, size):
  torch.manual_seed(1)
  module = ref.randomize_batch_norm(net())
  converted = convert_weights(source, ref.state_dict_numpy(module), image_size=size)
  x = _inputs(2, 3, size, seed=1)
  np.testing.assert_allclose(_famr_logits(converted.model, converted.params, x), _torch_logits(module, x),
                             atol=1e-4, rtol=1e-4)


def test_hugging_face_and_timm_vits_give_the_reference_logits():
  sd = ref.hf_vit_state_dict(dim=32, depth=2, mlp=64, patch=4, channels=3, classes=10, grid=4)
  x = _inputs(2, 3, 16, seed=2)
  expected = ref.hf_vit_forward(sd, x, heads=2)
  for source, weights in (("hf-vit", sd), ("timm:vit_nano_patch4", ref.hf_to_timm(sd))):
    converted = convert_weights(source, weights, image_size=16)
    assert converted.model_name == "vit_nano" and converted.model_overrides == {"patch_size": 4}
    np.testing.assert_allclose(_famr_logits(converted.model, converted.params, x), expected, atol=1e-4)
  # Another image size: the position embeddings are resized; another class count: a zero head (the recipe).
  converted = convert_weights("hf-vit", sd, image_size=24, num_classes=3)
  assert converted.info["position_embeddings"] == "resized" and "zeros" in converted.info["head"]
  assert np.all(converted.params["head"]["kernel"] == 0) and converted.params["embed"]["pos_embedding"].shape == (1, 37, 32)


def _small_resnet18():
  torch.manual_seed(2)
  return ref.state_dict_numpy(ref.randomize_batch_norm(ref.ResNet(ref.BasicBlock, [2, 2, 2, 2], 4, width=2)))


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
  torch.manual_seed(3)
  resnet50 = ref.state_dict_numpy(ref.ResNet(ref.Bottleneck, [3, 4, 6, 3], 4, width=2))
  with pytest.raises(FamrError, match="not torchvision's resnet18: unexpected key 'layer1.0.conv3.weight'"):
    convert_weights("torchvision:resnet18", resnet50, image_size=16)
  with pytest.raises(FamrError, match="not torchvision's resnet34: missing key 'layer1.2.conv1.weight'"):
    convert_weights("torchvision:resnet34", _small_resnet18(), image_size=16)
  with pytest.raises(FamrError, match="not a Hugging Face ViT: missing key"):
    convert_weights("hf-vit", _small_resnet18(), image_size=16)


def test_another_class_count_reinitialises_only_the_head_and_says_so():
  sd = _small_resnet18()
  same = convert_weights("torchvision:resnet18", sd, image_size=16)
  other = convert_weights("torchvision:resnet18", sd, image_size=16, num_classes=9, seed=4)
  assert other.info == {"source_classes": 4, "head": other.info["head"]} and "4 -> 9 classes" in other.info["head"]
  assert other.params["fc"]["kernel"].shape == (16, 9) and np.any(other.params["fc"]["kernel"] != 0)
  np.testing.assert_array_equal(other.params["layer4_1"]["conv2"]["kernel"], same.params["layer4_1"]["conv2"]["kernel"])
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
  rgb = tmp_path / "rgb.safetensors"
  safetensors_numpy.save_file(_small_resnet18(), str(rgb))
  assert main(["import", "--from", "torchvision:resnet18", "--weights", str(rgb), "--image-size", "8",
               "--dataset", "digits", "--out", out]) == 2
  assert "take 3-channel images, the data set has 1 channels" in capsys.readouterr().err
  # A .pth goes through torch.load(weights_only=True) when torch is there ...
  pth = tmp_path / "w.pth"
  torch.save({k: torch.from_numpy(v) for k, v in _small_resnet18().items()}, pth)
  assert set(read_state_dict(pth)) == set(_small_resnet18())
  # ... and is refused, never unpickled, when it is not.
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(FamrError, match="PyTorch pickle: reading it needs torch"):
    read_state_dict(pth)
  assert not (tmp_path / "ckpt").exists()
