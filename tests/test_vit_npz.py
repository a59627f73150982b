"""Original ViT .npz checkpoints (vit_jax / big_vision layout) and the FAMR ViT experiment."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from famr_jax import models
from famr_jax.errors import FamrError
from famr_jax.io.vit_weights import load_vit_npz, resize_pos_embedding, vit_params_from_npz

ROOT = Path(__file__).resolve().parents[1]
D, HEADS, MLP, DEPTH, PATCH = 16, 2, 32, 2, 4


def write_vit_npz(path, rng, *, image=8, channels=3, classes=5, depth=DEPTH, dim=D, heads=HEADS,
                  mlp=MLP, patch=PATCH, pre_logits=False, scanned=False):
  """Random arrays under the names of the original ViT release (vit_jax numbering)."""
  hd = dim // heads
  tokens = (image // patch) ** 2 + 1
  r = lambda *shape: rng.normal(scale=0.3, size=shape).astype(np.float32)
  a = {"embedding/kernel": r(patch, patch, channels, dim), "embedding/bias": r(dim), "cls": r(1, 1, dim),
       "Transformer/posembed_input/pos_embedding": r(1, tokens, dim),
       "Transformer/encoder_norm/scale": 1 + r(dim), "Transformer/encoder_norm/bias": r(dim),
       "head/kernel": r(dim, classes), "head/bias": r(classes)}
  for i in range(depth):
    b = f"Transformer/encoderblock_{i}/"
    for ln in ("LayerNorm_0", "LayerNorm_2"):
      a[b + ln + "/scale"], a[b + ln + "/bias"] = 1 + r(dim), r(dim)
    for proj in ("query", "key", "value"):
      a[b + f"MultiHeadDotProductAttention_1/{proj}/kernel"] = r(dim, heads, hd)
      a[b + f"MultiHeadDotProductAttention_1/{proj}/bias"] = r(heads, hd)
    a[b + "MultiHeadDotProductAttention_1/out/kernel"] = r(heads, hd, dim)
    a[b + "MultiHeadDotProductAttention_1/out/bias"] = r(dim)
    a[b + "MlpBlock_3/Dense_0/kernel"], a[b + "MlpBlock_3/Dense_0/bias"] = r(dim, mlp), r(mlp)
    a[b + "MlpBlock_3/Dense_1/kernel"], a[b + "MlpBlock_3/Dense_1/bias"] = r(mlp, dim), r(dim)
  if pre_logits:
    a["pre_logits/kernel"], a["pre_logits/bias"] = r(dim, dim), r(dim)
  if scanned:   # big_vision's scan layout: one stacked array per block parameter, "params/" prefix
    blocks = [k for k in a if k.startswith("Transformer/encoderblock_0/")]
    for k in blocks:
      rest = k[len("Transformer/encoderblock_0/"):]
      a["Transformer/encoderblock/" + rest] = np.stack([a.pop(f"Transformer/encoderblock_{i}/{rest}")
                                                        for i in range(depth)])
    a = {"params/" + k: v for k, v in a.items()}
  np.savez(path, **a)
  return a


def numpy_vit(a, x, *, patch=PATCH, heads=HEADS, depth=DEPTH):
  """The original ViT forward pass in NumPy, straight from the checkpoint's arrays."""
  def ln(h, prefix):
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    return (h - mu) / np.sqrt(var + 1e-6) * a[prefix + "/scale"] + a[prefix + "/bias"]

  n, hh, ww, c = x.shape
  g = hh // patch
  patches = x.reshape(n, g, patch, g, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, -1)
  k = a["embedding/kernel"]
  h = patches @ k.reshape(-1, k.shape[-1]) + a["embedding/bias"]
  h = np.concatenate([np.broadcast_to(a["cls"], (n, 1, h.shape[-1])), h], 1)
  h = h + a["Transformer/posembed_input/pos_embedding"]
  for i in range(depth):
    b = f"Transformer/encoderblock_{i}/"
    y = ln(h, b + "LayerNorm_0")
    att = lambda p: np.einsum("ntd,dhk->nthk", y, a[b + f"MultiHeadDotProductAttention_1/{p}/kernel"]) \
        + a[b + f"MultiHeadDotProductAttention_1/{p}/bias"]
    q, kk, v = att("query"), att("key"), att("value")
    logits = np.einsum("nqhk,nshk->nhqs", q, kk) / np.sqrt(q.shape[-1])
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("nhqs,nshk->nqhk", w, v)
    h = h + np.einsum("nqhk,hkd->nqd", o, a[b + "MultiHeadDotProductAttention_1/out/kernel"]) \
        + a[b + "MultiHeadDotProductAttention_1/out/bias"]
    y = ln(h, b + "LayerNorm_2") @ a[b + "MlpBlock_3/Dense_0/kernel"] + a[b + "MlpBlock_3/Dense_0/bias"]
    y = 0.5 * y * (1 + erf(y / np.sqrt(2)))     # exact GELU, as famr-jax's (and timm's) ViT
    h = h + y @ a[b + "MlpBlock_3/Dense_1/kernel"] + a[b + "MlpBlock_3/Dense_1/bias"]
  return ln(h[:, 0], "Transformer/encoder_norm") @ a["head/kernel"] + a["head/bias"]


def _tiny_vit(image=8, classes=5):
  """The model and an abstract template of its params (no compile needed to map a checkpoint)."""
  model = models.create_model("vit_nano", classes, (image, image, 3), hidden_dim=D, depth=DEPTH,
                              num_heads=HEADS, mlp_dim=MLP, patch_size=PATCH)
  template = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0), (image, image, 3)))
  return model, template


def test_loaded_checkpoint_computes_the_original_vit(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {k: v.astype(np.float64) for k, v in write_vit_npz(tmp_path / "vit.npz", rng).items()}
  model, template = _tiny_vit()
  params, info = load_vit_npz(tmp_path / "vit.npz", template)
  assert info == {"resized": [], "reinitialized": [], "ignored": []}
  x = rng.uniform(size=(3, 8, 8, 3))
  got = np.asarray(models.make_apply_fn(model)(params, jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(got, numpy_vit(arrays, x), rtol=1e-4, atol=1e-4)


def test_scanned_big_vision_layout_gives_the_same_params(tmp_path):
  _, template = _tiny_vit()
  write_vit_npz(tmp_path / "a.npz", np.random.default_rng(1))
  write_vit_npz(tmp_path / "b.npz", np.random.default_rng(1), scanned=True)
  a, _ = load_vit_npz(tmp_path / "a.npz", template)
  b, _ = load_vit_npz(tmp_path / "b.npz", template)
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_position_embeddings_resize_bilinearly_and_head_is_reinitialized(tmp_path):
  rng = np.random.default_rng(2)
  arrays = write_vit_npz(tmp_path / "vit.npz", rng, classes=7)
  # A linear ramp over the 2x2 grid stays a linear ramp on the 4x4 grid (corners kept).
  ramp = np.zeros((1, 5, D), np.float32)
  ramp[0, 0] = 9.0
  for i in range(2):
    for j in range(2):
      ramp[0, 1 + 2 * i + j] = i + 10 * j
  resized = resize_pos_embedding(ramp, 17)
  expected = np.array([[i / 3 + 10 * j / 3 for j in range(4)] for i in range(4)])
  np.testing.assert_allclose(resized[0, 1:, 0].reshape(4, 4), expected, atol=1e-5)
  assert resized[0, 0, 0] == 9.0
  # 16x16 images: a 4x4 patch grid; 5 classes instead of the checkpoint's 7.
  _, template = _tiny_vit(image=16, classes=5)
  params, info = load_vit_npz(tmp_path / "vit.npz", template)
  assert info["resized"] == ["embed/pos_embedding"]
  assert info["reinitialized"] == ["head/bias", "head/kernel"]
  assert info["ignored"] == ["head/bias", "head/kernel"]
  assert not np.any(params["head"]["kernel"]) and params["embed"]["pos_embedding"].shape == (1, 17, D)
  np.testing.assert_array_equal(params["embed"]["cls"], arrays["cls"])


def test_bad_checkpoints_are_refused_with_one_line(tmp_path):
  rng = np.random.default_rng(3)
  _, template = _tiny_vit(classes=5)
  arrays = write_vit_npz(tmp_path / "vit.npz", rng, classes=7)
  with pytest.raises(FamrError, match="head/(bias|kernel) has shape"):
    vit_params_from_npz(arrays, template, head="load")
  ok = write_vit_npz(tmp_path / "ok.npz", rng, pre_logits=True)
  with pytest.raises(FamrError, match="pre-logits"):
    vit_params_from_npz(ok, template)
  assert "pre_logits/kernel" in vit_params_from_npz(ok, template, head="reinit")[1]["ignored"]
  missing = dict(ok)
  del missing["Transformer/encoder_norm/scale"]
  with pytest.raises(FamrError, match="encoder_norm/scale"):
    vit_params_from_npz(missing, template, head="reinit")
  with pytest.raises(FamrError, match="embedding/kernel has shape"):
    vit_params_from_npz(write_vit_npz(tmp_path / "p.npz", rng, patch=2), template, head="reinit")
  with pytest.raises(FamrError, match="3 encoder blocks"):
    vit_params_from_npz(write_vit_npz(tmp_path / "d.npz", rng, depth=3), template)
  with pytest.raises(FamrError, match="no ViT checkpoint"):
    load_vit_npz(tmp_path / "absent.npz", template)


def test_famr_vit_experiment_on_a_tiny_fixture(tmp_path):
  sys.path.insert(0, str(ROOT / "experiments"))
  try:
    import famr_vit
  finally:
    sys.path.pop(0)
  # vit_nano on 8x8 digits: patch 2, 16 tokens; weights from a checkpoint in the original layout.
  write_vit_npz(tmp_path / "nano.npz", np.random.default_rng(4), image=8, channels=1, classes=10, dim=32,
                heads=2, mlp=64, patch=2)
  out = tmp_path / "out"
  code = famr_vit.main(["--dataset", "digits", "--models", "vit_nano", "--weights", f"vit_nano={tmp_path}/nano.npz",
                        "--max-train", "400", "--finetune-epochs", "0", "--famr-epochs", "3",
                        "--settings", "forgets", "--seeds", "0", "--quiet", "--out", str(out)])
  assert code == 0
  results = json.loads((out / "results.json").read_text())
  entry = results["models"]["vit_nano"]
  assert entry["finetune"]["source"]["npz"].endswith("nano.npz")
  assert entry["finetune"]["source"]["reinitialized"] == []      # 10 classes: the head was loaded
  run = entry["runs"][0]
  assert run["forget_class"] == int(np.random.default_rng(0).integers(10))
  assert [h["epoch"] for h in run["history"]] == [0, 1, 2, 3]
  table = (out / "table.md").read_text()
  assert "| vit_nano | forgets |" in table and "For-Acc (%)" in table
  assert (out / "figure1.png").stat().st_size > 5000


def test_bench_scale_vit_flops_match_the_published_count():
  """ViT-B/16 at 224x224: 17.6 G multiply-adds per forward (Dosovitskiy et al.; timm), so 2x that in FLOPs,
  and a training step is 3 forwards' worth. XLA's GPU cost analysis misses library calls, hence this count."""
  sys.path.insert(0, str(ROOT / "experiments"))
  try:
    import bench_scale
  finally:
    sys.path.pop(0)
  per_image = bench_scale.vit_train_flops_per_image("vit_b", (224, 224, 3), 1000)
  assert per_image == pytest.approx(3 * 2 * 17.6e9, rel=0.01)
  assert bench_scale.vit_train_flops_per_image("vit_s", (224, 224, 3), 1000) == pytest.approx(3 * 2 * 4.6e9, rel=0.02)
  assert bench_scale.vit_train_flops_per_image("lenet5", (28, 28, 1), 10) is None
