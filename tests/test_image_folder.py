"""Image folders (issue 15 parts 4 and 7): layout, pixels against a NumPy / Pillow reference, streaming, bad input."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

import famr_jax
from famr_jax.data.datasets import Dataset
from famr_jax.data.forget import forget_classes
from famr_jax.data.image_folder import (IMAGENET_MEAN, IMAGENET_STD, ImageRecipe, LazyImages, load_image_folder,
                                        recipe_from_metadata)
from famr_jax.engine.forward import batched_apply
from famr_jax.engine.training import TrainConfig, train_classifier
from famr_jax.errors import FamrError
from famr_jax.evaluation.metrics import evaluate_unlearning
from famr_jax.methods.famr import FAMRConfig, famr_unlearn

MEAN, STD = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)


def _pixels(seed, h, w, c=3):
  return np.random.default_rng(seed).integers(0, 256, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """train/ and val/ with classes eel, ant, dog (sorted: ant, dog, eel), mixed sizes, PNG and JPEG."""
  root = tmp_path_factory.mktemp("imgs")
  arrays = {}
  for split, n in (("train", 3), ("val", 2)):
    for k, name in enumerate(("eel", "ant", "dog")):
      os.makedirs(root / split / name)
      for i in range(n):
        a = _pixels(100 * k + 10 * i + (split == "val"), 20 + 3 * i, 24 + 5 * k)
        path = root / split / name / (f"{i}.png" if i % 2 == 0 else f"{i}.JPEG")
        Image.fromarray(a).save(path)
        arrays[str(path)] = a
  (root / "train" / "ant" / ".DS_Store").write_bytes(b"junk")   # hidden files are skipped
  return root, arrays


def test_layout_class_names_and_labels(folder):
  root, _ = folder
  ds = famr_jax.load_dataset(f"folder:{root}", image_size=16)
  assert ds.class_names == ("ant", "dog", "eel")   # sorted, as torchvision's ImageFolder
  assert ds.image_shape == (16, 16, 3) and ds.num_classes == 3
  assert ds.y_train.tolist() == [0] * 3 + [1] * 3 + [2] * 3 and ds.y_test.tolist() == [0, 0, 1, 1, 2, 2]
  assert isinstance(ds.x_train, LazyImages)
  assert [os.path.basename(os.path.dirname(p)) for p in ds.x_train.paths] == ["ant"] * 3 + ["dog"] * 3 + ["eel"] * 3
  sub = famr_jax.load_dataset(f"folder:{root}", image_size=16, classes=[2, 0], max_train=4)
  assert sub.class_names == ("eel", "ant") and isinstance(sub.x_train, LazyImages) and len(sub.x_train) == 4


def _reference(a, resize, crop):
  """torchvision's Resize(resize) + CenterCrop(crop) + ToTensor + Normalize(ImageNet), from the uint8 array."""
  h, w = a.shape[:2]
  if min(h, w) != resize:
    size = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    a = np.asarray(Image.fromarray(a).resize(size, Image.BILINEAR))
  h, w = a.shape[:2]
  top, left = int(round((h - crop) / 2)), int(round((w - crop) / 2))
  return (a[top:top + crop, left:left + crop].astype(np.float32) / 255 - MEAN) / STD


def test_pixels_match_numpy_reference(folder, tmp_path):
  root, arrays = folder
  # No resize (the shorter side is already R): the recipe is an exact NumPy crop and normalization.
  a = _pixels(7, 20, 31)
  Image.fromarray(a).save(tmp_path / "x.png")
  got = LazyImages([str(tmp_path / "x.png")], ImageRecipe(image_size=12, resize=20))[0]
  top, left = 4, int(round((31 - 12) / 2))
  np.testing.assert_allclose(got, (a[top:top + 12, left:left + 12] / 255.0 - MEAN) / STD, atol=1e-6)
  # Resized (bilinear) PNG and JPEG of the fixture, through the whole data set.
  ds = famr_jax.load_dataset(f"folder:{root}", image_size=16, preprocessing={"resize": 18})
  x = np.asarray(ds.x_test)
  for row, path in enumerate(ds.x_test.paths):
    a = arrays[path] if path.endswith(".png") else np.asarray(Image.open(path).convert("RGB"))  # JPEG is lossy
    np.testing.assert_allclose(x[row], _reference(a, 18, 16), atol=1e-5, err_msg=path)
  # Grayscale and RGBA files become RGB (Pillow's conversion); custom mean / std.
  gray = _pixels(3, 16, 16, c=1)
  Image.fromarray(gray).save(tmp_path / "g.png")
  got = LazyImages([str(tmp_path / "g.png")], ImageRecipe(image_size=16, resize=16, mean=(0.5,) * 3,
                                                          std=(0.25,) * 3))[0]
  np.testing.assert_allclose(got, np.repeat((gray[..., None] / 255.0 - 0.5) / 0.25, 3, -1), atol=1e-6)


def test_recipe_from_checkpoint_metadata():
  r = recipe_from_metadata({"image_shape": [32, 32, 3], "preprocessing": {"mean": [0.5, 0.4, 0.3],
                                                                          "std": [0.2, 0.2, 0.2]}})
  assert (r.image_size, r.resize_to, r.mean, r.std) == (32, 37, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
  assert recipe_from_metadata({}).resize_to == 256 and recipe_from_metadata({}).mean == IMAGENET_MEAN
  with pytest.raises(FamrError, match="smaller than the crop"):
    ImageRecipe(image_size=32, resize=30).validate()


def test_views_cache_and_refusal(folder):
  root, _ = folder
  x_train, *_ = load_image_folder(root, ImageRecipe(image_size=8), cache_bytes=2 * 8 * 8 * 3 * 4,
                                  max_bytes=4 * 8 * 8 * 3 * 4)
  view = x_train[np.array([4, 1, 1])]
  assert isinstance(view, LazyImages) and view.shape == (3, 8, 8, 3) and x_train.decoded_count == 0
  first = np.asarray(view)
  assert x_train.decoded_count == 2   # file 1 decoded once
  np.testing.assert_array_equal(first[1], first[2])
  np.testing.assert_array_equal(first[0], x_train[4])
  np.asarray(view)                     # capacity 2: both cached, nothing decoded again
  assert x_train.decoded_count == 2
  with pytest.raises(FamrError, match="refusing to decode 9 images"):
    np.asarray(x_train)
  assert sum(len(b) for b in x_train.batches(4)) == 9


class Guarded:
  """An array-like over numpy that fails the test if more than ``limit`` rows are materialized at once."""

  def __init__(self, a, limit):
    self.a, self.limit, self.shape, self.dtype = a, limit, a.shape, a.dtype

  def __len__(self):
    return len(self.a)

  def __getitem__(self, key):
    return Guarded(self.a[key], self.limit)

  def __array__(self, dtype=None, copy=None):
    assert len(self.a) <= self.limit, f"materialized {len(self.a)} rows at once"
    return self.a if dtype is None else self.a.astype(dtype)


def test_streamed_paths_equal_in_memory_ones(trained_digits, monkeypatch):
  """Training, batched_apply, evaluation and FAMR read a guarded set batch by batch, with the same results."""
  from famr_jax.methods import famr as famr_module
  t = trained_digits
  data, apply_fn, params, key = t.data, t.apply_fn, t.params, jax.random.key(1)
  cfg = TrainConfig(epochs=1, batch_size=t.train_config.batch_size, lr=t.train_config.lr)
  plain = train_classifier(apply_fn, params, data.x_train, data.y_train, cfg, key, show_progress=False)
  guarded = train_classifier(apply_fn, params, Guarded(data.x_train, cfg.batch_size), data.y_train, cfg, key,
                             show_progress=False)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), plain.params, guarded.params)
  np.testing.assert_allclose(batched_apply(apply_fn, params, Guarded(data.x_test, 256)),
                             batched_apply(apply_fn, params, data.x_test), atol=1e-5)
  forget = forget_classes(data.y_train, [3], 10)
  lazy = Dataset(**{**data._asdict(), "x_train": Guarded(data.x_train, 256), "x_test": Guarded(data.x_test, 256)})
  want = evaluate_unlearning(apply_fn, params, data, forget)
  got = evaluate_unlearning(apply_fn, params, lazy, forget)
  for k in ("retain_acc", "forget_acc", "test_acc", "forget_ce", "forget_entropy", "mia_efficacy"):
    assert got[k] == pytest.approx(want[k], abs=1e-5), k
  assert got["per_class_acc"] == pytest.approx(want["per_class_acc"], abs=1e-6)
  monitor_rows = famr_module.monitor_rows   # FAMR holds its monitor sample (512 rows) whole: keep it 8 here
  monkeypatch.setattr(famr_module, "monitor_rows", lambda key, n: monitor_rows(key, n, size=8))
  x_f = data.x_train[forget.indices]
  fcfg = FAMRConfig(epochs=1, batch_size=32)
  a = famr_unlearn(apply_fn, params, x_f, fcfg, key, show_progress=False)
  b = famr_unlearn(apply_fn, params, Guarded(x_f, 32), fcfg, key, show_progress=False)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-5), a.params, b.params)


def _make(root, layout):
  """Writes ``{relative path: content}`` (an int: a PNG of that size, bytes: raw) under root."""
  for rel, content in layout.items():
    path = root / rel
    os.makedirs(path.parent, exist_ok=True)
    if isinstance(content, bytes):
      path.write_bytes(content)
    elif content is None:
      os.makedirs(path, exist_ok=True)
    else:
      Image.fromarray(_pixels(content, 6 + content, 8)).save(path)


@pytest.mark.parametrize("layout, message", [
    ({}, "no class folders"),
    ({"a/x.png": 1}, "only one class"),
    ({"a/x.png": 1, "a/y.png": 2, "b": None}, "class folder .*b has no images"),
    ({"a/x.png": 1, "a/y.png": 2, "b/notes.txt": b"hi"}, "class folder .*b has no images"),   # only a non-image
    ({"a/x.png": 1, "a/y.png": 2, "b/z.png": 3, "b/w.png": b"not a png"}, "cannot read image .*w.png"),
    ({"train/a/x.png": 1, "train/b/y.png": 2, "val/a/z.png": 3}, "val has no folder for class 'b'"),
    ({"train/a/x.png": 1, "train/b/y.png": 2, "val/a/z.png": 3, "val/b/w.png": 4, "val/c/v.png": 5},
     "val/ has class folder 'c'"),
    ({"train/a/x.png": 1, "train/b/y.png": 2}, "no val/ or test/"),
    ({"a/x.png": 1, "a/y.png": 2, "b/z.png": 3}, "has 1 image"),
])
def test_bad_folders_one_line(tmp_path, layout, message):
  _make(tmp_path, layout)
  with pytest.raises(FamrError, match=message) as e:
    famr_jax.load_dataset(f"folder:{tmp_path}", image_size=8)
  assert "\n" not in str(e.value)


def test_one_folder_split_and_cli_refusal(tmp_path, capsys):
  from famr_jax.cli.main import main
  _make(tmp_path, {f"{c}/{i}.png": i for c in "ab" for i in range(5)})
  ds = famr_jax.load_dataset(f"folder:{tmp_path}", image_size=8)
  assert (len(ds.y_train), len(ds.y_test)) == (8, 2) and ds.y_test.tolist() == [0, 1]   # 20% per class
  assert famr_jax.load_dataset(f"folder:{tmp_path}", image_size=8).x_test.paths == ds.x_test.paths   # seeded
  (tmp_path / "a" / "3.png").write_bytes(b"\x89PNG broken")
  code = main(["train", "--dataset", f"folder:{tmp_path}", "--image-size", "8", "--model", "mlp",
               "--out", str(tmp_path / "ck")])
  err = capsys.readouterr().err.strip().splitlines()
  assert code != 0 and len(err) == 1 and "3.png" in err[0]
