"""PyTorch reference models with torchvision's module names (torchvision does not import beside the CPU
torch wheel here), and a functional Hugging Face-layout ViT, for the weight-import tests."""

import math

import numpy as np
from vit_names import hf_to_timm  # noqa: F401  (re-exported: experiments/import_parity.py)
import torch
from torch import nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
  """torchvision.models.resnet.ResNet (and the CIFAR stem: 3x3 stride 1, no max pool)."""

  def __init__(self, block, layers, num_classes=1000, in_channels=3, cifar=False, width=64):
    super().__init__()
    self.inplanes = width
    if cifar:
      self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
    else:
      self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1)
    for i, n in enumerate(layers):
      setattr(self, f"layer{i + 1}", self._make_layer(block, width * 2 ** i, n, 1 if i == 0 else 2))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(width * 2 ** (len(layers) - 1) * block.expansion, num_classes)
    self.num_stages = len(layers)

  def _make_layer(self, block, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(self.num_stages):
      x = getattr(self, f"layer{i + 1}")(x)
    return self.fc(torch.flatten(self.avgpool(x), 1))


class AlexNet(nn.Module):
  """torchvision.models.alexnet.AlexNet."""

  def __init__(self, num_classes=1000, dropout=0.5):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, num_classes))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def randomize_batch_norm(model, seed=0):
  """Random BatchNorm affine params and running statistics (so eval mode is not the identity)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(0.5 + torch.rand(c, generator=g))
        m.bias.copy_(0.2 * torch.randn(c, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + torch.rand(c, generator=g))
  return model.eval()


def calibrate_batch_norm(model, image_size, seed=0):
  """Random BatchNorm affine params, running statistics measured on a random batch, eval mode.

  With statistics that match the activations every layer stays O(1), so every weight moves the
  logits (a 1% change of any conv kernel moves them by more than 1e-3 in the committed fixtures);
  with arbitrary statistics (``randomize_batch_norm``) a narrow net loses its signal to dead ReLUs.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.reset_running_stats()
        m.momentum = None   # cumulative average: the statistics of the one batch below
        m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
        m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
    model.train()
    model(torch.randn(16, model.conv1.in_channels, image_size, image_size, generator=g))
  return model.eval()


def state_dict_numpy(model):
  return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def hf_vit_state_dict(dim, depth, mlp, patch, channels, classes, grid, seed=0):
  """Random weights in Hugging Face ViTForImageClassification's names."""
  rng = np.random.default_rng(seed)
  r = lambda *s: (0.1 * rng.standard_normal(s)).astype(np.float32)   # noqa: E731
  sd = {"vit.embeddings.cls_token": r(1, 1, dim), "vit.embeddings.position_embeddings": r(1, grid * grid + 1, dim),
        "vit.embeddings.patch_embeddings.projection.weight": r(dim, channels, patch, patch),
        "vit.embeddings.patch_embeddings.projection.bias": r(dim),
        "vit.layernorm.weight": 1 + r(dim), "vit.layernorm.bias": r(dim),
        "classifier.weight": r(classes, dim), "classifier.bias": r(classes)}
  for i in range(depth):
    p = f"vit.encoder.layer.{i}."
    for n in ("layernorm_before", "layernorm_after"):
      sd[p + n + ".weight"], sd[p + n + ".bias"] = 1 + r(dim), r(dim)
    for n in ("attention.attention.query", "attention.attention.key", "attention.attention.value",
              "attention.output.dense"):
      sd[p + n + ".weight"], sd[p + n + ".bias"] = r(dim, dim), r(dim)
    sd[p + "intermediate.dense.weight"], sd[p + "intermediate.dense.bias"] = r(mlp, dim), r(mlp)
    sd[p + "output.dense.weight"], sd[p + "output.dense.bias"] = r(dim, mlp), r(dim)
  return sd


def hf_vit_forward(sd, x, heads, eps=1e-6):
  """Hugging Face ViT's forward (modeling_vit.py, eval mode, exact GELU) written with torch ops on NCHW x."""
  t = {k: torch.from_numpy(np.asarray(v)).double() for k, v in sd.items()}
  x = torch.from_numpy(x).double()
  w = t["vit.embeddings.patch_embeddings.projection.weight"]
  h = F.conv2d(x, w, t["vit.embeddings.patch_embeddings.projection.bias"], stride=w.shape[-1])
  h = h.flatten(2).transpose(1, 2)
  n, _, dim = h.shape
  h = torch.cat([t["vit.embeddings.cls_token"].expand(n, -1, -1), h], 1) + t["vit.embeddings.position_embeddings"]
  depth = len({k.split(".")[3] for k in sd if k.startswith("vit.encoder.layer.")})
  lin = lambda v, name: F.linear(v, t[name + ".weight"], t[name + ".bias"])   # noqa: E731
  hd = dim // heads
  for i in range(depth):
    p = f"vit.encoder.layer.{i}."
    y = F.layer_norm(h, (dim,), t[p + "layernorm_before.weight"], t[p + "layernorm_before.bias"], eps)
    split = lambda v: v.view(n, -1, heads, hd).transpose(1, 2)   # noqa: E731
    q, k, v = (split(lin(y, p + f"attention.attention.{m}")) for m in ("query", "key", "value"))
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
    h = h + lin(att.transpose(1, 2).reshape(n, -1, dim), p + "attention.output.dense")
    y = F.layer_norm(h, (dim,), t[p + "layernorm_after.weight"], t[p + "layernorm_after.bias"], eps)
    h = h + lin(F.gelu(lin(y, p + "intermediate.dense")), p + "output.dense")
  h = F.layer_norm(h, (dim,), t["vit.layernorm.weight"], t["vit.layernorm.bias"], eps)
  return lin(h[:, 0], "classifier").numpy()
