"""Issue 15: famr-jax's AlexNet / ResNets / ViT against PyTorch on imported random weights, and the param counts.

For each torchvision layout, a PyTorch model with torchvision's module names (tests/torch_reference.py;
torchvision itself does not import beside the CPU torch wheel here) gets random weights and random
BatchNorm statistics; its state dict is mapped by ``famr_jax.convert_weights`` and both models' eval-mode
logits are compared on random inputs (float32, matmul precision "highest"). The Hugging Face and timm
ViTs are compared against a float64 re-implementation of Hugging Face's ViT forward.

  PYTHONPATH=$PWD python3 experiments/import_parity.py
"""

import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import torch_reference as ref  # noqa: E402
from famr_jax import convert_weights, models  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def main():
  rows = []
  cases = [("torchvision:resnet18", lambda: ref.ResNet(ref.BasicBlock, [2, 2, 2, 2], 1000), 64),
           ("torchvision:resnet34", lambda: ref.ResNet(ref.BasicBlock, [3, 4, 6, 3], 1000), 64),
           ("torchvision:resnet50", lambda: ref.ResNet(ref.Bottleneck, [3, 4, 6, 3], 1000), 64),
           ("torchvision:resnet18_cifar", lambda: ref.ResNet(ref.BasicBlock, [2, 2, 2, 2], 10, cifar=True), 32),
           ("torchvision:alexnet", lambda: ref.AlexNet(1000), 64)]
  for source, build, size in cases:
    torch.manual_seed(0)
    net = ref.randomize_batch_norm(build())
    t0 = time.perf_counter()
    converted = convert_weights(source, ref.state_dict_numpy(net), image_size=size)
    x = np.random.default_rng(0).standard_normal((4, 3, size, size)).astype(np.float32)
    with torch.no_grad():
      expected = net(torch.from_numpy(x)).numpy()
    got = np.asarray(jax.jit(models.make_apply_fn(converted.model))(converted.params, x.transpose(0, 2, 3, 1)))
    torch_params = sum(p.numel() for p in net.parameters())
    rows.append((source, size, models.count_params(converted.params), torch_params,
                 float(np.abs(got - expected).max()), float(np.abs(expected).max()), time.perf_counter() - t0))
  sd = ref.hf_vit_state_dict(dim=192, depth=12, mlp=768, patch=16, channels=3, classes=1000, grid=14)
  x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
  expected = ref.hf_vit_forward(sd, x, heads=3)
  for source, weights in (("hf-vit", sd), ("timm:vit_tiny_patch16_224", ref.hf_to_timm(sd))):
    t0 = time.perf_counter()
    converted = convert_weights(source, weights, image_size=224)
    got = np.asarray(jax.jit(models.make_apply_fn(converted.model))(converted.params, x.transpose(0, 2, 3, 1)))
    rows.append((f"{source} ({converted.model_name})", 224, models.count_params(converted.params),
                 sum(int(np.size(v)) for v in sd.values()), float(np.abs(got - expected).max()),
                 float(np.abs(expected).max()), time.perf_counter() - t0))
  print("| source | image | famr-jax params | reference params | max abs logit diff | max abs logit | s |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]:,} | {r[3]:,} | {r[4]:.1e} | {r[5]:.2f} | {r[6]:.1f} |")


if __name__ == "__main__":
  main()
