"""The method protocol: what a method is, what it serves and what it needs, declared on its spec.

A method is a :class:`MethodSpec`: a name, a typed config class (its fields
documented once, in the class's ``Attributes:``), a run function
``run(task, config) -> DescentResult`` over an :class:`UnlearnTask`, and its
capabilities as fields: the request kinds it serves (:data:`REQUEST_KINDS`),
what it needs (:data:`NEEDS`), whether it honours scale and resume settings
and whether a farm may vmap it. Nothing else keeps a table of a method's
facts by its name; :mod:`famr_jax.methods.resolve` reads them to resolve a
config and to refuse a request before any work.

Example:
  >>> from famr_jax.methods.baselines import GAConfig
  >>> spec = MethodSpec("my-ga", GAConfig, lambda task, config: None, "gradient ascent")
  >>> sorted(spec.serves), spec.uses_data
  (['classes', 'samples'], True)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax

from famr_jax.data.forget import ForgetSet
from famr_jax.errors import FamrError

Params = Any

# What a request asks: forget whole classes with the training data, forget samples (a random or given
# subset of the training set) with the data, or forget whole classes with no data at all.
REQUEST_KINDS = ("classes", "samples", "zero-shot")
# What a method may need beyond apply_fn and params:
#   data         the training data (its forget examples at least);
#   retain_data  retained training examples in its steps (a retain loss, an anchor on retained samples);
#   fisher       the checkpoint's stored diagonal Fisher (``famr-jax fisher``);
#   head_tail    a model it splits into a frozen head and a trainable tail where its config asks (train_from,
#                activation-space impressions): a famr-jax model or ModelParts; with apply_fn alone it tunes all;
#   batch_stats  a model whose batch statistics it trains (a BatchNorm model in train mode).
#   held_out     held-out examples the model never trained on (the data set's test split);
NEEDS = frozenset({"data", "retain_data", "fisher", "head_tail", "batch_stats", "held_out"})
WITH_DATA = frozenset({"classes", "samples"})


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
  input_shape: tuple[int, ...] | None = None   # (H, W, C) of one input, for data-free methods
  plan_only: bool = False  # a method that is one engine descent returns its DescentPlan instead of running


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One method: its run function over an :class:`UnlearnTask`, its typed config and its capabilities.

  Attributes:
    name: the registered name (``famr-plus``, ``ga``, ...).
    config_cls: the typed config class; its fields and their meaning are documented on it.
    run: ``run(task, config) -> DescentResult``; called only by :func:`famr_jax.methods.resolve.run_task`.
    description: one line for listings.
    serves: the request kinds (:data:`REQUEST_KINDS`) it serves.
    needs: what it needs (:data:`NEEDS`); ``data`` missing from it makes it data-free.
    scales: it honours ``scale`` (data parallel, FSDP, bf16, gradient accumulation).
    resumes: it honours ``resume`` (resumable checkpoints).
    vmappable: its run is one engine descent whose params are the result, so a farm of it is one
      vmapped program; ``None`` (a method registered by a user): the farm tries.
    ensemble: its result is a shard ensemble (``DescentResult.apply_fn``), not one model's params:
      ``unlearn`` and the CLI's ``unlearn`` refuse it, ``compare`` scores the ensemble.
    defaults: ``model name -> config`` for a method outside the library's defaults table
      (:mod:`famr_jax.methods.defaults`); ``sample_defaults`` likewise for sample requests.
  """
  name: str
  config_cls: type
  run: Callable[[UnlearnTask, Any], Any]
  description: str
  serves: frozenset = WITH_DATA
  needs: frozenset = frozenset({"data"})
  scales: bool = False
  resumes: bool = False
  vmappable: bool | None = None
  ensemble: bool = False
  defaults: Callable[[str], Any] | None = None
  sample_defaults: Callable[[str], Any] | None = None

  def __post_init__(self):
    serves, needs = frozenset(self.serves), frozenset(self.needs)
    if not serves or not serves <= set(REQUEST_KINDS):
      raise FamrError(f"method {self.name!r}: serves must be a non-empty subset of {', '.join(REQUEST_KINDS)}")
    if not needs <= NEEDS:
      raise FamrError(f"method {self.name!r}: needs must be a subset of {', '.join(sorted(NEEDS))}")
    if ("zero-shot" in serves) == ("data" in needs):
      raise FamrError(f"method {self.name!r}: a method serves zero-shot requests exactly when it needs no data")
    object.__setattr__(self, "serves", serves)
    object.__setattr__(self, "needs", needs)

  @property
  def uses_data(self) -> bool:
    """Whether the method reads the training data (``"data" in needs``)."""
    return "data" in self.needs


def check_one_model(spec: MethodSpec) -> None:
  """A one-line refusal where one model's params are needed and ``spec``'s method returns a shard ensemble.

  Example:
    >>> check_one_model(MethodSpec("shards", dict, lambda task, config: None, "an ensemble", ensemble=True))
    Traceback (most recent call last):
    ...
    famr_jax.errors.FamrError: method 'shards' returns a shard ensemble, not one model's params: run it in compare, or use famr_jax.methods.sisa (sisa_train, sisa_delete, sisa_apply_fn)
  """
  if spec.ensemble:
    raise FamrError(f"method {spec.name!r} returns a shard ensemble, not one model's params: run it in compare, "
                    "or use famr_jax.methods.sisa (sisa_train, sisa_delete, sisa_apply_fn)")


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
