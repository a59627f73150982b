"""Every named FAMR method on one tiny problem (digits 0-2, a 16-unit MLP), for tests/test_famr_presets.py.

``python tests/famr_cases.py`` prints each case's summary; the values hard-coded in
test_famr_presets.py were printed by the code before the FAMR objective was written once
(commit 37d86c0), so the test compares the refactored presets with an independent record.
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("FAMR_JAX_NO_PROGRESS", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

SCHEDULE = dict(epochs=2, batch_size=16)
SMALL_IMPRESSIONS = dict(impressions_per_class=6, impression_steps=40)
# Config fields renamed since the recorded values (new name -> old name).
OLD_NAMES: dict[str, str] = {}


class Problem:
  """Digits classes 0, 1, 2; a 16-unit MLP trained 8 epochs; forget class 1."""

  def __init__(self):
    from famr_jax import models
    from famr_jax.data.datasets import load_dataset
    from famr_jax.data.forget import forget_classes, forget_samples
    from famr_jax.engine.training import TrainConfig, train_classifier

    self.data = load_dataset("digits", classes=[0, 1, 2])
    self.model = models.create_model("mlp", 3, self.data.image_shape, hidden=(16,))
    self.apply_fn = models.make_apply_fn(self.model)
    init = models.init_params(self.model, jax.random.key(0), self.data.image_shape)
    self.params = train_classifier(self.apply_fn, init, self.data.x_train, self.data.y_train,
                                   TrainConfig(epochs=8, batch_size=32, lr=1e-2), jax.random.key(1),
                                   show_progress=False).params
    n = len(self.data.y_train)
    self.classes = forget_classes(self.data.y_train, [1], 3)
    self.samples = forget_samples(np.arange(0, n, 7), n, 3)

  def task(self, forget):
    from famr_jax.methods.registry import UnlearnTask
    return UnlearnTask(self.apply_fn, self.params, self.model, self.data, forget, jax.random.key(3),
                       show_progress=False)


def _variant(name, kind="classes", **changes):
  def run(pb):
    from famr_jax.methods import variants
    base = (variants.variant_defaults(name, "mlp") if kind == "classes"
            else variants.variant_sample_defaults(name, "mlp"))
    config = dataclasses.replace(base, **{**SCHEDULE, **changes})
    return variants.run_variant_task(pb.task(pb.classes if kind == "classes" else pb.samples), config)
  return run


def _famr(kind="classes", **changes):
  def run(pb):
    from famr_jax.methods import famr
    base = famr.famr_defaults("mlp") if kind == "classes" else famr.famr_sample_defaults("mlp")
    config = dataclasses.replace(base, **{**SCHEDULE, **changes})
    return famr.run_famr_task(pb.task(pb.classes if kind == "classes" else pb.samples), config)
  return run


def _fisher(pb):
  from famr_jax.methods import variants
  from famr_jax.theory.fisher import diagonal_fisher
  fisher = diagonal_fisher(pb.apply_fn, pb.params, pb.data.x_train, pb.data.y_train)
  config = dataclasses.replace(variants.variant_defaults("famr-fisher", "mlp"), **SCHEDULE)
  idx = pb.classes.indices
  return variants.famr_variant_unlearn(pb.apply_fn, pb.params, pb.data.x_train[idx], config, jax.random.key(3),
                                       y_forget=pb.data.y_train[idx], forget_classes=(1,), num_classes=3,
                                       fisher=fisher, show_progress=False)


def _style(gram_target, kind="classes"):
  def run(pb):
    from famr_jax.methods import style
    config = style.StyleFAMRConfig(**SCHEDULE, lr=0.01, beta=0.01, style_layer="fc1", gram_target=gram_target)
    return style.run_style_task(pb.task(pb.classes if kind == "classes" else pb.samples), config)
  return run


def _zeroshot(**changes):
  def run(pb):
    from famr_jax.methods import zero_shot
    config = dataclasses.replace(zero_shot.famr_zero_shot_defaults("mlp"), epochs=3, **SMALL_IMPRESSIONS,
                                 **changes)
    return zero_shot.run_famr_zero_shot_task(pb.task(pb.classes), config)
  return run


CASES = {
    "famr": _famr(),
    "famr/samples": _famr("samples"),
    "famr/style": _famr(lr=0.01, beta=0.01, style_layer="fc1"),
    "famr-retrain-target": _variant("famr-retrain-target"),
    "famr-fisher": _fisher,
    "famr-curvature": _variant("famr-curvature"),
    "famr-curvature/hessian": _variant("famr-curvature", anchor="hessian"),
    "famr-function": _variant("famr-function"),
    "famr-function/samples": _variant("famr-function", "samples"),
    "famr-function/impressions": _variant("famr-function", function_data="impressions", **SMALL_IMPRESSIONS),
    "famr-plus": _variant("famr-plus"),
    "famr-plus/head-frozen": _variant("famr-plus", train_from="head"),
    "style/retained-mean": _style("retained-mean"),
    "style/class-mean/samples": _style("class-mean", "samples"),
    "famr-zeroshot": _zeroshot(),
    "famr-zeroshot/no-retain": _zeroshot(retain_weight=0.0, optimizer="sgd", lr=0.1),
}


def summarize(pb: Problem, result) -> list[float]:
  """``[final loss, sum of params, sum of squared params, a fixed projection, mean forget logit]``."""
  leaves = [np.asarray(a, np.float64) for a in jax.tree.leaves(result.params)]
  flat = np.concatenate([a.ravel() for a in leaves])
  proj = np.random.default_rng(0).normal(size=flat.size)
  logits = np.asarray(pb.apply_fn(result.params, pb.data.x_train[pb.classes.indices[:20]]), np.float64)
  return [float(result.history[-1]["loss"]), float(flat.sum()), float(np.square(flat).sum()),
          float(proj @ flat), float(logits[:, 1].mean())]


if __name__ == "__main__":
  jax.config.update("jax_default_matmul_precision", "highest")
  problem = Problem()
  for name, case in CASES.items():
    values = summarize(problem, case(problem))
    print(f"    {name!r}: [{', '.join(repr(round(v, 7)) for v in values)}],", flush=True)


def default_configs() -> dict:
  """``{method: {model/kind: the resolved default config as a dict}}`` for every named FAMR method.

  Only the request kinds a method serves: the resolver refuses the others (a sample request to a
  class-only method).
  """
  from famr_jax.methods.registry import get_method
  from famr_jax.methods.resolve import Request, resolve_config
  out = {}
  for name in ("famr", "famr-retrain-target", "famr-fisher", "famr-curvature", "famr-function", "famr-plus",
               "famr-zeroshot"):
    spec = get_method(name)
    out[name] = {f"{model}/{kind}": dataclasses.asdict(resolve_config(name, Request(kind), model))
                 for model in ("mlp", "lenet5") for kind in ("classes", "samples") if kind in spec.serves}
  return out
