"""The two sections of the theory table: the convex model and the non-convex MLP.

Each trains its model to convergence, retrains it without every forget set
(the ground truth ``w*``) and runs the checks of :mod:`famr_jax.theory.checks`.
Both return ``(rows, curves, summary)`` keyed by ``'<section>/<forget set>'``.
"""

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.errors import FamrError
from famr_jax.theory import curvature
from famr_jax.theory import influence
from famr_jax.theory.checks import (Setting, contraction, eq10_rows, famr_rows, famr_sweep,
                                    influence_rows, jacobian_spectral_norms)
from famr_jax.theory.config import CONVEX, NONCONVEX, TheoryConfig
from famr_jax.theory.minimize import Objective, gd_distances, lbfgs_minimize_objective, newton_minimize
from famr_jax.theory.numerics import Spectral, flatten64, vector_norm
from famr_jax.theory.problems import (kl_loss_for, logistic_apply, split_sets, tanh_mlp_apply,
                                      tanh_mlp_init, weighted_ce_for)
from famr_jax.theory.report import fmt_value, held_status, table_row

__all__ = ['convex_section', 'nonconvex_section']

Params = Any


def _thinned(con: dict) -> dict:
  """A contraction run with at most ~400 points per curve (the JSON stays small)."""
  return dict(con, dists=con['dists'][::max(1, len(con['dists']) // 400)],
              bound=con['bound'][::max(1, len(con['bound']) // 400)])


# ----------------------------------------------------------------------------
# Convex: L2 multinomial logistic regression, every minimum by Newton.


def convex_section(config: TheoryConfig, data: dict, masks: dict, key: jax.Array, log) -> tuple:
  """Runs every check on the convex model for each forget set in ``masks``."""
  rows, curves, summary = [], {}, {}
  c = data['num_classes']
  d = data['x_train'].shape[1]
  ce_loss = weighted_ce_for(logistic_apply)
  kl_loss = kl_loss_for(logistic_apply)
  mu, bs, tol = config.convex_weight_decay, config.batch_size, config.convex_grad_tol
  zeros = {'w': jnp.zeros((d, c), jnp.float64), 'b': jnp.zeros((c,), jnp.float64)}
  full = split_sets(data, np.zeros(len(data['y_train']), bool))[0]
  theta0, info0 = newton_minimize(Objective(ce_loss, full, mu, zeros, bs), zeros, grad_tol=tol)
  num_params = int(flatten64(zeros).size)
  x_all = np.concatenate([np.asarray(data['x_train']), np.asarray(data['x_test'])])
  lf_exact = float(np.sqrt((x_all ** 2).sum(1) + 1).max())
  for which, mask in masks.items():
    t0 = time.perf_counter()
    full, retain, forget, forget_x, _, test = split_sets(data, mask)
    w_star, info_w = newton_minimize(Objective(ce_loss, retain, mu, zeros, bs), zeros, grad_tol=tol)
    s = Setting(CONVEX, which, logistic_apply, ce_loss, kl_loss, mu, full, retain, forget,
                forget_x, test, theta0, w_star, tuple(config.lambdas), bs)
    rows.append(table_row(
        CONVEX, which, 'ground truth', '||grad L_D(theta0)||, ||grad L_R(w*)|| (Newton, float64)',
        f'<= {fmt_value(tol)}',
        f'{fmt_value(info0.grad_norm)} ({info0.iterations} steps), {fmt_value(info_w.grad_norm)} '
        f'({info_w.iterations} steps); P = {num_params}, |D| = {len(mask)}, |T| = {int(mask.sum())}',
        held_status(max(info0.grad_norm, info_w.grad_norm) <= tol),
        grad_norm_theta0=info0.grad_norm, grad_norm_w_star=info_w.grad_norm))
    g_tree = influence.forget_gradient(ce_loss, theta0, forget, batch_size=bs)
    g = flatten64(g_tree)
    op = curvature.dataset_hvp_operator(ce_loss, theta0, retain, batch_size=bs, weight_decay=mu)
    h_r = np.asarray(curvature.dense_operator(op, theta0), np.float64)
    lib_rows, est_dense = _library_rows(s, config, op, h_r, g_tree, key)
    rows += lib_rows
    inf_rows, curve = influence_rows(s, 'exact', h_r, g, exact_label='exact Hessian')
    rows += inf_rows

    def famr_minimizer(lam, start):
      obj = Objective(kl_loss, forget_x, lam, theta0, bs)
      return newton_minimize(obj, start, grad_tol=tol, max_iters=200)

    sweep = famr_sweep(s, famr_minimizer, continuation=True)
    rows += famr_rows(s, sweep, tol)
    spec = Spectral.of(h_r)
    th0 = flatten64(theta0)
    candidates = {'theta_IF': flatten64(est_dense.params)}
    for lam, p in zip(config.lambdas, sweep['params']):
      candidates[f'theta*(lambda={lam:g})'] = flatten64(p)
      candidates[f'theta_lambda(lambda={lam:g})'] = th0 + spec.solve(g, lam)
    rows += eq10_rows(s, candidates, lambda theta: lf_exact, exact=True,
                      num_points=config.lipschitz_points)
    con_row, con = _convex_contraction(s, config, famr_minimizer)
    rows.append(con_row)
    sweep.pop('params')
    curves[f'{CONVEX}/{which}'] = dict(influence=curve, famr=sweep, contraction=_thinned(con))
    summary[f'{CONVEX}/{which}'] = dict(num_params=num_params, num_forget=int(mask.sum()),
                                        seconds=time.perf_counter() - t0)
    log(f'convex/{which}: {time.perf_counter() - t0:.1f} s')
  return rows, curves, summary


def _library_rows(s: Setting, config: TheoryConfig, op: Callable, h_r: np.ndarray, g_tree: Params,
                  key: jax.Array) -> tuple[list[dict], influence.InfluenceEstimate]:
  """Library cross-checks: CG vs dense, Lanczos vs eigh; also returns the dense estimate."""
  est_dense = influence.influence_estimate_dense(s.theta0, g_tree, jnp.asarray(h_r))
  est_cg = influence.influence_estimate(s.theta0, g_tree, op, tol=1e-12)
  delta_dense = flatten64(est_dense.delta)
  cg_gap = vector_norm(flatten64(est_cg.delta) - delta_dense) / vector_norm(delta_dense)
  rows = [table_row(
      s.section, s.forget, 'library: CG solve', '||delta_CG - delta_dense|| / ||delta_dense||',
      '<= 1e-8', f'{fmt_value(cg_gap)} after {int(est_cg.cg_info.iterations)} CG steps',
      held_status(cg_gap <= 1e-8), relative_gap=cg_gap, iterations=int(est_cg.cg_info.iterations))]
  evals = np.linalg.eigvalsh(0.5 * (h_r + h_r.T))
  lz = curvature.lanczos_extreme_eigenvalues(op, s.theta0, jax.random.fold_in(key, 1),
                                             num_iters=config.lanczos_iters)
  err_min = abs(lz.lambda_min - evals[0]) / abs(evals[0])
  err_max = abs(lz.lambda_max - evals[-1]) / abs(evals[-1])
  rows.append(table_row(
      s.section, s.forget, 'library: Lanczos',
      'relative error of lambda_min, lambda_max of H_R vs eigh', '<= 1e-3',
      f'{fmt_value(err_min)}, {fmt_value(err_max)} with {lz.num_iters} iterations '
      f'(eigh: {fmt_value(evals[0])}, {fmt_value(evals[-1])})',
      held_status(max(err_min, err_max) <= 1e-3),
      lanczos=[lz.lambda_min, lz.lambda_max], eigh=[evals[0], evals[-1]]))
  return rows, est_dense


def _convex_contraction(s: Setting, config: TheoryConfig, famr_minimizer: Callable
                        ) -> tuple[dict, dict]:
  """Theorem .1: gradient descent on J, strongly convex with modulus lambda."""
  lam_c = config.contraction_lambda
  x_t = np.asarray(s.forget_x)
  xt1 = np.hstack([x_t, np.ones((len(x_t), 1))])
  lip = 0.5 * float(np.linalg.eigvalsh(xt1.T @ xt1)[-1])  # Boehning: diag(p) - pp^T <= I/2
  theta_star_c, _ = famr_minimizer(lam_c, s.theta0)
  con = contraction(s, lam_c, 1.0 / (lip + lam_c), theta_star_c, config.contraction_steps)
  row = table_row(
      s.section, s.forget, 'Theorem .1 (J strongly convex: linear model, convex KL)',
      f'||theta_t - theta*|| of gradient descent, lambda={fmt_value(lam_c)}, eta = 1/(L + lambda)',
      f'<= (1 - eta lambda)^t ||theta_0 - theta*|| with L = {fmt_value(lip)} (exact bound: '
      'Hessian of KL(u||softmax) <= I/2)',
      f'{"all" if con["held"] else "not all"} {config.contraction_steps} steps within the bound; '
      f'observed rate {con["observed_rate"]:.6f} vs 1 - eta lambda = {con["predicted_rate"]:.6f}',
      held_status(con['held']), observed_rate=con['observed_rate'],
      predicted_rate=con['predicted_rate'], lipschitz=lip)
  return row, con


# ----------------------------------------------------------------------------
# Non-convex: a one-hidden-layer MLP, every minimum by L-BFGS.


def _nonconvex_model(config: TheoryConfig, data: dict, init_key: jax.Array
                     ) -> tuple[Callable, Params]:
  """``(apply_fn, init)`` of the MLP in float64."""
  c = data['num_classes']
  if config.mlp_activation == 'relu':
    from famr_jax.models import create_model, init_params, make_apply_fn  # pylint: disable=import-outside-toplevel
    model = create_model('mlp', c, tuple(data['image_shape']), hidden=(config.mlp_hidden,))
    init = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                        init_params(model, init_key, tuple(data['image_shape'])))
    return make_apply_fn(model), init
  d = int(data['x_train'].shape[1])
  return tanh_mlp_apply, tanh_mlp_init(init_key, d, config.mlp_hidden, c)


def nonconvex_section(config: TheoryConfig, data: dict, masks: dict, key: jax.Array, log) -> tuple:
  """Runs every check on the MLP for each forget set in ``masks``."""
  rows, curves, summary = [], {}, {}
  c = data['num_classes']
  d = int(data['x_train'].shape[1])
  apply_fn, init = _nonconvex_model(config, data, jax.random.fold_in(key, 2))
  num_params = int(flatten64(init).size)
  ce_loss = weighted_ce_for(apply_fn)
  kl_loss = kl_loss_for(apply_fn)
  mu, bs, tol = config.nonconvex_weight_decay, config.batch_size, config.nonconvex_grad_tol
  zeros = jax.tree.map(jnp.zeros_like, init)
  full = split_sets(data, np.zeros(len(data['y_train']), bool))[0]

  def minimize(data_set, start):
    return lbfgs_minimize_objective(Objective(ce_loss, data_set, mu, zeros, bs), start,
                                    grad_tol=tol, max_steps=config.max_lbfgs_steps)

  theta0, info0 = minimize(full, init)
  for which, mask in masks.items():
    t0 = time.perf_counter()
    full, retain, forget, forget_x, retain_x, test = split_sets(data, mask)
    # Retrain from scratch: the same initialization, D \ T only.
    w_star, info_w = minimize(retain, init)
    # The minimum of the same objective next to theta0 (what a Newton step targets).
    w_local, info_l = minimize(retain, theta0)
    s = Setting(NONCONVEX, which, apply_fn, ce_loss, kl_loss, mu, full, retain, forget, forget_x,
                test, theta0, w_star, tuple(config.nonconvex_lambdas), bs)
    rows.append(table_row(
        NONCONVEX, which, 'ground truth',
        '||grad L_D(theta0)||, ||grad L_R(w*)|| (L-BFGS from the same init), '
        '||grad L_R(w*_local)|| (L-BFGS from theta0); float64',
        f'<= {fmt_value(tol)}',
        f'{fmt_value(info0.grad_norm)} ({info0.iterations} steps), {fmt_value(info_w.grad_norm)} '
        f'({info_w.iterations} steps), {fmt_value(info_l.grad_norm)} ({info_l.iterations} steps); '
        f'MLP {d}-{config.mlp_hidden}-{c} {config.mlp_activation}, '
        f'P = {num_params}, |T| = {int(mask.sum())}',
        held_status(max(info0.grad_norm, info_w.grad_norm, info_l.grad_norm) <= tol),
        grad_norm_theta0=info0.grad_norm, grad_norm_w_star=info_w.grad_norm,
        grad_norm_w_local=info_l.grad_norm))
    g_tree = influence.forget_gradient(ce_loss, theta0, forget, batch_size=bs)
    g = flatten64(g_tree)
    op = curvature.dataset_hvp_operator(ce_loss, theta0, retain, batch_size=bs, weight_decay=mu)
    h_exact = np.asarray(curvature.dense_operator(op, theta0), np.float64)
    gn_op = curvature.gauss_newton_operator(apply_fn, theta0, retain_x, batch_size=bs,
                                            weight_decay=mu)
    h_gn = np.asarray(curvature.dense_operator(gn_op, theta0), np.float64)
    exact_rows, curve_exact = influence_rows(s, 'exact', h_exact, g, exact_label='exact Hessian',
                                             w_local=w_local)
    gn_rows, curve_gn = influence_rows(s, 'Gauss-Newton', h_gn, g, exact_label='Gauss-Newton',
                                       w_local=w_local)
    rows += exact_rows + gn_rows
    rows.append(_cg_row(s, op, g_tree, curve_exact['lambda_min'] > 0, num_params))

    def famr_minimizer(lam, start):
      obj = Objective(kl_loss, forget_x, lam, theta0, bs)
      return lbfgs_minimize_objective(obj, start, grad_tol=tol, max_steps=config.max_lbfgs_steps)

    sweep = famr_sweep(s, famr_minimizer, continuation=False)
    rows += famr_rows(s, sweep, tol)
    rows += _nonconvex_eq10_rows(s, config, h_gn, g, sweep['params'])
    con_rows, con = _nonconvex_contraction(s, config, key)
    rows += con_rows
    sweep.pop('params')
    curves[f'{NONCONVEX}/{which}'] = dict(
        influence=curve_exact, influence_gauss_newton=curve_gn, famr=sweep,
        contraction=_thinned(con))
    summary[f'{NONCONVEX}/{which}'] = dict(num_params=num_params, num_forget=int(mask.sum()),
                                           seconds=time.perf_counter() - t0)
    log(f'non-convex/{which}: {time.perf_counter() - t0:.1f} s')
  return rows, curves, summary


def _cg_row(s: Setting, op: Callable, g_tree: Params, positive_definite: bool,
            num_params: int) -> dict:
  """CG on the exact Hessian: must report, not return garbage, when it is indefinite."""
  try:
    est = influence.influence_estimate(s.theta0, g_tree, op, tol=1e-10, maxiter=4 * num_params)
    cg_note = f'converged in {int(est.cg_info.iterations)} steps'
    cg_ok = positive_definite
  except FamrError as err:
    cg_note = f'raised FamrError: {err}'
    cg_ok = not positive_definite
  return table_row(
      s.section, s.forget, 'library: CG on H_R', 'influence_estimate (CG, undamped) on the exact H_R',
      'a solution when H_R is positive definite, a FamrError otherwise', cg_note,
      held_status(cg_ok))


def _nonconvex_eq10_rows(s: Setting, config: TheoryConfig, h_gn: np.ndarray, g: np.ndarray,
                         famr_params: list) -> list[dict]:
  """Eq. 10 with L_f estimated from Jacobian norms along the segments [w*, theta]."""
  th0 = flatten64(s.theta0)
  candidates = {'theta_IF (Gauss-Newton)': th0 + Spectral.of(h_gn).solve(g, 0.0)}
  for lam, p in zip(config.nonconvex_lambdas, famr_params):
    candidates[f'theta*(lambda={lam:g})'] = flatten64(p)
  x_lf = s.test[0][:config.lipschitz_points]

  def lipschitz_estimate(theta):
    norms = [np.asarray(jacobian_spectral_norms(
        s.apply_fn, jax.tree.map(lambda a, b: a + t * (b - a), s.w_star, theta), x_lf)).max()
             for t in np.linspace(0.0, 1.0, 5)]
    return max(norms)

  return eq10_rows(s, candidates, lipschitz_estimate, exact=False,
                   num_points=config.lipschitz_points)


def _nonconvex_contraction(s: Setting, config: TheoryConfig, key: jax.Array
                           ) -> tuple[list[dict], dict]:
  """Theorem .1 where J need not be strongly convex (premise checked by Lanczos)."""
  lam_c = config.nonconvex_contraction_lambda
  kl_loss, forget_x, theta0, bs = s.kl_loss, s.forget_x, s.theta0, s.batch_size
  kl_op = curvature.dataset_hvp_operator(kl_loss, theta0, forget_x, batch_size=bs)
  lz0 = curvature.lanczos_extreme_eigenvalues(kl_op, theta0, jax.random.fold_in(key, 3),
                                              num_iters=config.lanczos_iters)
  lip = 2.0 * lz0.lambda_max
  eta = 1.0 / (lip + lam_c)
  obj_c = Objective(kl_loss, forget_x, lam_c, theta0, bs)
  theta_t, _ = gd_distances(kl_loss, theta0, forget_x, lam_c, theta0, eta, theta0,
                            config.contraction_steps, bs)
  theta_star_c, info_c = lbfgs_minimize_objective(
      obj_c, theta_t, grad_tol=min(config.nonconvex_grad_tol, 1e-9),
      max_steps=config.max_lbfgs_steps)
  con = contraction(s, lam_c, eta, theta_star_c, config.contraction_steps)
  kl_op_star = curvature.dataset_hvp_operator(kl_loss, theta_star_c, forget_x, batch_size=bs)
  lz_star = curvature.lanczos_extreme_eigenvalues(kl_op_star, theta_star_c,
                                                  jax.random.fold_in(key, 4),
                                                  num_iters=config.lanczos_iters)
  convex_ok = min(lz0.lambda_min, lz_star.lambda_min) >= 0
  rows = [table_row(
      s.section, s.forget, 'Theorem .1 premise',
      'lambda_min of Hess L_forget at theta0 and theta* (Lanczos)',
      '>= 0 everywhere (J strongly convex with modulus lambda)',
      f'{fmt_value(lz0.lambda_min)} at theta0, {fmt_value(lz_star.lambda_min)} at theta* '
      f'(Lanczos Ritz values: upper bounds on lambda_min)',
      'held' if convex_ok else 'premise fails',
      lambda_min_theta0=lz0.lambda_min, lambda_min_theta_star=lz_star.lambda_min)]
  rows.append(table_row(
      s.section, s.forget, 'Theorem .1 (J not known to be convex)',
      f'||theta_t - theta*|| of gradient descent, lambda={fmt_value(lam_c)}, eta = 1/(L + lambda)',
      f'<= (1 - eta lambda)^t ||theta_0 - theta*|| with L estimated as 2 x lambda_max(Hess '
      f'L_forget(theta0)) = {fmt_value(lip)} (an estimate)',
      f'{"all" if con["held"] else "not all"} {config.contraction_steps} steps within the bound; '
      f'observed rate {con["observed_rate"]:.6f} vs 1 - eta lambda = {con["predicted_rate"]:.6f}; '
      f'||grad J(theta*)|| = {fmt_value(info_c.grad_norm)}',
      held_status(con['held']), observed_rate=con['observed_rate'],
      predicted_rate=con['predicted_rate'], lipschitz_estimate=lip))
  return rows, con
