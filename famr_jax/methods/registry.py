"""The registry of unlearning methods: one explicit table, so the API, CLI and ``compare`` run any by name.

A method is a function ``run(task, config) -> DescentResult`` plus its
typed config class; its defaults live in :mod:`famr_jax.methods.defaults`.
The functions behind each entry (e.g. :func:`famr_jax.methods.famr.famr_unlearn`)
are the Python API; the registry only adapts an :class:`UnlearnTask` to
their arguments. Nothing registers itself by being imported.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax

from famr_jax.errors import FamrError
from famr_jax.data.forget import ForgetSet
from famr_jax.engine.descent import DescentResult
from famr_jax.engine.training import TrainConfig
from famr_jax.methods import baselines, calibrated, deep_unlearn, famr, langevin, scrub, sisa, ssd, variants, zero_shot
from famr_jax.methods.defaults import default_overrides, scale_step_budget

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
  input_shape: tuple[int, ...] | None = None   # (H, W, C) of one input, for data-free methods


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One registered method: a run function over an :class:`UnlearnTask` and its typed config.

  Built-in methods take their defaults from :mod:`famr_jax.methods.defaults`; a
  method registered by a user may give ``defaults`` / ``sample_defaults``
  (``model name -> config``) instead.
  """
  name: str
  config_cls: type
  run: Callable[[UnlearnTask, Any], DescentResult]
  description: str
  uses_data: bool = True
  # Whether the method honours UnlearnTask.scale and .resume (FSDP, bf16 and resumable checkpoints in
  # the CLI's runs); a run that asks for them of another method is refused.
  scales: bool = False
  defaults: Callable[[str], Any] | None = None
  sample_defaults: Callable[[str], Any] | None = None

  def default_config(self, model_name: str = "", forget_kind: str = "classes", num_forget: int | None = None) -> Any:
    """The default config for a model and a forget request's kind (``classes`` or ``samples``).

    With ``num_forget`` (the request's size), a sample request's step budget is
    scaled to it (:func:`famr_jax.methods.defaults.scale_step_budget`).

    Example:
      >>> get_method("famr-plus").default_config("lenet5").train_from
      'fc1'
      >>> get_method("famr").default_config("lenet5", "samples", num_forget=5).steps
      5
    """
    if self.defaults is not None:
      if forget_kind == "samples" and self.sample_defaults is not None:
        config = self.sample_defaults(model_name)
      else:
        return self.defaults(model_name)
    else:
      config = self.config_cls(**default_overrides(self.name, model_name, forget_kind))
    if forget_kind == "samples" and num_forget is not None:
      config = scale_step_budget(config, num_forget)
    return config


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


def _builtin_methods() -> tuple[MethodSpec, ...]:
  """The library's methods, in the order the CLI lists them."""
  variant = lambda name, text: MethodSpec(name, variants.FAMRVariantConfig, variants.run_variant_task, text,
                                        scales=True)
  baseline = lambda name, text: MethodSpec(name, baselines.BASELINE_CONFIGS[name],
                                           baselines.baseline_task_runner(name), text, scales=True)
  return (
      MethodSpec("famr", famr.FAMRConfig, famr.run_famr_task,
                 "FAMR (Algorithm 1): uniform-KL forget loss + L2 anchor, on the forget set", scales=True),
      variant("famr-retrain-target",
              "FAMR with the retrain-like target (original prediction minus forgotten classes)"),
      variant("famr-fisher", "FAMR with the diagonal-Fisher anchor (Fisher stored with the checkpoint)"),
      variant("famr-curvature", "FAMR with the exact Gauss-Newton anchor of the retained loss (one HVP per step)"),
      variant("famr-function", "FAMR with a function-space anchor KL(p0 || p) on retained samples"),
      variant("famr-plus", "retrain-like target + function-space anchor (+ frozen head where tuned)"),
      MethodSpec("famr-calibrated", calibrated.CalibratedFAMRConfig, calibrated.run_calibrated_task,
                 "FAMR towards a held-out-calibrated target (a non-member's confidence) + L2 anchor"),
      MethodSpec("retrain", TrainConfig, baselines.run_retrain_task,
                 "the gold standard: the training recipe on the retained data, from a fresh init", scales=True),
      baseline("ft", "fine-tune on retained data (cross-entropy)"),
      baseline("ga", "gradient ascent on the forget set's cross-entropy"),
      baseline("neggrad+", "NegGrad+: w_r CE(retain) - w_f CE(forget)"),
      MethodSpec("neggrad+du", baselines.NegGradPlusConfig, baselines.baseline_task_runner("neggrad+"),
                 "NegGrad+ with Deep Unlearn's recipe (alpha 0.95, SGD momentum lr 0.01, 10 epochs)", scales=True),
      MethodSpec("msg", deep_unlearn.MSGConfig, deep_unlearn.run_msg_task,
                 "Masked Small Gradients (Deep Unlearn): re-init the smallest-gradient weights, fine-tune on retain"),
      MethodSpec("ct", deep_unlearn.RetainFinetuneConfig, deep_unlearn.run_ct_task,
                 "Convolution Transpose (Deep Unlearn): transpose conv kernels, fine-tune on retain"),
      MethodSpec("langevin", langevin.LangevinConfig, langevin.run_langevin_task,
                 "Langevin unlearning: projected noisy SGD on retain, (epsilon, delta) where its assumptions hold"),
      MethodSpec("sisa", sisa.SISAConfig, sisa.run_sisa_task,
                 "SISA: exact deletion; shards trained in isolation, only touched shards retrained (an ensemble)"),
      baseline("rl", "random labels on the forget set + CE on retained data"),
      baseline("salun", "SalUn: weight-saliency mask from the forget gradient, then RL on the salient weights"),
      MethodSpec("scrub", scrub.SCRUBConfig, scrub.run_scrub_task,
                 "SCRUB: ascend the teacher-student KL on forget data, descend CE + KL on retained data",
                 scales=True),
      MethodSpec("ssd", ssd.SSDConfig, ssd.run_ssd_task,
                 "SSD: dampen the weights far more important (diagonal importance) to the forget set than to "
                 "the data"),
      MethodSpec("impressions", zero_shot.ZeroShotConfig, zero_shot.run_zero_shot_task,
                 "zero-shot class unlearning from class impressions (Algorithm 1), no data", uses_data=False),
      MethodSpec("famr-zeroshot", zero_shot.ZeroShotFAMRConfig, zero_shot.run_famr_zero_shot_task,
                 "zero-shot FAMR: uniform-KL + L2 anchor on forget-class impressions, no data", uses_data=False),
  )


# The registry: the built-in table, then whatever a user registers.
_METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in _builtin_methods()}


def register_method(spec: MethodSpec) -> MethodSpec:
  """Adds a method to the registry (a later registration under the same name replaces it).

  Example:
    >>> spec = get_method("ga")
    >>> register_method(dataclasses.replace(spec, name="my-ga")).name in method_names()
    True
  """
  _METHODS[spec.name] = spec
  return spec


def method_names() -> tuple[str, ...]:
  """Names of every registered method, in table order.

  Example:
    >>> method_names()[:2]
    ('famr', 'famr-retrain-target')
  """
  return tuple(_METHODS)


def get_method(name: str) -> MethodSpec:
  """The method registered as ``name``, or a one-line :class:`FamrError` listing the others."""
  if name not in _METHODS:
    raise FamrError(f"unknown method {name!r}; valid methods: {', '.join(_METHODS)}")
  return _METHODS[name]
