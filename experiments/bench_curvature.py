"""Benchmark of famr_jax.theory.curvature: HVP cost, dense/CG/Lanczos times, influence vs retraining.

Usage:
  python experiments/bench_curvature.py [--batch 64] [--repeats 20]
      [--models lenet5,karpathynet,vit_nano] [--seed 0]

Reports (every figure is a median over ``--repeats`` calls of a jit-compiled
function, compile excluded, each call ended by ``block_until_ready``; in part 1
the gradient, HVP and GN-HVP calls are taken in turn and the ratio is the
median of the per-repeat ratios, which is robust to a shared machine's load):

1. For each model at a fixed batch (float32, random inputs and labels): time of
   one gradient of the mean cross-entropy, one exact HVP (forward-over-reverse)
   and one Gauss-Newton HVP, and the ratios HVP / gradient.
2. On the L2 logistic regression of digits (650 params, float64): one dataset
   HVP, the dense Hessian, a CG solve of ``H_R x = g``, a Lanczos run, and
   ``eigh`` of the dense Hessian.
3. Influence estimate (forget gradient + CG solve) vs retraining from scratch
   (L-BFGS to gradient norm 1e-8) on the same problem.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl

from famr_jax.theory import curvature
from famr_jax.theory import influence
from famr_jax.data.datasets import load_dataset
from famr_jax.models import count_params, create_model, init_params, make_apply_fn
from famr_jax.theory.minimize import lbfgs_minimize

IMAGE_SHAPES = {'lenet5': (28, 28, 1), 'karpathynet': (32, 32, 3), 'vit_nano': (32, 32, 3),
                'vit_micro': (32, 32, 3), 'mlp': (8, 8, 1), 'logistic': (8, 8, 1)}


def median_time(fn, *args, repeats: int) -> float:
  """Median wall time of ``fn(*args)`` after one warm-up (compile) call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def interleaved_times(calls: dict, repeats: int) -> dict:
  """Wall and process-CPU times of several jitted calls, taken in turn each repeat.

  Taking them in turn exposes every call to the same background load (the
  machine is shared), so per-repeat ratios are steadier than ratios of
  separately measured medians. Process CPU time (all of XLA's threads) counts
  the work done and is the least sensitive to other processes. Compile is
  excluded by a warm-up call.
  """
  for fn, args in calls.values():
    jax.block_until_ready(fn(*args))
  wall = {name: [] for name in calls}
  cpu = {name: [] for name in calls}
  for _ in range(repeats):
    for name, (fn, args) in calls.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn(*args))
      wall[name].append(time.perf_counter() - start)
      cpu[name].append(time.process_time() - start_cpu)
  return ({name: np.asarray(t) for name, t in wall.items()},
          {name: np.asarray(t) for name, t in cpu.items()})


def bench_model(name: str, batch: int, repeats: int, key: jax.Array) -> dict:
  shape = IMAGE_SHAPES[name]
  model = create_model(name, 10, shape)
  k1, k2, k3, k4 = jax.random.split(key, 4)
  params = init_params(model, k1, shape)
  apply_fn = make_apply_fn(model)
  x = jax.random.uniform(k2, (batch,) + shape)
  y = jax.random.randint(k3, (batch,), 0, 10)
  v = jax.tree.map(lambda p: jax.random.normal(k4, p.shape, p.dtype), params)
  ce = influence.cross_entropy_example_loss(apply_fn)
  loss = lambda p: jnp.mean(ce(p, (x, y)))

  grad_fn = jax.jit(jax.grad(loss))
  hvp_fn = jax.jit(lambda p, u: curvature.hvp(loss, p, u))
  gn_fn = jax.jit(lambda p, u: jax.tree.map(
      lambda a: a / batch, curvature.gauss_newton_hvp(apply_fn, p, x, u)))
  wall, cpu = interleaved_times({'grad': (grad_fn, (params,)), 'hvp': (hvp_fn, (params, v)),
                                 'gn': (gn_fn, (params, v))}, repeats)
  med = lambda a: float(np.median(a))
  return dict(model=name, params=count_params(params),
              wall={k: med(t) for k, t in wall.items()}, cpu={k: med(t) for k, t in cpu.items()},
              wall_ratio_hvp=med(wall['hvp'] / wall['grad']), wall_ratio_gn=med(wall['gn'] / wall['grad']),
              cpu_ratio_hvp=med(cpu['hvp']) / med(cpu['grad']),
              cpu_ratio_gn=med(cpu['gn']) / med(cpu['grad']))


def bench_logistic(repeats: int, key: jax.Array) -> dict:
  ds = load_dataset('digits')
  x = jnp.asarray(ds.x_train.reshape(len(ds.x_train), -1), jnp.float64)
  y = jnp.asarray(ds.y_train)
  mu, n_forget = 1.0, 40
  forget = np.zeros(len(y), bool)
  forget[np.asarray(jax.random.choice(key, len(y), (n_forget,), replace=False))] = True
  retain = (x[~forget], y[~forget])
  forget_data = (x[forget], y[forget])
  apply_fn = lambda p, a: a @ p['w'] + p['b']
  ce = influence.cross_entropy_example_loss(apply_fn)

  def objective(p, data):
    return (curvature.dataset_loss(ce, p, data, batch_size=512)
            + 0.5 * mu * curvature.tree_vdot(p, p))

  zeros = {'w': jnp.zeros((64, 10), jnp.float64), 'b': jnp.zeros((10,), jnp.float64)}
  train = jax.jit(lambda p, data: lbfgs_minimize(lambda q: objective(q, data), p, 1e-8, 5000))
  theta0, _ = train(zeros, (x, y))
  t_retrain = median_time(train, zeros, retain, repeats=max(3, repeats // 4))
  w_star, steps = train(zeros, retain)

  op = curvature.dataset_hvp_operator(ce, theta0, retain, batch_size=512, weight_decay=mu)
  v = jax.tree.map(jnp.ones_like, theta0)
  t_hvp = median_time(jax.jit(lambda o, u: o(u)), op, v, repeats=repeats)
  t_dense = median_time(lambda o: curvature.dense_operator(o, theta0), op, repeats=repeats)
  hessian = curvature.dense_operator(op, theta0)
  t_eigh = median_time(lambda h: np.linalg.eigh(np.asarray(h)), hessian, repeats=repeats)
  g = influence.forget_gradient(ce, theta0, forget_data, batch_size=512)
  t_cg = median_time(lambda o, b: curvature.cg_solve(o, b, tol=1e-10)[0], op, g, repeats=repeats)
  _, info = curvature.cg_solve(op, g, tol=1e-10)
  t_lanczos = median_time(lambda o: curvature.lanczos_extreme_eigenvalues(
      o, theta0, jax.random.key(1), num_iters=40).ritz_values, op, repeats=repeats)

  def influence_estimate():
    g = influence.forget_gradient(ce, theta0, forget_data, batch_size=512)
    return influence.influence_estimate(theta0, g, op, tol=1e-10).params

  t_influence = median_time(influence_estimate, repeats=repeats)
  theta_if = influence_estimate()
  flat = lambda t: np.asarray(jax.flatten_util.ravel_pytree(t)[0])
  rel_err = (np.linalg.norm(flat(theta_if) - flat(w_star))
             / np.linalg.norm(flat(w_star) - flat(theta0)))
  return dict(params=650, n_retain=int((~forget).sum()), t_hvp=t_hvp, t_dense=t_dense,
              t_eigh=t_eigh, t_cg=t_cg, cg_iters=int(info.iterations), t_lanczos=t_lanczos,
              t_influence=t_influence, t_retrain=t_retrain, retrain_steps=int(steps),
              rel_err=float(rel_err))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--models', default='lenet5,karpathynet,vit_nano')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  key = jax.random.key(args.seed)
  print(f'jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}')
  print(f'\n1. gradient vs HVP, batch {args.batch}, float32, {args.repeats} repeats taken in turn '
        '(compile excluded); median wall ms / median process-CPU ms')
  print(f'{"model":12s} {"params":>7s} {"grad":>13s} {"HVP":>13s} {"GN-HVP":>13s} '
        f'{"HVP/grad wall":>14s} {"cpu":>5s} {"GN/grad wall":>13s} {"cpu":>5s}')
  for i, name in enumerate(args.models.split(',')):
    r = bench_model(name, args.batch, args.repeats, jax.random.fold_in(key, i))
    cell = lambda k: f'{1e3 * r["wall"][k]:6.1f}/{1e3 * r["cpu"][k]:6.1f}'
    print(f'{r["model"]:12s} {r["params"]:7d} {cell("grad"):>13s} {cell("hvp"):>13s} '
          f'{cell("gn"):>13s} {r["wall_ratio_hvp"]:14.2f} {r["cpu_ratio_hvp"]:5.2f} '
          f'{r["wall_ratio_gn"]:13.2f} {r["cpu_ratio_gn"]:5.2f}')
  print('  (wall ratio: median of per-repeat ratios; cpu ratio: ratio of median CPU times)')
  with jax.enable_x64(True), threadpoolctl.threadpool_limits(limits=1, user_api='blas'):
    r = bench_logistic(args.repeats, jax.random.fold_in(key, 99))
  print(f'\n2. L2 logistic regression on digits, P = {r["params"]}, |D \\ T| = {r["n_retain"]}, '
        'float64, median (compile excluded)')
  print(f'  dataset HVP (all retained examples)      {1e3 * r["t_hvp"]:9.2f} ms')
  print(f'  dense Hessian (P HVPs, vmapped)          {1e3 * r["t_dense"]:9.2f} ms')
  print(f'  eigh of the dense Hessian (NumPy)        {1e3 * r["t_eigh"]:9.2f} ms')
  print(f'  CG solve H_R x = g, tol 1e-10            {1e3 * r["t_cg"]:9.2f} ms ({r["cg_iters"]} steps)')
  print(f'  Lanczos, 40 iterations                   {1e3 * r["t_lanczos"]:9.2f} ms')
  print('\n3. influence estimate vs retraining (forget 40 random samples)')
  print(f'  influence (forget gradient + CG)         {1e3 * r["t_influence"]:9.2f} ms')
  print(f'  retrain from scratch (L-BFGS to 1e-8)    {1e3 * r["t_retrain"]:9.2f} ms '
        f'({r["retrain_steps"]} steps)')
  print(f'  speed-up {r["t_retrain"] / r["t_influence"]:.1f}x; '
        f'||theta_IF - w*|| / ||w* - theta0|| = {r["rel_err"]:.3g}')


if __name__ == '__main__':
  main()
