"""The registry of unlearning methods, so the CLI and ``compare`` can run any by name.

A method is a function ``run(task, config) -> DescentResult`` plus its
typed config class and per-model defaults. The functions behind each entry
(e.g. :func:`famr_jax.methods.famr.famr_unlearn`) are the Python API; the
registry only adapts an :class:`UnlearnTask` to their arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax

from famr_jax.errors import FamrError
from famr_jax.data.forget import ForgetSet
from famr_jax.engine.descent import DescentResult

Params = Any


class UnlearnTask(NamedTuple):
  """Everything a method may use. Data-free methods must not read ``data``."""
  apply_fn: Callable[[Params, jax.Array], jax.Array]
  params: Params
  model: Any               # the Flax module (for layer splits); None for plain functions
  data: Any                # a famr_jax.data.datasets.Dataset
  forget: ForgetSet
  key: jax.Array
  show_progress: bool = True
  scale: Any = None        # a famr_jax.engine.parallel.ScaleConfig for methods that use the minibatch engine
  resume: Any = None       # a famr_jax.engine.resume.ResumeConfig (resumable checkpoints), likewise
  checkpoint: str | None = None   # the original checkpoint's directory (stored extras, e.g. a Fisher)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One registered method."""
  name: str
  config_cls: type
  run: Callable[[UnlearnTask, Any], DescentResult]
  defaults: Callable[[str], Any]   # model name -> default config
  description: str
  uses_data: bool = True
  # model name -> default config for sample forgetting (a random subset of the
  # training set); None: the same as ``defaults``. Sample and class requests
  # want different schedules: the retrained model still classifies most
  # forgotten samples correctly, so a sample request calls for a small,
  # size-independent step budget where a class request runs to convergence.
  sample_defaults: Callable[[str], Any] | None = None
  # Whether the method honours UnlearnTask.scale and .resume (data parallel, FSDP, bf16, gradient
  # accumulation, resumable checkpoints); a run that asks for them of another method is refused.
  scales: bool = False

  def default_config(self, model_name: str, forget_kind: str = "classes") -> Any:
    """The default config for a model and a forget request's kind (``classes`` or ``samples``)."""
    if forget_kind == "samples" and self.sample_defaults is not None:
      return self.sample_defaults(model_name)
    return self.defaults(model_name)


_METHODS: dict[str, MethodSpec] = {}


def with_overrides(config: Any, overrides: dict[str, Any]) -> Any:
  """``config`` with ``overrides`` applied; an explicit ``epochs`` drops a default step budget.

  A default config may schedule by a step budget (``steps``, e.g. the sample-
  forgetting defaults); a user who asks for ``epochs`` and no ``steps`` means
  epochs, so the budget is cleared rather than silently taking precedence.

  Example:
    >>> from famr_jax.methods.baselines import GAConfig
    >>> with_overrides(GAConfig(steps=5), {"epochs": 2}).steps is None
    True
  """
  overrides = dict(overrides)
  if "epochs" in overrides and "steps" not in overrides and getattr(config, "steps", None) is not None:
    overrides["steps"] = None
  return dataclasses.replace(config, **overrides)


def register_method(spec: MethodSpec) -> MethodSpec:
  """Adds a method to the registry (a later registration under the same name replaces it)."""
  _METHODS[spec.name] = spec
  return spec


def method_names() -> tuple[str, ...]:
  """Names of every registered method."""
  _load_builtin_methods()
  return tuple(sorted(_METHODS))


def get_method(name: str) -> MethodSpec:
  """The method registered as ``name``, or a one-line :class:`FamrError` listing the others."""
  _load_builtin_methods()
  if name not in _METHODS:
    raise FamrError(f"unknown method {name!r}; valid methods: {', '.join(sorted(_METHODS))}")
  return _METHODS[name]


def _load_builtin_methods() -> None:
  # Importing the modules registers their methods; done lazily to keep
  # `import famr_jax.methods.registry` free of import cycles.
  import famr_jax.methods.famr  # noqa: F401
  import famr_jax.methods.zero_shot  # noqa: F401
  import famr_jax.methods.variants  # noqa: F401
  import famr_jax.methods.baselines  # noqa: F401
  import famr_jax.methods.scrub  # noqa: F401
  import famr_jax.methods.ssd  # noqa: F401
