"""famr-jax against an equivalent PyTorch loop, in one process, on the issue-12 rows.

Usage:
  python experiments/bench_engine.py [--quick] [--json PATH] [--threads 2] [--repeats 1]

Rows (LeNet5 on Fashion-MNIST when /usr/share/datasets/fashion-mnist or another
folder ``load_dataset("fashion_mnist")`` searches has it, else random data of
the same shape; KarpathyNet on random 32x32x3 data):

1. LeNet5 training, Adam lr 1e-3, batch 128: images/s over one epoch.
2. KarpathyNet training, the same.
3. Paper FAMR on LeNet5: forget class 3 (6,000 images), KL(u || p) +
   lam/2 ||theta - theta0||^2, SGD lr 0.1, lam 0.1, batch 64, 10 epochs
   (940 steps): wall time.
4. One zero-shot differential epoch: LeNet5's fc1-fc3 tail updated on class
   impressions at fc1's input (``zero_shot_unlearn`` defaults otherwise).
5. Class impressions (100 per class, Adam lr 0.1) at fc1 and at fc3.

The famr-jax side calls the public functions users call (``train_classifier``,
``famr_unlearn``, ``zero_shot_unlearn``, ``class_impressions``). Compilation is
kept out of the timings: rows 1-3 time a second identical call after a warm-up
call (so what remains is what a repeat call costs; while the engine recompiles
per call, that includes the recompilation, and the library's own
compile-excluded ``run_s`` is printed next to it); rows 4-5 use the library's
compile-excluded timings (``run_s`` minus ``impression_s``, ``run_s``), which
it measures around an ahead-of-time compiled program. The PyTorch side (CPU,
``--threads`` threads) is a plain loop of the same model (weights copied from
famr-jax, logits checked to 1e-4), optimizer, batch size and step count,
warmed up by a few steps; it computes no per-epoch history, which the famr-jax
calls do. Each ratio is famr-jax's speed over PyTorch's (> 1: famr-jax faster);
with ``--repeats R`` each side's best of R is used.

``--quick``: 12,800 training images (KarpathyNet 6,400), FAMR 2 epochs, 3
zero-shot epochs on impressions of 200 steps, impressions of 200 steps.
Exit status 2 (and a one-line message) without PyTorch: install the ``bench``
extra or the CPU wheel.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import famr_jax as fj
from famr_jax import models
from famr_jax.engine.optimizers import make_optimizer

LENET_SHAPE = (28, 28, 1)
KARPATHY_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
FORGET_CLASS = 3


# ----------------------------------------------------------------------------- PyTorch twins


def torch_models(torch):
  """The PyTorch twins of LeNet5 and KarpathyNet (children named like the Flax stages)."""
  nn, F = torch.nn, torch.nn.functional

  def nhwc_flatten(h):   # Flax flattens NHWC feature maps
    return h.permute(0, 2, 3, 1).flatten(1)

  class LeNet5(nn.Module):
    def __init__(self, image_shape):
      super().__init__()
      # conv2 is VALID where 5x5 fits after the first pool (models.base.valid_or_same_padding).
      pads = [0 if s // 2 >= 5 else 2 for s in image_shape[:2]]
      fc1_in = 16 * math.prod((s // 2 + 2 * p - 4) // 2 for s, p in zip(image_shape[:2], pads))
      self.conv1 = nn.Conv2d(image_shape[2], 6, 5, padding=2)
      self.conv2 = nn.Conv2d(6, 16, 5, padding=tuple(pads))
      self.fc1, self.fc2, self.fc3 = nn.Linear(fc1_in, 120), nn.Linear(120, 84), nn.Linear(84, NUM_CLASSES)

    def forward(self, x):
      x = F.max_pool2d(F.relu(self.conv1(x)), 2)
      x = F.max_pool2d(F.relu(self.conv2(x)), 2)
      return self.tail(nhwc_flatten(x))

    def tail(self, h):   # stages fc1..fc3 on fc1's (flattened NHWC) input
      return self.fc3(F.relu(self.fc2(F.relu(self.fc1(h)))))

  class KarpathyNet(nn.Module):
    def __init__(self, image_shape):
      super().__init__()
      self.conv1 = nn.Conv2d(image_shape[2], 16, 5, padding=2)
      self.conv2 = nn.Conv2d(16, 20, 5, padding=2)
      self.conv3 = nn.Conv2d(20, 20, 5, padding=2)
      self.fc = nn.Linear(20 * math.prod(s // 8 for s in image_shape[:2]), NUM_CLASSES)

    def forward(self, x):
      for conv in (self.conv1, self.conv2, self.conv3):
        x = F.max_pool2d(F.relu(conv(x)), 2)
      return self.fc(nhwc_flatten(x))

  return {'lenet5': LeNet5, 'karpathynet': KarpathyNet}


def torch_twin(torch, name, params, image_shape, x_check, apply_fn):
  """The PyTorch model with famr-jax's weights; asserts equal logits (1e-4) on ``x_check``."""
  model = torch_models(torch)[name](image_shape)
  with torch.no_grad():
    for stage, module in model.named_children():
      kernel = torch.from_numpy(np.array(params[stage]['kernel']))
      if isinstance(module, torch.nn.Conv2d):
        module.weight.copy_(kernel.permute(3, 2, 0, 1))   # HWIO -> OIHW
      else:
        module.weight.copy_(kernel.T)                     # [in, out] -> [out, in]
      module.bias.copy_(torch.from_numpy(np.array(params[stage]['bias'])))
    ours = np.asarray(jax.jit(apply_fn)(params, jnp.asarray(x_check)))
    theirs = model(nchw(torch, x_check)).numpy()
  err = float(np.max(np.abs(ours - theirs)))
  assert err < 1e-4, f'{name}: PyTorch twin logits differ from famr-jax by {err:.2e}'
  return model


def nchw(torch, x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def torch_train_epoch(torch, model, x, y, batch, lr):
  """One shuffled epoch of Adam on cross-entropy; returns the wall time."""
  opt = torch.optim.Adam(model.parameters(), lr)
  n = x.shape[0]

  def run(order):
    for i in range(0, len(order), batch):
      idx = order[i:i + batch]
      opt.zero_grad(set_to_none=True)
      loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
      loss.backward()
      opt.step()
    return float(loss)

  run(torch.randperm(n)[:3 * batch])   # warm-up
  t0 = time.perf_counter()
  run(torch.randperm(n))
  return time.perf_counter() - t0


def torch_famr(torch, model, x, epochs, batch, lr, lam):
  """Paper FAMR: mean KL(u || p) + lam/2 ||theta - theta0||^2 by SGD; returns the wall time."""
  params = list(model.parameters())
  params0 = [p.detach().clone() for p in params]
  opt = torch.optim.SGD(params, lr)
  log_c = math.log(NUM_CLASSES)

  def step(xb):
    opt.zero_grad(set_to_none=True)
    log_p = torch.log_softmax(model(xb), -1)
    anchor = sum(torch.sum((p - p0) ** 2) for p, p0 in zip(params, params0))
    loss = torch.mean(-log_c - log_p.mean(-1)) + 0.5 * lam * anchor
    loss.backward()
    opt.step()
    return loss

  for i in range(3):   # warm-up, then restore the weights
    step(x[i * batch:(i + 1) * batch])
  with torch.no_grad():
    for p, p0 in zip(params, params0):
      p.copy_(p0)
  t0 = time.perf_counter()
  for _ in range(epochs):
    order = torch.randperm(x.shape[0])
    for i in range(0, len(order), batch):
      loss = step(x[order[i:i + batch]])
  float(loss)
  return time.perf_counter() - t0


def torch_zero_shot_epochs(torch, model, h_f, h_r, retain_classes, config, epochs):
  """``epochs`` differential epochs (masked KL, scale jitter, clipped AdamW) on the tail; seconds per epoch."""
  tail_params = [p for n, p in model.named_parameters() if n.startswith('fc')]
  frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
  opt = torch.optim.AdamW(tail_params, config.lr, weight_decay=config.weight_decay)
  keep = torch.from_numpy(retain_classes)
  log_smin = math.log(config.scale_min)

  def tail0(h):   # the original tail (the target's logits)
    a = torch.relu(h @ frozen['fc1.weight'].T + frozen['fc1.bias'])
    a = torch.relu(a @ frozen['fc2.weight'].T + frozen['fc2.bias'])
    return a @ frozen['fc3.weight'].T + frozen['fc3.bias']

  def masked_kl(logits0, logits):
    log_q = torch.log_softmax(logits0.masked_fill(~keep, -math.inf), -1)
    terms = torch.where(keep, log_q.exp() * (log_q - torch.log_softmax(logits, -1)), 0.0)
    return terms.sum(-1)

  def run(h_all, weight, n_batches=None):
    order = torch.randperm(h_all.shape[0])
    starts = list(range(0, len(order), config.batch_size))[:n_batches]
    for i in starts:
      h = h_all[order[i:i + config.batch_size]]
      h = h * torch.exp(torch.empty(h.shape[0], 1).uniform_(log_smin, 0.0))
      with torch.no_grad():
        logits0 = tail0(h)
      opt.zero_grad(set_to_none=True)
      loss = weight * masked_kl(logits0, model.tail(h)).mean()
      loss.backward()
      torch.nn.utils.clip_grad_norm_(tail_params, config.clip_norm)
      opt.step()
    return loss

  run(h_f, config.w_f, 2)   # warm-up
  t0 = time.perf_counter()
  for _ in range(epochs):
    run(h_f, config.w_f)
    loss = run(h_r, config.w_r)
  float(loss)
  return (time.perf_counter() - t0) / epochs


def torch_impressions(torch, tail, shape, steps, lr, num_per_class):
  """Logit-maximizing impressions (Adam) of every class through ``tail``; returns the wall time."""
  fan_in, spatial = math.prod(shape), (math.prod(shape[:-1]) if len(shape) > 1 else 1)
  targets = torch.arange(NUM_CLASSES).repeat_interleave(num_per_class)
  x = (math.sqrt(2.0 / (fan_in + spatial)) * torch.randn(len(targets), fan_in)).requires_grad_()
  opt = torch.optim.Adam([x], lr)

  def run(n):
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      loss = -tail(x).gather(1, targets[:, None]).sum()   # rows are independent: per-impression grads
      loss.backward()
      opt.step()
    return loss

  run(3)   # warm-up
  t0 = time.perf_counter()
  float(run(steps))
  return time.perf_counter() - t0


# ----------------------------------------------------------------------------- famr-jax side


def timed(fn, repeats):
  """(best wall time of ``repeats`` calls after one warm-up call, result of the last call)."""
  fn()   # warm-up: compiles
  best, out = math.inf, None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out.params)
    best = min(best, time.perf_counter() - t0)
  return best, out


def load_fashion(n_train):
  try:
    data = fj.load_dataset('fashion_mnist')
    x, y, source = data.x_train, data.y_train, 'Fashion-MNIST'
  except fj.FamrError:
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(60000, *LENET_SHAPE)).astype(np.float32)
    y = np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), 6000)
    source = 'random data (Fashion-MNIST not found)'
  return x, y, n_train, source


def row_training(torch, name, image_shape, x, y, n, repeats):
  model = models.create_model(name, NUM_CLASSES, image_shape)
  apply_fn = models.make_apply_fn(model)
  params0 = models.init_params(model, jax.random.key(0), image_shape)
  twin = torch_twin(torch, name, params0, image_shape, x[:16], apply_fn)
  x, y = x[:n], y[:n]
  config = fj.TrainConfig(epochs=1, batch_size=128, lr=1e-3)

  def call():
    return fj.train_classifier(apply_fn, params0, x, y, config, jax.random.key(1),
                               optimizer=make_optimizer("adam", 1e-3), show_progress=False)
  wall, result = timed(call, repeats)
  xt, yt = nchw(torch, x), torch.from_numpy(y.astype(np.int64))
  torch_s = min(torch_train_epoch(torch, twin, xt, yt, 128, 1e-3) for _ in range(repeats))
  return dict(jax=n / wall, torch=n / torch_s, unit='images/s', higher_is_better=True,
              jax_run_s=result.run_s, jax_wall_s=wall, torch_s=torch_s), result.params, model


def row_famr(torch, model, params, x_forget, epochs, repeats):
  apply_fn = models.make_apply_fn(model)
  config = fj.FAMRConfig(epochs=epochs, lr=0.1, lam=0.1, batch_size=64, optimizer='sgd')

  def call():
    return fj.famr_unlearn(apply_fn, params, x_forget, config, jax.random.key(2), show_progress=False)
  wall, result = timed(call, repeats)
  twin = torch_twin(torch, 'lenet5', params, LENET_SHAPE, x_forget[:16], apply_fn)
  xt = nchw(torch, x_forget)
  torch_s = min(torch_famr(torch, twin, xt, epochs, 64, 0.1, 0.1) for _ in range(repeats))
  steps = epochs * math.ceil(len(x_forget) / 64)
  return dict(jax=wall, torch=torch_s, unit='s', higher_is_better=False, steps=steps,
              jax_run_s=result.run_s)


def row_zero_shot(torch, model, params, epochs, impression_steps, repeats):
  config = fj.ZeroShotConfig(tail_layer='fc1', epochs=epochs, impression_steps=impression_steps)
  best = math.inf
  for _ in range(repeats):
    r = fj.zero_shot_unlearn(model, params, [FORGET_CLASS], NUM_CLASSES, LENET_SHAPE, config,
                             jax.random.key(3), show_progress=False)
    best = min(best, (r.run_s - r.impression_s) / epochs)
  retain = [c for c in range(NUM_CLASSES) if c != FORGET_CLASS]
  h_f, _ = r.impressions.select([FORGET_CLASS])
  h_r, _ = r.impressions.select(retain)
  twin = torch_twin(torch, 'lenet5', params, LENET_SHAPE, np.zeros((2, *LENET_SHAPE), np.float32),
                    models.make_apply_fn(model))
  flat = lambda h: torch.from_numpy(np.ascontiguousarray(h.reshape(len(h), -1)))
  keep = np.isin(np.arange(NUM_CLASSES), retain)
  torch_s = min(torch_zero_shot_epochs(torch, twin, flat(h_f), flat(h_r), keep, config, epochs)
                for _ in range(repeats))
  return dict(jax=best, torch=torch_s, unit='s/epoch', higher_is_better=False,
              impressions=int(len(r.impressions.labels)))


def row_impressions(torch, model, params, layer, steps, repeats):
  config = fj.ImpressionConfig(layer=layer, steps=steps)
  best = math.inf
  for _ in range(repeats):
    s = fj.class_impressions(model, params, range(NUM_CLASSES), NUM_CLASSES, LENET_SHAPE, config,
                             jax.random.key(4))
    best = min(best, s.run_s)
  twin = torch_twin(torch, 'lenet5', params, LENET_SHAPE, np.zeros((2, *LENET_SHAPE), np.float32),
                    models.make_apply_fn(model))
  for p in twin.parameters():
    p.requires_grad_(False)
  tail = twin.tail if layer == 'fc1' else twin.fc3
  shape = s.inputs.shape[1:]
  torch_s = min(torch_impressions(torch, tail, shape, steps, config.lr, config.num_per_class)
                for _ in range(repeats))
  return dict(jax=best, torch=torch_s, unit='s', higher_is_better=False, steps=steps)


# ----------------------------------------------------------------------------- driver


def fmt(value, unit):
  return f'{value:,.0f} {unit}' if unit == 'images/s' else f'{value:.3f} {unit}'


def report(label, row):
  ratio = row['jax'] / row['torch'] if row['higher_is_better'] else row['torch'] / row['jax']
  row['ratio'] = ratio
  extra = f"  (famr-jax run_s {row['jax_run_s']:.2f} s)" if 'jax_run_s' in row else ''
  print(f'{label:52s} famr-jax {fmt(row["jax"], row["unit"]):>18s}   pytorch '
        f'{fmt(row["torch"], row["unit"]):>18s}   ratio {ratio:5.2f}x{extra}', flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--quick', action='store_true', help='a short run (see the docstring)')
  parser.add_argument('--json', metavar='PATH', help='write the results as JSON')
  parser.add_argument('--threads', type=int, default=2, help='PyTorch intra-op threads (default 2)')
  parser.add_argument('--repeats', type=int, default=1, help='timed calls per side; the best is kept')
  parser.add_argument('--rows', default='train,karpathy,famr,zeroshot,impressions',
                      help='comma-separated subset of the rows')
  parser.add_argument('--loop', default='auto', choices=('auto', 'steps', 'scan'),
                      help="the engine's loop form (default: the library's per-backend choice)")
  parser.add_argument('--conv', default='auto', choices=('auto', 'im2col', 'lax'),
                      help="the models' convolution formulation (default: the library's per-backend choice)")
  args = parser.parse_args(argv)
  from famr_jax.engine.descent import set_loop_form
  set_loop_form(args.loop)
  models.set_conv_formulation(args.conv)
  try:
    import torch
  except ImportError:
    print('bench_engine: PyTorch is not installed (pip install famr-jax[bench], or the CPU '
          'wheel from PyPI); nothing to compare against', file=sys.stderr)
    return 2
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  rows = set(args.rows.split(','))
  q = args.quick
  n_lenet, n_karpathy = (12800, 6400) if q else (60000, 25600)
  famr_epochs = 2 if q else 10
  zs_epochs, zs_imp_steps = (3, 200) if q else (10, 1000)
  imp_steps = 200 if q else 1000

  x, y, n_lenet, source = load_fashion(n_lenet)
  print(f'famr-jax {fj.__version__}, jax {jax.__version__} ({jax.default_backend()}), '
        f'torch {torch.__version__} ({args.threads} threads); LeNet5 data: {source}; '
        f'{"quick" if q else "full"} run, best of {args.repeats}; loop {args.loop}, conv {args.conv}',
        flush=True)
  results = {'quick': q, 'loop': args.loop, 'conv': args.conv, 'threads': args.threads, 'repeats': args.repeats, 'data': source, 'rows': {}}

  # The LeNet5 params of the later rows: after the training row's epoch (or the init).
  model = models.create_model('lenet5', NUM_CLASSES, LENET_SHAPE)
  params = models.init_params(model, jax.random.key(0), LENET_SHAPE)
  if 'train' in rows:
    row, params, model = row_training(torch, 'lenet5', LENET_SHAPE, x, y, n_lenet, args.repeats)
    report(f'LeNet5 training, Adam, batch 128 ({n_lenet} img)', row)
    results['rows']['lenet5_train'] = row
  if 'karpathy' in rows:
    rng = np.random.default_rng(1)
    xk = rng.uniform(size=(n_karpathy, *KARPATHY_SHAPE)).astype(np.float32)
    yk = rng.integers(0, NUM_CLASSES, n_karpathy).astype(np.int32)
    row, _, _ = row_training(torch, 'karpathynet', KARPATHY_SHAPE, xk, yk, n_karpathy, args.repeats)
    report(f'KarpathyNet training, Adam, batch 128 ({n_karpathy} img)', row)
    results['rows']['karpathynet_train'] = row
  if 'famr' in rows:
    x_forget = x[y == FORGET_CLASS]
    row = row_famr(torch, model, params, x_forget, famr_epochs, args.repeats)
    report(f'paper FAMR, LeNet5 class {FORGET_CLASS}, {row["steps"]} steps', row)
    results['rows']['famr_paper'] = row
  if 'zeroshot' in rows:
    row = row_zero_shot(torch, model, params, zs_epochs, zs_imp_steps, args.repeats)
    report(f'zero-shot epoch, LeNet5 fc1-fc3 ({row["impressions"]} imp.)', row)
    results['rows']['zero_shot_epoch'] = row
  if 'impressions' in rows:
    for layer in ('fc1', 'fc3'):
      row = row_impressions(torch, model, params, layer, imp_steps, args.repeats)
      report(f'impressions at {layer}, 1000 x {imp_steps} Adam steps', row)
      results['rows'][f'impressions_{layer}'] = row
  print('ratio: famr-jax speed / PyTorch speed. Rows 1-3: wall time of a call after a warm-up call '
        '(run_s: the library\'s compile-excluded part); rows 4-5: the library\'s compile-excluded time.')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=1)
  return 0


if __name__ == '__main__':
  sys.exit(main())
