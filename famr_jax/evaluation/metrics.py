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
from famr_jax.engine.streaming import apply_streamed, is_streamed
# The statistics live with the losses (methods and the engine use them); they stay importable from here.
from famr_jax.losses import accuracy, param_distance, per_class_accuracy, true_class_confidence
from famr_jax.validation import check_params_finite

__all__ = ["accuracy", "batched_apply", "evaluate_unlearning", "forward_stats", "mia_efficacy", "param_distance",
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


STREAM_BATCH = 256             # rows per forward pass over a streamed (lazy) set
STREAM_RETAIN_SAMPLE = 10_000  # streamed sets: retained training rows evaluated (a seeded sample)


def forward_stats(apply_fn: ApplyFn, params: Params, x, y, logits_ref=None, *, num_classes: int,
                  batch_size: int = STREAM_BATCH) -> dict[str, np.ndarray]:
  """Per-example ``correct``, ``confidence``, ``ce``, ``entropy`` (and ``kl_from_original``) as numpy.

  A numpy / jax ``x`` goes to the device whole (chunked by ``batched_apply``); a
  streamed one (an image folder's :class:`famr_jax.data.image_folder.LazyImages`)
  is read ``batch_size`` rows at a time, every batch padded to one compiled shape.

  Example:
    >>> import numpy as np
    >>> s = forward_stats(lambda p, x: x, None, np.eye(3, dtype=np.float32), np.array([0, 1, 0]), num_classes=3)
    >>> s["correct"].tolist()
    [True, True, False]
  """
  if not is_streamed(x):
    ref = None if logits_ref is None else jnp.asarray(logits_ref)
    return jax.device_get(_forward_stats(apply_fn, params, jnp.asarray(x), jnp.asarray(y), ref, num_classes))
  y, n, parts = np.asarray(y), len(y), []
  for start in range(0, n, batch_size):
    xb = np.asarray(x[start:start + batch_size], np.float32)
    real = len(xb)
    pad = batch_size - real if n > batch_size else 0
    widths = lambda a: ((0, pad),) + ((0, 0),) * (a.ndim - 1)
    ref = None if logits_ref is None else np.asarray(logits_ref[start:start + real])
    stats = jax.device_get(_forward_stats(
        apply_fn, params, np.pad(xb, widths(xb)), np.pad(y[start:start + real], (0, pad)),
        None if ref is None else np.pad(ref, widths(ref)), num_classes))
    parts.append({k: v[:real] for k, v in stats.items()})
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def evaluate_unlearning(apply_fn: ApplyFn, params: Params, data, forget: ForgetSet, *,
                        params0: Params | None = None, mia_seed: int = 0) -> dict[str, Any]:
  """Every metric of report.json for one model.

  Class forgetting: ``retain_acc`` / ``forget_acc`` are test accuracies on the
  retained / forgotten classes. Sample forgetting: ``forget_acc`` is the
  accuracy on the forgotten training samples themselves and ``retain_acc``
  the accuracy on the retained training samples (the SalUn RA/UA convention),
  as the test set holds no forgotten samples.

  Streamed data (an image folder) are read in batches, never whole; their
  retained training rows are evaluated on a seeded sample of at most
  ``STREAM_RETAIN_SAMPLE`` rows (drawn with ``mia_seed``): the MIA uses at most
  2,000 of them anyway, and ``retain_acc`` of sample forgetting is then an
  estimate over that sample.

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
  check_params_finite(params, "params of the evaluated model")
  x_forget = data.x_train[forget.indices]
  y_forget = data.y_train[forget.indices]
  retain_rows = np.flatnonzero(forget.retain_mask(len(data.y_train)))
  streamed = is_streamed(data.x_train)
  if streamed and len(retain_rows) > STREAM_RETAIN_SAMPLE:
    retain_rows = np.sort(np.random.default_rng(mia_seed).choice(retain_rows, STREAM_RETAIN_SAMPLE, replace=False))
  logits0 = None
  if params0 is not None:
    logits0 = (apply_streamed(apply_fn, params0, x_forget, STREAM_BATCH) if streamed
               else batched_apply(apply_fn, params0, jnp.asarray(x_forget)))
  stats = lambda x, y, ref=None: forward_stats(apply_fn, params, x, y, ref, num_classes=data.num_classes)
  fs = stats(x_forget, y_forget, logits0)
  ts = stats(data.x_test, data.y_test)
  rs = stats(data.x_train[retain_rows], data.y_train[retain_rows])
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
