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
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp

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
    g = jnp.sum(gram_matrix(feature_fn(params, x[start:start + batch_size])), axis=0)
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
                reduction: Reduction = "mean") -> jax.Array:
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

  Example:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda p, x: x @ p["w"]
    >>> params = {"w": jnp.zeros((3, 4))}
    >>> float(forget_loss(apply_fn, params, jnp.ones((2, 3))))
    0.0
  """
  per_example = jnp.zeros((x.shape[0],), jnp.float32)
  if alpha:
    per_example = per_example + alpha * uniform_kl(apply_fn(params, x))
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


# ----------------------------------------------------------------------------- variants and baselines


# ----------------------------------------------------------------------------- zero-shot


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """``sum(values * weights) / max(sum(weights), 1)``: the mean over the real (weight 1) examples.

  Example:
    >>> import jax.numpy as jnp
    >>> float(weighted_mean(jnp.array([1.0, 3.0, 100.0]), jnp.array([1.0, 1.0, 0.0])))
    2.0
  """
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


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
