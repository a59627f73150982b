"""Theory verification: FAMR's Section 3 and appendix claims against retraining.

``run_theory_verification(config, out_dir, key)`` trains models to
convergence, retrains them from scratch without a forget set T (the ground
truth ``w*``), computes the influence quantities of :mod:`famr_jax.theory.influence`
and the minimizers of the FAMR objective, and reports for every claim what was
predicted, what was measured and whether it held. It writes
``DIR/theory.json``, ``DIR/theory.md`` and three plots when ``out_dir`` is
given.

Which quantity each check is about (ERRATA items 6-10, decided here):

* Item 6 -- Eq. 7 sign: the influence (Newton) estimate is
  ``theta_IF = theta0 + H_R^{-1} g`` with ``g = sum_T grad l(theta0)`` and
  ``H_R`` the Hessian of the *retained* training objective (with its weight
  decay) at ``theta0``.
* Item 7 -- Eq. 8 mixes two losses: Eq. 8/9 are checked for the *damped
  influence step* ``theta_lambda = theta0 + (H_R + lambda I)^{-1} g``, which is
  what Eq. 8 describes; the FAMR minimizer
  ``theta*(lambda) = argmin sum_T KL(u || p_theta) + lambda/2 ||theta - theta0||^2``
  is computed separately and never confused with it.
* Item 8 -- Eq. 9 bounds ``||theta_lambda - theta_IF||`` by
  ``lambda ||g|| / (lambda_min (lambda_min + lambda))`` (checked exactly, with
  ``lambda_min`` of ``H_R`` from ``eigh``). The paper's ``||theta* - w*|| = O(lambda)``
  is measured twice: for ``theta_lambda`` (floors at the Newton error
  ``||theta_IF - w*||``) and for the FAMR minimizer (the paper's claim
  "theta* -> w*", which the objective does not imply).
* Item 9 -- Propositions .2 and .4 are measured over the same lambda sweep and
  drawn as a trade-off curve.
* Item 10 -- Theorem .1 is checked where ``J`` is strongly convex with modulus
  lambda (uniform-KL forget loss of a *linear* model is convex) and shown where
  it is not (the MLP).

Losses are sums over examples (the paper's ``sum_{(x,y) in T}``), the training
objective is ``sum_D CE + mu/2 ||theta||^2`` over *all* parameters (biases
included), so ``H_R`` is positive definite for the convex model.

Where the code lives: :mod:`~famr_jax.theory.config` (settings),
:mod:`~famr_jax.theory.problems` (data, models, forget sets),
:mod:`~famr_jax.theory.minimize` (Newton, L-BFGS), :mod:`~famr_jax.theory.checks`
(the checks of one model and forget set), :mod:`~famr_jax.theory.sections`
(the convex and non-convex sections) and :mod:`~famr_jax.theory.report` (table,
JSON, plots); this module runs them.

float64: the run enables x64 inside its own scope (``jax.enable_x64``) and
restores the previous setting on return; importing this module changes nothing.
"""

import dataclasses
import time
from typing import Callable

import jax
import numpy as np
import threadpoolctl

from famr_jax.io.outputs import check_output_target, staged_directory
from famr_jax.theory.config import CONVEX, NONCONVEX, TheoryConfig, quick_theory_config
from famr_jax.theory.minimize import lbfgs_minimize
from famr_jax.theory.problems import forget_mask, load_data
from famr_jax.theory.report import format_theory_table, jsonable, write_outputs
from famr_jax.theory.sections import convex_section, nonconvex_section

__all__ = [
    'CONVEX',
    'NONCONVEX',
    'TheoryConfig',
    'format_theory_table',
    'lbfgs_minimize',
    'quick_theory_config',
    'run_theory_verification',
]


def run_theory_verification(config: TheoryConfig | None = None, out_dir: str | None = None,
                            key: jax.Array | None = None, *,
                            log: Callable[[str], None] | None = None) -> dict:
  """Runs the theory-verification benchmark and returns its table.

  Trains the convex model (L2 multinomial logistic regression, Newton, float64)
  and, unless ``config.nonconvex_model == 'none'``, a small ReLU MLP (L-BFGS,
  float64), retrains both from scratch without each forget set, and checks
  FAMR's claims (Eq. 7-10, Theorem .1, Propositions .2/.4, Theorem .3) as
  corrected in ERRATA items 6-10. Runs in float64 inside a local
  ``jax.enable_x64(True)`` scope.

  Args:
    config: settings (default :class:`TheoryConfig`, a few minutes on 2 CPU
      cores; :func:`quick_theory_config` for a smoke run).
    out_dir: if given, writes ``theory.json``, ``theory.md``, ``eq9_bound.png``,
      ``tradeoff.png`` and ``contraction.png`` there (created if missing;
      existing files of those names are overwritten).
    key: PRNG key of the forget samples, the MLP's initialization and the
      Lanczos start vectors (default ``jax.random.key(config.seed)``).
    log: optional progress callback (e.g. ``print``).

  Returns:
    ``{'rows': [...], 'curves': {...}, 'summary': {...}, 'config': {...},
    'environment': {...}}``; every row has ``section``, ``forget_set``,
    ``claim``, ``quantity``, ``predicted``, ``measured``, ``status`` (``held``,
    ``FAILED``, ``premise fails``, ``measured``, ``n/a``), ``held`` (bool or
    None) and ``values``.

  Raises:
    FamrError: an invalid config or an unwritable ``out_dir``.

  Example:
    >>> import dataclasses
    >>> cfg = dataclasses.replace(quick_theory_config(), nonconvex_model='none')
    >>> result = run_theory_verification(cfg)  # doctest: +SKIP
    >>> print(format_theory_table(result))     # doctest: +SKIP
  """
  config = (config or TheoryConfig()).validate()
  if key is None:
    key = jax.random.key(config.seed)
  log = log or (lambda msg: None)
  if out_dir is not None:   # the output protocol: refuse an existing (non-empty) folder before any work
    check_output_target(out_dir, overwrite=False)
  start = time.perf_counter()
  # One BLAS thread for the host eigendecompositions: on a loaded 2-core
  # machine OpenBLAS's spinning threads made a 650x650 eigh take 10 s, not 0.2 s.
  with jax.enable_x64(True), threadpoolctl.threadpool_limits(limits=1, user_api='blas'):
    data = load_data(config)
    y = np.asarray(data['y_train'])
    masks = {which: forget_mask(config, which, y, jax.random.fold_in(key, 100 + i))
             for i, which in enumerate(config.forget_sets)}
    rows, curves, summary = convex_section(config, data, masks, key, log)
    if config.nonconvex_model != 'none':
      r2, c2, s2 = nonconvex_section(config, data, masks, key, log)
      rows, curves, summary = rows + r2, {**curves, **c2}, {**summary, **s2}
  result = dict(
      rows=rows, curves=jsonable(curves), summary=jsonable(summary),
      config=jsonable(dataclasses.asdict(config)),
      environment=dict(jax=jax.__version__, backend=jax.default_backend(), float64=True,
                       seconds=time.perf_counter() - start,
                       num_train=int(len(y)), num_test=int(len(data['y_test']))))
  if out_dir is not None:
    with staged_directory(out_dir, overwrite=False, command='verify-theory') as staging:
      write_outputs(result, str(staging))
  return result
