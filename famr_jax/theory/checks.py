"""The checks shared by both sections: influence vs retraining, FAMR sweeps, Eq. 10, Theorem .1.

Each function takes a :class:`Setting` (one model and one forget set) and
returns rows of the theory table (:func:`famr_jax.theory.report.table_row`)
and/or the raw curves behind the plots.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np

from famr_jax.theory import curvature
from famr_jax.theory import influence
from famr_jax.theory.minimize import MinimizeInfo, gd_distances
from famr_jax.theory.numerics import Spectral, cosine, flatten64, loglog_slope, pearson, vector_norm
from famr_jax.theory.report import fmt_value, held_status, table_row

__all__ = ['Setting', 'contraction', 'eq10_rows', 'famr_rows', 'famr_sweep', 'forget_probs_l1',
           'influence_rows', 'jacobian_spectral_norms']

Params = Any


class Setting(NamedTuple):
  """One model + forget set: everything a section's checks need."""
  section: str
  forget: str
  apply_fn: Callable
  ce_loss: Callable
  kl_loss: Callable
  weight_decay: float
  full: tuple          # (x, y, w): weights 1
  retain: tuple        # (x, y, w): weights 1 off T, 0 on T (same shapes as full: one compile)
  forget_data: tuple   # (x, y, w): weights 1 on T
  forget_x: jax.Array  # the inputs of T (the FAMR objective's data)
  test: tuple          # (x, y, w)
  theta0: Params
  w_star: Params
  lambdas: tuple[float, ...]
  batch_size: int


def forget_probs_l1(apply_fn, params, x) -> np.ndarray:
  """``||softmax(f(x)) - u||_1`` per row of ``x`` (``u`` uniform), float64.

  Example:
    >>> forget_probs_l1(lambda p, x: x @ p, jnp.zeros((2, 2)), jnp.ones((1, 2))).tolist()
    [0.0]
  """
  p = np.asarray(jax.nn.softmax(apply_fn(params, x), axis=-1), np.float64)
  return np.abs(p - 1.0 / p.shape[-1]).sum(-1)


@functools.partial(jax.jit, static_argnames=('apply_fn',))
def jacobian_spectral_norms(apply_fn, params, x):
  """``||d f(x) / d params||_2`` for every row of ``x`` (exact, per example).

  Example:
    >>> apply_fn = lambda p, x: x @ p['w']
    >>> norms = jacobian_spectral_norms(apply_fn, {'w': jnp.zeros((2, 1))}, jnp.array([[3., 4.]]))
    >>> [round(float(v), 4) for v in norms]
    [5.0]
  """
  def one(xi):
    jac = jax.jacrev(lambda p: apply_fn(p, xi[None])[0])(params)
    rows = jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree.leaves(jac)],
                           axis=1)
    return jnp.sqrt(jnp.max(jnp.linalg.eigvalsh(rows @ rows.T)))
  return jax.vmap(one)(x)


def influence_rows(s: Setting, curvature_name: str, hessian: np.ndarray, g: np.ndarray,
                   *, exact_label: str, w_local: Params | None = None
                   ) -> tuple[list[dict], dict]:
  """Eq. 9 sweep and influence-vs-retrain rows for one choice of H_R.

  ``w_local`` (non-convex models): the retained objective's minimizer reached
  from theta0 instead of from the initialization, the minimum an influence
  function can describe at all.
  """
  spec = Spectral.of(hessian)
  lam_min, lam_max = float(spec.evals[0]), float(spec.evals[-1])
  tag = f' [{curvature_name}]'
  curve = dict(lambdas=list(s.lambdas), lambda_min=lam_min, lambda_max=lam_max)
  if not lam_min > 0:
    return [table_row(
        s.section, s.forget, 'Eq. 7 / Eq. 9 premise' + tag, f'lambda_min({curvature_name} H_R)',
        'H_R positive definite (theta0 a strict minimum of the retained objective)',
        f'lambda_min = {fmt_value(lam_min)} (lambda_max {fmt_value(lam_max)}): H_R is indefinite, '
        'the Newton step and the bound are undefined', 'premise fails',
        lambda_min=lam_min, lambda_max=lam_max)], curve
  theta_if = flatten64(s.theta0) + spec.solve(g, 0.0)
  rows, sweep = _eq9_rows(s, tag, spec, g, theta_if)
  rows += _retrain_rows(s, tag, theta_if, w_local)
  curve.update(sweep, label=exact_label)
  return rows, curve


def _eq9_rows(s: Setting, tag: str, spec: Spectral, g: np.ndarray,
              theta_if: np.ndarray) -> tuple[list[dict], dict]:
  """Eq. 9 (bound, rate, and the paper's O(lambda) claim) over the damped steps theta_lambda."""
  th0, ws = flatten64(s.theta0), flatten64(s.w_star)
  lam_min, lam_max = float(spec.evals[0]), float(spec.evals[-1])
  g_norm = vector_norm(g)
  dist_if, bound, dist_w = [], [], []
  for lam in s.lambdas:
    theta_lam = th0 + spec.solve(g, lam)
    dist_if.append(vector_norm(theta_lam - theta_if))
    bound.append(lam * g_norm / (lam_min * (lam_min + lam)))
    dist_w.append(vector_norm(theta_lam - ws))
  ratios = np.asarray(dist_if) / np.asarray(bound)
  ok = bool(np.all(ratios <= 1 + 1e-9))
  rows = [table_row(
      s.section, s.forget, 'Eq. 9 (corrected, ERRATA 8)' + tag,
      '||theta_lambda - theta_IF|| over the lambda sweep',
      '<= lambda ||g|| / (lambda_min (lambda_min + lambda)) at every lambda',
      f'max measured/bound = {fmt_value(float(ratios.max()))} over {len(s.lambdas)} lambdas in '
      f'[{fmt_value(s.lambdas[0])}, {fmt_value(s.lambdas[-1])}]; lambda_min = {fmt_value(lam_min)}',
      held_status(ok), max_ratio=float(ratios.max()), lambda_min=lam_min, lambda_max=lam_max,
      g_norm=g_norm)]
  small = [i for i, lam in enumerate(s.lambdas) if lam <= 0.01 * lam_min]
  slope = loglog_slope([s.lambdas[i] for i in small], [dist_if[i] for i in small])
  if len(small) >= 2:
    rows.append(table_row(
        s.section, s.forget, 'Eq. 9 rate' + tag,
        'log-log slope of ||theta_lambda - theta_IF|| vs lambda, lambda <= 0.01 lambda_min',
        'slope 1 (within 0.05)', f'slope {fmt_value(slope)} over {len(small)} lambdas',
        held_status(abs(slope - 1) <= 0.05), slope=slope, num_points=len(small)))
  else:
    rows.append(table_row(
        s.section, s.forget, 'Eq. 9 rate' + tag, 'log-log slope, small lambda', 'slope 1',
        f'fewer than two lambdas <= 0.01 lambda_min = {fmt_value(0.01 * lam_min)}', 'n/a'))
  newton_err = vector_norm(theta_if - ws)
  slope_w = loglog_slope([s.lambdas[i] for i in small], [dist_w[i] for i in small])
  rows.append(table_row(
      s.section, s.forget, 'Eq. 9 as stated: ||theta - w*|| = O(lambda)' + tag,
      'log-log slope of ||theta_lambda - w*|| vs lambda, lambda <= 0.01 lambda_min',
      'slope 1 (the paper: theta -> w* linearly in lambda)',
      f'slope {fmt_value(slope_w)}; ||theta_lambda - w*|| -> ||theta_IF - w*|| = '
      f'{fmt_value(newton_err)} (at lambda={fmt_value(s.lambdas[0])}: {fmt_value(dist_w[0])}), '
      'the Newton step\'s own error',
      'n/a' if len(small) < 2 else held_status(abs(slope_w - 1) <= 0.05),
      slope=slope_w, newton_error=newton_err))
  sweep = dict(dist_to_theta_if=dist_if, eq9_bound=bound, damped_dist_to_w_star=dist_w,
               newton_error=newton_err)
  return rows, sweep


def _retrain_rows(s: Setting, tag: str, theta_if: np.ndarray,
                  w_local: Params | None) -> list[dict]:
  """The influence estimate theta_IF against the retrained weights and their test losses."""
  th0, ws = flatten64(s.theta0), flatten64(s.w_star)
  _, unravel = ravel_pytree(s.theta0)
  upd_if, upd_true = theta_if - th0, ws - th0
  rel = vector_norm(theta_if - ws) / vector_norm(upd_true)
  cos = cosine(upd_if, upd_true)
  rows = [table_row(
      s.section, s.forget, 'Eq. 7 (sign of ERRATA 6): theta_IF ~ w*' + tag,
      '||theta_IF - w*|| / ||w* - theta0||; cosine(theta_IF - theta0, w* - theta0)',
      'a first-order approximation; "few percent" taken as relative error <= 0.05',
      f'relative error {fmt_value(rel)}, cosine {fmt_value(cos)} (||w* - theta0|| = '
      f'{fmt_value(vector_norm(upd_true))}, ||theta_IF - theta0|| = {fmt_value(vector_norm(upd_if))})',
      held_status(rel <= 0.05), relative_error=rel, cosine=cos, update_norm=vector_norm(upd_true))]
  if w_local is not None:
    wl = flatten64(w_local)
    upd_local = wl - th0
    rel_l = vector_norm(theta_if - wl) / vector_norm(upd_local)
    cos_l = cosine(upd_if, upd_local)
    rows.append(table_row(
        s.section, s.forget, 'Eq. 7 vs the nearby retrained minimum' + tag,
        '||theta_IF - w*_local|| / ||w*_local - theta0||, cosine; w*_local = L-BFGS on D \\ T '
        'started at theta0',
        'relative error <= 0.05',
        f'relative error {fmt_value(rel_l)}, cosine {fmt_value(cos_l)} (||w*_local - theta0|| = '
        f'{fmt_value(vector_norm(upd_local))}, ||w*_local - w*|| = {fmt_value(vector_norm(wl - ws))})',
        held_status(rel_l <= 0.05), relative_error=rel_l, cosine=cos_l))
  pred = np.asarray(influence.predicted_loss_change(
      s.ce_loss, s.theta0, unravel(jnp.asarray(upd_if)), s.test, batch_size=s.batch_size),
      np.float64)
  actual = np.asarray(influence.actual_loss_change(
      s.ce_loss, s.theta0, s.w_star, s.test, batch_size=s.batch_size), np.float64)
  r = pearson(pred, actual)
  rows.append(table_row(
      s.section, s.forget, 'predicted vs actual test-loss change' + tag,
      'Pearson r of grad l(z; theta0).(theta_IF - theta0) vs l(z; w*) - l(z; theta0), test points',
      'r >= 0.9 (criterion of this benchmark; the paper states none)',
      f'r = {fmt_value(r)} over {len(pred)} test points; mean predicted {fmt_value(pred.mean())}, '
      f'actual {fmt_value(actual.mean())}', held_status(r >= 0.9), pearson=r,
      mean_predicted=float(pred.mean()), mean_actual=float(actual.mean())))
  return rows


def famr_sweep(s: Setting, minimize: Callable[[float, Params], tuple[Params, MinimizeInfo]],
               *, continuation: bool) -> dict:
  """Minimizers of the FAMR objective for every lambda, with the measured quantities.

  ``continuation``: solve from the largest lambda down, each start at the
  previous solution (for a strictly convex J the minimizer does not depend on
  the start, and Newton at lambda = 1e-6 from theta0 stalls in its damped
  phase). Otherwise every lambda starts at theta0, as FAMR's Algorithm 1 does.
  """
  th0, ws = flatten64(s.theta0), flatten64(s.w_star)
  x_t = s.forget_x
  forget0 = float(curvature.dataset_loss(s.kl_loss, s.theta0, x_t, batch_size=s.batch_size))
  out = dict(lambdas=list(s.lambdas), dist_to_w_star=[], dist_to_theta0=[], max_l1_to_uniform=[],
             forget_loss=[], grad_norm=[], iterations=[], forget_loss_theta0=forget0,
             l1_theta0=float(forget_probs_l1(s.apply_fn, s.theta0, x_t).max()),
             dist_theta0_to_w_star=vector_norm(th0 - ws), params=[])
  solutions = {}
  start = s.theta0
  for lam in sorted(s.lambdas, reverse=True):
    solutions[lam] = minimize(lam, start if continuation else s.theta0)
    start = solutions[lam][0]
  for lam in s.lambdas:
    theta, info = solutions[lam]
    flat = flatten64(theta)
    out['params'].append(theta)
    out['dist_to_w_star'].append(vector_norm(flat - ws))
    out['dist_to_theta0'].append(vector_norm(flat - th0))
    out['max_l1_to_uniform'].append(float(forget_probs_l1(s.apply_fn, theta, x_t).max()))
    out['forget_loss'].append(float(curvature.dataset_loss(s.kl_loss, theta, x_t,
                                                           batch_size=s.batch_size)))
    out['grad_norm'].append(info.grad_norm)
    out['iterations'].append(info.iterations)
  return out


def famr_rows(s: Setting, sweep: dict, grad_tol: float) -> list[dict]:
  """Rows of the FAMR minimizer: stationarity, theta* -> w*, Propositions .2 and .4, trade-off."""
  rows = []
  lams = np.asarray(s.lambdas)
  d_w = np.asarray(sweep['dist_to_w_star'])
  d0 = np.asarray(sweep['dist_to_theta0'])
  l1 = np.asarray(sweep['max_l1_to_uniform'])
  fl = np.asarray(sweep['forget_loss'])
  base = sweep['dist_theta0_to_w_star']
  worst_grad = max(sweep['grad_norm'])
  rows.append(table_row(
      s.section, s.forget, 'FAMR minimizer found (Eq. 6 stationarity)',
      'max over lambda of ||grad J(theta*)||', f'<= {fmt_value(grad_tol)}',
      f'{fmt_value(worst_grad)} (iterations {min(sweep["iterations"])}..{max(sweep["iterations"])})',
      held_status(worst_grad <= grad_tol), max_grad_norm=worst_grad))
  ratio = d_w / base
  rows.append(table_row(
      s.section, s.forget, 'Sec. 3.2 "as lambda -> 0, theta* -> w*" (ERRATA 8)',
      '||theta*(lambda) - w*|| / ||theta0 - w*|| for the FAMR minimizer theta*',
      '-> 0 as lambda -> 0 (criterion: <= 0.1 at the smallest lambda)',
      f'{fmt_value(ratio[0])} at lambda={fmt_value(lams[0])}, '
      f'{fmt_value(ratio[-1])} at lambda={fmt_value(lams[-1])}, '
      f'min {fmt_value(ratio.min())}', held_status(ratio[0] <= 0.1),
      ratios=ratio, dist_theta0_to_w_star=base))
  monotone_d0 = bool(np.all(np.diff(d0) <= 1e-9 * max(d0.max(), 1e-300)))
  no_worse = bool(np.all(fl <= sweep['forget_loss_theta0'] * (1 + 1e-12) + 1e-12))
  big = lams >= lams[-1] / 100
  slope_big = loglog_slope(lams[big], d0[big])
  rows.append(table_row(
      s.section, s.forget, 'Proposition .2',
      '||theta* - theta0|| vs lambda, and L_forget(theta*) <= L_forget(theta0)',
      '||theta* - theta0|| -> 0 as lambda grows (slope -> -1 once lambda >> the KL curvature), '
      'L_forget never above L_forget(theta0)',
      f'{fmt_value(d0[0])} at lambda={fmt_value(lams[0])} -> '
      f'{fmt_value(d0[-1])} at lambda={fmt_value(lams[-1])} '
      f'(monotone: {monotone_d0}; large-lambda slope {fmt_value(slope_big)}); L_forget(theta*) <= '
      f'L_forget(theta0) = {fmt_value(sweep["forget_loss_theta0"])} at every lambda: {no_worse}',
      held_status(monotone_d0 and no_worse and d0[-1] < d0[0]), slope_large_lambda=slope_big))
  monotone_l1 = bool(np.all(np.diff(l1) >= -1e-9))
  rows.append(table_row(
      s.section, s.forget, 'Proposition .4 (certificate)',
      'max over x in T of ||p_theta*(x) - u||_1 vs lambda',
      '-> 0 as lambda -> 0 (criterion: <= 0.01 at the smallest lambda)',
      f'{fmt_value(l1[0])} at lambda={fmt_value(lams[0])}, '
      f'{fmt_value(l1[-1])} at lambda={fmt_value(lams[-1])} '
      f'(theta0: {fmt_value(sweep["l1_theta0"])}; monotone in lambda: {monotone_l1})',
      held_status(l1[0] <= 0.01), max_l1=l1))
  # ERRATA 9: both propositions at the same lambda.
  rel_d0 = d0 / base
  good_cert = l1 <= 0.1
  close = rel_d0 <= 0.1
  best_d0 = float(rel_d0[good_cert].min()) if good_cert.any() else None
  best_l1 = float(l1[close].min()) if close.any() else None
  say = lambda v: 'no lambda of the sweep qualifies' if v is None else fmt_value(v)
  rows.append(table_row(
      s.section, s.forget, 'Prop. .2 vs .4 trade-off (ERRATA 9)',
      'at one lambda: ||theta* - theta0|| / ||w* - theta0|| and max_T ||p - u||_1',
      'both small at once (the paper implies it; the objective pulls them apart)',
      f'where max_T ||p - u||_1 <= 0.1: smallest relative distance {say(best_d0)}; where the '
      f'relative distance <= 0.1: smallest ||p - u||_1 {say(best_l1)} (see tradeoff.png)',
      'measured', best_rel_dist_with_certificate=best_d0, best_l1_when_close=best_l1))
  return rows


def eq10_rows(s: Setting, candidates: dict[str, np.ndarray], lipschitz: Callable,
              exact: bool, num_points: int) -> list[dict]:
  """Eq. 10 / Theorem .3: ||f_theta(x) - f_w*(x)|| <= L_f ||theta - w*||."""
  _, unravel = ravel_pytree(s.theta0)
  x = s.test[0][:num_points]
  f_w = np.asarray(s.apply_fn(s.w_star, x), np.float64)
  ws = flatten64(s.w_star)
  worst, worst_name, lf_used = 0.0, '', []
  out_diff = {}
  for name, flat in candidates.items():
    theta = unravel(jnp.asarray(flat))
    diff = np.linalg.norm(np.asarray(s.apply_fn(theta, x), np.float64) - f_w, axis=-1)
    lf = float(lipschitz(theta))
    lf_used.append(lf)
    dist = vector_norm(flat - ws)
    ratio = float(diff.max() / max(lf * dist, 1e-300))
    out_diff[name] = float(diff.max())
    if ratio > worst:
      worst, worst_name = ratio, name
  how = ('exact: L_f(x) = ||(x, 1)||, max over the data' if exact else
         'estimated: max over test points and 5 points of the segment [w*, theta] of the '
         'Jacobian spectral norm (a sampled lower estimate of the true constant)')
  rows = [table_row(
      s.section, s.forget, 'Eq. 10 / Theorem .3', '||f_theta(x) - f_w*(x)|| / (L_f ||theta - w*||)',
      f'<= 1 for every x ({how})',
      f'max ratio {fmt_value(worst)} ({worst_name}) over {len(candidates)} parameter vectors x '
      f'{len(x)} test points; L_f in [{fmt_value(min(lf_used))}, {fmt_value(max(lf_used))}]',
      held_status(worst <= 1 + 1e-9) if exact else ('held (estimate)' if worst <= 1 + 1e-9 else 'FAILED'),
      max_ratio=worst, max_output_difference=out_diff)]
  return rows


def contraction(s: Setting, lam: float, eta: float, theta_star: Params, steps: int) -> dict:
  """Gradient descent on J from theta0: distances to ``theta_star`` vs ``(1 - eta lam)^t``."""
  _, dists = gd_distances(s.kl_loss, s.theta0, s.forget_x, lam, s.theta0, eta,
                           theta_star, steps, s.batch_size)
  d = np.asarray(dists, np.float64)
  t = np.arange(len(d))
  bound = d[0] * (1 - eta * lam) ** t
  half = len(d) // 2
  rate = float((d[-1] / d[half]) ** (1.0 / max(len(d) - 1 - half, 1))) if d[half] > 0 else 0.0
  return dict(lam=lam, eta=eta, dists=d, bound=bound, observed_rate=rate,
              predicted_rate=1 - eta * lam, held=bool(np.all(d <= bound * (1 + 1e-9) + 1e-13 * d[0])))
