"""FAMR's objectives as pure, jit-able functions (FAMR paper, Eq. 1-5).

Every function here works on logits or on an ``apply_fn(params, x) -> logits``
and a params pytree, so any framework plugs in (Linen, NNX via ``nnx.split``,
plain functions).

Reductions: the paper writes the forget loss as a *sum* over the forget set T
(Eq. 2 and 4). Minibatch training needs a per-batch quantity, and with a sum
the anchor strength lambda would silently change meaning with |T|. The public
``forget_loss`` therefore takes ``reduction="mean"`` by default (the loss
Algorithm 1 steps on) and ``reduction="sum"`` for the paper's exact Eq. 2,
which the theory module uses.

Sections: FAMR's objective; statistics of logits and params (accuracy,
confidence, distance); the losses of the FAMR variants, the baselines and
SCRUB; zero-shot unlearning.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.errors import FamrError

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]
Reduction = Literal["mean", "sum", "none"]


def _reduce(values: jax.Array, reduction: Reduction,
            weights: jax.Array | None = None) -> jax.Array:
  """Reduces per-example values; ``weights`` (0/1) masks padded examples."""
  if weights is not None:
    values = values * weights
  if reduction == "none":
    return values
  if reduction == "sum":
    return jnp.sum(values)
  if reduction == "mean":
    count = values.shape[0] if weights is None else jnp.maximum(jnp.sum(weights), 1.0)
    return jnp.sum(values) / count
  raise ValueError(f"unknown reduction {reduction!r}: use 'mean', 'sum' or 'none'")


def uniform_kl(logits: jax.Array) -> jax.Array:
  """Per-example ``KL(u || softmax(logits))`` with ``u`` uniform over classes.

  ``KL(u || p) = sum_c (1/C) (log(1/C) - log p_c) = -log C - mean_c log p_c``.
  Computed from ``log_softmax`` so it stays finite for logits of any size
  (no ``log(0)`` at logits of +-1e4).

  Args:
    logits: ``[..., C]`` array.

  Returns:
    ``[...]`` array of non-negative divergences (nats).

  Example:
    >>> import jax.numpy as jnp
    >>> round(float(uniform_kl(jnp.zeros((1, 10)))[0]), 6)
    0.0
  """
  num_classes = logits.shape[-1]
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.log(num_classes) - jnp.mean(log_p, axis=-1)


def kl_divergence(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
  """Per-example ``KL(p || q)`` between ``softmax(logits_p)`` and ``softmax(logits_q)``.

  Example:
    >>> import jax.numpy as jnp
    >>> float(kl_divergence(jnp.ones((1, 3)), jnp.ones((1, 3)))[0])
    0.0
  """
  log_p = jax.nn.log_softmax(logits_p, axis=-1)
  log_q = jax.nn.log_softmax(logits_q, axis=-1)
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def entropy(logits: jax.Array) -> jax.Array:
  """Per-example Shannon entropy (nats) of ``softmax(logits)``.

  Example:
    >>> import jax.numpy as jnp
    >>> round(float(entropy(jnp.zeros((1, 4)))[0]), 4)  # log 4
    1.3863
  """
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels.

  Example:
    >>> import jax.numpy as jnp
    >>> round(float(cross_entropy(jnp.zeros((1, 4)), jnp.array([2]))[0]), 4)
    1.3863
  """
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(log_p, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def gram_matrix(features: jax.Array) -> jax.Array:
  """Normalized Gram matrix of a batch of feature maps (FAMR Eq. 3).

  For features ``phi(x)`` of shape ``[H, W, K]`` (or ``[N, K]`` token/unit
  features) reshaped to ``F`` of shape ``[K, M]`` with ``M = H * W``, returns
  ``G = F F^T / M``. Dividing by the number of spatial positions M (as in
  Gatys et al.'s style loss up to a constant) makes G independent of the
  image size, so one ``beta`` fits every layer; the paper states no
  normalization.

  Args:
    features: ``[B, H, W, K]`` conv maps, ``[B, M, K]`` tokens or ``[B, K]`` vectors.

  Returns:
    ``[B, K, K]`` Gram matrices (for ``[B, K]`` input: the outer products).

  Example:
    >>> import jax.numpy as jnp
    >>> gram_matrix(jnp.ones((2, 3, 3, 4))).shape
    (2, 4, 4)
  """
  batch = features.shape[0]
  num_channels = features.shape[-1]
  flat = features.reshape(batch, -1, num_channels)  # [B, M, K]
  return jnp.einsum("bmk,bml->bkl", flat, flat) / flat.shape[1]


def style_loss(features: jax.Array, target_gram: jax.Array) -> jax.Array:
  """Per-example ``||G(phi(x)) - G_target||_F^2`` (FAMR Eq. 4).

  Example:
    >>> import jax.numpy as jnp
    >>> f = jnp.ones((2, 4, 4, 3))
    >>> style_loss(f, gram_matrix(f)[0]).tolist()
    [0.0, 0.0]
  """
  diff = gram_matrix(features) - target_gram
  return jnp.sum(jnp.square(diff), axis=(-2, -1))


def mean_gram(feature_fn: Callable[[Params, jax.Array], jax.Array], params: Params,
              x: jax.Array, batch_size: int = 256) -> jax.Array:
  """Mean Gram matrix of ``feature_fn(params, x)`` over a data set, in batches.

  The natural "neutral" style target of Eq. 4: the average over retained data.

  Example:
    >>> import jax.numpy as jnp
    >>> g = mean_gram(lambda p, x: x, None, jnp.ones((5, 2, 2, 3)), batch_size=2)
    >>> g.shape
    (3, 3)
  """
  total = None
  for start in range(0, x.shape[0], batch_size):
    xb = x[start:start + batch_size]
    xb = xb if isinstance(xb, (jax.Array, np.ndarray)) else np.asarray(xb)   # a lazy array's rows, decoded
    g = jnp.sum(gram_matrix(feature_fn(params, xb)), axis=0)
    total = g if total is None else total + g
  return total / x.shape[0]


def tree_sq_distance(params: Params, params0: Params, mask: Params | None = None) -> jax.Array:
  """``||theta - theta0||^2`` over a pytree, optionally over masked leaves only.

  Args:
    params: current parameters.
    params0: anchor parameters (same structure).
    mask: optional pytree of bools with the same structure: only leaves
      marked True count (e.g. a tail-only anchor).

  Example:
    >>> import jax.numpy as jnp
    >>> float(tree_sq_distance({"w": jnp.array([3.0, 4.0])}, {"w": jnp.zeros(2)}))
    25.0
  """
  sq = jax.tree.map(lambda a, b: jnp.sum(jnp.square(a - b)), params, params0)
  if mask is not None:
    sq = jax.tree.map(lambda s, m: jnp.where(m, s, 0.0), sq, mask)
  return sum(jax.tree.leaves(sq), jnp.zeros((), jnp.float32))


def l2_anchor(params: Params, params0: Params, lam: float,
              mask: Params | None = None) -> jax.Array:
  """The L2 anchor ``lam / 2 * ||theta - theta0||^2`` of FAMR Eq. 1.

  Its gradient is ``lam * (theta - theta0)`` (Algorithm 1, line 6).

  Example:
    >>> import jax.numpy as jnp
    >>> float(l2_anchor({"w": jnp.array([3.0, 4.0])}, {"w": jnp.zeros(2)}, lam=0.1))
    1.25
  """
  return 0.5 * lam * tree_sq_distance(params, params0, mask)


def forget_loss(apply_fn: ApplyFn, params: Params, x: jax.Array, *,
                alpha: float = 1.0, beta: float = 0.0,
                feature_fn: Callable[[Params, jax.Array], jax.Array] | None = None,
                target_gram: jax.Array | None = None,
                weights: jax.Array | None = None,
                reduction: Reduction = "mean", target: jax.Array | None = None) -> jax.Array:
  """FAMR's combined forget loss ``alpha * L_KL + beta * L_style`` (Eq. 2, 4, 5).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: model parameters.
    x: forget-set inputs ``[B, ...]``.
    alpha: weight of the uniform-KL term (Eq. 2).
    beta: weight of the Gram style term (Eq. 4); needs ``feature_fn`` and
      ``target_gram`` when non-zero.
    feature_fn: ``feature_fn(params, x) -> features`` of the style layer.
    target_gram: ``[K, K]`` target Gram matrix (e.g. :func:`mean_gram` over
      retained data).
    weights: optional ``[B]`` 0/1 weights that mask padded examples.
    reduction: ``"mean"`` (per-example average, the default step loss),
      ``"sum"`` (the paper's Eq. 2 sum over T) or ``"none"``.
    target: optional ``[B, C]`` targets ``t``: ``L_KL`` is then ``KL(t || p)`` (:func:`target_kl`), not the uniform KL.

  Example:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda p, x: x @ p["w"]
    >>> params = {"w": jnp.zeros((3, 4))}
    >>> float(forget_loss(apply_fn, params, jnp.ones((2, 3))))
    0.0
  """
  per_example = jnp.zeros((x.shape[0],), jnp.float32)
  if alpha:
    logits = apply_fn(params, x)
    kl = uniform_kl(logits) if target is None else target_kl(target, logits)
    per_example = per_example + alpha * kl
  if beta:
    if feature_fn is None or target_gram is None:
      raise ValueError("beta > 0 needs feature_fn and target_gram for the style loss")
    per_example = per_example + beta * style_loss(feature_fn(params, x), target_gram)
  return _reduce(per_example, reduction, weights)


def famr_objective(apply_fn: ApplyFn, params: Params, params0: Params, x: jax.Array, *,
                   lam: float, anchor_mask: Params | None = None,
                   **forget_kwargs) -> jax.Array:
  """The FAMR objective ``J = L_forget + lam/2 ||theta - theta0||^2`` (Eq. 1).

  ``forget_kwargs`` are passed to :func:`forget_loss` (``alpha``, ``beta``,
  ``feature_fn``, ``target_gram``, ``weights``, ``reduction``).

  Example:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda p, x: x @ p["w"]
    >>> p0 = {"w": jnp.zeros((3, 4))}
    >>> p = {"w": jnp.ones((3, 4))}
    >>> round(float(famr_objective(apply_fn, p, p0, jnp.ones((2, 3)), lam=0.1)), 4)
    0.6
  """
  return (forget_loss(apply_fn, params, x, **forget_kwargs)
          + l2_anchor(params, params0, lam, anchor_mask))


# ----------------------------------------------------------------------------- statistics


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of rows whose argmax equals the label (NaN for an empty set).

  Example:
    >>> import jax.numpy as jnp
    >>> float(accuracy(jnp.array([[0.0, 1.0], [1.0, 0.0]]), jnp.array([1, 1])))
    0.5
  """
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def per_class_accuracy(logits: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """``[C]`` accuracy of each true class (NaN for a class absent from ``labels``).

  Example:
    >>> import jax.numpy as jnp
    >>> per_class_accuracy(jnp.array([[0.0, 1.0], [1.0, 0.0]]), jnp.array([1, 1]), 2).tolist()[1]
    0.5
  """
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, num_classes)
  return (correct @ onehot) / jnp.sum(onehot, axis=0)


def true_class_confidence(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax probability of the true label: the MIA feature of SalUn.

  Example:
    >>> import jax.numpy as jnp
    >>> true_class_confidence(jnp.zeros((1, 4)), jnp.array([2])).tolist()
    [0.25]
  """
  probs = jax.nn.softmax(logits, -1)
  return jnp.take_along_axis(probs, labels[:, None].astype(jnp.int32), -1)[:, 0]


def param_distance(params: Params, params0: Params) -> jax.Array:
  """``||theta - theta0||_2`` over the whole pytree.

  Example:
    >>> import jax.numpy as jnp
    >>> float(param_distance({"w": jnp.array([3.0, 4.0])}, {"w": jnp.zeros(2)}))
    5.0
  """
  return jnp.sqrt(tree_sq_distance(params, params0))


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """``sum(w v) / max(sum(w), 1)``: the mean over a minibatch's real examples (``w`` 0 on padding).

  Example:
    >>> import jax.numpy as jnp
    >>> float(weighted_mean(jnp.array([1.0, 3.0, 100.0]), jnp.array([1.0, 1.0, 0.0])))
    2.0
  """
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


# ----------------------------------------------------------------------------- variants and baselines


def retrain_target(logits0: jax.Array, forget_classes: jax.Array) -> jax.Array:
  """The retrain-like target: ``softmax(logits0)`` with the forgotten classes removed and renormalized.

  Computed as a softmax over the retained logits only (the forgotten ones set
  to ``-inf``), so it is exact and stable for logits of any size.

  Args:
    logits0: ``[B, C]`` the original model's logits on forget samples.
    forget_classes: ``[C]`` bool mask of the forgotten classes (not all True).

  Returns:
    ``[B, C]`` probabilities: zero on forgotten classes, each row summing to one.

  Example:
    >>> import jax.numpy as jnp
    >>> retrain_target(jnp.log(jnp.array([[0.5, 0.3, 0.2]])), jnp.array([True, False, False])).tolist()
    [[0.0, 0.6000000238418579, 0.4000000059604645]]
  """
  return jax.nn.softmax(jnp.where(forget_classes, -jnp.inf, logits0), axis=-1)


def target_kl(target: jax.Array, logits: jax.Array) -> jax.Array:
  """Per-example ``KL(t || softmax(logits))`` with ``0 log 0 = 0`` (targets may have zeros).

  Example:
    >>> import jax.numpy as jnp
    >>> round(float(target_kl(jnp.full((1, 4), 0.25), jnp.zeros((1, 4)))[0]), 6)
    0.0
  """
  log_p = jax.nn.log_softmax(logits, axis=-1)
  log_t = jnp.log(jnp.where(target > 0, target, 1.0))
  return jnp.sum(jnp.where(target > 0, target * (log_t - log_p), 0.0), axis=-1)


def fisher_anchor(params: Params, params0: Params, fisher: Params, lam: float,
                  curvature_weight: float = 1.0) -> jax.Array:
  """``1/2 sum_i (c F_ii + lam) (theta_i - theta0_i)^2``: the diagonal-Fisher anchor.

  Example:
    >>> import jax.numpy as jnp
    >>> float(fisher_anchor({"w": jnp.array([1.0, 2.0])}, {"w": jnp.zeros(2)},
    ...                     {"w": jnp.array([4.0, 0.0])}, lam=1.0))
    4.5
  """
  terms = jax.tree.map(lambda p, p0, f: jnp.sum((curvature_weight * f + lam) * jnp.square(p - p0)),
                       params, params0, fisher)
  return 0.5 * sum(jax.tree.leaves(terms), jnp.zeros((), jnp.float32))


def curvature_anchor(params: Params, params0: Params, matvec: Callable[[Params], Params],
                     lam: float, curvature_weight: float = 1.0) -> jax.Array:
  """``1/2 d^T (c H + lam I) d`` with ``d = theta - theta0`` and ``H v = matvec(v)``, by one product.

  ``H d`` is computed once, at ``stop_gradient(d)``, and the value is written
  as ``<d, Hd> - 1/2 <sg(d), Hd>``: its value is ``1/2 d^T H d`` and its
  gradient is ``H d`` exactly (``H`` symmetric), with no differentiation
  through the product. ``matvec`` must not depend on ``params`` (it is the
  curvature at ``theta0``).

  Args:
    params: the current params.
    params0: the anchor.
    matvec: ``v -> H v`` (e.g. :func:`famr_jax.theory.curvature.hvp` or
      :func:`famr_jax.theory.curvature.gauss_newton_hvp` at ``params0``).
    lam: isotropic strength.
    curvature_weight: the weight ``c`` of ``H``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> H = jnp.array([[2.0, 1.0], [1.0, 3.0]])
    >>> f = lambda p: curvature_anchor(p, jnp.zeros(2), lambda v: H @ v, lam=0.5)
    >>> jax.grad(f)(jnp.array([1.0, -1.0])).tolist()   # (H + 0.5 I) d
    [1.5, -2.5]
  """
  d = jax.tree.map(jnp.subtract, params, params0)
  d_fixed = jax.lax.stop_gradient(d)
  hd = jax.lax.stop_gradient(matvec(d_fixed))
  dot = lambda a, b: sum(jax.tree.leaves(jax.tree.map(lambda x, y: jnp.sum(x * y), a, b)),
                         jnp.zeros((), jnp.float32))
  quad = dot(d, hd) - 0.5 * dot(d_fixed, hd)
  return curvature_weight * quad + 0.5 * lam * tree_sq_distance(params, params0)


def baseline_loss(method: str, apply_fn: ApplyFn, params: Params, batch: tuple, weights: jax.Array,
                  config: Any) -> jax.Array:
  """The minibatch loss of a descent baseline (``ft``, ``ga``, ``neggrad+``, ``rl`` or ``salun``).

  ``batch`` is ``(x_f, y_f[, x_r, y_r])`` with ``x_r`` ``[B, k, ...]``; for
  ``rl`` / ``salun``, ``y_f`` holds the random labels. ``config`` gives the
  weights ``w_f`` / ``w_r`` where the method has them.

  Example:
    >>> import jax.numpy as jnp
    >>> b = (jnp.ones((2, 2)), jnp.array([0, 1]))
    >>> round(float(baseline_loss("ga", lambda p, x: x @ p, jnp.zeros((2, 2)), b, jnp.ones(2), None)), 4)
    -0.6931
  """
  x_f, y_f = batch[0], batch[1]
  if method == "ga":
    return -weighted_mean(cross_entropy(apply_fn(params, x_f), y_f), weights)
  x_r, y_r = batch[2], batch[3]
  w_r = jnp.repeat(weights, x_r.shape[1])
  ce_r = weighted_mean(cross_entropy(apply_fn(params, x_r.reshape((-1,) + x_r.shape[2:])), y_r.reshape(-1)), w_r)
  if method == "ft":
    return ce_r
  ce_f = weighted_mean(cross_entropy(apply_fn(params, x_f), y_f), weights)
  if method == "neggrad+":
    return config.w_r * ce_r - config.w_f * ce_f
  if method in ("rl", "salun"):
    return ce_f + config.w_r * ce_r
  raise FamrError(f"unknown baseline {method!r}; valid: ft, ga, neggrad+, rl, salun")


def distill_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """Per-example ``T^2 KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al.'s KD loss).

  Example:
    >>> import jax.numpy as jnp
    >>> float(distill_kl(jnp.zeros((1, 3)), jnp.zeros((1, 3)), 4.0)[0])
    0.0
    >>> round(float(distill_kl(jnp.array([[0.0, 0.0]]), jnp.array([[2.0, 0.0]]), 2.0)[0]), 4)
    0.4438
  """
  t = temperature
  log_p_s = jax.nn.log_softmax(student_logits / t, axis=-1)
  log_p_t = jax.nn.log_softmax(teacher_logits / t, axis=-1)
  return t * t * jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)


def scrub_max_loss(apply_fn: ApplyFn, params: Params, batch: tuple, weights: jax.Array, config: Any) -> jax.Array:
  """SCRUB's max phase loss, to *descend*: ``-mean d(x_f)``; ``batch = (x_f, teacher_logits_f)``.

  ``config`` (a :class:`famr_jax.methods.scrub.SCRUBConfig`) gives the temperature.

  Example:
    >>> import jax.numpy as jnp
    >>> from famr_jax.methods.scrub import SCRUBConfig
    >>> b = (jnp.ones((1, 2)), jnp.array([[2.0, 0.0]]))
    >>> cfg = SCRUBConfig(temperature=2.0)
    >>> round(float(scrub_max_loss(lambda p, x: x @ p, jnp.zeros((2, 2)), b, jnp.ones(1), cfg)), 4)
    -0.4438
  """
  x, teacher = batch
  return -weighted_mean(distill_kl(apply_fn(params, x), teacher, config.temperature), weights)


def scrub_min_loss(apply_fn: ApplyFn, params: Params, batch: tuple, weights: jax.Array, config: Any) -> jax.Array:
  """SCRUB's min phase loss: ``gamma CE + alpha d`` on ``batch = (x_r, y_r, teacher_logits_r)``.

  ``config`` (a :class:`famr_jax.methods.scrub.SCRUBConfig`) gives ``gamma``, ``kl_weight`` (alpha) and the temperature.

  Example:
    >>> import jax.numpy as jnp
    >>> from famr_jax.methods.scrub import SCRUBConfig
    >>> b = (jnp.ones((1, 2)), jnp.array([0]), jnp.zeros((1, 2)))
    >>> cfg = SCRUBConfig(gamma=1.0)
    >>> round(float(scrub_min_loss(lambda p, x: x @ p, jnp.zeros((2, 2)), b, jnp.ones(1), cfg)), 4)
    0.6931
  """
  x, y, teacher = batch
  logits = apply_fn(params, x)
  per_example = (config.gamma * cross_entropy(logits, y)
                 + config.kl_weight * distill_kl(logits, teacher, config.temperature))
  return weighted_mean(per_example, weights)


# ----------------------------------------------------------------------------- zero-shot


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
  """Per-example cross-entropy against ``(1 - s) onehot + s / C`` (PyTorch's ``label_smoothing=s``).

  On a confident logit vector (``p_y ~ 1``) its gradient in the logits is
  ``p - q ~ (s - s/C)`` on the label and ``-s/C`` elsewhere: it never
  vanishes, and descending it *lowers* the label's logit. That is why the
  as-published sign of zero-shot unlearning forgets (notes/impressions.md).

  Example:
    >>> import jax.numpy as jnp
    >>> round(float(smoothed_cross_entropy(jnp.zeros((1, 4)), jnp.array([2]), 0.1)[0]), 4)
    1.3863
  """
  num_classes = logits.shape[-1]
  log_p = jax.nn.log_softmax(logits, axis=-1)
  target = (1.0 - smoothing) * jax.nn.one_hot(labels, num_classes) + smoothing / num_classes
  return -jnp.sum(target * log_p, axis=-1)


def class_margin(logits: jax.Array, labels: jax.Array, competitors: jax.Array | None = None) -> jax.Array:
  """Per-example ``z_y - max_{j != y, j in competitors} z_j`` (positive: classified as ``y``).

  Args:
    logits: ``[B, C]``.
    labels: ``[B]`` ints.
    competitors: optional ``[C]`` bool mask of the classes ``y`` competes
      with (default: all others).

  Example:
    >>> import jax.numpy as jnp
    >>> class_margin(jnp.array([[3.0, 1.0, 2.0]]), jnp.array([0])).tolist()
    [1.0]
  """
  num_classes = logits.shape[-1]
  others = jnp.ones((num_classes,), bool) if competitors is None else competitors
  others = others[None, :] & ~jax.nn.one_hot(labels, num_classes, dtype=bool)
  best_other = jnp.max(jnp.where(others, logits, -jnp.inf), axis=-1)
  label_logit = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), -1)[:, 0]
  return label_logit - best_other


def forget_margin_loss(logits: jax.Array, labels: jax.Array, retain_classes: jax.Array,
                       margin: float) -> jax.Array:
  """Per-example ``relu(z_y - max_{j retained} z_j + margin)``: pushes a forget class below every retained one.

  Zero once the example's label logit is at least ``margin`` below the best
  retained class's (it is then classified as a retained class, not as
  another forgotten one).

  Example:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[5.0, 1.0, 4.0], [0.0, 3.0, 0.0]])
    >>> forget_margin_loss(z, jnp.array([0, 0]), jnp.array([False, True, False]), 1.0).tolist()
    [5.0, 0.0]
  """
  return jax.nn.relu(class_margin(logits, labels, retain_classes) + margin)


def retain_margin_loss(logits: jax.Array, labels: jax.Array, margin: float) -> jax.Array:
  """Per-example ``relu(margin - (z_y - max_{j != y} z_j))``: keeps a retained example classified.

  Example:
    >>> import jax.numpy as jnp
    >>> retain_margin_loss(jnp.array([[2.0, 1.5], [9.0, 0.0]]), jnp.array([0, 0]), 1.0).tolist()
    [0.5, 0.0]
  """
  return jax.nn.relu(margin - class_margin(logits, labels))


def masked_kl(logits0: jax.Array, logits: jax.Array, retain_classes: jax.Array) -> jax.Array:
  """Per-example ``KL(q0 || p)``, ``q0 = softmax(logits0)`` restricted to the retained classes, renormalized.

  ``q0`` is what the original model predicts once the forget classes are
  ruled out, the natural target of class unlearning (a model retrained
  without the forget classes approximates it). Its minimizer puts zero
  mass on the forget classes and keeps the original odds among the
  retained ones. On a confident forget example ``p ~ onehot(c)`` the
  gradient in the logits is ``p - q0 ~ onehot(c) - q0``: it does not vanish
  until the forget class is gone.

  Example:
    >>> import jax.numpy as jnp
    >>> z0 = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
    >>> keep = jnp.array([False, True, True])
    >>> round(float(masked_kl(z0, jnp.log(jnp.array([[0.0, 0.5, 0.5]])), keep)[0]), 6)
    0.0
    >>> round(float(masked_kl(z0, z0, keep)[0]), 4)    # log 2: half the mass is on class 0
    0.6931
  """
  log_q = jax.nn.log_softmax(jnp.where(retain_classes, logits0, -jnp.inf), axis=-1)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  terms = jnp.where(retain_classes, jnp.exp(log_q) * (log_q - log_p), 0.0)
  return jnp.sum(terms, axis=-1)
