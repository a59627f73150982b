"""Checks of a user's numbers, labels, images and model, run before any work (issue 13).

Every check is a small pure function that returns the checked value or
raises one-line :class:`famr_jax.errors.FamrError` naming what was wrong.

* **Numbers.** :func:`check_number` refuses bools, NaN, inf, non-integers
  where an integer is meant, a wrong sign and absurd sizes. What a field name
  means is the same in every config (``lr`` is a learning rate everywhere),
  so one table, :data:`FIELD_LIMITS`, gives the limits of a name and
  :data:`DEFAULT_LIMITS` those of any other int or float field.
  :class:`CheckedFields` makes a config dataclass check its fields when it is
  built (``FAMRConfig(lam=float("nan"))`` fails there); the CLI's flags use
  the same table, so ``--lr inf`` fails while the flags are parsed.
  Cross-field rules (``beta > 0`` needs a style layer ...) stay in each
  config's ``validate()``.
* **Labels, classes and images** (:func:`check_labels`, :func:`check_classes`,
  :func:`check_images`): integer labels in range, never one-hot or float;
  float images, never integer (uint8) pixels.
* **The model** (:func:`check_params_finite`, :func:`check_logits_fn`):
  finite params; an ``apply_fn`` that returns one ``(batch, num_classes)``
  array of logits, not a tuple, a dict or probabilities.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.errors import Diverged, FamrError

MAX_COUNT = 10 ** 7          # epochs, steps, batch sizes, widths ...: more is a typo, not a run
MAX_MAGNITUDE = 1e6          # any other real-valued setting (a loss weight, a decay, a tolerance)
MAX_LR = 1e3                 # a learning rate above this only ever diverges
SEED_LIMIT = 2 ** 32         # seeds are uint32
PROBE_ROWS = 8               # examples apply_fn is called on before any work, to check it returns logits


class Limits(NamedTuple):
  """The allowed range of a number: ``low <= x <= high`` (``low < x`` when ``positive``)."""
  low: float = 0
  high: float = MAX_MAGNITUDE
  positive: bool = False
  meaning: str = ""   # words for the message (``lr`` -> "learning rate")


DEFAULT_LIMITS = {int: Limits(0, MAX_COUNT), float: Limits(0, MAX_MAGNITUDE)}

# What a field name means in every config of famr-jax. Positivity is checked here only where zero
# can never mean anything; a config's validate() adds its own rules.
FIELD_LIMITS: dict[str, Limits] = {
    "lr": Limits(0, MAX_LR, True, "learning rate"),
    "impression_lr": Limits(0, MAX_LR, True, "learning rate"),
    "epochs": Limits(0, MAX_COUNT, True),
    "steps": Limits(0, MAX_COUNT, False, "step budget"),
    "batch_size": Limits(0, MAX_COUNT, True),
    "grad_accum": Limits(0, MAX_COUNT, True),
    "num_devices": Limits(0, 2 ** 20, True),
    "temperature": Limits(0, MAX_MAGNITUDE, True, "temperature"),
    "lam": Limits(0, MAX_MAGNITUDE, False, "lambda"),
    "seed": Limits(0, SEED_LIMIT - 1),
    "fsdp_min_size": Limits(0, 2 ** 62),
    "input_range": Limits(-MAX_MAGNITUDE, MAX_MAGNITUDE),
    # Class ids and sample indices: their range is the model's and the data's, checked with those.
    "forget_classes": Limits(-MAX_COUNT, MAX_COUNT),
    "forget_samples": Limits(-2 ** 62, 2 ** 62),
}


def limits_of(name: str, kind: type) -> Limits:
  """The limits of a field called ``name`` holding ``kind`` (int or float) values."""
  return FIELD_LIMITS.get(name, DEFAULT_LIMITS[kind])


def _fmt(value: float) -> str:
  return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else f"{value:g}"


def _describe(label: str, limits: Limits) -> str:
  return f"{label} ({limits.meaning})" if limits.meaning and limits.meaning not in label else label


def check_number(label: str, value: Any, kind: type, limits: Limits | None = None) -> Any:
  """``value`` if it is a finite ``kind`` (int or float) within ``limits``, else a one-line FamrError.

  Args:
    label: what the message calls the value (``"FAMRConfig.lr"``, ``"--lr"``, ``"argument seeds"``).
    value: the value; bools are refused (``True`` is not a count), an int is a float too.
    kind: ``int`` or ``float``.
    limits: the allowed range (default: :data:`DEFAULT_LIMITS` of ``kind``).

  Example:
    >>> check_number("lr", 0.1, float, FIELD_LIMITS["lr"])
    0.1
    >>> check_number("lr", float("nan"), float)
    Traceback (most recent call last):
    famr_jax.errors.FamrError: lr must be a finite number, got nan
  """
  limits = limits or DEFAULT_LIMITS[kind]
  label = _describe(label, limits)
  if kind is int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
      raise FamrError(f"{label} must be an integer, got {value!r}")
  else:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
      raise FamrError(f"{label} must be a number, got {value!r}")
    if not math.isfinite(value):
      raise FamrError(f"{label} must be a finite number, got {value!r}")
  if limits.positive and value <= limits.low:
    raise FamrError(f"{label} must be positive, got {value!r}" if limits.low == 0
                    else f"{label} must be above {_fmt(limits.low)}, got {value!r}")
  if value < limits.low:
    raise FamrError(f"{label} must be non-negative, got {value!r}" if limits.low == 0
                    else f"{label} must be at least {_fmt(limits.low)}, got {value!r}")
  if value > limits.high:
    raise FamrError(f"{label} must be at most {_fmt(limits.high)}, got {value!r}")
  return value


def _unwrap_optional(tp) -> tuple[Any, bool]:
  if typing.get_origin(tp) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1:
      return args[0], True
  return tp, False


def check_field(label: str, name: str, value: Any, tp: Any) -> Any:
  """Checks one value of a field declared as ``tp`` (int, float, Optional or tuple of them).

  Other types pass unchecked (a Literal's choices are checked by the config's
  ``validate()`` and by the CLI's parser). Returns ``value``.

  Example:
    >>> check_field("--epochs", "epochs", 3, int)
    3
  """
  tp, optional = _unwrap_optional(tp)
  if value is None and optional:
    return value
  origin = typing.get_origin(tp)
  if origin is tuple:
    inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
    if len(inner) == 1 or len(set(inner)) == 1:
      if inner[0] in (int, float):
        if not isinstance(value, (tuple, list)):
          raise FamrError(f"{label} must be a tuple of {inner[0].__name__} values, got {value!r}")
        for item in value:
          check_number(label, item, inner[0], limits_of(name, inner[0]))
    return value
  if tp in (int, float):
    return check_number(label, value, tp, limits_of(name, tp))
  return value


@functools.lru_cache(maxsize=None)
def _checked_fields(cls: type) -> tuple[tuple[str, Any], ...]:
  hints = typing.get_type_hints(cls)
  return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))


def check_fields(config: Any) -> Any:
  """Checks every int and float field (plain, Optional or tuple) of a config dataclass; returns it.

  Example:
    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class C:
    ...   lr: float = 0.1
    >>> check_fields(C(lr=-1.0))
    Traceback (most recent call last):
    famr_jax.errors.FamrError: C.lr (learning rate) must be positive, got -1.0
  """
  cls = type(config)
  for name, tp in _checked_fields(cls):
    check_field(f"{cls.__name__}.{name}", name, getattr(config, name), tp)
  return config


def apply_renamed(config: Any, renamed: dict[str, tuple[str, Any]]) -> None:
  """Moves the values given under deprecated field names onto their new fields (in ``__post_init__``).

  ``renamed`` maps each old name (a ``dataclasses.InitVar`` of the config, default None) to
  ``(new field, the value given)``; each old name used warns (``DeprecationWarning``). Giving both
  names with different values is a :class:`FamrError`.

  Example:
    >>> import dataclasses, warnings
    >>> @dataclasses.dataclass(frozen=True)
    ... class C:
    ...   weight: float = 1.0
    ...   w: dataclasses.InitVar[float | None] = None
    ...   def __post_init__(self, w):
    ...     apply_renamed(self, {"w": ("weight", w)})
    >>> with warnings.catch_warnings():
    ...   warnings.simplefilter("ignore")
    ...   C(w=3.0).weight
    3.0
  """
  cls = type(config)
  for old, (new, value) in renamed.items():
    if value is None:
      continue
    default = cls.__dataclass_fields__[new].default
    current = getattr(config, new)
    if current != default and current != value:
      raise FamrError(f"{cls.__name__}: {old} is the old name of {new}; give only {new}")
    warnings.warn(f"{cls.__name__}({old}=...) is deprecated: use {new}=...", DeprecationWarning, stacklevel=4)
    object.__setattr__(config, new, value)


class CheckedFields:
  """Mixin of a config dataclass: its fields are checked (:func:`check_fields`) when it is built.

  ``dataclasses.replace`` builds a new object, so a changed field is checked too.
  """

  def __post_init__(self) -> None:
    check_fields(self)


# ----------------------------------------------------------------------------- labels, classes, images

def check_classes(classes: Any, what: str = "forget classes") -> tuple[int, ...]:
  """The class ids of ``classes`` as ints: each must be an integer (not a bool, not ``3.7``).

  Example:
    >>> check_classes([3, 5])
    (3, 5)
  """
  if isinstance(classes, (str, bytes)) or not isinstance(classes, typing.Iterable):
    raise FamrError(f"{what} must be a list of integer class ids, got {classes!r}")
  items = list(np.asarray(classes).reshape(-1)) if isinstance(classes, np.ndarray) else list(classes)
  bad = [c for c in items if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Integral)]
  if bad:
    raise FamrError(f"{what} must be integer class ids, got {bad[0]!r}")
  return tuple(int(c) for c in items)


def check_labels(y: Any, num_classes: int | None = None, what: str = "labels y") -> np.ndarray:
  """``y`` as an int32 vector of class ids in ``[0, num_classes)``; one-hot, float or bool labels refused.

  Example:
    >>> check_labels([0, 2, 1], 3).tolist()
    [0, 2, 1]
  """
  arr = np.asarray(y)
  if arr.ndim == 2 and arr.shape[1] > 1 and arr.size and set(np.unique(arr).tolist()) <= {0, 1}:
    raise FamrError(f"{what} look one-hot (shape {arr.shape}): pass integer class ids, y.argmax(-1)")
  if arr.ndim != 1:
    raise FamrError(f"{what} must be a vector of integer class ids, got shape {arr.shape}")
  if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
    raise FamrError(f"{what} must be integer class ids, got dtype {arr.dtype}")
  if np.issubdtype(arr.dtype, np.floating):
    whole = bool(np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)))
    hint = "pass y.astype(np.int32)" if whole else "they hold non-integer values"
    raise FamrError(f"{what} must be integer class ids, got dtype {arr.dtype}: {hint}")
  if arr.size and arr.min() < 0:
    raise FamrError(f"{what} must be non-negative class ids, got {int(arr.min())}")
  if num_classes is not None and arr.size and arr.max() >= num_classes:
    raise FamrError(f"{what} must be class ids in [0, {num_classes}) (the model's classes), got {int(arr.max())}")
  return arr.astype(np.int32)


def check_images(x: Any, what: str = "images x") -> np.ndarray:
  """``x`` as a finite float32 array ``(N, ...)``; integer (uint8) pixels are refused with a hint.

  Example:
    >>> check_images(np.zeros((2, 4, 4, 1), np.float32)).shape
    (2, 4, 4, 1)
  """
  arr = np.asarray(x)
  if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
    raise FamrError(f"{what} are {arr.dtype} (integer pixels): pass floats, e.g. x.astype(np.float32) / 255")
  if not np.issubdtype(arr.dtype, np.floating):
    raise FamrError(f"{what} must be a float array, got dtype {arr.dtype}")
  if arr.ndim < 2:
    raise FamrError(f"{what} must have shape (N, ...) with one row per example, got {arr.shape}")
  if not np.all(np.isfinite(arr)):
    raise FamrError(f"{what} contain NaN or inf values")
  return arr.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- the model

def nonfinite_leaf(tree: Any) -> str | None:
  """The path of the first leaf of ``tree`` holding NaN or inf (``None`` when all are finite).

  Example:
    >>> nonfinite_leaf({"w": np.array([1.0, np.nan])})
    "['w']"
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    arr = np.asarray(leaf)
    if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
      return jax.tree_util.keystr(path)
  return None


def check_params_finite(params: Any, what: str = "params") -> Any:
  """Refuses params holding NaN or inf (a diverged model), naming the first such leaf."""
  bad = nonfinite_leaf(params)
  if bad is not None:
    raise FamrError(f"{what} hold NaN or inf values (leaf {bad}): a diverged model cannot be used")
  return params


def looks_like_probabilities(out: np.ndarray) -> bool:
  """Whether every row of ``out`` lies in [0, 1] and sums to 1 (softmax outputs, not logits).

  A fresh network's logits never pass: they would need every entry of every
  row in [0, 1] and each row's sum within 1e-3 of 1. A one-column output is
  never called probabilities.
  """
  if out.ndim != 2 or out.shape[1] < 2 or out.size == 0:
    return False
  return bool(np.all(out >= 0) and np.all(out <= 1) and np.allclose(out.sum(-1), 1.0, rtol=0, atol=1e-3))


def _jitted(apply_fn: Callable) -> Callable:
  try:
    return _jitted_cached(apply_fn)
  except TypeError:   # an unhashable callable
    return jax.jit(apply_fn)


@functools.lru_cache(maxsize=64)
def _jitted_cached(apply_fn: Callable) -> Callable:
  return jax.jit(apply_fn)


def check_logits_fn(apply_fn: Callable, params: Any, x_probe: np.ndarray, num_classes: int | None) -> int:
  """Refuses an ``apply_fn`` whose output on ``x_probe`` is not a ``(B, num_classes)`` logits array.

  The output's structure and shape come from tracing (``jax.eval_shape``); its
  values from one jitted call (compiled once per ``apply_fn``).

  A tuple, list or dict (Flax ``mutable`` outputs, auxiliary losses), a wrong
  shape, NaN or inf, or rows that are probabilities
  (:func:`looks_like_probabilities`) are each a one-line FamrError.
  ``num_classes`` None accepts any number of classes (at least 2). Returns
  the number of classes.
  """
  try:   # the structure first, by tracing alone (no compilation, no arithmetic)
    out = jax.eval_shape(apply_fn, params, x_probe)
  except Exception as e:   # noqa: BLE001 - a user's function failing on its input: one line with the cause
    first = (str(e).strip().splitlines() or [""])[0][:200]
    raise FamrError(f"apply_fn(params, x) failed on a batch of shape {tuple(x_probe.shape)}: "
                    f"{type(e).__name__}: {first}") from None
  if isinstance(out, (tuple, list, dict)):
    raise FamrError(f"apply_fn returns a {type(out).__name__}; it must return one array of logits "
                    f"(batch, {num_classes or 'num_classes'}): wrap it, e.g. lambda p, x: f(p, x)[0]")
  if not isinstance(out, jax.ShapeDtypeStruct):
    raise FamrError(f"apply_fn returns a {type(out).__name__}, not an array of logits")
  shape = tuple(out.shape)
  if not (len(shape) == 2 and shape[0] == len(x_probe)
          and (shape[1] == num_classes if num_classes is not None else shape[1] >= 2)):
    raise FamrError(f"apply_fn returns shape {shape} for a batch of {len(x_probe)}; expected "
                    f"logits of shape ({len(x_probe)}, {num_classes or 'num_classes >= 2'})")
  out = _jitted(apply_fn)(params, x_probe)   # then the values: one small compiled forward pass
  values = np.asarray(out, np.float64)
  if not np.all(np.isfinite(values)):
    raise FamrError("apply_fn returns NaN or inf logits on the data")
  if looks_like_probabilities(values):
    raise FamrError("apply_fn returns probabilities (rows in [0, 1] summing to 1); famr-jax needs logits: "
                    "drop the final softmax")
  return int(out.shape[1])


def check_config_class(config: Any, method: str, config_cls: type) -> None:
  """Refuses a config that is not a ``config_cls`` (a dict, another method's config) in one line."""
  if isinstance(config, config_cls):
    return
  name = config_cls.__name__
  if isinstance(config, dict):
    raise FamrError(f"config for {method!r} must be a {name}, got a dict: pass {name}(**config), or the "
                    "fields as keywords (unlearn(..., lr=0.1))")
  raise FamrError(f"config for {method!r} must be a {name} (famr_jax.methods), got {type(config).__name__}")


def nearest_name(name: str, known: Any) -> str | None:
  """The known name closest to a mistyped one (``difflib``), or None when none is close.

  Example:
    >>> nearest_name("lrr", ["lr", "lam", "epochs"])
    'lr'
  """
  import difflib
  found = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
  return found[0] if found else None


def check_options(given: Any, known: Any, owner: str, spell: Callable[[str], str] = str) -> None:
  """Refuses options ``given`` that are not ``known`` in one line, suggesting the nearest known one.

  ``spell`` writes an option as the caller's user typed it (the CLI: ``--name``).

  Example:
    >>> check_options({"lrr": 0.1}, ["lr", "lam"], "method 'ga'")
    Traceback (most recent call last):
    famr_jax.errors.FamrError: method 'ga' has no option lrr; did you mean lr?
  """
  unknown = sorted(set(given) - set(known))
  if not unknown:
    return
  near = nearest_name(unknown[0], known)
  raise FamrError(f"{owner} has no option {', '.join(spell(u) for u in unknown)}"
                  + (f"; did you mean {spell(near)}?" if near else ""))


def check_model(apply_fn: Callable, params: Any, num_classes: int, probe: np.ndarray | None) -> None:
  """Finite params, and an ``apply_fn`` returning ``(batch, num_classes)`` logits on ``probe`` rows."""
  if not callable(apply_fn):
    raise FamrError(f"apply_fn must be a function apply_fn(params, x) -> logits, got {type(apply_fn).__name__}")
  check_params_finite(params)
  if probe is not None and len(probe):
    check_logits_fn(apply_fn, params, np.asarray(probe[:PROBE_ROWS], np.float32), num_classes)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def check_finite_params(params: Any, what: str, step: int | None = None) -> None:
  """Raises :class:`famr_jax.errors.Diverged` when a leaf of ``params`` holds NaN or inf (one host sync).

  Example:
    >>> check_finite_params({"w": jnp.array([1.0, jnp.inf])}, "train", 7)
    Traceback (most recent call last):
    famr_jax.errors.Diverged: train diverged by step 7 (its params hold NaN or inf); nothing was saved: try a smaller learning rate or fewer steps
  """
  if not bool(_all_finite(params)):
    raise Diverged(what, step, "its params hold NaN or inf")
