"""The one resolver: (method, request, model, user options) -> the config a method runs, checked.

Every front door -- :func:`famr_jax.unlearn`, the CLI's ``unlearn``,
:func:`famr_jax.compare` and ``famr-jax compare``, the audit's shadow farms and
the experiments -- resolves a method's config here and runs it through
:func:`run_task`. This is the only place where

* the recommended method for a request is chosen when none is named
  (from :data:`famr_jax.methods.defaults.RECOMMENDED`);
* a default is filled (the method's defaults for the model and the request
  kind, :mod:`famr_jax.methods.defaults`);
* a step budget scales with the request (:func:`famr_jax.methods.defaults.scale_step_budget`);
* a capability is checked (the request kind, data, a stored Fisher, a model to
  split, scale and resume settings), before any work;
* a method's ``run`` is called and its result checked for divergence.

The rule for user options: an option equal to its resolved value changes
nothing. So ``lr=1e-4`` on a sample request whose default lr is 1e-4 leaves the
scaled step budget as it is, and ``epochs`` equal to the default's keeps a
default step budget; any other ``epochs`` (without ``steps``) means epochs.

Example:
  >>> resolve_config("famr", Request("samples", 27), "lenet5").steps   # 5 passes of one minibatch
  5
  >>> resolve_config("famr", Request("samples", 27), "lenet5", {"lr": 1e-4}).steps
  5
  >>> recommended_method("classes"), recommended_method("samples"), recommended_method("zero-shot")
  ('famr-plus', 'ga', 'impressions')
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from famr_jax.data.forget import ForgetSet
from famr_jax.engine.progress import method_label
from famr_jax.errors import FamrError
from famr_jax.methods.defaults import RECOMMENDED, RECOMMENDED_STATUS, default_overrides, scale_step_budget
from famr_jax.methods.protocol import REQUEST_KINDS, MethodSpec, UnlearnTask, with_overrides
from famr_jax.methods.registry import get_method, method_names
from famr_jax.theory.fisher import missing_fisher_message
from famr_jax.validation import check_config_class, check_finite_params, check_options


class Request(NamedTuple):
  """What a resolution needs to know of a forget request: its kind and, when known, its size.

  Attributes:
    kind: one of :data:`famr_jax.methods.protocol.REQUEST_KINDS`.
    size: forget examples in the training set (None: not known yet; no budget is scaled).
  """
  kind: str
  size: int | None = None

  @classmethod
  def of(cls, forget: ForgetSet, has_data: bool = True) -> "Request":
    """The request of a :class:`famr_jax.ForgetSet` (a class request without data is ``zero-shot``).

    Example:
      >>> from famr_jax.data.forget import forget_samples
      >>> Request.of(forget_samples([0, 4], 10, 2))
      Request(kind='samples', size=2)
    """
    kind = "zero-shot" if forget.kind == "classes" and not has_data else forget.kind
    return cls(kind, int(len(forget.indices)))


def recommended_method(kind: str, options: Iterable[str] = ()) -> str:
  """The method a request of ``kind`` runs when none is named.

  :data:`RECOMMENDED`, unless it has no field for an option given: then the
  first registered method that serves the request and has them all (style
  options, ``beta`` and ``style_layer``, select ``famr``).

  Example:
    >>> recommended_method("samples", ["beta", "style_layer"])
    'famr'
  """
  _check_kind(kind)
  options = set(options)
  first = RECOMMENDED[kind]
  for name in (first, *method_names()):
    spec = get_method(name)
    if kind in spec.serves and options <= _field_names(spec.config_cls):
      return name
  return first   # no method has them all: the recommended one names the options it lacks


def recommended_status(kind: str) -> str | None:
  """What the audit says of the method a request of ``kind`` runs when none is named (None: no claim).

  Example:
    >>> recommended_status("samples").startswith("no sample method is shown equivalent to retraining")
    True
    >>> recommended_status("classes") is None
    True
  """
  _check_kind(kind)
  return RECOMMENDED_STATUS[kind]


def resolve_method(method: str | MethodSpec | None, kind: str, options: Iterable[str] = ()) -> MethodSpec:
  """The spec of ``method`` (a name or a spec), or the recommended one for ``kind`` when None."""
  if isinstance(method, MethodSpec):
    return method
  return get_method(recommended_method(kind, options) if method is None else method)


def resolve_config(method: str | MethodSpec | None, request: Request, model_name: str = "",
                   overrides: Mapping[str, Any] | None = None, *, config: Any = None, data: bool = True,
                   model: bool = True, scale: Any = None, resume: Any = None, has_fisher: bool | None = None,
                   checkpoint: str | None = None) -> Any:
  """The config ``method`` runs for ``request`` on model ``model_name`` with the user's ``overrides``.

  Args:
    method: a registered name, a :class:`MethodSpec`, or None (the recommended one for the request).
    request: the request's kind and size (:class:`Request`; ``Request.of(forget)``).
    model_name: a famr-jax model name, for its tuned defaults ("" for the generic ones).
    overrides: config fields the user set; one equal to its resolved value changes nothing.
    config: a full config instead of the defaults (used as given: no budget scaled, no default filled).
    data: whether the training data is given (a class request without it is ``zero-shot``).
    model: whether a model that can be split (a famr-jax model or ModelParts) is given, not only
      ``apply_fn``; without one, activation-space impressions default to pixel space.
    scale: the run's ``ScaleConfig`` (None or its defaults: none asked).
    resume: the run's ``ResumeConfig`` (None or disabled: none asked).
    has_fisher: whether the checkpoint stores a Fisher (None: not known, not checked).
    checkpoint: the checkpoint's directory (named in a refusal).

  Returns:
    The validated config.

  Raises:
    FamrError: an unknown method, an option the method lacks, or a capability it lacks, in one line.

  Example:
    >>> resolve_config("ga", Request("samples", 600), "lenet5").steps, resolve_config("ga", Request("classes")).steps
    (5, None)
  """
  return resolve(method, request, model_name, overrides, config=config, data=data, model=model, scale=scale,
                 resume=resume, has_fisher=has_fisher, checkpoint=checkpoint)[1]


def resolve(method: str | MethodSpec | None, request: Request, model_name: str = "",
            overrides: Mapping[str, Any] | None = None, *, config: Any = None, data: bool = True, model: bool = True,
            scale: Any = None, resume: Any = None, has_fisher: bool | None = None,
            checkpoint: str | None = None, option_name: Callable[[str], str] = str) -> tuple[MethodSpec, Any]:
  """:func:`resolve_config`, also returning the method's spec: ``(spec, config)``.

  ``option_name`` spells an option in a refusal (the CLI: its flag).
  """
  _check_kind(request.kind)
  data = data and request.kind != "zero-shot"
  overrides = dict(overrides or {})
  spec = resolve_method(method, request.kind, overrides)
  check_options(overrides, _field_names(spec.config_cls), f"method {spec.name!r}", spell=option_name)
  check_capabilities(spec, request.kind, config, data=data)   # what the config does not change, first
  if config is None:
    config = _defaults(spec, model_name, request)
    if not model and getattr(config, "impression_space", None) == "activation":
      config = dataclasses.replace(config, impression_space="pixel")   # no layers to take activations at
  else:
    check_config_class(config, spec.name, spec.config_cls)
  changed = {k: v for k, v in overrides.items() if not _same(getattr(config, k), v)}
  if changed:
    config = with_overrides(config, changed)
  if hasattr(config, "validate"):
    config.validate()
  check_capabilities(spec, request.kind, config, data=data, model=model, scale=scale, resume=resume,
                     has_fisher=has_fisher, checkpoint=checkpoint)
  return spec, config


def _defaults(spec: MethodSpec, model_name: str, request: Request) -> Any:
  """The method's defaults for the model and the request kind, its budget scaled to the request's size."""
  table_kind = "samples" if request.kind == "samples" else "classes"
  if spec.defaults is not None:
    own = spec.sample_defaults if table_kind == "samples" and spec.sample_defaults is not None else spec.defaults
    config = own(model_name)
  else:
    config = spec.config_cls(**default_overrides(spec.name, model_name, table_kind))
  if request.kind == "samples" and request.size is not None:
    config = scale_step_budget(config, int(request.size))
  return config


def class_only_reason(spec: MethodSpec, config: Any) -> str | None:
  """Why ``spec`` with ``config`` cannot forget arbitrary samples (None when it can).

  Example:
    >>> from famr_jax.methods.variants import FAMRVariantConfig
    >>> class_only_reason(get_method("famr-function"), FAMRVariantConfig(target="retrain"))
    "its target='retrain' removes the forgotten classes"
  """
  if not spec.uses_data:
    return "it is a data-free class method"
  if getattr(config, "target", None) == "retrain":
    return "its target='retrain' removes the forgotten classes"
  if "samples" not in spec.serves:
    return "it forgets whole classes only"
  return None


def needs_fisher(spec: MethodSpec, config: Any) -> bool:
  """Whether the run reads the checkpoint's stored Fisher (the spec's need, or a Fisher anchor)."""
  return "fisher" in spec.needs or getattr(config, "anchor", None) == "fisher"


def check_capabilities(spec: MethodSpec, kind: str, config: Any, *, data: bool = True, model: bool = True,
                       scale: Any = None, resume: Any = None, has_fisher: bool | None = None,
                       checkpoint: str | None = None) -> None:
  """One-line refusals, before any work, of a request ``spec`` with ``config`` cannot serve.

  Example:
    >>> check_capabilities(get_method("impressions"), "samples", None)
    Traceback (most recent call last):
    famr_jax.errors.FamrError: method 'impressions' cannot forget samples: it is a data-free class method
  """
  if spec.uses_data and not data:
    raise FamrError(f"method {spec.name!r} reads the training data: pass data=(x_train, y_train)")
  if kind == "samples":
    why = class_only_reason(spec, config)
    if why:
      raise FamrError(f"method {spec.name!r} cannot forget samples: {why}")
  _check_serves(spec, kind)
  if scale is not None and not getattr(scale, "is_default", False) and not spec.scales:
    raise FamrError(f"method {spec.name!r} runs on one device in float32: it takes no scale settings")
  if resume is not None and getattr(resume, "enabled", True) and not spec.resumes:
    what = ("runs on one device in float32 without resumable checkpoints" if not spec.scales
            else "runs several descents and cannot resume")
    raise FamrError(f"method {spec.name!r} {what}: it takes no resume settings")
  if has_fisher is False and needs_fisher(spec, config):
    raise FamrError(f"method {spec.name!r}: {missing_fisher_message(checkpoint)}")
  if not model and getattr(config, "train_from", None) is not None:
    raise FamrError(f"method {spec.name!r} with train_from={config.train_from!r} splits the model: pass model= "
                    "(a famr-jax model or model parts)")


def run_task(spec: MethodSpec, task: UnlearnTask, config: Any) -> Any:
  """Runs a resolved method on a task: the one call of a method's ``run``, checked for divergence.

  Raises:
    famr_jax.errors.Diverged: the result's params hold NaN or inf (the engine checks its losses itself;
      this covers methods outside it, such as SSD and zero-shot).
  """
  with method_label(spec.name):   # every bar names the method, not its family
    result = spec.run(task, config)
  if task.plan_only:   # a DescentPlan, not run yet: the farm that runs it checks its results
    return result
  check_finite_params(result.params, spec.name)
  return result


def _check_kind(kind: str) -> None:
  if kind not in REQUEST_KINDS:
    raise FamrError(f"request kind must be one of {', '.join(REQUEST_KINDS)}, got {kind!r}")


def _check_serves(spec: MethodSpec, kind: str) -> None:
  if kind in spec.serves:
    return
  if kind == "zero-shot":
    raise FamrError(f"method {spec.name!r} reads the training data: pass data=(x_train, y_train)")
  if kind == "samples":
    raise FamrError(f"method {spec.name!r} cannot forget samples: it forgets whole classes only")
  raise FamrError(f"method {spec.name!r} does not serve {kind} requests (it serves {', '.join(sorted(spec.serves))})")


def _field_names(cls: type) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)}


def _same(a: Any, b: Any) -> bool:
  """Whether a user's value equals the resolved one (1e-4 == 0.0001; a bool never equals an int)."""
  if isinstance(a, bool) != isinstance(b, bool):
    return False
  try:
    return bool(a == b)
  except Exception:   # noqa: BLE001 - arrays and other values without a truth value differ
    return False
