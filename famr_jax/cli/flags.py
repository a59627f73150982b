"""Command-line flags generated from typed config dataclasses.

The dataclass is the one place a default lives: a flag's default is
"not given", and only flags the user gave override the config (which may
itself come from per-model defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Iterable

from famr_jax.errors import FamrError
from famr_jax.validation import check_field


def _unwrap_optional(tp):
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1:
      return args[0], True
  return tp, False


def _parser_for(tp, flag: str, name: str | None = None):
  """A string -> value converter for one field type (one-line errors).

  The value is then checked like the config field ``name`` (default: the
  flag's name) is (:func:`famr_jax.validation.check_field`): ``--lr inf`` or
  ``--seed 18446744073709551616`` fail while the flags are parsed.
  """
  convert = _converter_for(tp, flag)
  name = name or flag.lstrip("-").replace("-", "_")

  def parse(text):
    return check_field(flag, name, convert(text), tp)
  parse.__name__ = convert.__name__
  return parse


def _converter_for(tp, flag: str):
  tp, optional = _unwrap_optional(tp)
  origin = typing.get_origin(tp)
  if origin is typing.Literal:
    choices = typing.get_args(tp)

    def parse_choice(text):
      if text not in choices:
        raise FamrError(f"{flag} must be one of {', '.join(map(str, choices))}, got {text!r}")
      return text
    return parse_choice
  if origin is tuple:
    inner = typing.get_args(tp)[0]
    if set(typing.get_args(inner)) == {int, str}:   # ids or names (--forget-classes 3,Bag)
      def parse_ids_or_names(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        for t in items:
          try:
            float(t)
          except ValueError:
            continue
          if not t.lstrip("-").isdigit():   # 3.7, 1e3, nan: neither an id nor a name
            raise FamrError(f"{flag} takes comma-separated integer ids or names, got {t!r}")
        return tuple(int(t) if t.lstrip("-").isdigit() else t for t in items)
      return parse_ids_or_names

    def parse_tuple(text):
      items = [t.strip() for t in text.split(",") if t.strip()]
      try:
        return tuple(inner(t) for t in items)
      except ValueError:
        raise FamrError(f"{flag} takes comma-separated {inner.__name__} values, got {text!r}") from None
    return parse_tuple
  if tp in (int, float, str):
    def parse_scalar(text):
      if optional and text.lower() == "none":
        return None
      try:
        return tp(text)
      except ValueError:
        raise FamrError(f"{flag} takes {'an integer' if tp is int else 'a number'}, got {text!r}") from None
    return parse_scalar
  raise TypeError(f"unsupported config field type {tp!r} for {flag}")


def field_flags(cls: type, *, prefix: str = "", exclude: Iterable[str] = ()) -> list[tuple[str, str, Any]]:
  """``(flag, field_name, type)`` for every scalar field of a config dataclass."""
  hints = typing.get_type_hints(cls)
  out = []
  for f in dataclasses.fields(cls):
    if f.name in exclude or dataclasses.is_dataclass(hints[f.name]) or hints[f.name] is Any:
      continue
    out.append(("--" + (prefix + f.name).replace("_", "-"), f.name, hints[f.name]))
  return out


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "",
                     exclude: Iterable[str] = (), dest_prefix: str | None = None,
                     seen: set[str] | None = None) -> None:
  """Adds one flag per field of ``cls``; values land in ``args.<dest_prefix><field>``.

  ``seen`` lets several config classes share a flag (``--lr`` for every
  method): a flag already added is skipped.
  """
  dest_prefix = prefix.replace("-", "_") if dest_prefix is None else dest_prefix
  hints_doc = _field_docs(cls)
  for flag, name, tp in field_flags(cls, prefix=prefix, exclude=exclude):
    if seen is not None:
      if flag in seen:
        # A flag shared by several configs means what each config says: add this one's meaning
        # when it differs (e.g. --alpha: FAMR's forget-loss weight, SSD's selection weight).
        action = parser._option_string_actions.get(flag)
        doc = hints_doc.get(name)
        if action is not None and doc and action.help and doc not in action.help:
          action.help += f" [{cls.__name__}: {doc}]"
        continue
      seen.add(flag)
    dest = dest_prefix + name
    base, _ = _unwrap_optional(tp)
    if base is bool:
      parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                          default=argparse.SUPPRESS, help=hints_doc.get(name))
    else:
      parser.add_argument(flag, dest=dest, type=_Deferred(_parser_for(tp, flag, name)), default=argparse.SUPPRESS,
                          metavar=_metavar(tp), help=hints_doc.get(name))


def flag_type(tp, flag: str):
  """An argparse ``type=`` for values of type ``tp`` whose errors name ``flag`` (one line, exit 2)."""
  return _Deferred(_parser_for(tp, flag))


class _Deferred:
  """Wraps a converter so FamrError passes through argparse untouched."""

  def __init__(self, fn):
    self.fn = fn
    self.__name__ = getattr(fn, "__name__", "value")

  def __call__(self, text):
    try:
      return self.fn(text)
    except FamrError as e:
      raise argparse.ArgumentTypeError(str(e)) from None


def _metavar(tp) -> str:
  tp, _ = _unwrap_optional(tp)
  if typing.get_origin(tp) is typing.Literal:
    return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
  if typing.get_origin(tp) is tuple:
    return "A,B,..."
  return {int: "INT", float: "X", str: "STR"}.get(tp, "V")


def _field_docs(cls: type) -> dict[str, str]:
  """Field descriptions from the ``Attributes:`` sections of the class's docstring and its bases'."""
  docs: dict[str, str] = {}
  for klass in reversed(cls.__mro__):   # a subclass's own description wins
    docs.update(_own_field_docs(klass))
  return docs


def _own_field_docs(cls: type) -> dict[str, str]:
  docs, current, in_attrs = {}, None, False
  for line in (cls.__dict__.get("__doc__") or "").splitlines():
    stripped = line.strip()
    if stripped == "Attributes:":
      in_attrs = True
      continue
    if not in_attrs:
      continue
    if ":" in stripped and stripped.split(":")[0].isidentifier() and line.startswith("    ") and not line.startswith("      "):
      current, text = stripped.split(":", 1)
      docs[current] = text.strip()
    elif stripped and current:
      docs[current] += " " + stripped
    elif not stripped and docs:
      current = None
  return {k: v.replace("%", "%%") for k, v in docs.items()}


def given_values(args: argparse.Namespace, cls: type, *, dest_prefix: str = "",
                 exclude: Iterable[str] = ()) -> dict[str, Any]:
  """The fields of ``cls`` the user set on the command line."""
  names = {f.name for f in dataclasses.fields(cls)} - set(exclude)
  return {n: getattr(args, dest_prefix + n) for n in names if hasattr(args, dest_prefix + n)}


def build_config(cls: type, args: argparse.Namespace, *, base: Any = None, dest_prefix: str = "",
                 exclude: Iterable[str] = ()) -> Any:
  """``base`` (or the class defaults) with every flag the user gave applied."""
  values = given_values(args, cls, dest_prefix=dest_prefix, exclude=exclude)
  return dataclasses.replace(base, **values) if base is not None else cls(**values)
