"""The registry of unlearning methods: one explicit table, so the API, CLI and ``compare`` run any by name.

Each entry is a :class:`famr_jax.methods.protocol.MethodSpec`: a run function
``run(task, config) -> DescentResult``, its typed config class and its
capabilities (the requests it serves, what it needs); its defaults live in
:mod:`famr_jax.methods.defaults` and are resolved by
:mod:`famr_jax.methods.resolve`. The functions behind each entry (e.g.
:func:`famr_jax.methods.famr.famr_unlearn`) are the Python API; the registry
only adapts an :class:`UnlearnTask` to their arguments. Nothing registers
itself by being imported. To add a method, add one ``MethodSpec(...)`` line
to :func:`_builtin_methods` (or call :func:`register_method`).
"""

from __future__ import annotations

import dataclasses  # noqa: F401 -- register_method's example

from famr_jax.errors import FamrError
from famr_jax.engine.training import TrainConfig
from famr_jax.methods import baselines, calibrated, deep_unlearn, famr, langevin, scrub, sisa, ssd, variants, zero_shot
from famr_jax.methods.protocol import MethodSpec, UnlearnTask, with_overrides  # noqa: F401 -- re-exported

# Capabilities shared by several entries (MethodSpec fields).
CLASSES = frozenset({"classes"})
DATA_FREE = frozenset({"classes", "zero-shot"})
DATA, RETAIN = frozenset({"data"}), frozenset({"data", "retain_data"})
ENGINE = dict(scales=True, resumes=True, vmappable=True)   # one resumable engine descent


def _builtin_methods() -> tuple[MethodSpec, ...]:
  """The library's methods, in the order the CLI lists them."""
  def variant(name, text, **capabilities):
    return MethodSpec(name, variants.FAMRVariantConfig, variants.run_variant_task, text,
                      **{"needs": DATA, **ENGINE, **capabilities})

  def baseline(name, text, **capabilities):
    return MethodSpec(name, baselines.BASELINE_CONFIGS[name], baselines.baseline_task_runner(name), text,
                      **{"needs": RETAIN, **ENGINE, **capabilities})
  return (
      MethodSpec("famr", famr.FAMRConfig, famr.run_famr_task,
                 "FAMR (Algorithm 1): uniform-KL forget loss + L2 anchor, on the forget set", **ENGINE),
      variant("famr-retrain-target",
              "FAMR with the retrain-like target (original prediction minus forgotten classes)", serves=CLASSES),
      variant("famr-fisher", "FAMR with the diagonal-Fisher anchor (Fisher stored with the checkpoint)",
              needs=DATA | {"fisher"}, vmappable=False),
      variant("famr-curvature", "FAMR with the exact Gauss-Newton anchor of the retained loss (one HVP per step)",
              needs=RETAIN),
      variant("famr-function", "FAMR with a function-space anchor KL(p0 || p) on retained samples", needs=RETAIN),
      variant("famr-plus", "retrain-like target + function-space anchor (+ frozen head where tuned)",
              serves=CLASSES, needs=RETAIN | {"head_tail"}),
      MethodSpec("famr-calibrated", calibrated.CalibratedFAMRConfig, calibrated.run_calibrated_task,
                 "FAMR towards a held-out-calibrated target (a non-member's confidence) + L2 anchor",
                 needs=DATA | {"held_out"}, vmappable=False),
      MethodSpec("retrain", TrainConfig, baselines.run_retrain_task,
                 "the gold standard: the training recipe on the retained data, from a fresh init", needs=RETAIN,
                 **ENGINE),
      baseline("ft", "fine-tune on retained data (cross-entropy)"),
      baseline("ga", "gradient ascent on the forget set's cross-entropy", needs=DATA),
      baseline("neggrad+", "NegGrad+: w_r CE(retain) - w_f CE(forget)"),
      MethodSpec("neggrad+du", baselines.NegGradPlusConfig, baselines.baseline_task_runner("neggrad+"),
                 "NegGrad+ with Deep Unlearn's recipe (alpha 0.95, SGD momentum lr 0.01, 10 epochs)", needs=RETAIN,
                 **ENGINE),
      MethodSpec("msg", deep_unlearn.MSGConfig, deep_unlearn.run_msg_task,
                 "Masked Small Gradients (Deep Unlearn): re-init the smallest-gradient weights, fine-tune on retain",
                 needs=RETAIN, vmappable=False),
      MethodSpec("ct", deep_unlearn.RetainFinetuneConfig, deep_unlearn.run_ct_task,
                 "Convolution Transpose (Deep Unlearn): transpose conv kernels, fine-tune on retain", needs=RETAIN,
                 vmappable=False),
      MethodSpec("langevin", langevin.LangevinConfig, langevin.run_langevin_task,
                 "Langevin unlearning: projected noisy SGD on retain, (epsilon, delta) where its assumptions hold",
                 needs=RETAIN, vmappable=False),
      MethodSpec("sisa", sisa.SISAConfig, sisa.run_sisa_task,
                 "SISA: exact deletion; shards trained in isolation, only touched shards retrained (an ensemble)",
                 needs=RETAIN, vmappable=False, ensemble=True),
      baseline("rl", "random labels on the forget set + CE on retained data"),
      baseline("salun", "SalUn: weight-saliency mask from the forget gradient, then RL on the salient weights"),
      MethodSpec("scrub", scrub.SCRUBConfig, scrub.run_scrub_task,
                 "SCRUB: ascend the teacher-student KL on forget data, descend CE + KL on retained data",
                 needs=RETAIN, scales=True, vmappable=False),   # several descents: no resume, no vmap
      MethodSpec("ssd", ssd.SSDConfig, ssd.run_ssd_task,
                 "SSD: dampen the weights far more important (diagonal importance) to the forget set than to "
                 "the data", vmappable=False),
      MethodSpec("impressions", zero_shot.ZeroShotConfig, zero_shot.run_zero_shot_task,
                 "zero-shot class unlearning from class impressions (Algorithm 1), no data", serves=DATA_FREE,
                 needs=frozenset({"head_tail"}), vmappable=False),
      MethodSpec("famr-zeroshot", zero_shot.ZeroShotFAMRConfig, zero_shot.run_famr_zero_shot_task,
                 "zero-shot FAMR: uniform-KL + L2 anchor on forget-class impressions, no data", serves=DATA_FREE,
                 needs=frozenset({"head_tail"}), vmappable=False),
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
