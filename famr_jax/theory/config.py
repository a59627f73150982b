"""Settings of the theory-verification benchmark and the names of its two sections."""

import dataclasses
import math
from typing import Literal

from famr_jax.errors import FamrError
from famr_jax.validation import CheckedFields

__all__ = ['CONVEX', 'NONCONVEX', 'TheoryConfig', 'quick_theory_config']

CONVEX = 'convex'
NONCONVEX = 'non-convex'


@dataclasses.dataclass(frozen=True)
class TheoryConfig(CheckedFields):
  """Settings of the theory-verification benchmark.

  Attributes:
    dataset: data set spec for :func:`famr_jax.data.datasets.load_dataset` (small
      images: the dense Hessians are ``P x P``).
    max_train: keep at most this many training examples (0: all).
    max_test: keep at most this many test examples (0: all).
    forget_sets: which forget sets T to run, each a separate sub-section:
      ``'samples'`` (random training examples) and/or ``'class'``.
    forget_class: the class forgotten by the ``'class'`` forget set.
    num_forget_samples: size of the ``'samples'`` forget set.
    convex_weight_decay: ``mu`` of the logistic regression's training
      objective ``sum CE + mu/2 ||theta||^2``.
    lambdas: lambda sweep (damped influence and FAMR anchor) for the convex model.
    contraction_lambda: lambda of the Theorem .1 gradient-descent run (convex).
    contraction_steps: gradient-descent steps of the Theorem .1 runs.
    nonconvex_model: ``'mlp'`` (one hidden layer) or ``'none'`` to skip the
      non-convex section.
    mlp_hidden: hidden width of that MLP.
    mlp_activation: ``'tanh'`` (default: a smooth loss, so L-BFGS reaches the
      gradient-norm target and the Hessian exists everywhere) or ``'relu'``
      (the :mod:`famr_jax.models` MLP; its kinks stall L-BFGS at a gradient
      norm of about 3 on digits, so its "ground truth" is not converged).
    nonconvex_weight_decay: ``mu`` of the MLP's training objective.
    nonconvex_lambdas: lambda sweep for the MLP.
    nonconvex_contraction_lambda: lambda of the Theorem .1 run on the MLP.
    convex_grad_tol: gradient-norm target of every convex minimization.
    nonconvex_grad_tol: gradient-norm target of the MLP's L-BFGS runs.
    max_lbfgs_steps: step cap of each L-BFGS run (MLP).
    lanczos_iters: Krylov dimension of the Lanczos checks.
    lipschitz_points: test points used for the Eq. 10 check.
    batch_size: examples per accumulation step of every data-set sum.
    seed: seed of the data subsets (the forget samples and the MLP's
      initialization come from the ``key`` argument).
  """
  dataset: str = 'digits'
  max_train: int = 0
  max_test: int = 0
  forget_sets: tuple[str, ...] = ('samples', 'class')
  forget_class: int = 3
  num_forget_samples: int = 40
  convex_weight_decay: float = 1.0
  lambdas: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
  contraction_lambda: float = 1.0
  contraction_steps: int = 2000
  nonconvex_model: Literal['mlp', 'none'] = 'mlp'
  mlp_hidden: int = 16
  mlp_activation: Literal['tanh', 'relu'] = 'tanh'
  nonconvex_weight_decay: float = 1.0
  nonconvex_lambdas: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
  nonconvex_contraction_lambda: float = 0.1
  convex_grad_tol: float = 1e-8
  nonconvex_grad_tol: float = 1e-6
  max_lbfgs_steps: int = 3000
  lanczos_iters: int = 80
  lipschitz_points: int = 100
  batch_size: int = 512
  seed: int = 0

  def validate(self) -> 'TheoryConfig':
    """Returns self, or raises FamrError naming the first bad field."""
    def positive_int(name):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FamrError(f'{name} must be a positive integer, got {value!r}')

    for name in ('num_forget_samples', 'contraction_steps', 'mlp_hidden', 'max_lbfgs_steps',
                 'lanczos_iters', 'lipschitz_points', 'batch_size'):
      positive_int(name)
    for name in ('max_train', 'max_test', 'forget_class', 'seed'):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FamrError(f'{name} must be an integer >= 0, got {value!r}')
    if not self.forget_sets or any(f not in ('samples', 'class') for f in self.forget_sets):
      raise FamrError(f"forget_sets must be a non-empty subset of ('samples', 'class'), "
                      f'got {self.forget_sets!r}')
    if len(set(self.forget_sets)) != len(self.forget_sets):
      raise FamrError(f'forget_sets has duplicates: {self.forget_sets!r}')
    if self.nonconvex_model not in ('mlp', 'none'):
      raise FamrError(f"nonconvex_model must be 'mlp' or 'none', got {self.nonconvex_model!r}")
    if self.mlp_activation not in ('tanh', 'relu'):
      raise FamrError(f"mlp_activation must be 'tanh' or 'relu', got {self.mlp_activation!r}")
    for name in ('lambdas', 'nonconvex_lambdas'):
      values = getattr(self, name)
      if len(values) < 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                                    for v in values):
        raise FamrError(f'{name} needs at least two finite values > 0, got {values!r}')
      if list(values) != sorted(set(values)):
        raise FamrError(f'{name} must be strictly increasing, got {values!r}')
    for name in ('convex_weight_decay', 'nonconvex_weight_decay', 'contraction_lambda',
                 'nonconvex_contraction_lambda', 'convex_grad_tol', 'nonconvex_grad_tol'):
      value = getattr(self, name)
      if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise FamrError(f'{name} must be finite and > 0, got {value!r}')
    return self


def quick_theory_config() -> TheoryConfig:
  """A tiny configuration (a subsample of digits, few lambdas) for tests and smoke runs.

  Example:
    >>> quick_theory_config().max_train
    240
  """
  return TheoryConfig(
      max_train=240, max_test=60, forget_sets=('samples',), num_forget_samples=12,
      lambdas=(1e-5, 1e-3, 1e-1, 10.0), contraction_steps=300,
      mlp_hidden=6, nonconvex_lambdas=(1e-2, 1.0, 100.0), max_lbfgs_steps=400,
      lanczos_iters=30, lipschitz_points=20, batch_size=256)
