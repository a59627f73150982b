"""``famr-jax compare``: every method on the same original model, scored against the retrained gold standard.

For each seed, the gold standard is retrained without the forget set
(:func:`famr_jax.cli.runs.retrain_gold_standard`); every method then unlearns the
same forget set from the same checkpoint, and is scored as in the SalUn /
Unlearn-Sparse benchmark by its distance to the retrained model:

* ``gaps``: ``|metric - metric_retrained|`` in percentage points for forget
  accuracy, retain accuracy, test accuracy and MIA-efficacy
  (:func:`famr_jax.evaluation.metrics.evaluate_unlearning`), and the **average gap**, their mean;
* ``kl_to_retrained``: mean ``KL(p_retrained || p_method)`` (nats) over the
  test images of the retained classes (class forgetting) or all test images
  (sample forgetting);
* ``time_fraction``: the method's run time as it reports it
  (``DescentResult.run_s``: its descent plus its one-off setup passes,
  compilation excluded) divided by the gold standard's training time
  (``run_s`` of the retrain, compilation excluded), both on this machine in
  the same process. ``wall_s`` (the whole call, every compilation and
  host-side step included) is recorded beside it.

The original model is listed as a reference row (``original``: no unlearning,
time 0). Writes ``leaderboard.json`` (every seed and method), ``leaderboard.md``
(mean ± std over seeds) and ``leaderboard.png`` (average gap vs time fraction).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import numpy as np

import famr_jax
from famr_jax import losses as objectives
from famr_jax.errors import FamrError
from famr_jax.data.forget import ForgetSet, forget_classes, forget_random
from famr_jax.evaluation.metrics import batched_apply, evaluate_unlearning

GAP_METRICS = ("forget_acc", "retain_acc", "test_acc", "mia_efficacy")
DEFAULT_METHODS = ("famr", "famr-retrain-target", "famr-fisher", "famr-curvature", "famr-function", "famr-plus",
                   "ft", "ga", "neggrad+", "rl", "salun", "scrub", "ssd")
ORIGINAL = "original"


@dataclasses.dataclass(frozen=True)
class CompareRun:
  """``famr-jax compare``: a leaderboard of unlearning methods against the retrained model.

  Attributes:
    checkpoint: the trained model (its metadata names data set, model and training recipe).
    out: output directory (leaderboard.json, leaderboard.md, leaderboard.png).
    methods: registered method names to compare (default: every FAMR variant and baseline but retrain).
    forget_classes: classes to forget.
    forget_random: fraction of the training set to forget at random (drawn per seed).
    seeds: number of seeds (0, 1, ...): each retrains the gold standard and reruns every method.
    method_config: JSON file {method: {option: value}} of per-method hyperparameters.
    overwrite: replace ``out`` if it exists.
    gold_cache: directory of retrained gold-standard checkpoints, reused when the checkpoint,
      forget set, seed and recipe match (the retrain is deterministic); new ones are added.
  """
  checkpoint: str
  out: str
  methods: tuple[str, ...] = ()
  forget_classes: tuple[int, ...] = ()
  forget_random: float | None = None
  seeds: int = 3
  method_config: str | None = None
  overwrite: bool = False
  gold_cache: str | None = None


def _gold_key(checkpoint: str, forget: ForgetSet, seed: int, train_config: Any) -> str:
  """A digest of what determines the gold-standard retrain (its cache key)."""
  import hashlib
  h = hashlib.blake2b(digest_size=10)
  h.update(json.dumps({"checkpoint": str(Path(checkpoint).expanduser().resolve()), "seed": seed,
                       "train": dataclasses.asdict(train_config), "kind": forget.kind,
                       "classes": list(forget.classes)}, sort_keys=True).encode())
  h.update(np.ascontiguousarray(forget.indices, np.int64).tobytes())
  return f"seed{seed}-{h.hexdigest()}"


def gold_standard(run: "CompareRun", loaded, forget: ForgetSet, seed: int, train_config: Any,
                  show_progress: bool, log=print):
  """The retrained model of one seed: ``(params, run_s, compile_s)``, from ``run.gold_cache`` when there."""
  from famr_jax.io import checkpoints
  from famr_jax.cli.runs import retrain_gold_standard
  path = None
  if run.gold_cache:
    path = Path(run.gold_cache).expanduser().resolve() / _gold_key(run.checkpoint, forget, seed, train_config)
    if path.is_dir():
      restored = checkpoints.load_checkpoint(path, template=loaded.params)
      info = restored.metadata["gold"]
      log(f"seed {seed}: gold standard from the cache {path}")
      return restored.params, float(info["run_s"]), float(info["compile_s"])
  gold = retrain_gold_standard(loaded.model, loaded.apply_fn, loaded.data, forget, train_config, seed,
                               show_progress)
  if path is not None:
    checkpoints.save_checkpoint(path, gold.params, {"gold": {"seed": seed, "run_s": gold.run_s,
                                                             "compile_s": gold.compile_s,
                                                             "forget": forget.describe(),
                                                             "checkpoint": str(Path(run.checkpoint).resolve())}})
  return gold.params, gold.run_s, gold.compile_s


def read_method_config(path: str | None) -> dict[str, dict[str, Any]]:
  """The per-method overrides of a ``--method-config`` JSON file (``{}`` for none)."""
  if path is None:
    return {}
  try:
    raw = json.loads(Path(path).expanduser().read_text())
  except FileNotFoundError:
    raise FamrError(f"method config file {path} does not exist") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise FamrError(f"method config file {path} is not valid JSON: {e}") from None
  if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
    raise FamrError(f"method config file {path} must map method names to objects of options")
  return raw


def resolve_configs(methods: Sequence[str], model_name: str, *, flags: Mapping[str, Any] | None = None,
                    per_method: Mapping[str, Mapping[str, Any]] | None = None,
                    train_config: Any = None, forget_kind: str = "classes") -> dict[str, Any]:
  """Each method's config: its defaults, then the flags it has, then its JSON entry.

  The defaults are the method's for the model and the request's kind
  (``classes`` or ``samples``: :meth:`famr_jax.methods.registry.MethodSpec.default_config`).
  ``retrain`` takes the checkpoint's training recipe (``train_config``); the
  shared flags do not apply to it, only its JSON entry.
  Unknown methods (listed or in the JSON) and options a method does not
  have are one-line :class:`FamrError`s; JSON entries of registered methods
  that are not compared are ignored (one file can serve several runs).
  """
  from famr_jax.methods.registry import get_method, with_overrides

  flags, per_method = dict(flags or {}), dict(per_method or {})
  for name in per_method:   # entries for registered methods not compared now are kept for other runs
    get_method(name)
  used_flags: set[str] = set()
  configs = {}
  for name in methods:
    spec = get_method(name)
    base = (train_config if (name == "retrain" and train_config is not None)
            else spec.default_config(model_name, forget_kind))
    fields = {f.name: f for f in dataclasses.fields(spec.config_cls)}
    # The gold-standard recipe is the checkpoint's: shared flags (--epochs ...) never change it.
    given = {} if name == "retrain" else {k: v for k, v in flags.items() if k in fields}
    used_flags |= set(given)
    own = dict(per_method.get(name, {}))
    foreign = sorted(set(own) - set(fields))
    if foreign:
      raise FamrError(f"method {name!r} has no option {', '.join(foreign)} (method config file)")
    config = with_overrides(base, {**given, **own})
    if hasattr(config, "validate"):
      config.validate()
    configs[name] = config
  unused = sorted(set(flags) - used_flags)
  if unused:
    raise FamrError("no compared method has option " + ", ".join("--" + f.replace("_", "-") for f in unused))
  return configs


def check_forget_request(run: CompareRun) -> None:
  """Exactly one forget request, and a random fraction strictly inside (0, 1)."""
  if bool(run.forget_classes) == (run.forget_random is not None):
    raise FamrError("name exactly one forget set: --forget-classes or --forget-random")
  if run.forget_random is not None and not 0.0 < float(run.forget_random) < 1.0:
    raise FamrError(f"--forget-random must lie strictly between 0 and 1, got {run.forget_random}")
  if run.seeds <= 0:
    raise FamrError(f"--seeds must be positive, got {run.seeds}")


def seed_forget_set(run: CompareRun, data, seed: int) -> ForgetSet:
  """The forget set of one seed: the classes, or a random draw (as ``famr-jax unlearn --seed``)."""
  if run.forget_classes:
    return forget_classes(data.y_train, run.forget_classes, data.num_classes)
  return forget_random(jax.random.fold_in(jax.random.key(seed), 1), run.forget_random,
                       len(data.y_train), data.num_classes)


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
  return float(np.mean(np.asarray(objectives.kl_divergence(logits_ref, logits))))


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


def run_compare(run: CompareRun, *, flags: Mapping[str, Any] | None = None, show_progress: bool = True,
                log=print) -> dict:
  """Runs the leaderboard and writes it to ``run.out`` (see the module docstring).

  Args:
    run: a :class:`CompareRun`.
    flags: method options given on the command line (applied to every compared
      method that has the option; ``--method-config`` entries override them).
    show_progress: progress bars.
    log: where the per-run lines go.

  Returns:
    The leaderboard (as written to ``leaderboard.json``).
  """
  from famr_jax.io import checkpoints
  from famr_jax.theory.fisher import missing_fisher_message
  from famr_jax.methods.registry import UnlearnTask, get_method
  from famr_jax.cli.runs import check_output_free, load_model, staged_directory
  from famr_jax.engine.training import TrainConfig

  check_forget_request(run)
  methods = tuple(run.methods) or DEFAULT_METHODS
  if len(set(methods)) != len(methods):
    raise FamrError("a method is listed more than once in --methods")
  for name in methods:
    get_method(name)   # unknown names fail before any work
  per_method = read_method_config(run.method_config)
  check_output_free(run.out, run.overwrite)
  metadata = checkpoints.read_metadata(run.checkpoint)
  if "unlearned" in metadata:
    raise FamrError(f"{run.checkpoint} is already an unlearned model; compare from the original checkpoint")
  train_config = TrainConfig(**metadata["train_config"]) if "train_config" in metadata else None
  configs = resolve_configs(methods, metadata.get("model", ""), flags=flags, per_method=per_method,
                            train_config=train_config,
                            forget_kind="classes" if run.forget_classes else "samples")
  needs_fisher = [m for m, c in configs.items() if getattr(c, "anchor", None) == "fisher"]
  if needs_fisher and "fisher" not in metadata.get("extras", {}):
    raise FamrError(f"{', '.join(needs_fisher)}: " + missing_fisher_message(run.checkpoint))
  if train_config is None:
    raise FamrError(f"{run.checkpoint} records no training recipe, so the gold standard cannot be retrained")

  loaded = load_model(run.checkpoint)
  data, model, apply_fn, params = loaded.data, loaded.model, loaded.apply_fn, loaded.params
  rows: list[dict] = []
  gold_rows: list[dict] = []
  for seed in range(run.seeds):
    forget = seed_forget_set(run, data, seed)
    gold_params, gold_run_s, gold_compile_s = gold_standard(run, loaded, forget, seed, train_config,
                                                            show_progress, log)
    gold = gold_reference(apply_fn, gold_params, data, forget, params, seed)
    gold_rows.append({"seed": seed, "run_s": gold_run_s, "compile_s": gold_compile_s,
                      "metrics": _public(gold.metrics)})
    log(f"seed {seed}: retrained in {gold_run_s:.1f} s (+{gold_compile_s:.1f} s compile): "
        + _line(gold.metrics))

    def add_row(name, new_params, time_s, compile_s, wall_s):
      s = score_against_gold(apply_fn, new_params, data, forget, params, gold, seed)
      row = {"seed": seed, "method": name, "metrics": _public(s.metrics), "gaps": s.gaps,
             "avg_gap": s.gaps["avg_gap"], "kl_to_retrained": s.kl, "time_s": time_s, "compile_s": compile_s,
             "wall_s": wall_s, "time_fraction": time_s / gold_run_s if gold_run_s > 0 else float("nan"),
             "diverged": s.diverged}
      rows.append(row)
      log(f"seed {seed}: {name:<20s} avg gap {s.gaps['avg_gap']:5.2f}  KL {s.kl:.4f}  "
          f"time {100 * row['time_fraction']:.2f}% of retrain  " + _line(s.metrics)
          + ("  (DIVERGED: non-finite params or logits)" if s.diverged else ""))

    add_row(ORIGINAL, params, 0.0, 0.0, 0.0)
    for name in methods:
      spec = get_method(name)
      task = UnlearnTask(apply_fn, params, model, data, forget, jax.random.key(seed), show_progress,
                         checkpoint=str(Path(run.checkpoint).expanduser().resolve()))
      t0 = time.perf_counter()
      result = spec.run(task, configs[name])
      jax.block_until_ready(result.params)
      wall = time.perf_counter() - t0
      add_row(name, result.params, result.run_s, result.compile_s, wall)

  board = {
      "famr_jax_version": famr_jax.__version__,
      "checkpoint": str(Path(run.checkpoint).expanduser().resolve()),
      "dataset": data.name,
      "model": metadata.get("model"),
      "forget": ({"kind": "classes", "classes": list(run.forget_classes)} if run.forget_classes
                 else {"kind": "random", "fraction": float(run.forget_random)}),
      "seeds": list(range(run.seeds)),
      "methods": [ORIGINAL, *methods],
      "configs": {name: dataclasses.asdict(c) for name, c in configs.items()},
      "train_config": dataclasses.asdict(train_config),
      "retrained": gold_rows,
      "runs": rows,
      "summary": summarize(rows),
  }
  with staged_directory(run.out, run.overwrite) as staging:
    from famr_jax.evaluation.report import write_json
    write_json(staging / "leaderboard.json", board)
    (staging / "leaderboard.md").write_text(format_leaderboard(board) + "\n")
    plot_leaderboard(board, staging / "leaderboard.png")
  return board


def _public(metrics: Mapping[str, Any]) -> dict:
  return {k: v for k, v in metrics.items()}


def _line(m: Mapping[str, Any]) -> str:
  return " ".join(f"{k} {100 * float(m[k]):.1f}" for k in GAP_METRICS)


SUMMARY_KEYS = ("forget_acc", "retain_acc", "test_acc", "mia_efficacy")


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
      for k, v in r["gaps"].items():
        if k != "avg_gap":
          values.setdefault(f"gap_{k}", []).append(_num(v))
      for k in ("avg_gap", "kl_to_retrained", "time_fraction", "compile_s", "time_s", "wall_s"):
        values.setdefault(k, []).append(_num(r[k]))
    values["time_percent"] = [100.0 * v for v in values["time_fraction"]]
    out[name] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for k, v in values.items()}
    out[name]["diverged"] = {"mean": float(sum(bool(r.get("diverged", False)) for r in every)),
                             "std": 0.0, "n": len(every)}
  return out


def _pm(stat: Mapping[str, float], digits: int = 1) -> str:
  if stat is None or not math.isfinite(stat["mean"]):
    return "-"
  return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def format_leaderboard(board: Mapping[str, Any]) -> str:
  """The markdown tables of a leaderboard: metrics and gaps, mean ± std over seeds, sorted by average gap."""
  summary = board["summary"]
  gold = board["retrained"]
  forget = board["forget"]
  what = (f"classes {forget['classes']}" if forget["kind"] == "classes"
          else f"a random {100 * forget['fraction']:.0f}% of the training set")
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
  lines = [f"{board['model']} on {board['dataset']}, forgetting {what}; {len(board['seeds'])} seed(s); "
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
  return "\n".join(lines)


def plot_leaderboard(board: Mapping[str, Any], path) -> None:
  """Average gap vs wall time (percent of retraining, log scale), one point per method, std as error bars."""
  from famr_jax.evaluation.report import _pyplot
  plt = _pyplot()
  summary = board["summary"]
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, s in summary.items():
    if not math.isfinite(s["avg_gap"]["mean"]):
      continue   # diverged on every seed
    x = max(s["time_percent"]["mean"], 1e-3)
    ax.errorbar(x, s["avg_gap"]["mean"], xerr=s["time_percent"]["std"], yerr=s["avg_gap"]["std"], fmt="o",
                capsize=3)
    ax.annotate(name, (x, s["avg_gap"]["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
  ax.set_xscale("log")
  ax.set_xlabel("wall time, % of retraining (compile excluded; original at 0.001)")
  ax.set_ylabel("average gap to retrained (pts)")
  ax.set_title(f"{board['model']} / {board['dataset']}: distance to the gold standard vs cost")
  ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
