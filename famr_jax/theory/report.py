"""The theory table: its rows, JSON conversion, text/markdown formatting and plots."""

import json
import math
import os
from typing import Literal

import jax
import numpy as np

from famr_jax.errors import FamrError
from famr_jax.theory.config import CONVEX, NONCONVEX

__all__ = ['fmt_value', 'format_theory_table', 'held_status', 'jsonable', 'plot_curves', 'table_row',
           'write_outputs']


def table_row(section: str, forget: str, claim: str, quantity: str, predicted: str, measured: str,
              status: str, **values) -> dict:
  """One row of the theory table; ``held`` is derived from ``status``, ``values`` made JSON-safe.

  Example:
    >>> r = table_row('convex', 'samples', 'Eq. 9', 'q', 'p', 'm', 'held', ratio=np.float64(0.5))
    >>> r['held'], r['values']
    (True, {'ratio': 0.5})
  """
  held = {'held': True, 'FAILED': False}.get(status)
  return dict(section=section, forget_set=forget, claim=claim, quantity=quantity,
              predicted=predicted, measured=measured, status=status, held=held,
              values={k: jsonable(v) for k, v in values.items()})


def jsonable(v):
  """``v`` with arrays as lists, NumPy scalars as Python ones and non-finite floats as strings.

  Example:
    >>> jsonable({'a': np.array([1.0, np.inf]), 'n': np.int64(3)})
    {'a': [1.0, 'inf'], 'n': 3}
  """
  if isinstance(v, (np.ndarray, jax.Array)):
    return [jsonable(x) for x in np.asarray(v).tolist()]
  if isinstance(v, (list, tuple)):
    return [jsonable(x) for x in v]
  if isinstance(v, dict):
    return {k: jsonable(x) for k, x in v.items()}
  if isinstance(v, (np.floating, float)):
    v = float(v)
    return v if math.isfinite(v) else str(v)
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, (np.bool_,)):
    return bool(v)
  return v


def held_status(ok: bool) -> str:
  """The status of a check with a pass/fail criterion.

  Example:
    >>> held_status(True), held_status(False)
    ('held', 'FAILED')
  """
  return 'held' if ok else 'FAILED'


def fmt_value(x: float) -> str:
  """A number with 3 significant digits (non-finite values and None as they print).

  Example:
    >>> fmt_value(0.000123456), fmt_value(float('nan'))
    ('0.000123', 'nan')
  """
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return str(x)
  return f'{x:.3g}'


def format_theory_table(result: dict, fmt: Literal['text', 'markdown'] = 'markdown') -> str:
  """Formats the rows of :func:`run_theory_verification` as a table per section.

  Args:
    result: the returned dict (or the loaded ``theory.json``).
    fmt: ``'markdown'`` (pipe tables) or ``'text'`` (one block per row).

  Example:
    >>> row = dict(section='convex', forget_set='samples', claim='Eq. 9', quantity='q',
    ...            predicted='p', measured='m', status='held')
    >>> print(format_theory_table({'rows': [row]}, 'text').splitlines()[0])
    == convex -- forget set: samples ==
  """
  if fmt not in ('text', 'markdown'):
    raise FamrError(f"fmt must be 'text' or 'markdown', got {fmt!r}")
  groups: dict[tuple[str, str], list[dict]] = {}
  for row in result['rows']:
    groups.setdefault((row['section'], row['forget_set']), []).append(row)
  out = []
  activation = result.get('config', {}).get('mlp_activation', '')
  titles = {CONVEX: 'convex: L2 multinomial logistic regression',
            NONCONVEX: f'non-convex: one-hidden-layer {activation} MLP with weight decay'.replace('  ', ' ')}
  for (section, forget), rows in groups.items():
    title = f'{titles.get(section, section)} -- forget set: {forget}'
    if fmt == 'markdown':
      out.append(f'### {title}\n')
      out.append('| claim | quantity checked | predicted | measured | status |')
      out.append('|---|---|---|---|---|')
      for r in rows:
        cells = [r['claim'], r['quantity'], r['predicted'], r['measured'], f"**{r['status']}**"]
        # Norm bars would have to be escaped as \\|\\| inside a pipe table: write them as U+2016.
        out.append('| ' + ' | '.join(str(c).replace('||', '\u2016').replace('|', '\\|')
                                     for c in cells) + ' |')
      out.append('')
    else:
      out.append(f'== {section} -- forget set: {forget} ==')
      for r in rows:
        out.append(f"[{r['status']}] {r['claim']}")
        out.append(f"    quantity:  {r['quantity']}")
        out.append(f"    predicted: {r['predicted']}")
        out.append(f"    measured:  {r['measured']}")
      out.append('')
  counts = {}
  for row in result['rows']:
    counts[row['status']] = counts.get(row['status'], 0) + 1
  out.append('status counts: ' + ', '.join(f'{k}: {v}' for k, v in sorted(counts.items())))
  return '\n'.join(out)


def write_outputs(result: dict, out_dir: str) -> None:
  """Writes ``theory.json``, ``theory.md`` and the plots of :func:`plot_curves` to ``out_dir``.

  Raises:
    FamrError: ``out_dir`` is not writable.
  """
  try:
    with open(os.path.join(out_dir, 'theory.json'), 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=1, allow_nan=False)
    with open(os.path.join(out_dir, 'theory.md'), 'w', encoding='utf-8') as f:
      f.write(format_theory_table(result, 'markdown') + '\n')
  except OSError as err:
    raise FamrError(f'cannot write to {out_dir!r}: {err.strerror}') from None
  plot_curves(result, out_dir)


def plot_curves(result: dict, out_dir: str) -> None:
  """Writes ``eq9_bound.png``, ``tradeoff.png`` and ``contraction.png`` (matplotlib, Agg)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  curves = result['curves']
  keys = list(curves)
  n = len(keys)
  # 1. Eq. 9: bound vs measured over lambda.
  fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
  for ax, k in zip(axes[0], keys):
    inf, famr = curves[k]['influence'], curves[k]['famr']
    lams = inf['lambdas']
    if 'eq9_bound' in inf:
      ax.loglog(lams, inf['eq9_bound'], 'k--', label='Eq. 9 bound')
      ax.loglog(lams, inf['dist_to_theta_if'], 'o-', label='||theta_lambda - theta_IF||')
      ax.loglog(lams, inf['damped_dist_to_w_star'], 's-', label='||theta_lambda - w*||')
      ax.axhline(inf['newton_error'], color='gray', lw=0.8, label='||theta_IF - w*||')
    gn = curves[k].get('influence_gauss_newton')
    if gn and 'eq9_bound' in gn:
      ax.loglog(lams, gn['dist_to_theta_if'], 'o:', label='GN: ||theta_lambda - theta_IF||')
      ax.loglog(lams, gn['eq9_bound'], 'k:', label='GN: Eq. 9 bound')
    ax.loglog(famr['lambdas'], famr['dist_to_w_star'], '^-', label='FAMR ||theta* - w*||')
    ax.set_xlabel('lambda')
    ax.set_title(k)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, 'eq9_bound.png'), dpi=120)
  plt.close(fig)
  # 2. Propositions .2 / .4 trade-off.
  fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
  for ax, k in zip(axes[0], keys):
    famr = curves[k]['famr']
    ax.semilogx(famr['dist_to_theta0'], famr['max_l1_to_uniform'], 'o-')
    for lam, x, y in zip(famr['lambdas'], famr['dist_to_theta0'], famr['max_l1_to_uniform']):
      ax.annotate(f'{lam:g}', (x, y), fontsize=7)
    ax.set_xlabel('||theta* - theta0||  (Prop. .2)')
    ax.set_ylabel('max_T ||p - u||_1  (Prop. .4)')
    ax.set_title(f'{k}: trade-off over lambda')
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, 'tradeoff.png'), dpi=120)
  plt.close(fig)
  # 3. Theorem .1 contraction.
  fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
  for ax, k in zip(axes[0], keys):
    con = curves[k]['contraction']
    d = np.asarray(con['dists'], np.float64)
    b = np.asarray(con['bound'], np.float64)
    steps = result['config']['contraction_steps']
    t = np.linspace(0, steps, len(d))
    ax.semilogy(t, d / d[0], label='||theta_t - theta*|| / ||theta_0 - theta*||')
    ax.semilogy(t, b / b[0], 'k--', label='(1 - eta lambda)^t')
    ax.set_xlabel('step t')
    ax.set_title(f"{k}: lambda={con['lam']:g}")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, 'contraction.png'), dpi=120)
  plt.close(fig)
