"""The audit's plot: each row's U-LiRA AUC with its interval against the null band, cost on the other axis.

What a reader checks at a glance: whether the untouched original sits outside the null band (the audit
can see forgetting at all), whether the independent retrains sit inside it (the null is at chance), and
which methods' intervals lie inside the equivalence margin, at what cost. The plotted numbers are the
board's ``audit_pooled`` (the farm seeds pooled), read back from the drawn artists by :func:`plot_audit`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from famr_jax.audit.audit import INDEPENDENT_RETRAIN_ROW, ORIGINAL_ROW
from famr_jax.audit.evidence import CHANCE, POWER_SDS
from famr_jax.evaluation.report import place_labels

_FLOOR_PERCENT = 0.01   # where the untouched original (no cost) sits on the log cost axis


def _cost_percent(board: Mapping[str, Any], row: str) -> float:
  """A row's cost per model, % of a retrain (means over farm seeds); the original costs nothing."""
  if row == ORIGINAL_ROW:
    return _FLOOR_PERCENT
  if row == INDEPENDENT_RETRAIN_ROW:
    return 100.0
  return 100.0 * float(np.mean([a["rows"][row]["time_fraction"] for a in board["audit"]]))


def plot_audit(board: Mapping[str, Any], path: str | os.PathLike) -> dict[str, dict[str, float]]:
  """Writes the audit's plot of a board with an audit to ``path`` (PNG) and returns what it drew.

  Args:
    board: a leaderboard with ``audit`` and ``audit_pooled`` (:func:`famr_jax.evaluation.compare.compare`).
    path: the PNG to write.

  Returns:
    ``{row: {"auc", "lo", "hi", "cost_percent"}}`` read back from the figure's error bars, and
    ``"null_band"`` ``{"lo", "hi"}`` (chance +- 3 null sds).
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  pooled = board["audit_pooled"]
  sd, margin = float(pooled["power"]["null_sd"]), float(board["audit"][0].get("margin", 0.02))
  fig, ax = plt.subplots(figsize=(8, 5))
  band = ax.axhspan(CHANCE - POWER_SDS * sd, CHANCE + POWER_SDS * sd, color="0.85",
                    label=f"null band (chance ± {POWER_SDS:g} null sd)")
  ax.axhline(CHANCE, color="0.4", lw=0.8)
  for m in (-margin, margin):
    ax.axhline(CHANCE + m, color="0.4", lw=0.8, ls="--", label=f"equivalence margin ± {margin:g}" if m > 0 else None)
  drawn, labels = {}, []
  for row, fields in pooled["rows"].items():
    auc, (lo, hi) = float(fields["ulira_auc"]), fields["ulira_auc_ci"]
    x = _cost_percent(board, row)
    style = ({"fmt": "*", "color": "tab:red", "markersize": 12} if row == ORIGINAL_ROW else
             {"fmt": "s", "color": "tab:green"} if row == INDEPENDENT_RETRAIN_ROW else {"fmt": "o", "color": "tab:blue"})
    bars = ax.errorbar([x], [auc], yerr=[[auc - lo], [hi - auc]], capsize=4, **style)
    labels.append((f"{row}: {fields['verdict']}", (x, auc)))
    segment = bars.lines[2][0].get_segments()[0]
    drawn[row] = {"auc": float(bars.lines[0].get_ydata()[0]), "lo": float(segment[0][1]),
                  "hi": float(segment[1][1]), "cost_percent": float(bars.lines[0].get_xdata()[0])}
  ax.set_xscale("log")
  ax.set_xlim(_FLOOR_PERCENT / 3, 1e5)   # room on the right for the labels of the retraining rows
  ax.set_xlabel(f"cost per model, % of a retrain (log; the untouched original at {_FLOOR_PERCENT:g})")
  ax.set_ylabel("U-LiRA AUC (0.5: indistinguishable from retraining)")
  seeds, shadows = pooled["seeds"], board["audit"][0]["shadows"]
  verdict = "powered" if pooled["power"]["powered"] else "UNDERPOWERED: no verdict, no pick"
  ax.set_title(f"audit: {shadows} shadows per group, {seeds} farm seeds pooled, 95% intervals; {verdict}; "
               f"pick: {board.get('pick')}", fontsize=9)
  ax.legend(loc="best", fontsize=8)
  fig.tight_layout()
  place_labels(ax, [p for _, p in labels], [t for t, _ in labels])   # in the final layout, never overlapping
  fig.savefig(path, dpi=120)
  plt.close(fig)
  # the band in data coordinates (a Rectangle in matplotlib >= 3.9, a Polygon before)
  y = np.asarray(band.get_patch_transform().transform(band.get_path().vertices)
                 if hasattr(band, "get_patch_transform") else band.get_xy())[:, 1]
  return {**drawn, "null_band": {"lo": float(np.min(y)), "hi": float(np.max(y))}}
