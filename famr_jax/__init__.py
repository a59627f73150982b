"""famr-jax: machine unlearning for JAX image classifiers.

Public names are re-exported here, optax-style::

  import famr_jax as fj
  result = fj.famr_unlearn(apply_fn, params, x_forget, fj.FAMRConfig(), key)
"""

__version__ = "0.1.0"

from famr_jax import models
from famr_jax.io.checkpoints import Checkpoint, load_checkpoint, read_metadata, save_checkpoint
from famr_jax.data.datasets import Dataset, load_dataset
from famr_jax.errors import FamrError
from famr_jax.data.forget import ForgetSet, forget_classes, forget_random, forget_samples
from famr_jax.methods.registry import MethodSpec, UnlearnTask, get_method, method_names, register_method, with_overrides
from famr_jax.evaluation.metrics import (accuracy, batched_apply, evaluate_unlearning, mia_efficacy,
                              param_distance, per_class_accuracy, true_class_confidence)
from famr_jax.losses import (cross_entropy, entropy, famr_objective, forget_loss, gram_matrix,
                                 kl_divergence, l2_anchor, mean_gram, style_loss, tree_sq_distance,
                                 uniform_kl)
from famr_jax.engine.descent import DescentResult, epoch_batches, freeze_outside, minibatch_descent, step_schedule
from famr_jax.engine.parallel import DistributedConfig, ScaleConfig, ShardedData, initialize_distributed, shard_rows
from famr_jax.engine.resume import ResumeConfig, RunStopped
from famr_jax.engine.training import TrainConfig, train_classifier
from famr_jax.methods.famr import FAMRConfig, famr_defaults, famr_sample_defaults, famr_unlearn
from famr_jax.theory.curvature import (CGInfo, LanczosResult, cg_solve, conjugate_gradient, dense_hessian,
                                dense_solve, gauss_newton_hvp, hvp, lanczos_extreme_eigenvalues)
from famr_jax.theory.influence import (InfluenceEstimate, damped_influence_estimate, estimate_retrained_params,
                                forget_gradient, influence_estimate, predicted_loss_change)
from famr_jax.theory.verification import TheoryConfig, format_theory_table, lbfgs_minimize, run_theory_verification
from famr_jax.methods.impressions import (ImpressionConfig, ImpressionSet, class_impressions,
                                  save_impression_grid)
from famr_jax.methods.zero_shot import (HeadTailSplit, ZeroShotConfig, ZeroShotFAMRConfig, ZeroShotResult,
                                famr_zero_shot_unlearn, first_responsive_layer, split_model,
                                zero_shot_unlearn)
from famr_jax.methods.variants import (FAMRVariantConfig, curvature_anchor, famr_variant_unlearn, fisher_anchor,
                               retrain_target, target_kl, variant_defaults, variant_objective,
                               variant_sample_defaults)
from famr_jax.methods.baselines import (FTConfig, GAConfig, NegGradPlusConfig, RLConfig, SalUnConfig, baseline_defaults,
                                baseline_sample_defaults, baseline_unlearn, retrain_unlearn, saliency_mask)
from famr_jax.methods.scrub import SCRUBConfig, distill_kl, scrub_unlearn
from famr_jax.methods.ssd import SSDConfig, dampen, dampening_factors, ssd_unlearn
from famr_jax.theory.fisher import diagonal_fisher, load_fisher, store_fisher
from famr_jax.evaluation.compare import CompareRun, format_leaderboard, run_compare, score, summarize

__all__ = [
    "Checkpoint", "Dataset", "DescentResult", "FAMRConfig", "FamrError", "ForgetSet", "MethodSpec",
    "TrainConfig", "UnlearnTask", "accuracy", "batched_apply", "cross_entropy", "entropy",
    "epoch_batches", "evaluate_unlearning", "famr_defaults", "famr_objective", "famr_unlearn",
    "forget_classes", "forget_loss", "forget_random", "forget_samples", "freeze_outside",
    "get_method", "gram_matrix", "kl_divergence", "l2_anchor", "load_checkpoint", "load_dataset",
    "mean_gram", "method_names", "mia_efficacy", "minibatch_descent", "models", "param_distance",
    "per_class_accuracy", "read_metadata", "register_method", "save_checkpoint", "style_loss",
    "train_classifier", "tree_sq_distance", "true_class_confidence", "uniform_kl",
    # curvature, influence functions and the theory check (issue 4)
    "CGInfo", "InfluenceEstimate", "LanczosResult", "TheoryConfig", "cg_solve", "conjugate_gradient",
    "damped_influence_estimate", "dense_hessian", "dense_solve", "estimate_retrained_params",
    "format_theory_table", "forget_gradient", "gauss_newton_hvp", "hvp", "influence_estimate",
    "lanczos_extreme_eigenvalues", "lbfgs_minimize", "predicted_loss_change", "run_theory_verification",
    # scale-out (issue 6)
    "DistributedConfig", "ResumeConfig", "RunStopped", "ScaleConfig", "ShardedData", "initialize_distributed",
    "shard_rows",
    # zero-shot unlearning from class impressions (issue 3)
    "HeadTailSplit", "ImpressionConfig", "ImpressionSet", "ZeroShotConfig", "ZeroShotFAMRConfig",
    "ZeroShotResult", "class_impressions", "famr_zero_shot_unlearn", "first_responsive_layer",
    "save_impression_grid", "split_model", "zero_shot_unlearn",
    # FAMR variants, baselines, the diagonal Fisher and the leaderboard (issue 5)
    "CompareRun", "FAMRVariantConfig", "FTConfig", "GAConfig", "NegGradPlusConfig", "RLConfig", "SalUnConfig",
    "baseline_defaults", "baseline_unlearn", "curvature_anchor", "diagonal_fisher", "famr_variant_unlearn",
    "fisher_anchor", "format_leaderboard", "load_fisher", "retrain_target", "retrain_unlearn", "run_compare",
    "saliency_mask", "score", "store_fisher", "summarize", "target_kl", "variant_defaults", "variant_objective",
    # sample-forgetting defaults and step budgets
    "baseline_sample_defaults", "famr_sample_defaults", "step_schedule", "variant_sample_defaults", "with_overrides",
    # SCRUB and SSD baselines
    "SCRUBConfig", "SSDConfig", "dampen", "dampening_factors", "distill_kl", "scrub_unlearn", "ssd_unlearn",
]
