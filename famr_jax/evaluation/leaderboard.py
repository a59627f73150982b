"""The leaderboard's scoring: distance of an unlearned model to the retrained gold standard.

As in the SalUn / Unlearn-Sparse benchmark, a method is scored by its distance
to the model retrained without the forget set:

* ``gaps``: ``|metric - metric_retrained|`` in percentage points for forget
  accuracy, retain accuracy, test accuracy and MIA-efficacy
  (:func:`famr_jax.evaluation.metrics.evaluate_unlearning`), and the **average gap**, their mean;
* ``kl_to_retrained``: mean ``KL(p_retrained || p_method)`` (nats) over the
  test images of the retained classes (class forgetting) or all test images
  (sample forgetting);
* ``time_fraction``: the method's run time (compilation excluded) over the
  retrain's.

:func:`summarize`, :func:`format_leaderboard` and :func:`plot_leaderboard`
turn the rows of :func:`famr_jax.evaluation.compare.compare` into tables.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from famr_jax import losses
from famr_jax.data.forget import ForgetSet
from famr_jax.evaluation.metrics import batched_apply, evaluate_unlearning
from famr_jax.evaluation.report import place_labels, pyplot

GAP_METRICS = ("forget_acc", "retain_acc", "test_acc", "mia_efficacy")
ORIGINAL = "original"
INDEPENDENT_RETRAIN = "retrained (independent farm)"   # the audit's sanity row (famr_jax.audit.audit)


def kl_test_mask(data, forget: ForgetSet) -> np.ndarray:
  """Test images the KL to the retrained model is measured on: retained classes (or all, for samples)."""
  if forget.kind == "classes":
    return ~np.isin(data.y_test, forget.classes)
  return np.ones(len(data.y_test), bool)


def score(metrics: Mapping[str, Any], gold: Mapping[str, Any]) -> dict[str, float]:
  """Per-metric gaps ``|m - m_retrained|`` in percentage points and their mean ``avg_gap``.

  Example:
    >>> g = score({"forget_acc": 0.1, "retain_acc": 0.9, "test_acc": 0.8, "mia_efficacy": 1.0},
    ...           {"forget_acc": 0.0, "retain_acc": 0.9, "test_acc": 0.8, "mia_efficacy": 0.98})
    >>> round(g["avg_gap"], 6)
    3.0
  """
  gaps = {m: 100.0 * abs(float(metrics[m]) - float(gold[m])) for m in GAP_METRICS}
  gaps["avg_gap"] = float(np.mean([gaps[m] for m in GAP_METRICS]))
  return gaps


def _kl(logits_ref: np.ndarray, logits: np.ndarray) -> float:
  return float(np.mean(np.asarray(losses.kl_divergence(logits_ref, logits))))


class GoldReference(NamedTuple):
  """What every method of one forget request is scored against: the retrained model's metrics and its
  logits on the test images the KL is measured on (``kl_mask``)."""
  metrics: dict
  logits: np.ndarray
  kl_mask: np.ndarray


def gold_reference(apply_fn, gold_params, data, forget: ForgetSet, params0, seed: int) -> GoldReference:
  """The :class:`GoldReference` of a retrained model (``params0``: the original, for the KL metrics)."""
  mask = kl_test_mask(data, forget)
  metrics = evaluate_unlearning(apply_fn, gold_params, data, forget, params0=params0, mia_seed=seed)
  return GoldReference(metrics, np.asarray(batched_apply(apply_fn, gold_params, data.x_test[mask])), mask)


class Scored(NamedTuple):
  """One unlearned model against the gold standard; all NaN when it diverged."""
  metrics: dict
  gaps: dict
  kl: float
  diverged: bool


def score_against_gold(apply_fn, params, data, forget: ForgetSet, params0, gold: GoldReference,
                       seed: int) -> Scored:
  """Metrics, gaps to the retrained model (points) and ``KL(p_retrained || p)`` of ``params``.

  A model with non-finite params or logits is *diverged*: scored as NaN, never a crash.
  """
  finite = all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in jax.tree.leaves(params))
  logits = np.asarray(batched_apply(apply_fn, params, data.x_test[gold.kl_mask])) if finite else None
  if not (finite and np.all(np.isfinite(logits))):
    nan = float("nan")
    return Scored({k: nan for k in GAP_METRICS}, {**{k: nan for k in GAP_METRICS}, "avg_gap": nan}, nan, True)
  m = evaluate_unlearning(apply_fn, params, data, forget, params0=params0, mia_seed=seed)
  return Scored(m, score(m, gold.metrics), _kl(gold.logits, logits), False)


def metrics_line(m: Mapping[str, Any]) -> str:
  """The four scored metrics of one model on one line (percent)."""
  return " ".join(f"{k} {100 * float(m[k]):.1f}" for k in GAP_METRICS)


SUMMARY_KEYS = ("forget_acc", "retain_acc", "test_acc", "mia_efficacy")
# A row's audit scores kept in the summary (as "audit_<key>"; famr_jax.audit.audit.audit_pair).
AUDIT_KEYS = ("ulira_auc", "ulira_tpr_at_1", "forgetting_quality", "final_score", "retain_acc", "time_fraction")


def _num(value) -> float:
  """A float from a row (JSON writes NaN as null)."""
  return float("nan") if value is None else float(value)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
  """Mean and std over seeds of every method's metrics (in %), gaps, KL and time.

  Example:
    >>> r = [{"method": "a", "metrics": {"forget_acc": 0.1, "retain_acc": 1, "test_acc": 1, "mia_efficacy": 1},
    ...       "gaps": {"avg_gap": 2.0}, "avg_gap": 2.0, "kl_to_retrained": 0.1, "time_fraction": 0.01,
    ...       "compile_s": 1.0, "time_s": 1.0, "wall_s": 1.0}] * 2
    >>> summarize(r)["a"]["avg_gap"]
    {'mean': 2.0, 'std': 0.0, 'n': 2}
  """
  out: dict[str, dict[str, dict[str, float]]] = {}
  for name in dict.fromkeys(r["method"] for r in rows):
    every = [r for r in rows if r["method"] == name]
    # Scores over the seeds where the method did not diverge (the count of those that did is kept).
    mine = [r for r in every if not r.get("diverged", False)] or every
    values: dict[str, list[float]] = {}
    for r in mine:
      for k in SUMMARY_KEYS:
        values.setdefault(k, []).append(100.0 * _num(r["metrics"][k]))
      for k, v in r.get("extra", {}).items():   # a task's own accuracies (compare's extra_metrics)
        values.setdefault(k, []).append(100.0 * _num(v))
        values.setdefault(f"gap_{k}", []).append(_num(r["extra_gaps"][k]))
      for k, v in r["gaps"].items():
        if k != "avg_gap":
          values.setdefault(f"gap_{k}", []).append(_num(v))
      for k in ("avg_gap", "kl_to_retrained", "time_fraction", "compile_s", "time_s", "wall_s"):
        values.setdefault(k, []).append(_num(r[k]))
      for k, v in r.get("audit", {}).items():
        if k in AUDIT_KEYS:
          values.setdefault(f"audit_{k}", []).append(_num(v))
    values["time_percent"] = [100.0 * v for v in values["time_fraction"]]
    out[name] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for k, v in values.items()}
    out[name]["diverged"] = {"mean": float(sum(bool(r.get("diverged", False)) for r in every)),
                             "std": 0.0, "n": len(every)}
  return out


def _pm(stat: Mapping[str, float], digits: int = 1) -> str:
  if stat is None or not math.isfinite(stat["mean"]):
    return "-"
  return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def forget_text(forget: Mapping[str, Any] | None) -> str:
  """What a board forgot, in words: its ``forget`` entry (the CLI's, or ``compare``'s ``ForgetSet.describe()``).

  Example:
    >>> forget_text({"kind": "classes", "classes": [3]}), forget_text({"kind": "random", "fraction": 0.02})
    ('classes [3]', 'a random 2% of the training set')
    >>> forget_text({"kind": "samples", "classes": [], "num_forget_train": 40, "per_seed": True})
    '40 training samples (drawn per seed)'
  """
  if not forget:
    return "an unrecorded forget set"
  if forget.get("kind") == "classes":
    return f"classes {list(forget.get('classes', []))}"
  if "fraction" in forget:
    return f"a random {100 * float(forget['fraction']):.0f}% of the training set"
  n = forget.get("num_forget_train")
  return f"{n if n is not None else 'some'} training samples" + (" (drawn per seed)" if forget.get("per_seed") else "")


def format_leaderboard(board: Mapping[str, Any]) -> str:
  """The markdown tables of a leaderboard: metrics and gaps, mean ± std over seeds, sorted by average gap."""
  summary = board["summary"]
  gold = board["retrained"]
  what = forget_text(board.get("forget"))
  def rank(m):
    gap = summary[m]["avg_gap"]["mean"]
    return (summary[m]["diverged"]["mean"] > 0, gap if math.isfinite(gap) else math.inf)
  order = sorted(summary, key=rank)

  def name_cell(m):
    d = summary[m]["diverged"]
    return m if not d["mean"] else f"{m} (diverged in {int(d['mean'])} of {d['n']} seeds)"
  gold_stat = lambda k: {"mean": float(np.mean([100 * g["metrics"][k] for g in gold])),
                         "std": float(np.std([100 * g["metrics"][k] for g in gold]))}
  retrain_s = {"mean": float(np.mean([g["run_s"] for g in gold])), "std": float(np.std([g["run_s"] for g in gold]))}
  lines = [f"{board.get('model') or 'model'} on {board.get('dataset') or 'data'}, forgetting {what}; "
           f"{len(board['seeds'])} seed(s); "
           f"retraining took {_pm(retrain_s)} s (compile excluded).", "",
           "| method | forget acc % | retain acc % | test acc % | MIA-efficacy % | avg gap (pts) | "
           "KL to retrained | time % of retrain | compile s |",
           "|---|---|---|---|---|---|---|---|---|",
           f"| **retrained (gold)** | {_pm(gold_stat('forget_acc'))} | {_pm(gold_stat('retain_acc'))} | "
           f"{_pm(gold_stat('test_acc'))} | {_pm(gold_stat('mia_efficacy'))} | 0 | 0 | 100 | - |"]
  for m in order:
    s = summary[m]
    lines.append(f"| {name_cell(m)} | {_pm(s['forget_acc'])} | {_pm(s['retain_acc'])} | {_pm(s['test_acc'])} | "
                 f"{_pm(s['mia_efficacy'])} | **{_pm(s['avg_gap'], 2)}** | {_pm(s['kl_to_retrained'], 4)} | "
                 f"{_pm(s['time_percent'], 2)} | {_pm(s['compile_s'])} |")
  lines += ["", "Gaps to the retrained model (percentage points, mean ± std over seeds):", "",
            "| method | forget acc | retain acc | test acc | MIA-efficacy | avg gap |", "|---|---|---|---|---|---|"]
  for m in order:
    s = summary[m]
    lines.append(f"| {name_cell(m)} | " + " | ".join(_pm(s[f"gap_{k}"], 2) for k in GAP_METRICS)
                 + f" | {_pm(s['avg_gap'], 2)} |")
  if board.get("audit"):
    lines += ["", *format_audit(board, order)]
  return "\n".join(lines)


def _stat(values: Sequence[float]) -> dict[str, float]:
  return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def _ci(fields: Mapping[str, Any], key: str = "ulira_auc") -> str:
  lo, hi = fields[f"{key}_ci"]
  return f"{fields[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def _audit_rows(rows: Mapping[str, Any]) -> list[str]:
  """One table line per audited row: AUC and its 95% interval, the challenge's score, RMIA, exposed, verdict."""
  out = []
  for name, r in sorted(rows.items(), key=lambda kv: kv[1]["ulira_auc"]):
    d = r["delta_vs_chance"]
    ident = r["identified"]
    shown = ", ".join(str(i) for i in ident["indices"][:8]) + (" ..." if ident["count"] > 8 else "")
    out.append(f"| {name} | {_ci(r)} | {d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] | "
               f"{r['forgetting_quality']:.3f} | {r['rmia_auc']:.3f} | {ident['count']}/{ident['of']}"
               f"{' (' + shown + ')' if ident['count'] else ''} | {r['verdict']} |")
  return out


_AUDIT_HEADER = ["| row | U-LiRA AUC [95% CI] | AUC - 0.5 [95% CI] | forgetting quality | RMIA AUC | "
                 "exposed (BH 5%) | verdict |", "|---|---|---|---|---|---|---|"]


def format_audit(board: Mapping[str, Any], order: Sequence[str] = ()) -> list[str]:
  """The audit's tables: the farm seeds pooled (the verdicts and the pick), then each seed.

  Example:
    >>> r = {"ulira_auc": 0.6, "ulira_auc_ci": [0.55, 0.65], "delta_vs_chance": {"mean": 0.1, "ci": [0.05, 0.15]},
    ...      "forgetting_quality": 0.2, "rmia_auc": 0.6, "identified": {"count": 0, "of": 9, "indices": []},
    ...      "verdict": "distinguishable"}
    >>> p = {"original_minus_chance": 0.1, "null_sd": 0.01, "powered": True}
    >>> b = {"audit": [{"seed": 0, "attack": "ulira", "shadows": 4, "margin": 0.02, "rows": {"original": r},
    ...                 "forget_examples": 9, "costs": {"retrains": {"per_model_s": 0.1, "mode": "vmap"}},
    ...                 "power": p, "power_message": "powered"}],
    ...      "audit_pooled": {"seeds": 1, "rows": {"original": r}, "power": p, "power_message": "powered"},
    ...      "pick": None}
    >>> format_audit(b)[-1]
    'No method is named: none is equivalent to retraining within the margin 0.02.'
  """
  audits, pooled = board["audit"], board["audit_pooled"]
  first = audits[0]
  lines = [f"Audit ({first['attack']}, {first['shadows']} shadow models per group, {pooled['seeds']} farm seeds, "
           f"each its own forget set; per forget example the row's models against models retrained without "
           f"it; verdicts by two one-sided tests with margin {first['margin']} on AUC - 0.5):", "",
           f"Seeds pooled ({pooled['power_message']}):", "", *_AUDIT_HEADER, *_audit_rows(pooled["rows"])]
  for a in audits:
    lines += ["", f"Farm seed {a['seed']} ({a['forget_examples']} forget examples; {a['power_message']}):", "",
              *_AUDIT_HEADER, *_audit_rows(a["rows"])]
  costs = [a["costs"]["retrains"]["per_model_s"] for a in audits]
  lines += ["", f"Farm: {_pm(_stat(costs), 3)} s per shadow model (retrain, compile excluded, "
            f"{first['costs']['retrains']['mode']}); the untouched original must be distinguishable (the power "
            "gate), the independent retrains equivalent (the null at chance).", ""]
  if not pooled["power"]["powered"]:
    lines.append("No method is named: the audit is underpowered (above).")
  elif board.get("pick"):
    lines.append(f"The audit's pick: **{board['pick']}** (the cheapest method equivalent to retraining, seeds "
                 "pooled).")
  else:
    lines.append(f"No method is named: none is equivalent to retraining within the margin {first['margin']}.")
  return lines


def plot_leaderboard(board: Mapping[str, Any], path) -> None:
  """Average gap vs wall time (percent of retraining, log scale), one point per method, std as error bars;
  with an audit, a second panel: U-LiRA AUC vs the same cost. Labels never overlap (``report.place_labels``)."""
  plt = pyplot()
  summary = board["summary"]
  audited = bool(board.get("audit"))
  fig, axes = plt.subplots(1, 2 if audited else 1, figsize=(13 if audited else 7, 4.5))
  ax = axes[0] if audited else axes
  labels = [(axes[1], _plot_audit(board, axes[1]))] if audited else []
  points = []
  for name, s in summary.items():
    if not math.isfinite(s["avg_gap"]["mean"]):
      continue   # diverged on every seed
    x = max(s["time_percent"]["mean"], 1e-3)
    ax.errorbar(x, s["avg_gap"]["mean"], xerr=s["time_percent"]["std"], yerr=s["avg_gap"]["std"], fmt="o",
                capsize=3)
    points.append((name, (x, s["avg_gap"]["mean"])))
  labels.append((ax, points))
  ax.set_xscale("log")
  ax.set_xlabel("wall time, % of retraining (compile excluded; original at 0.001)")
  ax.set_ylabel("average gap to retrained (pts)")
  ax.set_title(f"{board.get('model', 'model')} / {board.get('dataset', 'data')}: distance to the gold standard "
               "vs cost")
  ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  for panel, named in labels:   # after the layout: the labels are placed in the final pixel positions
    place_labels(panel, [p for _, p in named], [n for n, _ in named])
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plot_audit(board: Mapping[str, Any], ax) -> list:
  """U-LiRA AUC (0.5 = indistinguishable from retraining) vs cost, one point per audited method.

  Returns the ``(name, (x, y))`` points to label once the figure is laid out.
  """
  points = []
  for name, s in board["summary"].items():
    if "audit_ulira_auc" not in s or not math.isfinite(s["time_percent"]["mean"]):
      continue
    x = max(s["time_percent"]["mean"], 1e-3)
    ax.errorbar(x, s["audit_ulira_auc"]["mean"], yerr=s["audit_ulira_auc"]["std"], fmt="o", capsize=3)
    points.append((name, (x, s["audit_ulira_auc"]["mean"])))
  ax.axhline(0.5, color="gray", linestyle="--", linewidth=1)
  ax.set_xscale("log")
  ax.set_xlabel("wall time, % of retraining (original at 0.001)")
  ax.set_ylabel("U-LiRA AUC (0.5 = retrained)")
  ax.set_title(f"audit: {board['audit'][0]['shadows']} shadow models per group")
  ax.grid(True, which="both", alpha=0.3)
  return points
