"""`famr-jax compare` end to end on digits (two seeds), `famr-jax fisher`, scoring, bad input."""

import json

import numpy as np
import pytest

from famr_jax.cli.main import main
from famr_jax.evaluation.leaderboard import GAP_METRICS, score, summarize


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("compare")
  plain, with_fisher = root / "mlp", root / "mlp_fisher"
  assert main(["train", "--dataset", "digits", "--model", "mlp", "--epochs", "10", "--out", str(plain)]) == 0
  assert main(["fisher", "--checkpoint", str(plain), "--out", str(with_fisher)]) == 0
  return plain, with_fisher


def test_score_is_the_mean_absolute_gap_in_points():
  m = {"forget_acc": 0.02, "retain_acc": 0.95, "test_acc": 0.85, "mia_efficacy": 0.90}
  gold = {"forget_acc": 0.0, "retain_acc": 0.96, "test_acc": 0.86, "mia_efficacy": 1.0}
  g = score(m, gold)
  np.testing.assert_allclose([g[k] for k in GAP_METRICS], [2.0, 1.0, 1.0, 10.0], atol=1e-9)
  assert g["avg_gap"] == pytest.approx(3.5)


def test_compare_end_to_end_on_digits_with_two_seeds(checkpoints, tmp_path, capsys):
  _, ckpt = checkpoints
  config = tmp_path / "methods.json"
  config.write_text(json.dumps({"famr-plus": {"epochs": 2, "train_from": "head"}, "ga": {"lr": 0.01}}))
  # (ga is not compared: its entry is ignored, as a shared file may serve several runs)
  out = tmp_path / "board"
  argv = ["compare", "--checkpoint", str(ckpt), "--methods", "famr,famr-plus,famr-fisher",
          "--forget-classes", "3", "--seeds", "2", "--epochs", "1", "--method-config", str(config),
          "--out", str(out)]
  assert main(argv) == 0
  printed = capsys.readouterr().out
  board = json.loads((out / "leaderboard.json").read_text())
  assert board["seeds"] == [0, 1] and board["methods"] == ["original", "famr", "famr-plus", "famr-fisher"]
  assert board["configs"]["famr-plus"]["epochs"] == 2            # the JSON file beats the flag
  assert board["configs"]["famr-plus"]["train_from"] == "head"
  assert board["configs"]["famr"]["epochs"] == 1 and "ga" not in board["configs"]
  assert len(board["runs"]) == 2 * 4
  for row in board["runs"]:   # every gap recomputed from the stored metrics of the row and of the gold model
    gold = board["retrained"][row["seed"]]["metrics"]
    gaps = [100 * abs(row["metrics"][k] - gold[k]) for k in GAP_METRICS]
    np.testing.assert_allclose(row["avg_gap"], np.mean(gaps), rtol=1e-9)
    if row["method"] != "original":
      np.testing.assert_allclose(row["time_fraction"], row["time_s"] / board["retrained"][row["seed"]]["run_s"])
      assert row["time_s"] > 0 and row["kl_to_retrained"] >= 0
  summary = board["summary"]
  for name in board["methods"]:
    gaps = [r["avg_gap"] for r in board["runs"] if r["method"] == name]
    assert summary[name]["avg_gap"]["mean"] == pytest.approx(np.mean(gaps))
    assert summary[name]["avg_gap"]["std"] == pytest.approx(np.std(gaps))
  # Forgetting a class: the original remembers it, the unlearned models do not.
  assert summary["original"]["forget_acc"]["mean"] > 90
  assert summary["famr-plus"]["forget_acc"]["mean"] < 10
  table = (out / "leaderboard.md").read_text()
  for name in board["methods"]:
    assert f"| {name} |" in table
  assert "retrained (gold)" in table and "±" in table and "retrained (gold)" in printed
  assert (out / "leaderboard.png").stat().st_size > 1000


def test_random_forgetting_draws_per_seed(checkpoints, tmp_path):
  ckpt, _ = checkpoints
  out = tmp_path / "random"
  assert main(["compare", "--checkpoint", str(ckpt), "--methods", "ga", "--forget-random", "0.1",
               "--seeds", "1", "--epochs", "1", "--out", str(out)]) == 0
  board = json.loads((out / "leaderboard.json").read_text())
  assert board["forget"] == {"kind": "random", "fraction": 0.1}
  gold = board["retrained"][0]["metrics"]
  # Sample forgetting: the retrained model still classifies most forgotten samples correctly.
  assert gold["forget_acc"] > 0.8


@pytest.mark.parametrize("extra, message", [
    (["--methods", "famr,bogus", "--forget-classes", "3"], "unknown method 'bogus'"),
    (["--methods", "famr", "--forget-random", "1.5"], "strictly between 0 and 1"),
    (["--methods", "famr", "--forget-random", "0"], "strictly between 0 and 1"),
    (["--methods", "famr", "--forget-classes", "3", "--forget-random", "0.1"], "exactly one forget set"),
    (["--methods", "famr-fisher", "--forget-classes", "3"], "no stored Fisher.*famr-jax fisher --checkpoint"),
    (["--methods", "famr", "--forget-classes", "3", "--saliency", "0.5"], "no compared method has option --saliency"),
    (["--methods", "famr", "--forget-classes", "3", "--seeds", "0"], "--seeds must be positive"),
    (["--methods", "ga", "--forget-random", "0.1", "--audit", "ulira", "--shadows", "1"], "at least 2 shadow models"),
    (["--methods", "ga", "--forget-random", "0.1", "--shadows", "4"], "--shadows sizes an audit"),
    (["--methods", "ga", "--forget-random", "0.1", "--audit", "lira"], "audit must be one of ulira"),
    (["--methods", "ga,famr-plus", "--forget-random", "0.1"], "'famr-plus' cannot forget random samples"),
])
def test_bad_compare_input_is_one_line_and_writes_nothing(checkpoints, tmp_path, capsys, extra, message):
  ckpt, _ = checkpoints
  out = tmp_path / "never"
  assert main(["compare", "--checkpoint", str(ckpt), "--out", str(out), *extra]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("famr-jax: error:") and "\n" not in err
  import re
  assert re.search(message, err), err
  assert not out.exists()


def test_bad_method_config_file(checkpoints, tmp_path, capsys):
  ckpt, _ = checkpoints
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"famr": {"no_such_option": 1}}))
  assert main(["compare", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--methods", "famr",
               "--forget-classes", "3", "--method-config", str(bad)]) == 2
  assert "has no option no_such_option" in capsys.readouterr().err
  bad.write_text("{not json")
  assert main(["compare", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--methods", "famr",
               "--forget-classes", "3", "--method-config", str(bad)]) == 2
  assert "not valid JSON" in capsys.readouterr().err


def test_summarize_mean_and_std():
  rows = [{"method": "m", "metrics": {k: v for k in GAP_METRICS}, "gaps": {k: 0.0 for k in GAP_METRICS},
           "avg_gap": g, "kl_to_retrained": 0.0, "time_fraction": t, "compile_s": 1.0, "time_s": 1.0,
           "wall_s": 2.0} for v, g, t in ((0.5, 1.0, 0.01), (0.7, 3.0, 0.03))]
  s = summarize(rows)["m"]
  assert s["avg_gap"] == {"mean": 2.0, "std": 1.0, "n": 2}
  assert s["forget_acc"]["mean"] == pytest.approx(60.0)
  assert s["time_percent"]["mean"] == pytest.approx(2.0)


def test_summarize_scores_only_the_seeds_that_did_not_diverge():
  nan = float("nan")
  ok = {"method": "m", "metrics": {k: 0.5 for k in GAP_METRICS}, "gaps": {k: 2.0 for k in GAP_METRICS},
        "avg_gap": 2.0, "kl_to_retrained": 0.1, "time_fraction": 0.01, "compile_s": 1.0, "time_s": 1.0,
        "wall_s": 2.0, "diverged": False}
  # As read back from leaderboard.json, where NaN may come back as null.
  bad = {**ok, "metrics": {k: None for k in GAP_METRICS}, "gaps": {k: nan for k in GAP_METRICS},
         "avg_gap": None, "kl_to_retrained": nan, "diverged": True}
  s = summarize([ok, bad, {**bad, "method": "all-bad"}])
  assert s["m"]["avg_gap"] == {"mean": 2.0, "std": 0.0, "n": 1}
  assert s["m"]["forget_acc"]["mean"] == pytest.approx(50.0)
  assert s["m"]["diverged"] == {"mean": 1.0, "std": 0.0, "n": 2}
  assert np.isnan(s["all-bad"]["avg_gap"]["mean"]) and s["all-bad"]["diverged"]["mean"] == 1.0


def test_score_against_gold_zero_for_the_gold_itself_and_nan_when_diverged(trained_digits):
  import jax
  from famr_jax.evaluation.leaderboard import gold_reference, score_against_gold
  from famr_jax.data.forget import forget_classes
  t = trained_digits
  forget = forget_classes(t.data.y_train, [3], t.data.num_classes)
  gold = gold_reference(t.apply_fn, t.params, t.data, forget, t.params, seed=0)
  assert not gold.kl_mask[t.data.y_test == 3].any() and gold.kl_mask[t.data.y_test != 3].all()
  same = score_against_gold(t.apply_fn, t.params, t.data, forget, t.params, gold, seed=0)
  assert not same.diverged and same.gaps["avg_gap"] == 0.0 and abs(same.kl) < 1e-6
  broken = jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(np.nan), t.params)
  bad = score_against_gold(t.apply_fn, broken, t.data, forget, t.params, gold, seed=0)
  assert bad.diverged and np.isnan(bad.kl) and np.isnan(bad.gaps["avg_gap"])
  assert all(np.isnan(bad.metrics[k]) for k in GAP_METRICS)


def test_sample_requests_run_the_step_budgets(checkpoints, tmp_path):
  ckpt, _ = checkpoints
  out = tmp_path / "random_defaults"
  assert main(["compare", "--checkpoint", str(ckpt), "--methods", "ga,neggrad+", "--forget-random", "0.1",
               "--seeds", "1", "--out", str(out)]) == 0
  board = json.loads((out / "leaderboard.json").read_text())
  # The sample defaults' budgets (5 and 25 steps), not the class defaults' epochs.
  assert board["configs"]["ga"]["steps"] == 5 and board["configs"]["neggrad+"]["steps"] == 25
  by_method = {r["method"]: r for r in board["runs"]}
  assert not by_method["ga"]["diverged"] and not by_method["neggrad+"]["diverged"]


def test_step_budget_runs_with_data_parallel(checkpoints, tmp_path):
  # One engine: the sample defaults' step budget runs on a device mesh too (it was refused before).
  ckpt, _ = checkpoints
  out = tmp_path / "dp"
  assert main(["unlearn", "--checkpoint", str(ckpt), "--method", "famr", "--forget-random", "0.1",
               "--data-parallel", "--out", str(out)]) == 0
  report = json.loads((out / "report.json").read_text())
  assert report["config"]["method"]["steps"] == 25


def test_default_list_runs_on_a_fresh_checkpoint(checkpoints, tmp_path, capsys):
  # First contact: no --methods, a checkpoint with no stored Fisher. famr-fisher is left out with a
  # one-line note; every other default method runs.
  plain, _ = checkpoints
  out = tmp_path / "board"
  assert main(["compare", "--checkpoint", str(plain), "--forget-classes", "3", "--seeds", "1", "--steps", "2",
               "--out", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "famr-fisher left out" in printed
  board = json.loads((out / "leaderboard.json").read_text())
  from famr_jax.evaluation.compare import DEFAULT_METHODS
  assert board["methods"] == ["original", *[m for m in DEFAULT_METHODS if m != "famr-fisher"]]
  assert not any(row["diverged"] for row in board["runs"])


def test_the_default_list_skips_class_only_methods_for_a_sample_request():
  from famr_jax.cli.compare_run import drop_class_only
  from famr_jax.evaluation.compare import DEFAULT_METHODS, resolve_configs
  # The board resolves the kind's configs once class-only methods are dropped (board_plan): drop_class_only
  # reads each method's spec and config, here the class request's.
  configs = resolve_configs(DEFAULT_METHODS, "mlp", forget_kind="classes")
  lines = []
  kept, kept_configs = drop_class_only(DEFAULT_METHODS, configs, "samples", True, lines.append)
  assert "famr-retrain-target" not in kept and "famr-plus" not in kept and "famr" in kept and "ga" in kept
  assert set(kept_configs) == set(kept) and len(lines) == 1 and "famr-plus" in lines[0]
  assert drop_class_only(DEFAULT_METHODS, configs, "classes", True, lines.append)[0] == DEFAULT_METHODS
