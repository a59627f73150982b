"""Tests of famr_jax.data.datasets against independently written fixtures."""

import gzip
import os
import struct
import subprocess
import sys
import types

import numpy as np
import pytest

from famr_jax.data import datasets as data
from famr_jax.errors import FamrError

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


# ---------------------------------------------------------------------------
# An IDX writer independent of famr_jax.data.datasets.write_idx: the header bytes are
# spelled out from the format description (two zero bytes, type byte, rank
# byte, big-endian uint32 dims), e.g. 0x00000803 for 3-D uint8 images.


def raw_idx_bytes(array: np.ndarray) -> bytes:
  type_byte = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09,
               np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C,
               np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}[array.dtype]
  magic = (type_byte << 8) | array.ndim
  header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def put(path, array):
  payload = raw_idx_bytes(np.asarray(array))
  if str(path).endswith(".gz"):
    with gzip.open(path, "wb") as f:
      f.write(payload)
  else:
    with open(path, "wb") as f:
      f.write(payload)


def make_idx_dir(directory, x_train, y_train, x_test, y_test, gz=(True, False, False, True)):
  os.makedirs(directory, exist_ok=True)
  stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
  for stem, arr, z in zip(stems, (x_train, y_train, x_test, y_test), gz):
    put(os.path.join(directory, stem + (".gz" if z else "")), arr)
  return str(directory)


@pytest.fixture
def tiny():
  rng = np.random.default_rng(1)
  return dict(
      x_train=rng.integers(0, 256, (12, 5, 4), dtype=np.uint8),
      y_train=np.array([0, 1, 2, 3] * 3, np.uint8),
      x_test=rng.integers(0, 256, (4, 5, 4), dtype=np.uint8),
      y_test=np.array([3, 2, 1, 0], np.uint8),
  )


@pytest.fixture
def hermetic(monkeypatch):
  """No system Fashion-MNIST, no user data dir: only what a test passes."""
  monkeypatch.setenv("FAMR_JAX_NO_SYSTEM_DATA", "1")
  monkeypatch.delenv("FAMR_JAX_DATA_DIR", raising=False)


# ---------------------------------------------------------------------------
# IDX reading and writing.


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_reads_independent_files(tmp_path, suffix, dtype):
  arr = (np.arange(2 * 3 * 5).reshape(2, 3, 5) - 7).astype(dtype)
  if dtype == np.uint8:
    arr = np.arange(30, dtype=np.uint8).reshape(2, 3, 5) * 8
  path = tmp_path / f"a-idx3-ubyte{suffix}"
  put(path, arr)
  got = data.read_idx(path)
  assert got.dtype == np.dtype(dtype) and got.shape == (2, 3, 5)
  np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_idx_round_trip_and_exact_bytes(tmp_path, suffix):
  rng = np.random.default_rng(0)
  for arr in (rng.integers(0, 256, (3, 4, 2), dtype=np.uint8),
              rng.integers(-1000, 1000, (7,), dtype=np.int32),
              rng.random((2, 2, 2, 3)).astype(np.float32)):
    path = str(tmp_path / f"r-idx-ubyte{suffix}")
    data.write_idx(path, arr)
    np.testing.assert_array_equal(data.read_idx(path), arr)
    raw = gzip.open(path).read() if suffix else open(path, "rb").read()
    assert raw == raw_idx_bytes(arr)  # byte-identical to the spec writer


def test_write_idx_refuses_int64(tmp_path):
  with pytest.raises(FamrError, match="int64"):
    data.write_idx(tmp_path / "x", np.zeros(3, np.int64))


def test_corrupt_idx_files_raise(tmp_path):
  good = raw_idx_bytes(np.zeros((2, 3, 3), np.uint8))
  cases = {
      "bad_magic": b"\x01\x00" + good[2:],
      "bad_type": good[:2] + b"\x07" + good[3:],
      "short_header": good[:6],
      "truncated_data": good[:-1],
      "extra_bytes": good + b"\x00",
      "empty": b"",
  }
  for name, raw in cases.items():
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(FamrError):
      data.read_idx(path)
  gz = tmp_path / "trunc.gz"
  gz.write_bytes(gzip.compress(good)[:-10])
  with pytest.raises(FamrError):
    data.read_idx(gz)
  notgz = tmp_path / "plain.gz"
  notgz.write_bytes(good)
  with pytest.raises(FamrError):
    data.read_idx(notgz)
  with pytest.raises(FamrError, match="not found"):
    data.read_idx(tmp_path / "nope")


# ---------------------------------------------------------------------------
# idx:DIR


def test_idx_dir_exact_pixels_and_labels(tmp_path, tiny):
  d = make_idx_dir(tmp_path / "m", **tiny)
  ds = data.load_dataset(f"idx:{d}")
  assert ds.name == f"idx:{os.path.abspath(d)}"
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  np.testing.assert_array_equal(ds.x_train[..., 0], tiny["x_train"].astype(np.float32) / 255)
  np.testing.assert_array_equal(ds.x_test[..., 0], tiny["x_test"].astype(np.float32) / 255)
  np.testing.assert_array_equal(ds.y_train, [0, 1, 2, 3] * 3)
  np.testing.assert_array_equal(ds.y_test, [3, 2, 1, 0])
  assert ds.image_shape == (5, 4, 1) and ds.num_classes == 4
  assert ds.class_names == ("0", "1", "2", "3")


def test_idx_dir_num_classes_is_max_label_plus_one(tmp_path, tiny):
  tiny["y_test"] = np.array([6, 2, 1, 0], np.uint8)
  ds = data.load_dataset(f"idx:{make_idx_dir(tmp_path / 'm', **tiny)}")
  assert ds.num_classes == 7 and len(ds.class_names) == 7


def test_idx_dir_float_images_with_nan_refused(tmp_path, tiny):
  x = tiny["x_train"].astype(np.float32) / 255
  x[3, 1, 1] = np.nan
  tiny["x_train"] = x
  with pytest.raises(FamrError, match="NaN"):
    data.load_dataset(f"idx:{make_idx_dir(tmp_path / 'm', **tiny)}")


def test_idx_dir_float_images_outside_unit_range_refused(tmp_path, tiny):
  tiny["x_train"] = tiny["x_train"].astype(np.float32)  # 0..255, not scaled
  with pytest.raises(FamrError, match=r"\[0, 1\]"):
    data.load_dataset(f"idx:{make_idx_dir(tmp_path / 'm', **tiny)}")


def test_idx_dir_negative_labels_refused(tmp_path, tiny):
  tiny["y_train"] = tiny["y_train"].astype(np.int8) - 1
  with pytest.raises(FamrError, match="negative"):
    data.load_dataset(f"idx:{make_idx_dir(tmp_path / 'm', **tiny)}")


def test_idx_dir_count_mismatch_refused(tmp_path, tiny):
  tiny["y_test"] = tiny["y_test"][:3]
  with pytest.raises(FamrError, match="4 test images but 3"):
    data.load_dataset(f"idx:{make_idx_dir(tmp_path / 'm', **tiny)}")


def test_idx_dir_missing(tmp_path, tiny):
  with pytest.raises(FamrError, match="not found"):
    data.load_dataset(f"idx:{tmp_path / 'absent'}")
  d = make_idx_dir(tmp_path / "m", **tiny)
  os.remove(os.path.join(d, "t10k-labels-idx1-ubyte.gz"))
  with pytest.raises(FamrError, match="t10k-labels-idx1-ubyte"):
    data.load_dataset(f"idx:{d}")


# ---------------------------------------------------------------------------
# digits


def test_digits_split_is_stratified_deterministic_and_complete():
  from sklearn.datasets import load_digits
  ref = load_digits()
  a = data.load_dataset("digits")
  b = data.load_dataset("digits", seed=123)  # seed never changes the split
  for u, v in zip(a[1:5], b[1:5]):
    np.testing.assert_array_equal(u, v)
  assert len(a.y_train) + len(a.y_test) == 1797
  assert a.x_train.shape[1:] == (8, 8, 1) and a.image_shape == (8, 8, 1)
  assert a.x_train.dtype == np.float32 and a.x_train.min() >= 0 and a.x_train.max() <= 1
  assert a.class_names == tuple(str(i) for i in range(10)) and a.num_classes == 10
  per_class = np.bincount(ref.target, minlength=10)
  test_frac = np.bincount(a.y_test, minlength=10) / per_class
  assert np.all(np.abs(test_frac - 0.25) < 0.01), test_frac
  # Together the splits are exactly sklearn's images / 16 with their labels.
  ours = np.concatenate([
      np.concatenate([a.x_train, a.x_test]).reshape(1797, 64) * 16,
      np.concatenate([a.y_train, a.y_test])[:, None]], axis=1)
  theirs = np.concatenate([ref.images.reshape(1797, 64), ref.target[:, None]], axis=1)
  sort = lambda m: m[np.lexsort(m.T[::-1])]
  np.testing.assert_allclose(sort(ours), sort(theirs), atol=1e-5)


def test_max_train_is_stratified_and_seeded():
  full = data.load_dataset("digits")
  a = data.load_dataset("digits", max_train=500, max_test=100, seed=3)
  b = data.load_dataset("digits", max_train=500, max_test=100, seed=3)
  c = data.load_dataset("digits", max_train=500, max_test=100, seed=4)
  assert len(a.y_train) == 500 and len(a.y_test) == 100
  np.testing.assert_array_equal(a.x_train, b.x_train)
  assert not np.array_equal(a.x_train, c.x_train)
  want = np.bincount(full.y_train, minlength=10) * 500 / len(full.y_train)
  assert np.all(np.abs(np.bincount(a.y_train, minlength=10) - want) < 1)
  # Every kept example is one of the full training set's (same image, same label).
  full_rows = {(r.tobytes(), int(l)) for r, l in zip(full.x_train, full.y_train)}
  assert all((r.tobytes(), int(l)) in full_rows for r, l in zip(a.x_train, a.y_train))


def test_stratified_subset_hand_counts():
  labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
  idx = data.stratified_subset(labels, 10, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[idx]), [6, 3, 1])
  # 7 of (5, 3, 2): quotas 3.5, 2.1, 1.4 -> floors 3, 2, 1, leftover to class 0.
  labels = np.array([0] * 5 + [1] * 3 + [2] * 2)
  picked = labels[data.stratified_subset(labels, 7, seed=0)]
  np.testing.assert_array_equal(np.bincount(picked), [4, 2, 1])
  assert len(np.unique(idx)) == 10


@pytest.mark.parametrize("kw", [{"max_train": 0}, {"max_test": -5}, {"max_train": 2.5},
                                {"image_size": 0}])
def test_non_positive_sizes_refused(kw):
  with pytest.raises(FamrError, match="positive"):
    data.load_dataset("digits", **kw)


def test_unknown_spec_lists_valid_ones():
  with pytest.raises(FamrError, match="digits, fashion_mnist, idx:DIR, tfds:NAME"):
    data.load_dataset("cifar10")


def test_classes_subset_relabels_in_given_order():
  full = data.load_dataset("digits")
  ds = data.load_dataset("digits", classes=[7, 2])
  assert ds.num_classes == 2 and ds.class_names == ("7", "2")
  np.testing.assert_array_equal(ds.x_train, full.x_train[np.isin(full.y_train, [7, 2])])
  kept = full.y_train[np.isin(full.y_train, [7, 2])]
  np.testing.assert_array_equal(ds.y_train, kept == 2)  # 7 -> 0, 2 -> 1
  for bad in ([], [1, 1], [10]):
    with pytest.raises(FamrError):
      data.load_dataset("digits", classes=bad)


def test_image_size_matches_jax_bilinear_resize():
  import jax
  full = data.load_dataset("digits", max_train=20, max_test=10)
  ds = data.load_dataset("digits", max_train=20, max_test=10, image_size=12)
  assert ds.image_shape == (12, 12, 1) and ds.x_train.shape == (20, 12, 12, 1)
  want = jax.image.resize(full.x_train, (20, 12, 12, 1), "bilinear", antialias=True)
  np.testing.assert_allclose(ds.x_train, np.asarray(want), atol=1e-5)


def test_class_subset_mask_and_describe():
  np.testing.assert_array_equal(
      data.class_subset_mask(np.array([0, 3, 1, 3, 2]), [3, 2]), [False, True, False, True, True])
  line = data.describe(data.load_dataset("digits"))
  assert "\n" not in line and "1347 train" in line and "450 test" in line and "8x8x1" in line


def test_import_does_not_pull_tensorflow():
  code = ("import sys, famr_jax.data.datasets; "
          "assert not any(m.split('.')[0] in ('tensorflow', 'tensorflow_datasets') "
          "for m in sys.modules), 'tensorflow imported'")
  subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# fashion_mnist


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_system_files(monkeypatch):
  monkeypatch.delenv("FAMR_JAX_NO_SYSTEM_DATA", raising=False)
  monkeypatch.delenv("FAMR_JAX_DATA_DIR", raising=False)
  ds = data.load_dataset("fashion_mnist")
  assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
  assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
  # First test image straight from the file: 16-byte header, then 784 pixels.
  raw = gzip.open(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz")).read(16 + 784)
  first = np.frombuffer(raw[16:], np.uint8).reshape(28, 28)
  np.testing.assert_array_equal(ds.x_test[0, :, :, 0], first.astype(np.float32) / 255)


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, hermetic):
  with pytest.raises(FamrError) as e:
    data.load_dataset("fashion_mnist", data_dir=str(tmp_path))
  msg = str(e.value)
  assert "apt-get install dataset-fashion-mnist" in msg and "\n" not in msg
  assert FASHION_DIR not in data.fashion_mnist_search_path(str(tmp_path))


def test_fashion_mnist_search_order(tmp_path, tiny, hermetic, monkeypatch):
  # $FAMR_JAX_DATA_DIR/fashion-mnist is found; data_dir wins over it.
  env_dir = tmp_path / "env"
  make_idx_dir(env_dir / "fashion-mnist", **tiny)
  monkeypatch.setenv("FAMR_JAX_DATA_DIR", str(env_dir))
  ds = data.load_dataset("fashion_mnist")
  assert ds.name == "fashion_mnist" and ds.num_classes == 10
  assert ds.class_names[3] == "Dress"
  np.testing.assert_array_equal(ds.y_test, tiny["y_test"])
  other = dict(tiny, y_test=np.array([9, 9, 9, 9], np.uint8))
  arg_dir = make_idx_dir(tmp_path / "arg", **other)
  ds = data.load_dataset("fashion_mnist", data_dir=arg_dir)
  np.testing.assert_array_equal(ds.y_test, [9] * 4)


def test_fashion_mnist_labels_out_of_range(tmp_path, tiny, hermetic):
  d = make_idx_dir(tmp_path / "f", **dict(tiny, y_train=np.full(12, 10, np.uint8)))
  with pytest.raises(FamrError, match="out of range"):
    data.load_dataset("fashion_mnist", data_dir=d)


# ---------------------------------------------------------------------------
# tfds:NAME through a fake tensorflow_datasets module.


class _FakeBuilder:

  def __init__(self, splits, names, image_shape):
    self._splits = splits
    label = types.SimpleNamespace(names=list(names), num_classes=len(names))
    self.info = types.SimpleNamespace(
        splits={k: None for k in splits},
        features={"image": types.SimpleNamespace(shape=image_shape), "label": label})
    self.prepared = False

  def download_and_prepare(self):
    self.prepared = True

  def as_dataset(self, *, split, batch_size=None, as_supervised=False):
    assert as_supervised and self.prepared
    x, y = self._splits[split]
    if batch_size == -1:
      return np.stack(x), np.asarray(y, np.int64)
    return list(zip(x, np.asarray(y, np.int64)))


def fake_tfds(builders, calls):
  mod = types.ModuleType("tensorflow_datasets")

  def builder(name, data_dir=None):
    calls.append((name, data_dir))
    if name not in builders:
      raise KeyError(f"Dataset {name} not found.\nAvailable: ...")
    return builders[name]

  mod.builder = builder
  mod.as_numpy = lambda x: x
  return mod


def test_tfds_fake_module(monkeypatch, tmp_path):
  rng = np.random.default_rng(0)
  xtr = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
  xte = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
  names = ("airplane", "automobile", "bird")
  calls = []
  builders = {"cifar10": _FakeBuilder(
      {"train": (list(xtr), [0, 1, 2, 0, 1, 2]), "test": (list(xte), [2, 1, 0])},
      names, (4, 4, 3))}
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds(builders, calls))
  ds = data.load_dataset("tfds:cifar10", data_dir=str(tmp_path))
  assert calls == [("cifar10", str(tmp_path))]
  assert ds.name == "tfds:cifar10" and ds.class_names == names and ds.num_classes == 3
  assert ds.image_shape == (4, 4, 3)
  np.testing.assert_array_equal(ds.x_train, xtr.astype(np.float32) / 255)
  np.testing.assert_array_equal(ds.x_test, xte.astype(np.float32) / 255)
  np.testing.assert_array_equal(ds.y_test, [2, 1, 0])
  assert ds.y_train.dtype == np.int32
  with pytest.raises(FamrError, match="tfds:nope cannot be loaded: KeyError"):
    data.load_dataset("tfds:nope")


def test_tfds_grayscale_validation_split_and_streaming_resize(monkeypatch):
  # imagenet-style: no 'test' split, images of varying size -> image_size.
  rng = np.random.default_rng(1)
  shapes = ((6, 8, 1), (8, 6, 1), (6, 6, 1), (7, 9, 1))
  imgs = [rng.integers(0, 256, s, dtype=np.uint8) for s in shapes]
  builders = {"imnet": _FakeBuilder(
      {"train": (imgs, [0, 1, 2, 1]), "validation": (imgs[:2], [1, 0])},
      ("a", "b", "c"), (None, None, 1))}
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds(builders, []))
  with pytest.raises(FamrError, match="image_size"):
    data.load_dataset("tfds:imnet")
  ds = data.load_dataset("tfds:imnet", image_size=6, classes=[1, 0])
  assert ds.image_shape == (6, 6, 1) and ds.class_names == ("b", "a")
  np.testing.assert_array_equal(ds.y_train, [1, 0, 0])  # originals 0, 1, 1
  np.testing.assert_array_equal(ds.y_test, [0, 1])
  # 6x8 -> centre crop columns 1..6, already 6x6: exactly the pixels / 255.
  np.testing.assert_array_equal(ds.x_train[0], imgs[0][:, 1:7].astype(np.float32) / 255)
  np.testing.assert_array_equal(ds.x_train[1], imgs[1][1:7].astype(np.float32) / 255)


def test_tfds_not_installed(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import -> ImportError
  with pytest.raises(FamrError, match=r"pip install 'famr-jax\[tfds\]'"):
    data.load_dataset("tfds:cifar100")
