"""Langevin unlearning (method ``langevin``): projected noisy gradient descent on the retained set.

Chien, Wang, Chen and Li, "Langevin Unlearning: A New Perspective of Noisy
Gradient Descent for Machine Unlearning" (NeurIPS 2024): learning and unlearning
are the same projected noisy gradient process; after a deletion, running it on
the retained set ``D'`` brings the parameters' law close, in Rényi divergence,
to the process's law on ``D'`` (what "retraining" means under this view). Each
step here is

``theta <- Proj_R(theta - lr * grad f(theta) + sqrt(2 lr) sigma xi)``,
``f = mean CE(retained minibatch) + l2/2 ||theta||^2``, ``xi ~ N(0, I)``,

started from ``Proj_R(theta0)``. The accounting (:func:`langevin_certificate`)
is our own short derivation in the paper's framework, not its sharper
LSI-based theorem:

1. If every per-example loss is convex and ``L``-smooth and ``l2 = m > 0``, each
   step's map ``theta -> theta - lr grad f(theta)`` contracts distances by
   ``c = max(|1 - lr m|, |1 - lr L|)`` (< 1 when ``lr < 2 / L``); the projection
   does not expand them. Coupling the unlearning run with the process on
   ``D'`` started from its stationary law (same minibatches, same noise), both
   start in the ball, so their distance after ``K`` maps is at most ``c^K 2R``.
2. The last step adds ``N(0, 2 lr sigma^2 I)``: by joint convexity of
   ``exp((alpha - 1) D_alpha)`` and post-processing (the projection), the
   Rényi divergence is at most the Gaussian one at that shift,
   ``eps_alpha = alpha (c^K 2R)^2 / (2 * 2 lr sigma^2) = alpha a``, with
   ``a = c^(2K) R^2 / (lr sigma^2)``.
3. Rényi to ``(eps, delta)`` (Mironov 2017, Prop. 3): ``eps = min over alpha > 1 of
   alpha a + log(1/delta) / (alpha - 1) = a + 2 sqrt(a log(1/delta))``.

The assumptions are checked, not assumed: the logits must be affine in the
params (then softmax cross-entropy is convex, and ``L = max_i ||J_i||^2 / 2 + m``
with ``J_i`` the logits' Jacobian at example ``i``), ``m > 0``, a radius ``R``
and ``c < 1``. Where one fails (any deep network), the run is the same noisy
fine-tuning and the result says ``certified=False`` with the reason. The
guarantee is against the noisy process on ``D'``, not against the audit's
ordinary retrain; and ``sigma`` large enough for a small ``eps`` costs accuracy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from famr_jax import losses
from famr_jax.engine.descent import DescentResult, bind_static, check_descent_settings, minibatch_descent
from famr_jax.errors import FamrError
from famr_jax.validation import CheckedFields

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class LangevinConfig(CheckedFields):
  """Projected noisy gradient descent on the retained set (method ``langevin``).

  Attributes:
    epochs: passes over the retained set.
    lr: step size (plain SGD: momentum would void the contraction).
    batch_size: retained samples per step.
    sigma: noise scale: each step adds ``N(0, 2 lr sigma^2)`` to every parameter.
    l2: weight ``m`` of ``m/2 ||theta||^2`` (the strong convexity).
    radius: radius ``R`` of the ball the params are projected on (global L2 norm; none = no projection, and
      then no certificate). Choose it before training: a radius read off the trained params depends on
      the forget set. Projecting a model whose params are larger shrinks all of them.
    delta: the ``delta`` of the reported ``(epsilon, delta)``.
    steps: a step budget replacing ``epochs``.
  """
  epochs: int = 5
  lr: float = 0.05
  batch_size: int = 64
  sigma: float = 0.01
  l2: float = 0.01
  radius: float | None = None
  delta: float = 1e-5
  steps: int | None = None

  def validate(self) -> "LangevinConfig":
    """Raises :class:`FamrError` on an invalid setting."""
    check_descent_settings(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, steps=self.steps)
    if not self.sigma > 0:
      raise FamrError(f"sigma must be positive, got {self.sigma}")
    if self.l2 < 0:
      raise FamrError(f"l2 must be non-negative, got {self.l2}")
    if self.radius is not None and not self.radius > 0:
      raise FamrError(f"radius must be positive (or None), got {self.radius}")
    if not 0.0 < self.delta < 1.0:
      raise FamrError(f"delta must lie in (0, 1), got {self.delta}")
    return self


class Certificate(NamedTuple):
  """The ``(epsilon, delta)`` accounting of one run, or why there is none."""
  certified: bool
  reason: str
  epsilon: float | None = None
  delta: float | None = None
  alpha: float | None = None        # the Rényi order that gives epsilon
  smoothness: float | None = None   # L
  contraction: float | None = None  # c
  steps: int | None = None          # K

  def as_record(self) -> dict[str, Any]:
    """The JSON-able fields (None where not certified)."""
    return dict(self._asdict())


# ----------------------------------------------------------------------------- the accounting


def contraction_factor(lr: float, m: float, smoothness: float) -> float:
  """``max(|1 - lr m|, |1 - lr L|)``: one gradient step's Lipschitz constant for an m-strongly convex, L-smooth loss.

  Example:
    >>> contraction_factor(0.5, 0.1, 1.0)
    0.95
  """
  return max(abs(1.0 - lr * m), abs(1.0 - lr * smoothness))


def langevin_epsilon(contraction: float, steps: int, radius: float, lr: float, sigma: float,
                     delta: float) -> tuple[float, float]:
  """``(epsilon, alpha)``: ``a + 2 sqrt(a log(1/delta))`` at ``alpha = 1 + sqrt(log(1/delta) / a)``.

  ``a = c^(2K) R^2 / (lr sigma^2)`` (the module docstring's step 2).

  Example:
    >>> eps, alpha = langevin_epsilon(0.5, 10, 1.0, 0.5, 1.0, 1e-5)
    >>> round(eps, 6), round(alpha, 1)
    (0.009374, 2457.8)
  """
  a = contraction ** (2 * steps) * radius ** 2 / (lr * sigma ** 2)
  log_inv = math.log(1.0 / delta)
  if a == 0.0:
    return 0.0, math.inf
  return a + 2.0 * math.sqrt(a * log_inv), 1.0 + math.sqrt(log_inv / a)


def is_affine_in_params(apply_fn: ApplyFn, params: Params, x: jax.Array, key: jax.Array) -> bool:
  """Whether ``apply_fn(., x)`` is affine in the params, checked along two random directions.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.ones((3, 2))
    >>> is_affine_in_params(lambda p, x: x @ p, jnp.ones((2, 2)), x, jax.random.key(0))
    True
    >>> is_affine_in_params(lambda p, x: jnp.tanh(x @ p), jnp.ones((2, 2)), x, jax.random.key(0))
    False
  """
  flat, unravel = ravel_pytree(params)
  d1, d2 = jax.random.normal(key, (2,) + flat.shape)
  scale = 1.0 + jnp.linalg.norm(flat) / jnp.sqrt(flat.size)
  p1, p2 = unravel(flat + scale * d1), unravel(flat + scale * d2)
  t = 0.3
  mixed = apply_fn(unravel(flat + scale * (t * d1 + (1 - t) * d2)), x)
  linear = t * apply_fn(p1, x) + (1 - t) * apply_fn(p2, x)
  size = jnp.max(jnp.abs(linear)) + 1.0
  return bool(jnp.max(jnp.abs(mixed - linear)) <= 1e-4 * size)


def smoothness_bound(apply_fn: ApplyFn, params: Params, x: np.ndarray, m: float, chunk: int = 256) -> float:
  """``L = max_i ||J_i||_op^2 / 2 + m`` for softmax cross-entropy of logits affine in the params.

  The Hessian in the logits is ``diag(p) - p p^T``, whose largest eigenvalue is at
  most 1/2; ``J_i`` is the logits' Jacobian in the params at example ``i``.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> smoothness_bound(lambda p, x: x @ p, jnp.zeros((2, 3)), np.array([[3.0, 4.0]]), 0.1)   # ||x||^2 / 2 + m
    12.6
  """
  flat, unravel = ravel_pytree(params)
  one = lambda f, xi: apply_fn(unravel(f), xi[None])[0]
  sq_norm = jax.jit(jax.vmap(lambda xi: jnp.linalg.eigvalsh(
      (lambda j: j @ j.T)(jax.jacfwd(one)(flat, xi)))[-1]))
  worst = 0.0
  for start in range(0, len(x), chunk):
    worst = max(worst, float(jnp.max(sq_norm(jnp.asarray(x[start:start + chunk], jnp.float32)))))
  return round(0.5 * worst + m, 12)


def langevin_certificate(apply_fn: ApplyFn, params: Params, x_retain: np.ndarray, config: LangevinConfig,
                         steps: int, key: jax.Array) -> Certificate:
  """The ``(epsilon, delta)`` of ``steps`` noisy steps where the assumptions hold, else why not.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> c = langevin_certificate(lambda p, x: jnp.tanh(x @ p), jnp.ones((2, 2)), np.ones((4, 2)),
    ...                          LangevinConfig(), 100, jax.random.key(0))
    >>> c.certified, c.reason.split(":")[0]
    (False, 'the logits are not affine in the params')
  """
  x_probe = jnp.asarray(np.asarray(x_retain[:64], np.float32))
  if not is_affine_in_params(apply_fn, params, x_probe, key):
    return Certificate(False, "the logits are not affine in the params: the loss is not convex, so the noisy "
                              "fine-tuning has no (epsilon, delta) guarantee")
  if config.l2 <= 0:
    return Certificate(False, "l2 is 0: the loss is not strongly convex, so nothing contracts")
  if config.radius is None:
    return Certificate(False, "no projection radius: the distance to the retained process is unbounded")
  smooth = smoothness_bound(apply_fn, params, np.asarray(x_retain, np.float32), config.l2)
  c = contraction_factor(config.lr, config.l2, smooth)
  if c >= 1.0:
    return Certificate(False, f"lr {config.lr} is too large for the smoothness L = {smooth:.4g}: the steps do "
                              f"not contract (need lr < 2 / L = {2 / smooth:.4g})", smoothness=smooth, contraction=c)
  eps, alpha = langevin_epsilon(c, steps, config.radius, config.lr, config.sigma, config.delta)
  return Certificate(True, "logits affine in the params, l2 > 0, projected, contracting steps", eps, config.delta,
                     alpha, smooth, c, steps)


# ----------------------------------------------------------------------------- the optimizer


def _norm(tree: Params) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


class NoiseState(NamedTuple):
  """The noise's PRNG key (raw key data, so the state is a plain array pytree)."""
  key: jax.Array


def gaussian_noise(std: float) -> optax.GradientTransformation:
  """Adds ``N(0, std^2)`` to every update entry, from the key in its state (set it with :func:`langevin_state`).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> t = gaussian_noise(0.5); u = {"w": jnp.zeros(20000)}
    >>> out, _ = t.update(u, NoiseState(jax.random.key_data(jax.random.key(1))))
    >>> round(float(out["w"].std()), 2)
    0.5
  """
  def init(params):
    del params
    return NoiseState(jax.random.key_data(jax.random.key(0)))

  def update(updates, state, params=None):
    del params
    key, sub = jax.random.split(jax.random.wrap_key_data(state.key))
    leaves, treedef = jax.tree.flatten(updates)
    keys = jax.random.split(sub, len(leaves))
    noisy = [u + std * jax.random.normal(k, u.shape, u.dtype) for u, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy), NoiseState(jax.random.key_data(key))

  return optax.GradientTransformation(init, update)


def project_ball(radius: float | None) -> optax.GradientTransformation:
  """Updates that land the params on the ball ``||theta|| <= radius`` (global L2 norm; None: unchanged).

  Example:
    >>> import jax.numpy as jnp
    >>> p = {"w": jnp.array([3.0, 0.0])}
    >>> u, _ = project_ball(1.0).update({"w": jnp.array([0.0, 4.0])}, None, p)
    >>> [round(float(v), 4) for v in p["w"] + u["w"]]
    [0.6, 0.8]
  """
  def update(updates, state, params):
    if radius is None:
      return updates, state
    new = jax.tree.map(jnp.add, params, updates)
    scale = jnp.minimum(1.0, radius / jnp.maximum(_norm(new), 1e-30))
    return jax.tree.map(lambda n, p: n * scale - p, new, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


@functools.lru_cache(maxsize=64)
def langevin_optimizer(lr: float, sigma: float, radius: float | None) -> optax.GradientTransformation:
  """``Proj_R(theta - lr g + sqrt(2 lr) sigma xi)`` as one optax chain (memoized: one object per setting)."""
  return optax.chain(optax.sgd(lr), gaussian_noise(math.sqrt(2.0 * lr) * sigma), project_ball(radius))


def langevin_state(optimizer: optax.GradientTransformation, params: Params, key: jax.Array) -> Any:
  """``optimizer.init(params)`` with the noise's key set to ``key``."""
  sgd_state, _, proj_state = optimizer.init(params)
  return (sgd_state, NoiseState(jax.random.key_data(key)), proj_state)


def project_params(params: Params, radius: float | None) -> Params:
  """``params`` scaled onto the ball ``||theta|| <= radius`` (unchanged inside it or with no radius)."""
  if radius is None:
    return params
  scale = jnp.minimum(1.0, radius / jnp.maximum(_norm(params), 1e-30))
  return jax.tree.map(lambda p: p * scale, params)


# ----------------------------------------------------------------------------- the method


def langevin_loss(apply_fn: ApplyFn, m: float, params: Params, batch: tuple, weights: jax.Array, context: Any) -> jax.Array:
  """``mean CE(batch) + m/2 ||theta||^2`` (the engine's ``loss_fn`` once bound)."""
  del context
  ce = losses.weighted_mean(losses.cross_entropy(apply_fn(params, batch[0]), batch[1]), weights)
  return ce + 0.5 * m * losses.tree_sq_distance(params, jax.tree.map(jnp.zeros_like, params))


def langevin_unlearn(apply_fn: ApplyFn, params: Params, x_retain, y_retain, config: LangevinConfig,
                     key: jax.Array, *, show_progress: bool = True) -> DescentResult:
  """Langevin unlearning (Chien et al. 2024): projected noisy SGD on the retained set, with its accounting.

  The history's last entry holds the :class:`Certificate` fields (``certified``,
  ``reason``, ``epsilon``, ``delta``, ...).

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32); y = (x[:, 0] > 0).astype(np.int32)
    >>> r = langevin_unlearn(lambda p, x: x @ p, jnp.zeros((3, 2)), x, y,
    ...                      LangevinConfig(epochs=20, lr=0.2, l2=0.1, radius=5.0), jax.random.key(0),
    ...                      show_progress=False)
    >>> r.history[-1]["certified"], r.history[-1]["epsilon"] > 0
    (True, True)
  """
  config.validate()
  x_retain, y_retain = np.asarray(x_retain, np.float32), np.asarray(y_retain, np.int32)
  if len(x_retain) == 0:
    raise FamrError("Langevin unlearning runs on retained data, and there is none")
  optimizer = langevin_optimizer(float(config.lr), float(config.sigma),
                                 None if config.radius is None else float(config.radius))
  start = project_params(params, config.radius)
  result = minibatch_descent(bind_static(langevin_loss, apply_fn, float(config.l2)), start, (x_retain, y_retain),
                             optimizer, epochs=config.epochs, batch_size=config.batch_size,
                             key=jax.random.fold_in(key, 0), desc="langevin", show_progress=show_progress,
                             max_steps=config.steps, opt_state=langevin_state(optimizer, start, jax.random.fold_in(key, 1)),
                             resume_meta={"langevin": dataclasses.asdict(config)})
  steps = int(config.steps or config.epochs * -(-len(y_retain) // config.batch_size))
  certificate = langevin_certificate(apply_fn, params, x_retain, config, steps, jax.random.fold_in(key, 2))
  history = [dict(h) for h in result.history]
  history[-1].update(certificate.as_record())
  return result._replace(history=history)


def run_langevin_task(task, config: LangevinConfig) -> DescentResult:
  """The registry's adapter for ``langevin``."""
  keep = task.forget.retain_mask(len(task.data.y_train))
  return langevin_unlearn(task.apply_fn, task.params, task.data.x_train[keep], task.data.y_train[keep], config,
                          task.key, show_progress=task.show_progress)
