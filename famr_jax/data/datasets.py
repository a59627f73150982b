"""Image-classification data sets as numpy arrays.

One entry point, :func:`load_dataset`, turns a spec string into a
:class:`Dataset` of float32 NHWC images in [0, 1] and int32 labels:

* ``digits``: scikit-learn's bundled 8x8 digits (no download, the default).
* ``fashion_mnist``: the IDX files of Debian's ``dataset-fashion-mnist``.
* ``idx:DIR``: any folder with the four MNIST-format IDX files.
* ``tfds:NAME``: any tensorflow-datasets image classifier (optional extra).
* ``folder:DIR``: class sub-folders of JPEG / PNG files (ImageNet layout),
  decoded on demand and normalized (see :mod:`famr_jax.data.image_folder`).

Nothing here imports TensorFlow unless a ``tfds:`` spec is loaded.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from famr_jax.data.dataset import Dataset
from famr_jax.data.image_folder import load_image_folder, recipe_from_metadata
from famr_jax.errors import FamrError

DATASET_NAMES = ("digits", "fashion_mnist", "idx:DIR", "tfds:NAME", "folder:DIR")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# Where Debian's `dataset-fashion-mnist` package puts the files.
SYSTEM_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Env var with a user data folder (searched as DIR/fashion-mnist and DIR).
DATA_DIR_ENV = "FAMR_JAX_DATA_DIR"
# Set to "1" to skip the system folder above (tests, hermetic runs).
NO_SYSTEM_DATA_ENV = "FAMR_JAX_NO_SYSTEM_DATA"

# The fixed digits split: 25% test, stratified, sklearn random_state 0.
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_IDX_CODES = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte",
}


class IdxSplits(NamedTuple):
  """The four arrays of an IDX folder, already converted (see load_idx_dir)."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


# ----------------------------------------------------------------------------
# IDX files.


MAX_IDX_BYTES = 1 << 36   # 64 GiB: an IDX header declaring more is refused before allocating


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one MNIST-format IDX file (gzipped if the name ends in ``.gz``).

  The header (two zero bytes, a type byte, a rank byte, then one big-endian
  uint32 per dimension) and the exact file size are checked, so a corrupt or
  truncated file raises FamrError instead of returning garbage.

  Args:
    path: the file.

  Returns:
    The array in native byte order, with the shape the header declares.

  Example:
    >>> import tempfile, numpy as np
    >>> p = tempfile.mkdtemp() + "/y-idx1-ubyte.gz"
    >>> write_idx(p, np.array([3, 1, 4], np.uint8))
    >>> read_idx(p).tolist()
    [3, 1, 4]
  """
  path = os.fspath(path)
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      head = f.read(4)
      if len(head) < 4:
        raise FamrError(f"{path}: truncated IDX header ({len(head)} bytes)")
      zero, code, ndim = struct.unpack(">HBB", head)
      if zero != 0 or code not in _IDX_DTYPES:
        raise FamrError(
            f"{path}: not an IDX file (magic 0x{head.hex()}; expected"
            " 0x0000 then a type byte in 08 09 0B 0C 0D 0E)")
      if ndim == 0:
        raise FamrError(f"{path}: IDX header declares 0 dimensions")
      dims = f.read(4 * ndim)
      if len(dims) < 4 * ndim:
        raise FamrError(f"{path}: truncated IDX header ({4 + len(dims)} bytes)")
      shape = struct.unpack(f">{ndim}I", dims)
      dtype = _IDX_DTYPES[code]
      header_len = 4 + 4 * ndim
      body_len = math.prod(shape) * dtype.itemsize   # Python integers: no overflow
      if body_len > MAX_IDX_BYTES:
        raise FamrError(f"{path}: IDX header declares {shape} {dtype.name} = {body_len:,} bytes, more than "
                        f"famr-jax reads ({MAX_IDX_BYTES:,})")
      body = f.read(body_len + 1)   # one byte more: a longer file is corrupt too
  except FileNotFoundError:
    raise FamrError(f"IDX file not found: {path}") from None
  except (OSError, EOFError, zlib.error) as e:
    raise FamrError(f"cannot read IDX file {path}: {e}") from None
  if len(body) != body_len:
    raise FamrError(
        f"{path}: IDX size mismatch: header {shape} {dtype.name} needs"
        f" {header_len + body_len} bytes, file has {header_len + len(body)}{'+' if len(body) > body_len else ''}"
        " (truncated or corrupt)")
  raw = head + dims + body
  data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
  return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes ``array`` as an IDX file (gzipped if the name ends in ``.gz``).

  Supported dtypes: uint8, int8, int16, int32, float32, float64 (the IDX
  types). Useful to make fixtures or to convert a data set for ``idx:DIR``.

  Args:
    path: the file to write (overwritten if it exists).
    array: at least 1-D, at most 255-D, of a supported dtype.

  Example:
    >>> import tempfile, numpy as np
    >>> p = tempfile.mkdtemp() + "/x-idx3-ubyte"
    >>> write_idx(p, np.zeros((2, 3, 3), np.uint8))
    >>> read_idx(p).shape
    (2, 3, 3)
  """
  array = np.asarray(array)
  code = _IDX_CODES.get(array.dtype.newbyteorder("="))
  if code is None:
    raise FamrError(
        f"write_idx: dtype {array.dtype} has no IDX type; use uint8, int8,"
        " int16, int32, float32 or float64")
  if not 1 <= array.ndim <= 255:
    raise FamrError(f"write_idx: array must have 1 to 255 dims, got {array.ndim}")
  header = struct.pack(f">HBB{array.ndim}I", 0, code, array.ndim, *array.shape)
  payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  path = os.fspath(path)
  if path.endswith(".gz"):
    # mtime=0 makes the bytes reproducible.
    with open(path, "wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as f:
      f.write(payload)
  else:
    with open(path, "wb") as f:
      f.write(payload)


def _find_idx_file(directory: str, stem: str) -> str | None:
  for name in (stem, stem + ".gz"):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  return None


def _is_idx_dir(directory: str) -> bool:
  return os.path.isdir(directory) and all(
      _find_idx_file(directory, s) for s in _IDX_FILES.values())


def load_idx_dir(directory: str | os.PathLike) -> IdxSplits:
  """Loads the four MNIST-format IDX files of a folder.

  Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or
  with ``.gz``. Images become float32 (N, H, W, C) in [0, 1] (uint8 / 255;
  float files must already lie in [0, 1]); labels become int32.

  Args:
    directory: the folder.

  Returns:
    IdxSplits(x_train, y_train, x_test, y_test).

  Example:
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> for s in ("train", "t10k"):
    ...   write_idx(f"{d}/{s}-images-idx3-ubyte", np.full((2, 4, 4), 255, np.uint8))
    ...   write_idx(f"{d}/{s}-labels-idx1-ubyte.gz", np.array([0, 1], np.uint8))
    >>> load_idx_dir(d).x_train.shape
    (2, 4, 4, 1)
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise FamrError(f"IDX directory not found: {directory}")
  paths = {k: _find_idx_file(directory, s) for k, s in _IDX_FILES.items()}
  missing = [_IDX_FILES[k] + "[.gz]" for k, p in paths.items() if p is None]
  if missing:
    raise FamrError(f"IDX directory {directory} lacks: {', '.join(missing)}")
  arrays = {k: read_idx(p) for k, p in paths.items()}
  for split in ("train", "test"):
    nx, ny = len(arrays[f"x_{split}"]), len(arrays[f"y_{split}"])
    if nx != ny:
      raise FamrError(f"IDX directory {directory}: {nx} {split} images but {ny} labels")
  return IdxSplits(
      x_train=_to_images(arrays["x_train"], paths["x_train"]),
      y_train=_to_labels(arrays["y_train"], paths["y_train"]),
      x_test=_to_images(arrays["x_test"], paths["x_test"]),
      y_test=_to_labels(arrays["y_test"], paths["y_test"]),
  )


# ----------------------------------------------------------------------------
# Conversion and validation.


def _to_images(x: np.ndarray, what: str) -> np.ndarray:
  """uint8 -> /255, float -> checked; (N, H, W) -> (N, H, W, 1)."""
  x = np.asarray(x)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise FamrError(f"{what}: images must be (N, H, W) or (N, H, W, C), got shape {x.shape}")
  if x.dtype == np.uint8:
    return x.astype(np.float32) / np.float32(255)
  if not np.issubdtype(x.dtype, np.floating):
    raise FamrError(f"{what}: images must be uint8 or float in [0, 1], got {x.dtype}")
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise FamrError(f"{what}: images contain NaN or inf")
  if x.size and (x.min() < 0 or x.max() > 1):
    raise FamrError(f"{what}: float images must lie in [0, 1], got [{x.min()}, {x.max()}]")
  return x


def _to_labels(y: np.ndarray, what: str) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim != 1:
    raise FamrError(f"{what}: labels must be 1-D, got shape {y.shape}")
  if not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
    raise FamrError(f"{what}: labels must be integers, got {y.dtype}")
  if y.size and y.min() < 0:
    raise FamrError(f"{what}: negative label {y.min()}")
  return y.astype(np.int32)


def _check_dataset(ds: Dataset) -> Dataset:
  """Cross-array checks: counts, shapes, label range."""
  for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
    if len(x) != len(y):
      raise FamrError(f"{ds.name}: {len(x)} {split} images but {len(y)} {split} labels")
    if len(x) == 0:
      raise FamrError(f"{ds.name}: the {split} split is empty")
    if x.shape[1:] != ds.image_shape:
      raise FamrError(f"{ds.name}: {split} images are {x.shape[1:]}, expected {ds.image_shape}")
    if y.max() >= ds.num_classes:
      raise FamrError(f"{ds.name}: {split} label {y.max()} out of range [0, {ds.num_classes})")
  return ds


def _make(name, x_train, y_train, x_test, y_test, num_classes=None, class_names=None) -> Dataset:
  if num_classes is None:
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
  if class_names is None or len(class_names) != num_classes:
    class_names = tuple(str(c) for c in range(num_classes))
  return _check_dataset(Dataset(
      name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
      num_classes=int(num_classes), image_shape=tuple(int(d) for d in x_train.shape[1:]),
      class_names=tuple(class_names)))


# ----------------------------------------------------------------------------
# The sources.


def _load_digits() -> Dataset:
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  bunch = load_digits()
  x = (bunch.images / 16.0).astype(np.float32)[..., None]  # values 0..16
  y = bunch.target.astype(np.int32)
  train_idx, test_idx = train_test_split(
      np.arange(len(y)), test_size=DIGITS_TEST_FRACTION, stratify=y,
      random_state=DIGITS_SPLIT_SEED)
  return _make("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx],
               10, tuple(str(c) for c in range(10)))


def fashion_mnist_search_path(data_dir: str | None = None) -> list[str]:
  """The folders searched for Fashion-MNIST, in order.

  ``data_dir`` (as DIR/fashion-mnist, then DIR), ``$FAMR_JAX_DATA_DIR`` (same
  two), then ``/usr/share/datasets/fashion-mnist`` unless
  ``FAMR_JAX_NO_SYSTEM_DATA=1``.

  Example:
    >>> fashion_mnist_search_path("/data")[:2]
    ['/data/fashion-mnist', '/data']
  """
  dirs = []
  for base in (data_dir, os.environ.get(DATA_DIR_ENV)):
    if base:
      dirs += [os.path.join(base, "fashion-mnist"), base]
  if os.environ.get(NO_SYSTEM_DATA_ENV, "") != "1":
    dirs.append(SYSTEM_FASHION_MNIST_DIR)
  return dirs


def _load_fashion_mnist(data_dir: str | None) -> Dataset:
  search = fashion_mnist_search_path(data_dir)
  found = next((d for d in search if _is_idx_dir(d)), None)
  if found is None:
    raise FamrError(
        f"fashion_mnist not found (looked in {', '.join(search) or 'nowhere'}):"
        " run 'apt-get install dataset-fashion-mnist', or pass data_dir=DIR /"
        f" set ${DATA_DIR_ENV} / use the spec idx:DIR for a folder with the four IDX files")
  s = load_idx_dir(found)
  return _make("fashion_mnist", *s, 10, FASHION_MNIST_CLASSES)


def _load_idx(directory: str) -> Dataset:
  if not directory:
    raise FamrError("idx:DIR needs a directory, e.g. idx:/data/mnist")
  directory = os.path.abspath(os.path.expanduser(directory))
  return _make(f"idx:{directory}", *load_idx_dir(directory))


def _import_tfds(name: str):
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise FamrError(
        f"tfds:{name} needs the tfds extra: pip install 'famr-jax[tfds]'") from None
  return tfds


def _load_tfds(name: str, data_dir: str | None, image_size: int | None,
               classes: Sequence[int] | None) -> Dataset:
  """tensorflow-datasets: splits 'train' and 'test' (else 'validation')."""
  if not name:
    raise FamrError("tfds:NAME needs a data set name, e.g. tfds:cifar10")
  tfds = _import_tfds(name)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare()  # a no-op once prepared; what tfds.load does
  except Exception as e:  # tfds raises many types; keep the message one line
    first = (str(e).strip().splitlines() or [""])[0]
    raise FamrError(f"tfds:{name} cannot be loaded: {type(e).__name__}: {first}") from None
  info = builder.info
  splits = set(info.splits.keys())
  test_split = "test" if "test" in splits or "validation" not in splits else "validation"
  label = info.features["label"]
  num_classes = getattr(label, "num_classes", None)
  names = tuple(getattr(label, "names", None) or ()) or None
  if classes is not None:
    _check_classes(classes, num_classes, f"tfds:{name}")
  arrays = []
  for split in ("train", test_split):
    if image_size is None:
      # Whole split in one tensor: needs all images to share one shape.
      if None in tuple(info.features["image"].shape):
        raise FamrError(f"tfds:{name} has images of varying size; pass image_size=")
      x, y = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
      arrays += [_to_images(x, f"tfds:{name}/{split}"), _to_labels(y, f"tfds:{name}/{split}")]
    else:
      # One example at a time: resize (and filter classes) while streaming so
      # that only the kept, resized images are ever held in memory.
      keep = None if classes is None else set(int(c) for c in classes)
      xs, ys = [], []
      for img, lbl in tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True)):
        if keep is None or int(lbl) in keep:
          xs.append(_resize_image(_to_images(img[None], f"tfds:{name}/{split}")[0], image_size))
          ys.append(int(lbl))
      if not xs:
        raise FamrError(f"tfds:{name}/{split}: no examples of the requested classes")
      arrays += [np.stack(xs), _to_labels(np.asarray(ys, np.int64), f"tfds:{name}/{split}")]
  return _make(f"tfds:{name}", *arrays, num_classes, names)


def _load_folder(directory: str, image_size: int | None, preprocessing: Mapping[str, Any] | None) -> Dataset:
  if not directory:
    raise FamrError("folder:DIR needs a directory, e.g. folder:/data/imagenet")
  recipe = recipe_from_metadata({"preprocessing": dict(preprocessing or {})}, image_size)
  directory = os.path.abspath(os.path.expanduser(directory))
  x_train, y_train, x_test, y_test, names = load_image_folder(directory, recipe)
  return _make(f"folder:{directory}", x_train, y_train, x_test, y_test, len(names), names)


# ----------------------------------------------------------------------------
# Post-processing shared by every source.


def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """Centre-crops (H, W, C) float32 to a square, then bilinear-resizes it."""
  from PIL import Image  # pillow comes with matplotlib
  h, w, _ = image.shape
  s = min(h, w)
  top, left = (h - s) // 2, (w - s) // 2
  image = image[top:top + s, left:left + s]
  if s == size:
    return image
  channels = [
      np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]))  # mode "F"
                 .resize((size, size), Image.BILINEAR))
      for c in range(image.shape[-1])
  ]
  return np.clip(np.stack(channels, -1), 0.0, 1.0).astype(np.float32)


def _check_classes(classes: Sequence[int], num_classes: int | None, what: str) -> None:
  classes = list(classes)
  if not classes:
    raise FamrError(f"{what}: classes= is empty")
  if len(set(classes)) != len(classes):
    raise FamrError(f"{what}: classes= has duplicates: {classes}")
  bad = [c for c in classes if c < 0 or (num_classes is not None and c >= num_classes)]
  if bad:
    raise FamrError(f"{what}: classes {bad} out of range [0, {num_classes})")


def _select_classes(ds: Dataset, classes: Sequence[int]) -> Dataset:
  """Keeps ``classes`` and relabels them 0..k-1 in the order given."""
  _check_classes(classes, ds.num_classes, ds.name)
  lookup = np.full(ds.num_classes, -1, np.int32)
  lookup[np.asarray(classes)] = np.arange(len(classes))
  out = []
  for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
    keep = lookup[y] >= 0
    out += [x[keep], lookup[y[keep]]]
  return _check_dataset(ds._replace(
      x_train=out[0], y_train=out[1], x_test=out[2], y_test=out[3],
      num_classes=len(classes),
      class_names=tuple(ds.class_names[c] for c in classes)))


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
  """Sorted indices of a class-proportional random subset of ``labels``.

  Each class gets ``floor(n_c * size / N)`` slots, the leftover slots go to
  the largest remainders (ties: lower class); members are drawn with
  ``np.random.default_rng(seed)``.

  Example:
    >>> stratified_subset(np.array([0, 0, 0, 0, 1, 1]), 3, seed=0).size
    3
  """
  labels = np.asarray(labels)
  if size >= len(labels):
    return np.arange(len(labels))
  classes, counts = np.unique(labels, return_counts=True)
  quota = counts * size / len(labels)
  take = np.floor(quota).astype(np.int64)
  order = np.lexsort((classes, -(quota - take)))  # largest remainder first
  take[order[: size - take.sum()]] += 1
  rng = np.random.default_rng(seed)
  picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
  return np.sort(np.concatenate(picked))


def _check_positive(value, name: str) -> None:
  if value is not None and (isinstance(value, bool) or int(value) != value or value <= 0):
    raise FamrError(f"{name} must be a positive integer, got {value!r}")


def load_dataset(
    spec: str,
    *,
    data_dir: str | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
    classes: Sequence[int] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> Dataset:
  """Loads a data set by spec: ``digits``, ``fashion_mnist``, ``idx:DIR``, ``tfds:NAME``, ``folder:DIR``.

  Args:
    spec: which data set (see DATASET_NAMES).
    data_dir: for ``fashion_mnist`` the first folder searched (see
      fashion_mnist_search_path); for ``tfds:`` the tensorflow-datasets
      data_dir. Ignored by ``digits`` and ``idx:DIR``.
    max_train: keep at most this many training examples (stratified, seeded).
    max_test: the same for the test split.
    seed: seed of the max_train / max_test subsets (never of the split).
    image_size: centre-crop every image to a square and resize it to
      (image_size, image_size) bilinearly (needed for tfds data sets with
      images of varying size, e.g. imagenet2012; done while streaming there).
    classes: keep only these classes, relabelled 0..k-1 in the given order
      (e.g. an ImageNet-100 subset; filtered while streaming for tfds with
      image_size). ``name`` stays the spec: record ``classes`` alongside it.
    preprocessing: ``folder:DIR`` only: ``{"mean", "std", "resize", "channels"}``
      of the model's recipe (an imported checkpoint's metadata records it);
      default ImageNet's mean / std, resize ``round(image_size / 0.875)``,
      ``image_size`` 224.

  Returns:
    A Dataset of float32 NHWC images in [0, 1] and int32 labels; for
    ``folder:DIR`` the images are a lazy, normalized
    :class:`famr_jax.data.image_folder.LazyImages`.

  Example:
    >>> ds = load_dataset("digits", max_train=100)
    >>> ds.x_train.shape, ds.num_classes
    ((100, 8, 8, 1), 10)
  """
  if not isinstance(spec, str):
    raise FamrError(f"data set spec must be a string, got {type(spec).__name__}")
  for value, name in ((max_train, "max_train"), (max_test, "max_test"), (image_size, "image_size")):
    _check_positive(value, name)
  if spec == "digits":
    ds = _load_digits()
  elif spec == "fashion_mnist":
    ds = _load_fashion_mnist(data_dir)
  elif spec.startswith("idx:"):
    ds = _load_idx(spec[len("idx:"):])
  elif spec.startswith("tfds:"):
    ds = _load_tfds(spec[len("tfds:"):], data_dir, image_size, classes)
  elif spec.startswith("folder:"):
    ds = _load_folder(spec[len("folder:"):], image_size, preprocessing)
  else:
    raise FamrError(f"unknown data set {spec!r}; valid: {', '.join(DATASET_NAMES)}")
  if classes is not None:
    ds = _select_classes(ds, classes)
  if image_size is not None and ds.image_shape[:2] != (image_size, image_size):
    resize = lambda x: np.stack([_resize_image(im, image_size) for im in x])
    ds = ds._replace(x_train=resize(ds.x_train), x_test=resize(ds.x_test),
                     image_shape=(image_size, image_size, ds.image_shape[2]))
  if max_train is not None:
    idx = stratified_subset(ds.y_train, max_train, seed)
    ds = ds._replace(x_train=ds.x_train[idx], y_train=ds.y_train[idx])
  if max_test is not None:
    idx = stratified_subset(ds.y_test, max_test, seed)
    ds = ds._replace(x_test=ds.x_test[idx], y_test=ds.y_test[idx])
  return ds


# ----------------------------------------------------------------------------
# Small helpers.


def class_subset_mask(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
  """Boolean mask of the examples whose label is in ``classes``.

  Example:
    >>> class_subset_mask(np.array([0, 3, 1, 3]), [3]).tolist()
    [False, True, False, True]
  """
  return np.isin(np.asarray(labels), np.asarray(list(classes), dtype=np.int64))


def describe(ds: Dataset) -> str:
  """One line: name, split sizes, image shape and classes.

  Example:
    >>> describe(load_dataset("digits"))
    'digits: 1347 train / 450 test, images 8x8x1, 10 classes (0, 1, 2, ..., 9)'
  """
  names = ds.class_names
  shown = ", ".join(names) if len(names) <= 4 else ", ".join(names[:3]) + f", ..., {names[-1]}"
  h, w, c = ds.image_shape
  return (f"{ds.name}: {len(ds.y_train)} train / {len(ds.y_test)} test, images"
          f" {h}x{w}x{c}, {ds.num_classes} classes ({shown})")
