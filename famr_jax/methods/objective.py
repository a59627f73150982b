"""FAMR's one objective, with named terms; every named FAMR method is a preset of it (data).

Every FAMR method of the library minimizes, on minibatches of its forget samples ``x_f``,

``J(theta) = alpha * mean_f KL(t(x_f) || p_theta(x_f))``                 forget term
``        + beta * mean_f ||G(phi_theta(x_f)) - G_target||_F^2``           Gram style term
``        + retain_weight * mean_r KL(p_theta0(x_r) || p_theta(x_r))``     function-space anchor
``        + A(theta - theta0)``                                            parameter anchor

(:func:`famr_loss`), with the terms named by :class:`FAMRTerms`:

* ``target`` ``t``: ``uniform`` (the uniform KL of FAMR Eq. 2) or ``retrain`` (the
  retrained-target KL: the original prediction with the forgotten classes removed and
  renormalized, :func:`famr_jax.losses.retrain_target`);
* ``beta``: the Gram style loss of Eq. 4-5 on a style layer's features;
* ``retain_weight``: the function-space KL from the original model on retained samples,
  which are retained training data or class impressions of the retained classes;
* ``anchor`` ``A(d)``: ``l2`` (``lam/2 ||d||^2``, Eq. 1), ``fisher``
  (``1/2 d^T (c F + lam I) d``, the diagonal Fisher), ``gauss-newton`` / ``hessian``
  (``1/2 d^T (c H + lam I) d``, H the retained loss's curvature at ``theta0``, one HVP per step).

Where the forget samples come from is the runner's: the forget set (``famr``,
:mod:`famr_jax.methods.famr`, which streams and shards), the forget set with paired retained
samples and an optional frozen head (:mod:`famr_jax.methods.variants`), per-example Gram
targets (:mod:`famr_jax.methods.style`), or forget-class impressions (``famr-zeroshot``,
:mod:`famr_jax.methods.zero_shot`). :data:`PRESETS` says which terms each named method sets.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp

from famr_jax import losses
from famr_jax.errors import FamrError

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]

TARGETS = ("uniform", "retrain")
ANCHORS = ("l2", "fisher", "gauss-newton", "hessian")

# The terms each named method sets (the rest keep FAMRTerms' defaults: alpha 1, uniform target, no style,
# no function anchor, the L2 anchor). The weights were tuned on digits / LeNet5 (experiments/tune_defaults.py,
# docs/results.md); schedules (epochs, lr, optimizer) stay in famr_jax.methods.defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "famr": {},                                                          # the paper's Eq. 1
    "famr-retrain-target": dict(target="retrain"),
    "famr-fisher": dict(anchor="fisher", curvature_weight=10.0),
    "famr-curvature": dict(anchor="gauss-newton", curvature_weight=100.0),
    "famr-function": dict(retain_weight=3.0),
    "famr-plus": dict(target="retrain", retain_weight=1.0),
    # methods.style: the Gram loss alone; beta is set per task (evaluation.style.balanced_beta: 1 / L_style(theta0)).
    "famr-style": dict(alpha=0.0, beta=1.0),
    "famr-zeroshot": dict(retain_weight=1.0),                            # on impressions, tail only
}


@dataclasses.dataclass(frozen=True)
class FAMRTerms:
  """The weights and choices of the objective's terms (hashable: a static argument of the compiled step).

  Attributes:
    alpha: weight of the forget term ``KL(t || p)`` on forget samples (Eq. 5's alpha; ``t`` the method's
      target: uniform in the paper's FAMR).
    target: ``uniform`` (uniform KL) or ``retrain`` (retrained-target KL; the runner gives the targets).
    beta: weight of the Gram style term (needs the style layer's features and a target Gram).
    retain_weight: weight of the function-space anchor ``KL(p0 || p)`` on retained samples or impressions (0 = none).
    anchor: ``l2``, ``fisher``, ``gauss-newton`` or ``hessian``.
    lam: anchor strength lambda (Eq. 1's; the ``lam I`` of every parameter anchor, ``>= 0``).
    curvature_weight: the weight ``c`` of F or H in the curvature anchors.
  """
  alpha: float = 1.0
  target: Literal["uniform", "retrain"] = "uniform"
  beta: float = 0.0
  retain_weight: float = 0.0
  anchor: Literal["l2", "fisher", "gauss-newton", "hessian"] = "l2"
  lam: float = 0.1
  curvature_weight: float = 1.0

  @classmethod
  def preset(cls, name: str, **changes) -> "FAMRTerms":
    """The terms of the named method ``name`` (:data:`PRESETS`), with ``changes``.

    Example:
      >>> FAMRTerms.preset("famr-plus").target, FAMRTerms.preset("famr").anchor
      ('retrain', 'l2')
    """
    if name not in PRESETS:
      raise FamrError(f"no FAMR preset {name!r}; valid: {', '.join(PRESETS)}")
    return cls(**{**PRESETS[name], **changes})

  @property
  def needs_retained(self) -> bool:
    """Whether each step needs retained samples (function anchor or exact-curvature anchor)."""
    return self.retain_weight > 0 or self.anchor in ("gauss-newton", "hessian")


class RetainedBatch(NamedTuple):
  """Retained samples of one step, flat: ``x [R, ...]``, labels ``y [R]`` (curvature anchors),
  the original model's logits ``logits0 [R, C]`` (function anchor) and 0/1 ``weights [R]``."""
  x: jax.Array
  y: jax.Array | None
  logits0: jax.Array | None
  weights: jax.Array


def retained_matvec(apply_fn: ApplyFn, params0: Params, x: jax.Array, y: jax.Array, weights: jax.Array,
                    kind: str) -> Callable[[Params], Params]:
  """``v -> H v`` for the weighted-mean retained cross-entropy at ``params0`` on one batch.

  ``kind`` is ``"hessian"`` (exact, forward-over-reverse) or ``"gauss-newton"``
  (``J^T (diag p - p p^T) J``), both from :mod:`famr_jax.theory.curvature`.

  Example:
    >>> import jax.numpy as jnp
    >>> mv = retained_matvec(lambda p, x: x @ p, jnp.zeros((1, 2)), jnp.ones((1, 1)), jnp.array([0]),
    ...                      jnp.ones(1), "gauss-newton")
    >>> mv(jnp.ones((1, 2))).tolist()   # the outputs are equal: (diag p - p p^T) 1 = 0
    [[0.0, 0.0]]
  """
  from famr_jax.theory import curvature
  total = jnp.maximum(jnp.sum(weights), 1.0)
  if kind == "hessian":
    def loss(p):
      return losses.weighted_mean(losses.cross_entropy(apply_fn(p, x), y), weights)
    return lambda v: curvature.hvp(loss, params0, v)
  if kind == "gauss-newton":
    def output_hvp(logits, u):
      return weights[:, None] * curvature.softmax_output_hvp(logits, u) / total
    return lambda v: curvature.gauss_newton_hvp(apply_fn, params0, x, v, output_hvp)
  raise FamrError(f"no exact curvature of kind {kind!r}")


def famr_loss(apply_fn: ApplyFn, terms: FAMRTerms, params: Params, params0: Params, x_forget: jax.Array,
              weights: jax.Array, *, target: jax.Array | None = None, retained: RetainedBatch | None = None,
              fisher: Params | None = None, feature_fn: Callable[[Params, jax.Array], jax.Array] | None = None,
              target_gram: jax.Array | None = None, anchor_mask: Params | None = None) -> jax.Array:
  """The objective ``J`` on one minibatch (see the module docstring): the one place FAMR's loss is written.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits`` (the tail when a head is frozen).
    terms: a :class:`FAMRTerms`.
    params: current params.
    params0: the original params (the anchor).
    x_forget: ``[B, ...]`` forget inputs.
    weights: ``[B]`` 0/1 weights (0 on padding).
    target: ``[B, C]`` targets for ``target="retrain"``.
    retained: a :class:`RetainedBatch` when ``terms.needs_retained``.
    fisher: the diagonal Fisher (pytree like ``params``) for ``anchor="fisher"``.
    feature_fn: the style layer's ``feature_fn(params, x)`` (``beta > 0``).
    target_gram: ``[K, K]`` or per-example ``[B, K, K]`` Gram targets (``beta > 0``).
    anchor_mask: optional pytree of bools: the L2 anchor counts only True leaves.

  Example:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda p, x: x @ p["w"]
    >>> p0, p = {"w": jnp.zeros((3, 4))}, {"w": jnp.ones((3, 4))}
    >>> round(float(famr_loss(apply_fn, FAMRTerms(lam=0.1), p, p0, jnp.ones((2, 3)), jnp.ones(2))), 4)
    0.6
  """
  if terms.target == "retrain" and target is None:
    raise FamrError("target='retrain' needs the per-example targets")
  loss = losses.forget_loss(apply_fn, params, x_forget, alpha=terms.alpha, beta=terms.beta, feature_fn=feature_fn,
                            target_gram=target_gram, weights=weights, reduction="mean",
                            target=target if terms.target == "retrain" else None)
  if terms.needs_retained and retained is None:
    raise FamrError("this objective needs retained samples in its batches")
  if terms.retain_weight > 0:
    kl = losses.kl_divergence(retained.logits0, apply_fn(params, retained.x))
    loss = loss + terms.retain_weight * losses.weighted_mean(kl, retained.weights)
  if terms.anchor == "l2":
    return loss + losses.l2_anchor(params, params0, terms.lam, anchor_mask)
  if terms.anchor == "fisher":
    if fisher is None:
      raise FamrError("anchor='fisher' needs the diagonal Fisher: pass fisher")
    return loss + losses.fisher_anchor(params, params0, fisher, terms.lam, terms.curvature_weight)
  matvec = retained_matvec(apply_fn, params0, retained.x, retained.y, retained.weights, terms.anchor)
  return loss + losses.curvature_anchor(params, params0, matvec, terms.lam, terms.curvature_weight)
