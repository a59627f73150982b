"""report.json, the side-by-side table and the plots of an unlearning run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

METRIC_KEYS = ("retain_acc", "forget_acc", "test_acc", "forget_train_acc", "forget_ce",
               "forget_entropy", "mia_efficacy")
FROM_ORIGINAL_KEYS = ("kl_from_original", "param_distance")
MODEL_ROLES = ("original", "unlearned", "retrained")
REPORT_KEYS = ("famr_jax_version", "dataset", "model", "method", "forget", "config", "metrics",
               "timings_s", "history")


def report_metrics(metrics: Mapping[str, Any], role: str) -> dict[str, float]:
  """The report.json entry of one model: exactly the keys part 10 of the spec names."""
  keys = METRIC_KEYS + (FROM_ORIGINAL_KEYS if role != "original" else ())
  return {k: float(metrics[k]) for k in keys}


def build_report(*, version: str, dataset: str, model: str, method: str, forget: Mapping[str, Any],
                 config: Mapping[str, Any], metrics: Mapping[str, Mapping[str, Any]],
                 timings_s: Mapping[str, float], history: Sequence[Mapping[str, float]]) -> dict[str, Any]:
  """Assembles report.json (accuracies are fractions in [0, 1]).

  ``metrics`` maps ``original``, ``unlearned`` and optionally ``retrained``
  to the dicts of :func:`famr_jax.evaluation.metrics.evaluate_unlearning`.
  """
  return {
      "famr_jax_version": version,
      "dataset": dataset,
      "model": model,
      "method": method,
      "forget": dict(forget),
      "config": dict(config),
      "metrics": {role: report_metrics(m, role) for role, m in metrics.items()},
      "timings_s": {k: ({p: float(t) for p, t in v.items()} if isinstance(v, Mapping) else float(v))
                    for k, v in timings_s.items()},
      "history": [dict(h) for h in history],
  }


def _json_safe(obj):
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if isinstance(obj, dict):
    return {k: _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_safe(v) for v in obj]
  return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes ``obj`` as indented JSON (NaN/inf become null, as JSON has no NaN)."""
  Path(path).write_text(json.dumps(_json_safe(obj), indent=2) + "\n")


def format_table(metrics: Mapping[str, Mapping[str, Any]], *, markdown: bool = False) -> str:
  """A side-by-side table, one column per model (accuracies in percent).

  Example:
    >>> m = {"original": {"retain_acc": 0.9}, "unlearned": {"retain_acc": 0.8}}
    >>> print(format_table(m))
    metric      original  unlearned
    retain_acc      90.0       80.0
  """
  roles = [r for r in MODEL_ROLES if r in metrics] + [r for r in metrics if r not in MODEL_ROLES]
  keys = [k for k in METRIC_KEYS + FROM_ORIGINAL_KEYS if any(k in metrics[r] for r in roles)]

  def cell(role, key):
    value = metrics[role].get(key)
    if value is None:
      return "-"
    is_fraction = key.endswith("_acc") or key == "mia_efficacy"
    return f"{100 * value:.1f}" if is_fraction else f"{value:.4f}"

  rows = [["metric"] + roles] + [[k] + [cell(r, k) for r in roles] for k in keys]
  if markdown:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(roles + [0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)
  width0 = max(len(r[0]) for r in rows)
  widths = [max(len(r[i]) for r in rows) for i in range(1, len(roles) + 1)]
  return "\n".join(r[0].ljust(width0) + "".join("  " + c.rjust(w) for c, w in zip(r[1:], widths))
                   for r in rows)


def pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


# Label positions tried around a point, nearest first: offsets (points) of growing radius in 8 directions.
_LABEL_RADII = (4, 10, 18, 28, 40, 54, 70, 90)
_LABEL_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))


def place_labels(ax, points: Sequence[tuple[float, float]], labels: Sequence[str], *, fontsize: float = 8,
                 marker_pts: float = 4.0) -> list:
  """Labels each data point where its text overlaps no other label and no marker (call after the layout).

  Each label takes the nearest free spot of :data:`_LABEL_RADII` x :data:`_LABEL_DIRECTIONS` inside the
  figure (the least-overlapping one when none is free), measured with the figure's renderer; a label
  moved away from its point gets a thin leader line to it.

  Returns:
    The annotations (matplotlib ``Annotation`` objects), in the order of ``labels``.

  Example:
    >>> plt = pyplot()
    >>> fig, ax = plt.subplots()
    >>> _ = ax.plot([1, 1.001], [1, 1.001], "o")
    >>> a, b = place_labels(ax, [(1, 1), (1, 1.001)], ["first", "second"])
    >>> r = fig.canvas.get_renderer()
    >>> from matplotlib.text import Text
    >>> bool(Text.get_window_extent(a, r).overlaps(Text.get_window_extent(b, r)))
    False
    >>> plt.close(fig)
  """
  from matplotlib.text import Text
  from matplotlib.transforms import Bbox
  fig = ax.figure
  renderer = fig.canvas.get_renderer()
  ax.autoscale_view()
  centres = [ax.transData.transform((float(x), float(y))) for x, y in points]
  r = marker_pts * fig.dpi / 72.0
  taken = [Bbox.from_extents(cx - r, cy - r, cx + r, cy + r) for cx, cy in centres]
  frame = fig.bbox
  out = []
  for (x, y), label in zip(points, labels):
    ann = ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=fontsize,
                      arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5", "shrinkA": 0, "shrinkB": 3})
    best = None
    for radius in _LABEL_RADII:
      for dx, dy in _LABEL_DIRECTIONS:
        ann.xyann = (radius * dx, radius * dy)
        ann.set_horizontalalignment({1: "left", -1: "right", 0: "center"}[dx])
        ann.set_verticalalignment({1: "bottom", -1: "top", 0: "center"}[dy])
        ann.update_positions(renderer)   # the text's place follows xyann only once updated
        box = Text.get_window_extent(ann, renderer).padded(2)
        outside = not (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1)
        cost = sum(box.overlaps(t) for t in taken) + 100 * outside
        if best is None or cost < best[0]:
          best = (cost, ann.xyann, ann.get_horizontalalignment(), ann.get_verticalalignment(), box)
        if cost == 0:
          break
      if best[0] == 0:
        break
    _, ann.xyann, ha, va, box = best
    ann.set_horizontalalignment(ha)
    ann.set_verticalalignment(va)
    ann.update_positions(renderer)
    taken.append(box)
    out.append(ann)
  return out


def plot_forgetting(history: Sequence[Mapping[str, float]], path: str | os.PathLike, *,
                    title: str = "FAMR: forgetting over epochs") -> None:
  """Forget accuracy and KL(p_original || p) on the forget set vs epoch (FAMR Figure 1)."""
  plt = pyplot()
  epochs = [h["epoch"] for h in history]
  fig, ax1 = plt.subplots(figsize=(6, 4))
  if all("forget_acc" in h for h in history):
    ax1.plot(epochs, [100 * h["forget_acc"] for h in history], "o-", color="tab:red", label="forget accuracy")
  ax1.set_xlabel("epoch")
  ax1.set_ylabel("forget accuracy (%)", color="tab:red")
  ax2 = ax1.twinx()
  if all("forget_kl_from_original" in h for h in history):
    ax2.plot(epochs, [h["forget_kl_from_original"] for h in history], "s-", color="tab:blue",
             label="KL(p_original || p)")
  ax2.set_ylabel("KL(p_original || p) on forget set (nats)", color="tab:blue")
  ax1.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_class_accuracy(per_class: Mapping[str, Sequence[float]], forget_classes: Sequence[int],
                        path: str | os.PathLike, *, class_names: Sequence[str] | None = None) -> None:
  """Per-class test accuracy bars, one bar group per class, one bar per model."""
  plt = pyplot()
  import numpy as np
  roles = list(per_class)
  num_classes = len(next(iter(per_class.values())))
  x = np.arange(num_classes)
  width = 0.8 / len(roles)
  fig, ax = plt.subplots(figsize=(max(6, 0.6 * num_classes + 2), 4))
  for i, role in enumerate(roles):
    ax.bar(x + (i - (len(roles) - 1) / 2) * width, 100 * np.asarray(per_class[role], float), width, label=role)
  labels = list(class_names) if class_names else [str(c) for c in range(num_classes)]
  ax.set_xticks(x, [f"{l}*" if c in set(forget_classes) else l for c, l in enumerate(labels)],
                rotation=45 if num_classes > 10 or max(map(len, labels)) > 3 else 0, ha="right")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("Per-class accuracy (* = forgotten)")
  ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))   # outside: never hides a bar
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
