"""The style forget task's leaderboard: every method against the model retrained without the style.

A :class:`famr_jax.data.styles.StyleTask` stylizes a seeded fraction of every
class; the original model is trained on that mixed set, the gold standard on
the un-stylized rest with the same recipe. :func:`style_leaderboard` runs
:func:`famr_jax.evaluation.compare.compare` on it with two extra accuracies
per model: on the stylized test set (every test image with the style) and on
the clean one, and their gaps to the retrained model. The FAMR style
variants are built here as method specs, not registered (:func:`style_method_specs`):

* ``famr-style``: the Gram loss alone (``alpha=0, beta>0``), the paper's target
  (mean Gram over the retained data, Eq. 4);
* ``famr-style-class``: the Gram loss alone, each forget image's target the
  mean retained Gram of its own class;
* ``famr-kl+style``: uniform KL and the Gram loss (Eq. 5), the paper's target;
* ``famr-style-oracle``: the Gram of the un-stylized version of the same
  image as its target; an unlearner never has it, so this is a bound, not a method.

``famr`` itself (its sample defaults) is the uniform KL alone. All FAMR rows
share ``famr``'s sample schedule; ``beta`` makes the style term start at 1 on
the forget set (:func:`balanced_beta`), so it weighs like the KL term.

A per-example privacy audit (U-LiRA), where the library has one, plugs in
through ``compare``'s ``extra_metrics`` like the two accuracies here.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax import losses, models
from famr_jax.data.styles import StyleTask
from famr_jax.engine.forward import batched_apply
from famr_jax.engine.training import TrainConfig, train_classifier
from famr_jax.evaluation.compare import compare
from famr_jax.evaluation.leaderboard import GAP_METRICS, ORIGINAL
from famr_jax.evaluation.report import pyplot
from famr_jax.methods.defaults import default_overrides
from famr_jax.methods.famr import style_features
from famr_jax.methods.objective import PRESETS
from famr_jax.methods.registry import MethodSpec, get_method
from famr_jax.methods.style import StyleFAMRConfig, oracle_style_runner, per_example_grams, run_style_task

__all__ = ["DEFAULT_STYLE_LAYER", "EXTRA_KEYS", "board_rows", "SAMPLE_METHODS", "STYLE_METHODS", "STYLE_VARIANTS",
           "balanced_beta", "forget_gram_distance", "format_style_board", "plot_style_board", "style_method_specs",
           "style_accuracies", "style_leaderboard", "train_recipe"]

STYLE_VARIANTS = ("famr-style", "famr-style-class", "famr-kl+style", "famr-style-oracle")
# The library's sample-forgetting methods (famr is its recommended one) and the baselines with sample defaults.
SAMPLE_METHODS = ("famr", "famr-function", "ft", "ga", "neggrad+", "rl", "salun", "scrub", "ssd")
STYLE_METHODS = STYLE_VARIANTS + SAMPLE_METHODS
EXTRA_KEYS = ("styled_test_acc", "clean_test_acc", "forget_gram_ratio")
DEFAULT_STYLE_LAYER = {"lenet5": "conv1", "karpathynet": "conv1", "mlp": "fc1"}


def forget_gram_distance(feature_fn: Callable, params, x_forget: np.ndarray, x_retain: np.ndarray) -> float:
  """Mean ``||G(x_f) - mean_r G(x_r)||_F^2`` over the forget images, under ``params``'s own features.

  How far the forget images' style statistics at the Gram layer lie from the retained data's: what the
  Gram loss (with the paper's target) lowers.
  """
  target = per_example_grams(feature_fn, params, x_retain).astype(np.float64).mean(axis=0)
  grams = per_example_grams(feature_fn, params, x_forget).astype(np.float64)
  return float(np.mean(np.sum((grams - target) ** 2, axis=(1, 2))))


def style_accuracies(apply_fn: Callable, task: StyleTask, feature_fn: Callable | None = None,
                     params0=None) -> Callable[[Any], dict[str, float]]:
  """``params -> {"styled_test_acc", "clean_test_acc"[, "forget_gram_ratio"]}``.

  Accuracy on the stylized and on the clean test set; with ``feature_fn`` and the original
  ``params0``, also the forget images' Gram distance (:func:`forget_gram_distance`) as a fraction
  of the original model's.
  """
  x_styled, x_clean = jnp.asarray(task.x_test_styled), jnp.asarray(task.data.x_test)
  y = jnp.asarray(task.data.y_test)
  keep = task.forget.retain_mask(len(task.data.y_train))
  x_f, x_r = task.data.x_train[task.forget.indices], task.data.x_train[keep]
  gram0 = None if feature_fn is None else forget_gram_distance(feature_fn, params0, x_f, x_r)

  def measure(params) -> dict[str, float]:
    out = {"styled_test_acc": float(losses.accuracy(batched_apply(apply_fn, params, x_styled), y)),
           "clean_test_acc": float(losses.accuracy(batched_apply(apply_fn, params, x_clean), y))}
    if gram0:
      out["forget_gram_ratio"] = forget_gram_distance(feature_fn, params, x_f, x_r) / gram0
    return out
  return measure


def train_recipe(model, apply_fn: Callable, image_shape, train_config: TrainConfig) -> Callable:
  """``retrain(x, y, key) -> DescentResult``: ``train_config`` from a fresh init (the original's and the gold's)."""
  def retrain(x, y, key):
    init = models.init_params(model, jax.random.fold_in(key, 0), tuple(image_shape))
    return train_classifier(apply_fn, init, x, y, train_config, jax.random.fold_in(key, 1), show_progress=False)
  return retrain


def balanced_beta(feature_fn: Callable, params, x_forget: np.ndarray, x_retain: np.ndarray) -> float:
  """``1 / L_style(theta0)``: the weight that makes the mean style loss of the forget set start at 1.

  The paper gives no value for beta; the Gram's scale depends on the layer
  and the data, so it is set from the original model's own loss.
  """
  loss = forget_gram_distance(feature_fn, params, x_forget, x_retain)
  return 1.0 / loss if loss > 0 else 1.0


def style_method_specs(model_name: str, style_layer: str, beta: float, x_forget_clean: np.ndarray,
                       overrides: Mapping[str, Any] | None = None) -> dict[str, MethodSpec]:
  """The :data:`STYLE_VARIANTS` as method specs for ``compare`` (not registered: the registry, and so the
  CLI's flags, stay as they are); each spec's default config is the variant's.

  Each gets ``famr``'s sample schedule for ``model_name`` plus ``overrides``
  (e.g. another ``steps`` / ``lr``), ``style_layer`` and ``beta``.
  """
  schedule = {**default_overrides("famr", model_name, "samples"), **dict(overrides or {})}
  style = {**PRESETS["famr-style"], "style_layer": style_layer, "beta": float(beta)}   # the Gram loss alone
  configs = {
      "famr-style": StyleFAMRConfig(**schedule, **style, gram_target="retained-mean"),
      "famr-style-class": StyleFAMRConfig(**schedule, **style, gram_target="class-mean"),
      "famr-kl+style": StyleFAMRConfig(**schedule, **{**style, "alpha": 1.0}, gram_target="retained-mean"),
      "famr-style-oracle": StyleFAMRConfig(**schedule, **style),
  }
  texts = {"famr-style": "FAMR, Gram loss alone, mean retained Gram target (Eq. 4)",
           "famr-style-class": "FAMR, Gram loss alone, per-class mean retained Gram target",
           "famr-kl+style": "FAMR, uniform KL + Gram loss (Eq. 5), mean retained Gram target",
           "famr-style-oracle": "FAMR, Gram loss alone, target the un-stylized image's Gram (oracle bound)"}
  specs = {}
  for name, config in configs.items():
    run = oracle_style_runner(x_forget_clean) if name == "famr-style-oracle" else run_style_task
    specs[name] = MethodSpec(name, StyleFAMRConfig, run, texts[name], defaults=lambda _model, c=config: c,
                             sample_defaults=lambda _model, c=config: c)
  return specs


def style_leaderboard(task: StyleTask, clean_x_train: np.ndarray, model, apply_fn: Callable, params,
                      train_config: TrainConfig, *, model_name: str, methods: Sequence[str] = STYLE_METHODS,
                      style_layer: str | None = None, seeds: int = 1,
                      overrides: Mapping[str, Mapping[str, Any]] | None = None,
                      log: Callable[[str], None] | None = None) -> dict:
  """Every method of ``methods`` on a style task, scored against the model retrained without the style.

  Args:
    task: the style task (its ``data`` is the training set the original model was trained on).
    clean_x_train: the un-stylized training images (only the oracle target reads them).
    model: the famr-jax model (the style layer's features, the retrain's fresh init).
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: the original model, trained with ``train_config`` on ``task.data``.
    train_config: the training recipe, rerun on the retained data for the gold standard.
    model_name: the model's name (its tuned defaults; the default style layer).
    methods: method names: the style variants (built here, not registered) and registered ones.
    style_layer: the Gram loss's layer (default: :data:`DEFAULT_STYLE_LAYER`).
    seeds: seeds 0, 1, ...: each retrains the gold standard and reruns every method.
    overrides: ``{method: {option: value}}`` on top of the defaults (``"famr-style*"``
      entries apply to every style variant).
    log: where one line per run goes.

  Returns:
    :func:`famr_jax.evaluation.compare.compare`'s leaderboard plus ``style``
    (style, fraction, layer, beta) and ``forget``.
  """
  overrides = {k: dict(v) for k, v in (overrides or {}).items()}
  layer = style_layer or DEFAULT_STYLE_LAYER.get(model_name)
  data, forget = task.data, task.forget
  keep = forget.retain_mask(len(data.y_train))
  feature_fn = style_features(model, layer)
  beta = overrides.get("famr-style*", {}).pop("beta", None) or balanced_beta(
      feature_fn, params, data.x_train[forget.indices], data.x_train[keep])
  style_specs = style_method_specs(model_name, layer, beta, clean_x_train[forget.indices],
                                   overrides.get("famr-style*"))
  specs = [style_specs.get(name) or get_method(name) for name in methods]
  board = compare(specs, apply_fn, params, data, forget, retrain=train_recipe(model, apply_fn, data.image_shape,
                                                                               train_config),
                  seeds=seeds, options={s.name: overrides.get(s.name, {}) for s in specs}, model=model,
                  model_name=model_name, log=log,
                  extra_metrics=style_accuracies(apply_fn, task, feature_fn, params))
  board["style"] = {"style": task.style, "fraction": task.fraction, "layer": layer, "beta": beta,
                    "num_forget_train": int(forget.indices.size), "num_train": int(len(data.y_train))}
  board["forget"] = {**forget.describe(), "fraction": task.fraction}
  return board


def _pm(stat: Mapping[str, float] | None, digits: int = 1) -> str:
  if stat is None or not math.isfinite(stat["mean"]):
    return "-"
  return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _gold_stat(board, key: str) -> dict[str, float]:
  values = [100.0 * (g["extra"].get(key, float("nan")) if key in EXTRA_KEYS else g["metrics"][key])
            for g in board["retrained"]]
  return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def format_style_board(board: Mapping[str, Any]) -> str:
  """The style leaderboard as markdown, sorted by the average gap (the four standard metrics).

  Columns: stylized and clean test accuracy, forget-set (stylized training)
  accuracy, retain accuracy, MIA-efficacy, the average gap and the stylized-test gap.
  """
  summary, info = board["summary"], board["style"]
  order = sorted(summary, key=lambda m: (summary[m]["diverged"]["mean"] > 0,
                                         summary[m]["avg_gap"]["mean"] if math.isfinite(summary[m]["avg_gap"]["mean"])
                                         else math.inf))
  lines = [f"{board['model']} on {board['dataset']}, forgetting the style `{info['style']}` "
           f"({info['num_forget_train']} of {info['num_train']} training images, {100 * info['fraction']:.0f}% "
           f"of each class); Gram layer {info['layer']}, beta {info['beta']:.3g}; {len(board['seeds'])} seed(s).", "",
           "| method | stylized test acc % | clean test acc % | forget acc % | retain acc % | MIA-efficacy % | "
           "avg gap (pts) | stylized-test gap (pts) | forget Gram distance, % of original | time % of retrain |",
           "|---|---|---|---|---|---|---|---|---|---|",
           "| **retrained (gold)** | " + " | ".join(_pm(_gold_stat(board, k)) for k in
                                                   ("styled_test_acc", "clean_test_acc", "forget_acc", "retain_acc",
                                                    "mia_efficacy")) + f" | 0 | 0 | {_pm(_gold_stat(board, 'forget_gram_ratio'), 0)} | 100 |"]
  for m in order:
    s = summary[m]
    name = m if not s["diverged"]["mean"] else f"{m} (diverged in {int(s['diverged']['mean'])} seed(s))"
    lines.append(f"| {name} | {_pm(s.get('styled_test_acc'))} | {_pm(s.get('clean_test_acc'))} | "
                 f"{_pm(s['forget_acc'])} | {_pm(s['retain_acc'])} | {_pm(s['mia_efficacy'])} | "
                 f"**{_pm(s['avg_gap'], 2)}** | {_pm(s.get('gap_styled_test_acc'), 2)} | "
                 f"{_pm(s.get('forget_gram_ratio'), 0)} | {_pm(s['time_percent'], 2)} |")
  return "\n".join(lines)


def plot_style_board(board: Mapping[str, Any], path) -> None:
  """Stylized vs clean test accuracy, one point per method, the retrained model as a star."""
  plt = pyplot()
  summary = board["summary"]
  fig, ax = plt.subplots(figsize=(7, 4.8))
  gold_x, gold_y = _gold_stat(board, "styled_test_acc"), _gold_stat(board, "clean_test_acc")
  ax.plot(gold_x["mean"], gold_y["mean"], "*", markersize=16, color="gold", markeredgecolor="k", label="retrained")
  for name, s in summary.items():
    if "styled_test_acc" not in s or not math.isfinite(s["styled_test_acc"]["mean"]):
      continue
    marker = "s" if name == ORIGINAL else ("o" if name.startswith("famr") else "^")
    ax.errorbar(s["styled_test_acc"]["mean"], s["clean_test_acc"]["mean"], xerr=s["styled_test_acc"]["std"],
                yerr=s["clean_test_acc"]["std"], fmt=marker, capsize=3)
    ax.annotate(name, (s["styled_test_acc"]["mean"], s["clean_test_acc"]["mean"]), textcoords="offset points",
                xytext=(4, 3), fontsize=7)
  ax.set_xlabel("stylized test accuracy (%)")
  ax.set_ylabel("clean test accuracy (%)")
  info = board["style"]
  ax.set_title(f"{board['model']} / {board['dataset']}: forgetting the style '{info['style']}'")
  ax.grid(True, alpha=0.3)
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)



def board_rows(board: Mapping[str, Any]) -> list[dict[str, Any]]:
  """One flat row per model (retrained first, then original and each method): means over seeds, in %.

  ``avg_gap`` is the leaderboard's (four metrics); ``styled_gap`` the stylized-test accuracy's gap.
  """
  rows = [{"method": "retrained", **{k: _gold_stat(board, k)["mean"] for k in (*EXTRA_KEYS, *GAP_METRICS)},
           "avg_gap": 0.0, "styled_gap": 0.0}]
  for name, s in board["summary"].items():
    mean = lambda key: s[key]["mean"] if key in s else float("nan")
    rows.append({"method": name, **{k: mean(k) for k in (*EXTRA_KEYS, *GAP_METRICS)},
                 "avg_gap": mean("avg_gap"), "styled_gap": mean("gap_styled_test_acc")})
  return rows
