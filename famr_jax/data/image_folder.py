"""Image folders (the ImageNet layout), decoded on demand: ``load_dataset("folder:DIR")``.

A folder of class sub-folders of JPEG / PNG images is read as torchvision's
``ImageFolder`` reads it (classes are the sorted sub-folder names) and turned
into a :class:`famr_jax.data.datasets.Dataset` whose images are
:class:`LazyImages`: an array-like of shape ``(N, S, S, C)`` that decodes
(with Pillow, in a small thread pool, through a bounded cache) only the rows
it is asked for, so ImageNet never has to fit in memory.

Layouts:

* ``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` (or ``DIR/test/``): the
  two splits as given (ImageNet, ImageNet-100).
* ``DIR/<class>/*`` only: a seeded, stratified split, ``TEST_FRACTION`` of
  each class (at least one image) to the test split, drawn with
  ``SPLIT_SEED`` (fixed like the digits split, never the subset seed).

Every image goes through the usual evaluation recipe of the ImageNet models:
convert to RGB, resize the shorter side to ``resize`` (default
``round(image_size / 0.875)``, 256 for 224) bilinearly, centre-crop
``image_size``, scale to [0, 1], normalize by ``mean`` / ``std`` (ImageNet's
by default; an imported checkpoint's recorded ones, see
:func:`recipe_from_metadata`). Unlike the other sources the images are
therefore normalized, not in [0, 1].

Consumers take a batch at a time: ``np.asarray(x[rows])`` decodes those rows;
indexing with an integer array, slice or mask returns a lazy view (no
decoding); ``np.asarray`` of a view larger than ``max_bytes`` is refused with
one line, so no code path silently materializes ImageNet.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import threading
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from famr_jax.errors import FamrError

# torchvision's IMG_EXTENSIONS.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
CROP_FRACTION = 0.875            # resize = round(image_size / 0.875): 256 for 224
TEST_FRACTION = 0.2              # one-folder layout: share of each class in the test split
SPLIT_SEED = 0
TRAIN_DIRS = ("train",)
TEST_DIRS = ("val", "test")
DEFAULT_MAX_BYTES = 2 << 30      # np.asarray of a view above this is refused (stream it instead)
DEFAULT_CACHE_BYTES = 256 << 20  # decoded images kept per folder (LRU)
DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class ImageRecipe:
  """How a file becomes a model input: resize the shorter side, centre-crop, normalize.

  Attributes:
    image_size: side ``S`` of the square centre crop.
    resize: the shorter side is resized to this first (``None``: ``round(S / 0.875)``).
    mean: per-channel mean subtracted after scaling to [0, 1].
    std: per-channel standard deviation divided by.
    channels: 3 (RGB) or 1 (grayscale, Pillow's ``L`` conversion).
  """
  image_size: int = DEFAULT_IMAGE_SIZE
  resize: int | None = None
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD
  channels: int = 3

  @property
  def resize_to(self) -> int:
    return int(self.resize) if self.resize is not None else int(round(self.image_size / CROP_FRACTION))

  def validate(self) -> "ImageRecipe":
    """Raises FamrError on a recipe that cannot work (crop larger than the resize, bad mean/std)."""
    for name, v in (("image_size", self.image_size), ("resize", self.resize)):
      if v is not None and (isinstance(v, bool) or int(v) != v or v <= 0):
        raise FamrError(f"{name} must be a positive integer, got {v!r}")
    if self.resize_to < self.image_size:
      raise FamrError(f"resize {self.resize_to} is smaller than the crop {self.image_size}")
    if self.channels not in (1, 3):
      raise FamrError(f"channels must be 1 or 3, got {self.channels}")
    if len(self.mean) != self.channels or len(self.std) != self.channels:
      raise FamrError(f"mean and std need {self.channels} values each, got {len(self.mean)} and {len(self.std)}")
    if any(not np.isfinite(s) or s <= 0 for s in self.std):
      raise FamrError(f"std must be positive, got {tuple(self.std)}")
    return self


def recipe_from_metadata(metadata: Mapping[str, Any] | None, image_size: int | None = None) -> ImageRecipe:
  """The recipe a checkpoint records (``famr-jax import``), else ImageNet's.

  Reads ``metadata["preprocessing"]`` = ``{"mean": [...], "std": [...], "image_size": S,
  "resize": R, "channels": C}`` (every key optional); ``image_size`` and
  ``channels`` fall back to the checkpoint's ``image_shape``, then to 224 and 3.
  An explicit ``image_size`` argument wins.

  Example:
    >>> r = recipe_from_metadata({"image_shape": [32, 32, 3], "preprocessing": {"mean": [0.5] * 3}})
    >>> r.image_size, r.resize_to, r.mean
    (32, 37, (0.5, 0.5, 0.5))
  """
  metadata = dict(metadata or {})
  pre = dict(metadata.get("preprocessing") or {})
  shape = metadata.get("image_shape")
  size = image_size or pre.get("image_size") or (int(shape[0]) if shape else DEFAULT_IMAGE_SIZE)
  channels = int(pre.get("channels") or (shape[2] if shape and len(shape) == 3 else 3))
  default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
  return ImageRecipe(image_size=int(size), resize=pre.get("resize"),
                     mean=tuple(float(v) for v in pre.get("mean", default_mean)),
                     std=tuple(float(v) for v in pre.get("std", default_std)), channels=channels).validate()


def decode_image(path: str, recipe: ImageRecipe) -> np.ndarray:
  """One file through the recipe: float32 ``(S, S, C)``, normalized.

  Raises:
    FamrError: the file is not a readable image (named in the message).
  """
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as im:
      im = im.convert("RGB" if recipe.channels == 3 else "L")
      w, h = im.size
      r = recipe.resize_to
      # torchvision's Resize(r): the shorter side becomes r, the longer one int(r * long / short).
      size = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
      if size != (w, h):
        im = im.resize(size, Image.BILINEAR)
      pixels = np.asarray(im, np.float32)
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise FamrError(f"cannot decode image {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") \
        from None
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  s = recipe.image_size
  h, w = pixels.shape[:2]
  # torchvision's CenterCrop: offsets int(round((size - s) / 2)).
  top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
  crop = pixels[top:top + s, left:left + s] / np.float32(255)
  return ((crop - np.asarray(recipe.mean, np.float32)) / np.asarray(recipe.std, np.float32)).astype(np.float32)


class _Decoder:
  """The files of one folder, a thread pool and a bounded LRU cache of decoded images."""

  def __init__(self, paths: Sequence[str], recipe: ImageRecipe, workers: int, cache_bytes: int):
    self.paths = tuple(paths)
    self.recipe = recipe
    self.workers = max(1, int(workers))
    s = recipe.image_size
    self.image_bytes = s * s * recipe.channels * 4
    self.cache_capacity = max(0, int(cache_bytes) // self.image_bytes)
    self.cache: "collections.OrderedDict[int, np.ndarray]" = collections.OrderedDict()
    self.lock = threading.Lock()
    self.pool: concurrent.futures.ThreadPoolExecutor | None = None
    self.decoded = 0     # files decoded so far (cache misses); tests and benchmarks read it

  def get(self, files: np.ndarray) -> np.ndarray:
    s, c = self.recipe.image_size, self.recipe.channels
    out = np.empty((len(files), s, s, c), np.float32)
    missing: dict[int, list[int]] = {}
    with self.lock:
      for i, f in enumerate(files.tolist()):
        hit = self.cache.get(f)
        if hit is not None:
          self.cache.move_to_end(f)
          out[i] = hit
        else:
          missing.setdefault(f, []).append(i)
    if missing:
      order = list(missing)
      if len(order) > 1 and self.workers > 1:
        if self.pool is None:
          self.pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="famr-decode")
        images = list(self.pool.map(lambda f: decode_image(self.paths[f], self.recipe), order))
      else:
        images = [decode_image(self.paths[f], self.recipe) for f in order]
      with self.lock:
        self.decoded += len(order)
        for f, image in zip(order, images):
          out[missing[f]] = image
          if self.cache_capacity:
            self.cache[f] = image
            self.cache.move_to_end(f)
            while len(self.cache) > self.cache_capacity:
              self.cache.popitem(last=False)
    return out


class LazyImages:
  """An ``(N, S, S, C)`` float32 array-like over image files, decoded on demand.

  ``x[i]`` decodes one image; ``x[rows]`` (an integer array, slice or boolean
  mask) is a lazy view; ``np.asarray(x)`` decodes the whole view, refused
  above ``max_bytes`` (a FamrError: stream it with :meth:`batches` instead).

  Example:
    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> d = tempfile.mkdtemp()
    >>> Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(f"{d}/a.png")
    >>> x = LazyImages([f"{d}/a.png"] * 3, ImageRecipe(image_size=8, mean=(0.,) * 3, std=(1.,) * 3))
    >>> x.shape, x[np.array([0, 2])].shape, float(np.asarray(x[:2]).max())
    ((3, 8, 8, 3), (2, 8, 8, 3), 0.0)
  """

  def __init__(self, paths: Sequence[str], recipe: ImageRecipe, *, workers: int = DEFAULT_WORKERS,
               cache_bytes: int = DEFAULT_CACHE_BYTES, max_bytes: int = DEFAULT_MAX_BYTES,
               _decoder: _Decoder | None = None, _rows: np.ndarray | None = None):
    self._decoder = _decoder or _Decoder(paths, recipe.validate(), workers, cache_bytes)
    self._rows = np.arange(len(self._decoder.paths)) if _rows is None else _rows
    self.max_bytes = int(max_bytes)

  @property
  def recipe(self) -> ImageRecipe:
    return self._decoder.recipe

  @property
  def shape(self) -> tuple[int, int, int, int]:
    r = self._decoder.recipe
    return (len(self._rows), r.image_size, r.image_size, r.channels)

  dtype = np.dtype(np.float32)
  ndim = 4

  @property
  def nbytes(self) -> int:
    return len(self._rows) * self._decoder.image_bytes

  @property
  def paths(self) -> tuple[str, ...]:
    """The files of this view, in row order."""
    return tuple(self._decoder.paths[f] for f in self._rows.tolist())

  @property
  def decoded_count(self) -> int:
    """Files decoded so far by this folder (all views share one decoder and cache)."""
    return self._decoder.decoded

  def __len__(self) -> int:
    return len(self._rows)

  def __repr__(self) -> str:
    return f"LazyImages(shape={self.shape}, files={len(self._decoder.paths)})"

  def __getitem__(self, key):
    if isinstance(key, (int, np.integer)):
      return self._decoder.get(self._rows[[int(key)]])[0]
    if isinstance(key, tuple):
      raise FamrError("LazyImages takes one index (rows); decode the rows first, then slice pixels")
    if hasattr(key, "__array__") and not isinstance(key, np.ndarray):
      key = np.asarray(key)   # a jax array of indices
    if isinstance(key, list):
      key = np.asarray(key, np.int64 if not key or not isinstance(key[0], (bool, np.bool_)) else bool)
    return LazyImages((), self.recipe, max_bytes=self.max_bytes, _decoder=self._decoder, _rows=self._rows[key])

  def decode(self) -> np.ndarray:
    """Every row of this view, decoded (no size limit: the caller asked for it)."""
    return self._decoder.get(self._rows)

  def __array__(self, dtype=None, copy=None):
    if self.nbytes > self.max_bytes:
      raise FamrError(f"refusing to decode {len(self)} images ({self.nbytes / 2**20:.0f} MiB) into memory at "
                      f"once (limit {self.max_bytes / 2**20:.0f} MiB): this step holds its whole set in memory; "
                      "use a smaller subset (max_train, fewer forget classes) or a method that streams (famr)")
    out = self.decode()
    return out if dtype is None else out.astype(dtype, copy=False)

  def batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive decoded batches of at most ``batch_size`` rows."""
    for start in range(0, len(self), batch_size):
      yield self._decoder.get(self._rows[start:start + batch_size])


def is_streamed(x: Any) -> bool:
  """Whether ``x`` is an array-like to be read batch by batch (not a numpy or jax array).

  Example:
    >>> is_streamed(np.zeros(3))
    False
  """
  import jax
  return not isinstance(x, (np.ndarray, jax.Array, np.generic, int, float)) and hasattr(x, "shape") \
      and hasattr(x, "__getitem__") and hasattr(x, "__len__")


def iter_batches(x: Any, batch_size: int) -> Iterator[np.ndarray]:
  """Decoded consecutive batches of any array-like (numpy slices, or a streamed array's rows).

  Example:
    >>> [b.tolist() for b in iter_batches(np.arange(5), 2)]
    [[0, 1], [2, 3], [4]]
  """
  for start in range(0, len(x), batch_size):
    yield np.asarray(x[start:start + batch_size])


# ----------------------------------------------------------------------------- the folder


class FolderSplits(NamedTuple):
  """The files and labels of an image folder, before decoding."""
  train_paths: tuple[str, ...]
  train_labels: np.ndarray
  test_paths: tuple[str, ...]
  test_labels: np.ndarray
  class_names: tuple[str, ...]


def _class_dirs(directory: str) -> list[str]:
  return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _class_files(directory: str, what: str, skipped: list[str]) -> list[str]:
  """The image files of one class folder (sorted); other files (by extension) go to ``skipped``."""
  files = []
  for root, dirs, names in os.walk(directory, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in sorted(names):
      if name.startswith("."):
        continue   # .DS_Store and friends
      path = os.path.join(root, name)
      (files if name.lower().endswith(IMAGE_EXTENSIONS) else skipped).append(path)
  if not files:
    raise FamrError(f"{what}: class folder {directory} has no images")
  return files


def _scan_split(directory: str, classes: Sequence[str], what: str,
                skipped: list[str]) -> tuple[list[str], list[int]]:
  paths, labels = [], []
  for label, name in enumerate(classes):
    sub = os.path.join(directory, name)
    if not os.path.isdir(sub):
      raise FamrError(f"{what}: {directory} has no folder for class {name!r}")
    files = _class_files(sub, what, skipped)
    paths += files
    labels += [label] * len(files)
  return paths, labels


def _report_skipped(what: str, skipped: Sequence[str]) -> None:
  """One warning line for the files of class folders that are not images (README.txt, labels.csv...)."""
  if skipped:
    import logging
    logging.getLogger("famr_jax").warning(
        "%s: skipped %d non-image file%s (e.g. %s); images are %s", what, len(skipped),
        "" if len(skipped) == 1 else "s", skipped[0], " ".join(IMAGE_EXTENSIONS))


def scan_image_folder(directory: str) -> FolderSplits:
  """Finds the classes and files of ``folder:DIR`` (see the module doc for the layouts).

  Files of a class folder whose extension is not an image's (``IMAGE_EXTENSIONS``) are skipped, said in
  one warning line of the ``famr_jax`` logger (their count and one of them).

  Raises:
    FamrError: no such folder, no class folders, one class, a class folder with no
      images, or a test split whose classes differ from the training split's.
  """
  what = f"folder:{directory}"
  if not os.path.isdir(directory):
    raise FamrError(f"{what}: no such directory")
  subdirs = _class_dirs(directory)
  train_dir = next((d for d in TRAIN_DIRS if d in subdirs), None)
  test_dir = next((d for d in TEST_DIRS if d in subdirs), None)
  if train_dir is not None and test_dir is None:
    raise FamrError(f"{what}: has {train_dir}/ but no {' or '.join(d + '/' for d in TEST_DIRS)}")
  root = os.path.join(directory, train_dir) if train_dir else directory
  classes = _class_dirs(root)
  if not classes:
    raise FamrError(f"{what}: no class folders in {root} (expected {root}/<class>/<image files>)")
  if len(classes) < 2:
    raise FamrError(f"{what}: only one class ({classes[0]!r}); a classifier needs at least 2")
  skipped: list[str] = []
  train_paths, train_labels = _scan_split(root, classes, what, skipped)
  if test_dir is not None:
    test_root = os.path.join(directory, test_dir)
    extra = sorted(set(_class_dirs(test_root)) - set(classes))
    if extra:
      raise FamrError(f"{what}: {test_dir}/ has class folder {extra[0]!r} that {train_dir}/ lacks")
    test_paths, test_labels = _scan_split(test_root, classes, what, skipped)
  _report_skipped(what, skipped)
  if test_dir is None:
    train_paths, train_labels, test_paths, test_labels = _split_by_fraction(train_paths, train_labels, what)
  return FolderSplits(tuple(train_paths), np.asarray(train_labels, np.int32), tuple(test_paths),
                      np.asarray(test_labels, np.int32), tuple(classes))


def _split_by_fraction(paths: list[str], labels: list[int], what: str):
  """Each class: ``max(1, round(TEST_FRACTION * n))`` files to the test split, seeded."""
  labels_arr = np.asarray(labels)
  rng = np.random.default_rng(SPLIT_SEED)
  test = np.zeros(len(labels), bool)
  for c in np.unique(labels_arr):
    rows = np.flatnonzero(labels_arr == c)
    if len(rows) < 2:
      raise FamrError(f"{what}: class folder {os.path.dirname(paths[rows[0]])} has 1 image: "
                      "a folder without train/ and val/ is split, which needs at least 2 per class")
    k = min(len(rows) - 1, max(1, int(round(TEST_FRACTION * len(rows)))))
    test[rng.permutation(rows)[:k]] = True
  pick = lambda mask: ([p for p, m in zip(paths, mask) if m], labels_arr[mask].tolist())
  return (*pick(~test), *pick(test))


def verify_images(paths: Sequence[str], workers: int = DEFAULT_WORKERS) -> None:
  """Opens every file's header with Pillow (no decoding) in a thread pool; the first bad file is named.

  Raises:
    FamrError: ``cannot read image PATH: ...``.
  """
  from PIL import Image

  def check(path: str) -> str | None:
    try:
      with Image.open(path) as im:
        im.size  # noqa: B018  (the header is parsed by open)
      return None
    except Exception as e:  # Pillow raises many types for a bad file; keep the message one line
      return f"cannot read image {path}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}"

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    for error in pool.map(check, paths):
      if error is not None:
        raise FamrError(error)


def load_image_folder(directory: str | os.PathLike, recipe: ImageRecipe | None = None, *, verify: bool = True,
                      workers: int = DEFAULT_WORKERS, cache_bytes: int = DEFAULT_CACHE_BYTES,
                      max_bytes: int = DEFAULT_MAX_BYTES):
  """``(x_train, y_train, x_test, y_test, class_names)`` of an image folder, images as :class:`LazyImages`.

  Args:
    directory: the folder (see the module doc for the layouts).
    recipe: resize / crop / normalize (default: ImageNet's at 224).
    verify: open every image file's header first, so a corrupt one is
      named before any work (one ``open`` per file; a truncated image body is
      still only found when decoded, and named then).
    workers: decoding threads.
    cache_bytes: decoded images kept in memory (LRU), shared by both splits' views.
    max_bytes: ``np.asarray`` of a larger view is refused.
  """
  directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
  recipe = (recipe or ImageRecipe()).validate()
  s = scan_image_folder(directory)
  if verify:
    verify_images(s.train_paths + s.test_paths, workers)
  decoder = _Decoder(s.train_paths + s.test_paths, recipe, workers, cache_bytes)
  n = len(s.train_paths)
  everything = LazyImages((), recipe, max_bytes=max_bytes, _decoder=decoder)
  return everything[:n], s.train_labels, everything[n:], s.test_labels, s.class_names


def write_example_folder(directory: str | os.PathLike, *, num_classes: int = 4, train_per_class: int = 6,
                         val_per_class: int = 3, size: tuple[int, int] = (40, 48), seed: int = 0) -> str:
  """Writes a small learnable image folder in the ImageNet layout (fixtures, examples, smoke tests).

  ``DIR/train/class_k/*.png`` and ``DIR/val/class_k/*.JPEG`` (alternating PNG and JPEG in both
  splits): class ``k`` is noise around its own colour, sizes vary by a few pixels per image so the
  resize / crop path is exercised. Returns the directory.

  Example:
    >>> import tempfile
    >>> d = write_example_folder(tempfile.mkdtemp() + "/imgs", num_classes=2, train_per_class=2, val_per_class=1)
    >>> sorted(os.listdir(d)), sorted(os.listdir(d + "/train"))
    (['train', 'val'], ['class_0', 'class_1'])
  """
  from PIL import Image
  directory = os.fspath(directory)
  rng = np.random.default_rng(seed)
  colours = rng.integers(30, 226, (num_classes, 3))
  for split, count in (("train", train_per_class), ("val", val_per_class)):
    for k in range(num_classes):
      folder = os.path.join(directory, split, f"class_{k}")
      os.makedirs(folder, exist_ok=True)
      for i in range(count):
        h, w = size[0] + int(rng.integers(0, 5)), size[1] + int(rng.integers(0, 5))
        pixels = np.clip(colours[k] + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        ext = "png" if i % 2 == 0 else "JPEG"
        Image.fromarray(pixels).save(os.path.join(folder, f"{split}_{k}_{i}.{ext}"))
  return directory
