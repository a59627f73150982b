"""famr-jax: machine unlearning for JAX image classifiers.

The public API, optax-style (internals stay in their subpackages)::

  import jax, famr_jax as fj
  forget = fj.forget_classes(y, [3], num_classes=10)
  result = fj.unlearn("famr-plus", apply_fn, params, forget, jax.random.key(0), data=(x, y))

Subpackages: :mod:`famr_jax.engine` (the minibatch engine), :mod:`famr_jax.methods`
(FAMR, its variants, the baselines, zero-shot unlearning), :mod:`famr_jax.theory`
(curvature, influence functions, the FAMR theory check), :mod:`famr_jax.evaluation`
(metrics, the leaderboard), :mod:`famr_jax.models`, :mod:`famr_jax.data`, :mod:`famr_jax.io`.
"""

from famr_jax.version import __version__

from famr_jax import models
from famr_jax.api import UnlearnResult, unlearn, unlearn_config
from famr_jax.data.datasets import Dataset, load_dataset
from famr_jax.audit.attacks import epsilons, forgetting_quality, lira, ulira
from famr_jax.audit.audit import audit_request, lira_check
from famr_jax.audit.shadows import AuditConfig, train_shadow_farm, unlearn_farm
from famr_jax.data.forget import ForgetSet, forget_classes, forget_random, forget_samples
from famr_jax.engine.descent import DescentResult, bind_static, loop_form, minibatch_descent
from famr_jax.engine.parallel import ScaleConfig
from famr_jax.engine.resume import ResumeConfig, RunStopped
from famr_jax.engine.training import TrainConfig, train_classifier
from famr_jax.errors import Diverged, FamrError
from famr_jax.evaluation.compare import compare
from famr_jax.evaluation.leaderboard import format_leaderboard
from famr_jax.evaluation.metrics import accuracy, batched_apply, evaluate_unlearning, mia_efficacy
from famr_jax.io.checkpoints import load_checkpoint, save_checkpoint
from famr_jax.io.saved_model import SavedModel, load_model
from famr_jax.io.weight_import import convert_weights, import_weights
from famr_jax.losses import famr_objective, forget_loss, gram_matrix, l2_anchor, style_loss, uniform_kl
from famr_jax.methods.famr import FAMRConfig, famr_defaults, famr_unlearn
from famr_jax.methods.impressions import ImpressionConfig, class_impressions
from famr_jax.methods.registry import MethodSpec, get_method, method_names, register_method
from famr_jax.methods.variants import FAMRVariantConfig, famr_variant_unlearn
from famr_jax.methods.zero_shot import ZeroShotConfig, ZeroShotFAMRConfig, zero_shot_unlearn
from famr_jax.theory.influence import influence_estimate
from famr_jax.theory.verification import TheoryConfig, run_theory_verification

__all__ = [
    # the front door
    "unlearn", "unlearn_config", "UnlearnResult", "compare", "format_leaderboard", "method_names", "get_method", "register_method",
    "MethodSpec", "load_model", "SavedModel", "import_weights", "convert_weights",
    # auditing (issue 14): shadow-model farms, U-LiRA, the unlearning challenge's epsilon score
    "AuditConfig", "audit_request", "lira_check", "train_shadow_farm", "unlearn_farm", "ulira", "lira", "epsilons",
    "forgetting_quality",
    # forget requests and data
    "ForgetSet", "forget_classes", "forget_samples", "forget_random", "Dataset", "load_dataset",
    # the engine
    "minibatch_descent", "DescentResult", "bind_static", "loop_form", "train_classifier", "TrainConfig",
    "ScaleConfig", "ResumeConfig", "RunStopped",
    # methods and their configs
    "famr_unlearn", "FAMRConfig", "famr_defaults", "famr_variant_unlearn", "FAMRVariantConfig",
    "zero_shot_unlearn", "ZeroShotConfig", "ZeroShotFAMRConfig", "class_impressions", "ImpressionConfig",
    # losses and metrics
    "uniform_kl", "gram_matrix", "style_loss", "forget_loss", "l2_anchor", "famr_objective", "accuracy",
    "batched_apply", "evaluate_unlearning", "mia_efficacy",
    # theory
    "influence_estimate", "run_theory_verification", "TheoryConfig",
    # checkpoints, models, errors
    "save_checkpoint", "load_checkpoint", "models", "FamrError", "Diverged", "__version__",
]
