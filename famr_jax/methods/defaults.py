"""Every method's default settings, per model and per request, in one table.

A method's default config for a model and a request kind is its config
class's field defaults, overridden by (in order) :data:`CLASS_DEFAULTS`,
:data:`MODEL_DEFAULTS` for that model, and, for sample requests (a random or
given subset of the training set), :data:`SAMPLE_DEFAULTS`. Class and sample
requests want different schedules: the retrained model still classifies most
forgotten samples correctly, so a sample request calls for a small step
budget (cut to :data:`SAMPLE_BUDGET_EPOCHS` passes over a smaller request) where
a class request runs to convergence. The tables are read by one resolver,
:mod:`famr_jax.methods.resolve`, which also picks :data:`RECOMMENDED`.

Where each number comes from (tables and commands in ``docs/results.md``):
everything was tuned on digits / LeNet5 with ``experiments/tune_defaults.py``
unless its comment says otherwise, then checked on Fashion-MNIST.
"""

from __future__ import annotations

from typing import Any, Mapping

from famr_jax.errors import FamrError
from famr_jax.methods.objective import PRESETS

REQUEST_KINDS = ("classes", "samples")
_VITS = ("vit_nano", "vit_micro", "vit_ti", "vit_s", "vit_b", "vit_l")

# The FAMR variants' shared schedule, tuned on digits.
_VARIANT = dict(epochs=5, lr=0.01, lam=0.1, optimizer="sgd")
# Sample forgetting: step budgets (the same number of steps on a forget set of any size, where epochs
# would take 40x more on Fashion-MNIST's 6,000 images), Adam where it tuned as well as momentum: its
# first steps move each weight by about lr whatever the gradient's scale.
_ADAM_BUDGET = dict(steps=25, lr=1e-4, optimizer="adam")

# The FAMR methods: their objective's terms are the presets of famr_jax.methods.objective.PRESETS.
CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "famr": dict(PRESETS["famr"]),
    "famr-retrain-target": dict(_VARIANT, **PRESETS["famr-retrain-target"]),
    "famr-fisher": dict(_VARIANT, **PRESETS["famr-fisher"]),
    "famr-curvature": dict(_VARIANT, **PRESETS["famr-curvature"], lr=1e-3, optimizer="adam"),
    "famr-function": dict(_VARIANT, **PRESETS["famr-function"]),
    "famr-plus": dict(_VARIANT, **PRESETS["famr-plus"]),
    # FAMR's objective and anchor, its target calibrated on held-out data (methods/calibrated.py).
    "famr-calibrated": {},
    "retrain": {},
    "ft": dict(epochs=5, lr=0.03),
    "ga": dict(epochs=1, lr=0.01),
    "neggrad+": dict(epochs=5, lr=1e-3),
    # Deep Unlearn's NegGrad+ (Cadet et al. 2024): alpha 0.95 (w_r = alpha, w_f = 1 - alpha), SGD momentum 0.9,
    # lr 0.01, 10 epochs; each step there pairs 256 retained with 256 forget samples over a pass of the retained
    # set; here 32 forget samples with 8 retained each, so an epoch sees about the retained set on a 10% request.
    "neggrad+du": dict(w_r=0.95, w_f=0.05, lr=0.01, optimizer="momentum", epochs=10, batch_size=32, retain_ratio=8),
    # Deep Unlearn's MSG and CT recipes are their config classes' defaults.
    "msg": {},
    "ct": {},
    # Langevin unlearning: its config's defaults; lr 0.05 is under 2 / L = 0.166 for digits' logistic model
    # (L = 12.06 by langevin.smoothness_bound). No radius by default (projecting shrinks a larger model): set one
    # to certify.
    "langevin": {},
    # SISA: 5 shards, each trained with the training recipe's defaults (TrainConfig).
    "sisa": {},
    "rl": dict(epochs=5, lr=3e-4),
    "salun": dict(epochs=5, lr=1e-3, retain_ratio=4),
    # The authors' losses; a min phase 8x the max phase's steps repairs what the ascent breaks (their
    # retain_ratio of 1 lost 40 retain points on digits). A step budget, so the unbounded ascent takes
    # 5 steps a round on a forget set of any size (Fashion-MNIST's class 3 collapsed with passes).
    "scrub": dict(lr=2e-4, retain_ratio=8, steps=5),
    # The paper's alpha 10 with minibatch importances forgot 8.7-76% of digits' class 3 depending on the
    # batch size; per-example (Fisher) importances with alpha 1, lam 0.1 matched the retrained model.
    "ssd": dict(importance="fisher", selection_weight=1.0, dampening=0.1),
    "impressions": {},
    "famr-zeroshot": dict(PRESETS["famr-zeroshot"]),
}

MODEL_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    # The paper's FAMR: lr 0.1, lambda 0.1, 10 epochs (the config's defaults) is the cheapest setting that
    # forgets on digits' MLP. LeNet5 forget sets are large (188 steps an epoch on Fashion-MNIST), so a
    # smaller step forgets within 3 epochs. ViTs: lr 0.1 wrecks them; the paper's setting forgets vit_nano.
    "famr": {"lenet5": dict(lr=1e-3, lam=0.1, epochs=3), "karpathynet": dict(lr=1e-2, lam=0.01, epochs=10),
             **{vit: dict(lr=1e-4, lam=0.1, epochs=10) for vit in _VITS}},
    # famr-plus trains the dense tail only (the convolutional head is frozen and run once), tuned on
    # LeNet5 / digits; KarpathyNet's entry is the analogous split (its one dense stage).
    "famr-plus": {"lenet5": dict(train_from="fc1"), "karpathynet": dict(train_from="fc")},
}

SAMPLE_DEFAULTS: dict[str, dict[str, Any]] = {
    "famr": _ADAM_BUDGET,
    "famr-fisher": _ADAM_BUDGET,
    "famr-curvature": dict(steps=10),
    "famr-function": _ADAM_BUDGET,
    "famr-calibrated": _ADAM_BUDGET,
    "ft": dict(steps=5, lr=1e-3, optimizer="adam"),
    "ga": dict(steps=5, lr=1e-4, optimizer="adam"),
    "neggrad+": dict(steps=25, lr=1e-3),
    "rl": dict(steps=5, lr=1e-4, optimizer="adam"),
    "salun": dict(steps=5, lr=1e-4, optimizer="adam", retain_ratio=4),
    # A random 10% is no more important to any weight than the data as a whole, so a low alpha dampens
    # weights the retained data need.
    "ssd": dict(selection_weight=5.0, dampening=1.0),
}

# Sample budgets scale with the forget set: the budgets above were tuned on digits' random 10% (135 samples,
# 5 minibatches of 32 an epoch), about 5 passes in 25 steps. A smaller request gets the same 5 passes, not 25 steps
# on a handful of samples (which cost LeNet5 12 points of retain accuracy on 5 digits); a larger one keeps the cap.
SAMPLE_BUDGET_EPOCHS = 5


def scale_step_budget(config: Any, num_forget: int) -> Any:
  """``config`` with its step budget cut to :data:`SAMPLE_BUDGET_EPOCHS` passes over ``num_forget`` samples.

  Configs without a budget (or a batch size) are returned unchanged; the budget never grows.

  Example:
    >>> from famr_jax.methods.famr import FAMRConfig
    >>> scale_step_budget(FAMRConfig(steps=25, batch_size=32), 5).steps, scale_step_budget(FAMRConfig(steps=25), 600).steps
    (5, 25)
  """
  import dataclasses
  import math
  steps, batch = getattr(config, "steps", None), getattr(config, "batch_size", None)
  if steps is None or not batch or num_forget <= 0:
    return config
  return dataclasses.replace(config, steps=max(1, min(int(steps), SAMPLE_BUDGET_EPOCHS * math.ceil(num_forget / batch))))


# The method a request gets when it names none: the best measured per request kind (docs/results.md:
# famr-plus lands 0.2 points from the retrained LeNet5 on a Fashion-MNIST class; the paper's FAMR 14.5).
# Samples: chosen by the audit (issue 14: U-LiRA nearest chance at a retain accuracy within the retrained
# farm's spread). On digits' random 10% ga was the only method less exposed than the untouched model
# (U-LiRA AUC 0.571 vs 0.586; famr 0.696: pushing forget samples to uniform makes them stand out).
# Zero-shot (a class request with no data): class impressions, the authors' Algorithm 1.
# Read through famr_jax.methods.resolve.recommended_method, the one place a method is chosen.
RECOMMENDED: dict[str, str] = {"classes": "famr-plus", "samples": "ga", "zero-shot": "impressions"}

# What the audit says of a recommended method, said whenever it runs because no method was named (the
# honest default: where no method is shown equivalent to retraining, the run says so). None: no claim.
RECOMMENDED_STATUS: dict[str, str | None] = {
    "classes": None, "zero-shot": None,
    "samples": ("no sample method is shown equivalent to retraining by the audit (docs/results.md: digits MLP, "
                "random 10%, 64 shadow models per group, 3 farm seeds); the default ga is as exposed as the "
                "untouched model; for an exact deletion use method 'retrain'"),
}


def default_overrides(method: str, model_name: str = "", kind: str = "classes") -> Mapping[str, Any]:
  """The table's settings for ``method`` on model ``model_name`` and a request of ``kind``.

  Example:
    >>> default_overrides("famr", "lenet5")["lr"], default_overrides("famr", "lenet5", "samples")["lr"]
    (0.001, 0.0001)
  """
  if method not in CLASS_DEFAULTS:
    raise FamrError(f"no defaults for method {method!r}")
  if kind not in REQUEST_KINDS:
    raise FamrError(f"request kind must be one of {', '.join(REQUEST_KINDS)}, got {kind!r}")
  out = {**CLASS_DEFAULTS[method], **MODEL_DEFAULTS.get(method, {}).get(model_name, {})}
  if kind == "samples":
    out.update(SAMPLE_DEFAULTS.get(method, {}))
  return out
