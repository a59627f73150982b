"""The optimizers methods name, built once per setting so compiled steps are reused.

The engine caches compiled programs by the identity of the optimizer (and of
the loss), so the same setting must give the same object: :func:`make_optimizer`
and :func:`freeze_outside` are memoized.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import optax

from famr_jax.errors import FamrError

# The optimizers every minibatch method's config may name.
OPTIMIZERS = ("sgd", "momentum", "adam")

Params = Any


def check_descent_settings(*, epochs: int, lr: float, batch_size: int, optimizer: str | None = None,
                           lam: float | None = None, steps: int | None = None) -> None:
  """Raises :class:`FamrError` on settings no minibatch method can run with.

  The one place the configs of training, FAMR, its variants, the baselines and
  the zero-shot methods check what they share (each adds its own fields).

  Example:
    >>> check_descent_settings(epochs=1, lr=0.1, batch_size=8, optimizer="sgd", lam=0.0)
    >>> check_descent_settings(epochs=0, lr=0.1, batch_size=8)
    Traceback (most recent call last):
    ...
    famr_jax.errors.FamrError: epochs must be positive, got 0
  """
  if isinstance(epochs, bool) or int(epochs) != epochs or epochs <= 0:
    raise FamrError(f"epochs must be positive, got {epochs}")
  if not lr > 0:
    raise FamrError(f"learning rate must be positive, got {lr}")
  if lam is not None and lam < 0:
    raise FamrError(f"the anchor strength lambda must be non-negative, got {lam}")
  if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size <= 0:
    raise FamrError(f"batch size must be positive, got {batch_size}")
  if optimizer is not None and optimizer not in OPTIMIZERS:
    raise FamrError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
  if steps is not None and (isinstance(steps, bool) or int(steps) != steps or steps <= 0):
    raise FamrError(f"the step budget (steps) must be a positive integer, got {steps}")


@functools.lru_cache(maxsize=256)
def make_optimizer(name: str, lr: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """The optax transformation named ``name`` (``sgd``, ``momentum`` (0.9) or ``adam``).

  ``weight_decay > 0`` adds coupled L2 decay before the update (SCRUB's
  setting); AdamW is :func:`famr_jax.engine.training.train_classifier`'s own.
  Memoized: one object per setting.

  Example:
    >>> make_optimizer("sgd", 0.1) is make_optimizer("sgd", 0.1)
    True
  """
  if name == "sgd":
    opt = optax.sgd(lr)
  elif name == "momentum":
    opt = optax.sgd(lr, momentum=0.9)
  elif name == "adam":
    opt = optax.adam(lr)
  elif name == "adamw":
    opt = optax.adamw(lr, weight_decay=weight_decay)
    return opt
  else:
    raise FamrError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
  if weight_decay:
    return optax.chain(optax.add_decayed_weights(weight_decay), opt)
  return opt


_FROZEN: dict[Any, optax.GradientTransformation] = {}


def freeze_outside(optimizer: optax.GradientTransformation,
                   trainable_mask: Params | None) -> optax.GradientTransformation:
  """Wraps ``optimizer`` so that leaves where ``trainable_mask`` is False never move.

  Frozen leaves get exactly zero updates (``optax.set_to_zero``), so they stay
  bit-identical; their optimizer state is not even allocated. Memoized by
  ``(optimizer, mask)``, so a repeated call reuses compiled steps.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> opt = freeze_outside(optax.sgd(1.0), {"a": True, "b": False})
    >>> p = {"a": jnp.ones(2), "b": jnp.ones(2)}
    >>> u, _ = opt.update(p, opt.init(p), p)
    >>> u["b"].tolist()
    [0.0, 0.0]
  """
  if trainable_mask is None:
    return optimizer
  leaves, treedef = jax.tree.flatten(trainable_mask)
  key = (optimizer, tuple(bool(m) for m in leaves), treedef)
  if key not in _FROZEN:
    if len(_FROZEN) > 256:
      _FROZEN.clear()
    labels = jax.tree.map(lambda m: "train" if m else "freeze", trainable_mask)
    _FROZEN[key] = optax.multi_transform({"train": optimizer, "freeze": optax.set_to_zero()}, labels)
  return _FROZEN[key]


class StaticMask:
  """A pytree of bools made hashable, so a loss can take it as a static (compile-time) argument.

  Example:
    >>> m = StaticMask.of({"a": True, "b": False})
    >>> m == StaticMask.of({"a": True, "b": False}), m.tree["b"], StaticMask.of(None)
    (True, False, None)
  """

  def __init__(self, leaves: tuple[bool, ...], treedef: Any):
    self.leaves, self.treedef = leaves, treedef

  @classmethod
  def of(cls, tree: Params | None) -> "StaticMask | None":
    """The mask of ``tree`` (None stays None)."""
    if tree is None:
      return None
    leaves, treedef = jax.tree.flatten(tree)
    return cls(tuple(bool(m) for m in leaves), treedef)

  @property
  def tree(self) -> Params:
    """The pytree of bools."""
    return jax.tree.unflatten(self.treedef, self.leaves)

  def __hash__(self) -> int:
    return hash((self.leaves, self.treedef))

  def __eq__(self, other: object) -> bool:
    return isinstance(other, StaticMask) and (self.leaves, self.treedef) == (other.leaves, other.treedef)
