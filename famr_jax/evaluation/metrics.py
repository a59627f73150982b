"""Unlearning metrics: the report's accuracies, forget-set statistics and MIA-efficacy.

The per-example statistics are pure JAX functions of :mod:`famr_jax.losses`
(re-exported here); the forward passes are :mod:`famr_jax.engine.forward`'s. The one
non-JAX piece is the membership-inference attack, an RBF support-vector
classifier from scikit-learn, exactly as the SalUn benchmark defines it.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax import losses
from famr_jax.data.forget import ForgetSet
from famr_jax.engine.forward import batched_apply
# The statistics live with the losses (methods and the engine use them); they stay importable from here.
from famr_jax.losses import accuracy, param_distance, per_class_accuracy, true_class_confidence

__all__ = ["accuracy", "batched_apply", "evaluate_unlearning", "mia_efficacy", "param_distance",
           "per_class_accuracy", "true_class_confidence"]

# Jitted: run eagerly it compiled three XLA programs per parameter leaf (subtract, square, sum).
_PARAM_DISTANCE = jax.jit(param_distance)

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


def mia_efficacy(conf_retain_train: np.ndarray, conf_test: np.ndarray,
                 conf_forget: np.ndarray, *, seed: int = 0,
                 max_per_side: int = 2000) -> float:
  """SalUn's MIA-efficacy: the fraction of forget samples an attack calls non-members.

  The attack is an RBF SVC (C=3, gamma='auto') on one feature, the softmax
  confidence of the true label, trained on retained training samples (members,
  label 1) against test samples (non-members, label 0), as many of each
  (``min`` of the two sizes, at most ``max_per_side``, drawn with ``seed``).
  Higher means the forget set looks less like training data.

  Example:
    >>> import numpy as np
    >>> r = np.full(50, 0.99); t = np.full(50, 0.5)
    >>> mia_efficacy(r, t, np.full(10, 0.5))
    1.0
  """
  from sklearn.svm import SVC

  rng = np.random.default_rng(seed)
  n = int(min(len(conf_retain_train), len(conf_test), max_per_side))
  members = rng.choice(np.asarray(conf_retain_train), n, replace=False)
  non_members = rng.choice(np.asarray(conf_test), n, replace=False)
  features = np.concatenate([members, non_members])[:, None].astype(np.float64)
  labels = np.concatenate([np.ones(n), np.zeros(n)])
  attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features, labels)
  predicted = attack.predict(np.asarray(conf_forget, np.float64)[:, None])
  return float(np.mean(predicted == 0))


@partial(jax.jit, static_argnums=(0, 5))
def _forward_stats(apply_fn, params, x, y, logits_ref, num_classes):
  logits = batched_apply(apply_fn, params, x)
  stats = {
      "correct": jnp.argmax(logits, -1) == y,
      "confidence": true_class_confidence(logits, y),
      "ce": losses.cross_entropy(logits, y),
      "entropy": losses.entropy(logits),
  }
  if logits_ref is not None:
    stats["kl_from_original"] = losses.kl_divergence(logits_ref, logits)
  return stats


def evaluate_unlearning(apply_fn: ApplyFn, params: Params, data, forget: ForgetSet, *,
                        params0: Params | None = None, mia_seed: int = 0) -> dict[str, Any]:
  """Every metric of report.json for one model.

  Class forgetting: ``retain_acc`` / ``forget_acc`` are test accuracies on the
  retained / forgotten classes. Sample forgetting: ``forget_acc`` is the
  accuracy on the forgotten training samples themselves and ``retain_acc``
  the accuracy on the retained training samples (the SalUn RA/UA convention),
  as the test set holds no forgotten samples.

  ``forget_ce``, ``forget_entropy`` and ``kl_from_original`` are means over
  the forget set (training examples). ``kl_from_original`` is
  ``KL(p_original || p_new)`` between softmax outputs, and with
  ``param_distance`` it is reported only when ``params0`` (the original
  model) is given.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: the model to evaluate.
    data: a :class:`famr_jax.data.datasets.Dataset` (or anything with ``x_train``,
      ``y_train``, ``x_test``, ``y_test``, ``num_classes``).
    forget: the forget request.
    params0: the original model's params, for the "from original" metrics.
    mia_seed: seed of the MIA's member/non-member subsampling.

  Returns:
    A dict of floats plus ``per_class_acc`` (a list, test set).
  """
  x_forget = data.x_train[forget.indices]
  y_forget = data.y_train[forget.indices]
  retain_mask = forget.retain_mask(len(data.y_train))
  logits0 = None
  if params0 is not None:
    logits0 = batched_apply(apply_fn, params0, jnp.asarray(x_forget))
  fs = jax.device_get(_forward_stats(apply_fn, params, jnp.asarray(x_forget), jnp.asarray(y_forget),
                                     logits0, data.num_classes))
  ts = jax.device_get(_forward_stats(apply_fn, params, jnp.asarray(data.x_test), jnp.asarray(data.y_test),
                                     None, data.num_classes))
  rs = jax.device_get(_forward_stats(apply_fn, params, jnp.asarray(data.x_train[retain_mask]),
                                     jnp.asarray(data.y_train[retain_mask]), None, data.num_classes))
  y_test = np.asarray(data.y_test)
  per_class = [float(np.mean(ts["correct"][y_test == c])) if np.any(y_test == c) else float("nan")
               for c in range(data.num_classes)]
  if forget.kind == "classes":
    forgotten_test = np.isin(y_test, forget.classes)
    retain_acc = float(np.mean(ts["correct"][~forgotten_test]))
    forget_acc = float(np.mean(ts["correct"][forgotten_test]))
  else:
    retain_acc = float(np.mean(rs["correct"]))
    forget_acc = float(np.mean(fs["correct"]))
  result = {
      "retain_acc": retain_acc,
      "forget_acc": forget_acc,
      "test_acc": float(np.mean(ts["correct"])),
      "forget_train_acc": float(np.mean(fs["correct"])),
      "forget_ce": float(np.mean(fs["ce"])),
      "forget_entropy": float(np.mean(fs["entropy"])),
      "mia_efficacy": mia_efficacy(rs["confidence"], ts["confidence"], fs["confidence"], seed=mia_seed),
  }
  if params0 is not None:
    result["kl_from_original"] = float(np.mean(fs["kl_from_original"]))
    result["param_distance"] = float(_PARAM_DISTANCE(params, params0))
  result["per_class_acc"] = per_class
  return result
